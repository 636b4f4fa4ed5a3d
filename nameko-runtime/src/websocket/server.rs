//! The websocket server of the process: the `#[ws_rpc]` methods of every service, the sockets
//! connected to `/ws`, and the hub's subscriptions. Nameko's protocol, frame for frame: a
//! `connected` event with the socket's id, then one request at a time per socket, each
//! answered by a result frame; hub events in between.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::json::python_style;
use crate::context::ContextData;
use crate::error::Error;
use crate::http::Upgrade;
use crate::protocol::{RemoteError, RequestBody};

/// How many frames may wait to be written to one socket; a socket further behind is dropped,
/// so that it never holds up a broadcast to the others.
pub(crate) const SOCKET_BUFFER: usize = 256;

/// A method's worker: `None` when the service is stopping (no worker ran).
pub(crate) type WsHandler = Arc<
    dyn Fn(RequestBody, ContextData) -> BoxFuture<'static, Option<Result<Vec<u8>, RemoteError>>>
        + Send
        + Sync,
>;

struct WsMethod {
    service: &'static str,
    handler: WsHandler,
}

/// A connected socket, as others reach it.
struct Socket {
    frames: mpsc::Sender<String>,
    /// Cancelled to drop it (it fell behind).
    dropped: CancellationToken,
}

/// What the hub knows: who listens to which channel.
#[derive(Default)]
struct Subscriptions {
    by_channel: HashMap<String, BTreeSet<String>>,
    by_socket: HashMap<String, BTreeSet<String>>,
}

/// The websocket server of the process (a process extension).
#[derive(Default)]
pub(crate) struct WsServer {
    methods: Mutex<HashMap<&'static str, WsMethod>>,
    sockets: Mutex<HashMap<String, Socket>>,
    subscriptions: Mutex<Subscriptions>,
    /// The runner's stop: every socket closes.
    stop: OnceLock<CancellationToken>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the hub could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// No socket of this id is connected (Nameko's `ConnectionNotFound`).
    #[error("{0}")]
    ConnectionNotFound(String),
    /// The event's data does not serialise to JSON.
    #[error("event data could not be serialised: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl crate::ToRemoteError for HubError {
    fn to_remote_error(&self) -> RemoteError {
        match self {
            HubError::ConnectionNotFound(socket_id) => {
                RemoteError::nameko("ConnectionNotFound", socket_id.clone())
            }
            HubError::Serialization(e) => RemoteError::nameko_rs("HubError", e.to_string()),
        }
    }
}

impl WsServer {
    /// Adds a service's method; two services' methods of one name cannot share the server.
    pub(crate) fn register(
        &self,
        service: &'static str,
        method: &'static str,
        handler: WsHandler,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let _ = self.stop.set(stop.clone());
        let mut methods = lock(&self.methods);
        if let Some(other) = methods.get(method) {
            return Err(Error::Routes(format!(
                "two websocket methods are named `{method}`: {}.{method} and {service}.{method}",
                other.service
            )));
        }
        methods.insert(method, WsMethod { service, handler });
        Ok(())
    }

    /// Whether any service has websocket methods (`/ws` is served only then).
    pub(crate) fn has_methods(&self) -> bool {
        !lock(&self.methods).is_empty()
    }

    /// Serves one socket until it closes, the runner stops, or it is dropped for falling
    /// behind.
    async fn serve(self: Arc<Self>, socket: WebSocket, context: ContextData) {
        let socket_id = uuid::Uuid::new_v4().to_string();
        let (frames, mut outgoing) = mpsc::channel::<String>(SOCKET_BUFFER);
        let dropped = CancellationToken::new();
        lock(&self.sockets).insert(
            socket_id.clone(),
            Socket {
                frames: frames.clone(),
                dropped: dropped.clone(),
            },
        );
        let (mut sink, mut incoming) = socket.split();
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let stop = self.stop.get().cloned().unwrap_or_default();
        let connected = event_frame("connected", &format!(r#"{{"socket_id": "{socket_id}"}}"#));
        if frames.send(connected).await.is_ok() {
            loop {
                let message = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = dropped.cancelled() => break,
                    message = incoming.next() => message,
                };
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                    // Read as text, as Python's `json.loads` reads bytes; not UTF-8, malformed.
                    Some(Ok(Message::Binary(bytes))) => {
                        String::from_utf8(bytes.to_vec()).unwrap_or_default()
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                };
                let reply = self.handle_request(&socket_id, &text, &context).await;
                if frames.send(reply).await.is_err() {
                    break;
                }
            }
        }
        self.remove_socket(&socket_id);
        drop(frames);
        let _ = writer.await;
    }

    /// Answers one request frame with its result frame.
    async fn handle_request(&self, socket_id: &str, text: &str, context: &ContextData) -> String {
        #[derive(Deserialize)]
        struct Request {
            method: String,
            #[serde(default)]
            data: Option<serde_json::Value>,
            #[serde(default)]
            correlation_id: Option<Box<RawValue>>,
        }
        let Ok(request) = serde_json::from_str::<Request>(text) else {
            let error = RemoteError::nameko("MalformedRequest", "Invalid JSON data".into());
            return error_frame(&error, "null");
        };
        let correlation_id = request
            .correlation_id
            .as_ref()
            .map_or_else(|| "null".to_owned(), |raw| python_style(raw.get()));
        let handler = lock(&self.methods)
            .get(request.method.as_str())
            .map(|m| m.handler.clone());
        let Some(handler) = handler else {
            let error = RemoteError::nameko("MethodNotFound", String::new()).with_args(Vec::new());
            return error_frame(&error, &correlation_id);
        };
        let kwargs = match keyword_arguments(request.data) {
            Ok(kwargs) => kwargs,
            Err(error) => return error_frame(&error, &correlation_id),
        };
        let socket_arg = serde_json::value::to_raw_value(socket_id)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default());
        let body = RequestBody::from_parts(vec![socket_arg], kwargs);
        match handler(body, context.clone()).await {
            Some(Ok(result)) => {
                let data = python_style(&String::from_utf8_lossy(&result));
                format!(
                    r#"{{"type": "result", "success": true, "data": {data}, "correlation_id": {correlation_id}}}"#
                )
            }
            Some(Err(error)) => error_frame(&error, &correlation_id),
            None => error_frame(
                &RemoteError::nameko("ContainerBeingKilled", String::new()).with_args(Vec::new()),
                &correlation_id,
            ),
        }
    }

    fn remove_socket(&self, socket_id: &str) {
        lock(&self.sockets).remove(socket_id);
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(channels) = subscriptions.by_socket.remove(socket_id) {
            for channel in channels {
                if let Some(sockets) = subscriptions.by_channel.get_mut(&channel) {
                    sockets.remove(socket_id);
                    if sockets.is_empty() {
                        subscriptions.by_channel.remove(&channel);
                    }
                }
            }
        }
    }

    pub(crate) fn subscribe(&self, socket_id: &str, channel: &str) -> Result<(), HubError> {
        if !lock(&self.sockets).contains_key(socket_id) {
            return Err(HubError::ConnectionNotFound(socket_id.to_owned()));
        }
        let mut subscriptions = lock(&self.subscriptions);
        subscriptions
            .by_channel
            .entry(channel.to_owned())
            .or_default()
            .insert(socket_id.to_owned());
        subscriptions
            .by_socket
            .entry(socket_id.to_owned())
            .or_default()
            .insert(channel.to_owned());
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, socket_id: &str, channel: &str) {
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(sockets) = subscriptions.by_channel.get_mut(channel) {
            sockets.remove(socket_id);
            if sockets.is_empty() {
                subscriptions.by_channel.remove(channel);
            }
        }
        if let Some(channels) = subscriptions.by_socket.get_mut(socket_id) {
            channels.remove(channel);
        }
    }

    pub(crate) fn subscriptions_of(&self, socket_id: &str) -> Vec<String> {
        lock(&self.subscriptions)
            .by_socket
            .get(socket_id)
            .map(|channels| channels.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends `frame` to each socket of `channel`; one that fell behind is dropped. Returns how
    /// many got it.
    pub(crate) fn send_to_channel(&self, channel: &str, frame: &str) -> usize {
        let targets: Vec<String> = lock(&self.subscriptions)
            .by_channel
            .get(channel)
            .map(|sockets| sockets.iter().cloned().collect())
            .unwrap_or_default();
        targets
            .iter()
            .filter(|socket_id| self.send_to(socket_id, frame))
            .count()
    }

    /// Sends `frame` to one socket, without waiting: `false` if it is not connected, or fell
    /// behind (and is dropped).
    pub(crate) fn send_to(&self, socket_id: &str, frame: &str) -> bool {
        let sockets = lock(&self.sockets);
        let Some(socket) = sockets.get(socket_id) else {
            return false;
        };
        match socket.frames.try_send(frame.to_owned()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    socket_id,
                    buffered = SOCKET_BUFFER,
                    "dropped a websocket that does not keep up with its frames"
                );
                socket.dropped.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl Upgrade for WsServer {
    fn upgrade(
        self: Arc<Self>,
        mut parts: axum::http::request::Parts,
    ) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            let context = context_from_upgrade(&parts.headers);
            match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(upgrade) => upgrade
                    .on_upgrade(move |socket| self.serve(socket, context))
                    .into_response(),
                Err(rejection) => rejection.into_response(),
            }
        })
    }
}

/// The context data of a socket's workers, from its upgrade request: Nameko's well-known keys
/// from the usual headers (`User-Agent`, `Accept-Language`, `Authorization: Bearer ...`), and
/// any `nameko-<key>` header as `<key>` (`-` read as `_`), and a W3C `traceparent` and
/// `tracestate` as they are. Browsers can set none of their own
/// headers on a websocket, so these are what a page sends anyway.
fn context_from_upgrade(headers: &axum::http::HeaderMap) -> ContextData {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut data = crate::trace::context_from_http(headers);
    if let Some(agent) = text("user-agent") {
        data.insert("user_agent".into(), agent.into());
    }
    if let Some(language) = text("accept-language") {
        data.insert("language".into(), language.into());
    }
    if let Some(token) = text("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        data.insert("auth_token".into(), token.into());
    }
    for (name, value) in headers {
        if let (Some(key), Ok(value)) = (name.as_str().strip_prefix("nameko-"), value.to_str()) {
            data.insert(key.replace('-', "_"), value.into());
        }
    }
    data
}

/// The keyword arguments of a request's `data`: a missing or empty one (anything Python finds
/// false) is none; one that is not an object is Python's `IncorrectSignature`.
fn keyword_arguments(
    data: Option<serde_json::Value>,
) -> Result<HashMap<String, Box<RawValue>>, RemoteError> {
    use serde_json::Value;
    let map = match data {
        None | Some(Value::Null | Value::Bool(false)) => return Ok(HashMap::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(HashMap::new()),
        Some(Value::Array(a)) if a.is_empty() => return Ok(HashMap::new()),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => return Ok(HashMap::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                Value::String(_) => "str",
                _ => "list",
            };
            return Err(RemoteError::nameko(
                "IncorrectSignature",
                // Python's own words: nameko checks the call with `inspect.getcallargs`.
                format!("inspect.getcallargs() argument after ** must be a mapping, not {kind}"),
            ));
        }
    };
    map.into_iter()
        .map(|(key, value)| {
            serde_json::value::to_raw_value(&value)
                .map(|raw| (key, raw))
                .map_err(|e| RemoteError::nameko("MalformedRequest", e.to_string()))
        })
        .collect()
}

/// `{"type": "event", "event": ..., "data": ...}`, `data` being JSON already.
pub(crate) fn event_frame(event: &str, data: &str) -> String {
    let event = python_style(&serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into()));
    format!(
        r#"{{"type": "event", "event": {event}, "data": {}}}"#,
        python_style(data)
    )
}

fn error_frame(error: &RemoteError, correlation_id: &str) -> String {
    // Strings and JSON values: it always serialises.
    let error = serde_json::to_string(error).unwrap_or_default();
    format!(
        r#"{{"type": "result", "success": false, "error": {}, "correlation_id": {correlation_id}}}"#,
        python_style(&error)
    )
}
