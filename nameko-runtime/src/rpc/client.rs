//! RPC clients: the reply listener, the cluster client and per-service proxies.
//!
//! One [`ClusterRpcClient`] owns one reply queue (`rpc.reply-<owner>-<uuid>`) and any number of
//! calls in flight on it, matched by correlation id. Inside a service it is a dependency
//! sharing the container's reply queue; outside, [`ClusterRpcClient::connect`] makes a
//! standalone one (Nameko's `ClusterRpcProxy`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Config;
use crate::context::{ContextData, WorkerContext};
use crate::error::RpcError;
use crate::metrics::CallOutcome;
use crate::protocol::{self, RemoteError, ReplyBody};
use crate::transport::{
    OutgoingMessage, Properties, SharedTransport, TransportError, amqp::AmqpOptions,
};

use super::reply::{Link, Pending, ReplyListener};

/// Takes a call's entry out of the pending calls if the call ends before its outcome came
/// (cancelled, or failed before it was sent); once the listener or the sweeper handed it its
/// outcome, the entry is gone already.
struct PendingGuard<'a> {
    pending: &'a Pending,
    correlation_id: u128,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.remove(self.correlation_id);
        }
    }
}

struct Core {
    listener: ReplyListener,
    exchange: Arc<str>,
    /// A standalone client's call id stack, `[standalone_rpc_proxy.call.<uuid>]`: one call id
    /// for all its calls, as Nameko's standalone proxy has, shared by their headers.
    standalone: Option<Arc<Value>>,
}

impl Core {
    /// The transport to publish on and the `reply_to` of requests, waiting while the client
    /// reconnects.
    async fn transport(&self) -> Result<(SharedTransport, Arc<str>), RpcError> {
        let mut link = self.listener.link.clone();
        loop {
            if let Some(ready) = Self::ready(&link.borrow_and_update()) {
                return ready;
            }
            if link.changed().await.is_err() {
                return Err(RpcError::Transport(TransportError::Connection(
                    "client closed".into(),
                )));
            }
        }
    }

    /// The transport and `reply_to` if the client can publish now, why it never will if it is
    /// closed, `None` if it must wait.
    fn link_now(&self) -> Option<Result<(SharedTransport, Arc<str>), RpcError>> {
        Self::ready(&self.listener.link.borrow())
    }

    fn ready(link: &Link) -> Option<Result<(SharedTransport, Arc<str>), RpcError>> {
        match link {
            // A connection that is gone but not yet noticed by the listener: wait for it to
            // notice (and reconnect, or give up) rather than publish into the void.
            Link::Up {
                transport,
                reply_to,
            } if !transport.connection_lost() => Some(Ok((transport.clone(), reply_to.clone()))),
            Link::Up { .. } | Link::Down(_) => None,
            Link::Closed(reason) => Some(Err(RpcError::Transport(TransportError::Connection(
                reason.clone(),
            )))),
        }
    }

    /// Why the client can send no more, if it cannot.
    fn closed(&self) -> Option<String> {
        match &*self.listener.link.borrow() {
            Link::Closed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Why the client is not connected, if it is not.
    fn disconnected(&self) -> Option<String> {
        match &*self.listener.link.borrow() {
            Link::Up { .. } => None,
            Link::Down(reason) | Link::Closed(reason) => Some(reason.clone()),
        }
    }
}

/// A client for calling any service in the cluster by name.
///
/// Cheap to clone; clones share one reply queue. Many calls may be in flight at once. Every call
/// has a timeout ([`Config::rpc_timeout`] unless set with [`with_timeout`](Self::with_timeout)).
/// Inside a worker, calls carry the worker's call id stack and context data.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use nameko::ClusterRpcClient;
/// use serde_json::{Value, json};
///
/// let client = ClusterRpcClient::connect("amqp://guest:guest@localhost").await?;
/// let greeting: String = client.service("greeter_service").call("greet", ["Tim"]).await?;
/// let value: Value = client
///     .service("greeter_service")
///     .call_with("greet", (), json!({"name": "Tim"}))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterRpcClient {
    core: Arc<Core>,
    timeout: Duration,
    context_data: Arc<ContextData>,
    /// The priority of its requests (for a queue declared with `x-max-priority`).
    priority: u8,
    /// How long its requests may wait in the service's queue.
    expiration: Option<Duration>,
}

impl std::fmt::Debug for ClusterRpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (link, reply_to) = match &*self.core.listener.link.borrow() {
            Link::Up {
                transport,
                reply_to,
            } => (transport.describe(), reply_to.to_string()),
            Link::Down(reason) => (format!("reconnecting ({reason})"), String::new()),
            Link::Closed(reason) => (format!("closed ({reason})"), String::new()),
        };
        f.debug_struct("ClusterRpcClient")
            .field("transport", &link)
            .field("reply_to", &reply_to)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClusterRpcClient {
    /// Connects a standalone client to the broker at `uri` (see [`transport::connect`](crate::transport::connect)), with
    /// the default exchange and timeout.
    ///
    /// The client owns its connection: when the connection is lost it connects again (waiting
    /// 0.25 s, then twice as long after each failure, up to 5 s) and consumes the same reply
    /// queue, which RabbitMQ keeps for five minutes. Calls in flight go on waiting for their
    /// replies; calls made meanwhile wait for the new connection. Either way a call ends by its
    /// timeout at the latest.
    pub async fn connect(uri: &str) -> Result<ClusterRpcClient, TransportError> {
        ClusterRpcClient::connect_with(&Config {
            amqp_uri: Some(uri.to_owned()),
            ..Config::default()
        })
        .await
    }

    /// Like [`connect`](Self::connect), with the broker, heartbeat, exchange and timeout of
    /// `config`.
    pub async fn connect_with(config: &Config) -> Result<ClusterRpcClient, TransportError> {
        let transport = config.connect_client().await?;
        Self::start(
            transport,
            config,
            protocol::STANDALONE_PROXY_NAME,
            true,
            Some((config.connection_uri(), config.client_options())),
        )
        .await
    }

    /// A standalone client on an existing transport, with the exchange and timeout of `config`.
    ///
    /// The transport is the caller's: if its connection is lost, the client's calls fail with
    /// [`RpcError::Transport`] (use [`connect`](Self::connect) for a client that reconnects).
    pub async fn standalone(
        transport: SharedTransport,
        config: &Config,
    ) -> Result<ClusterRpcClient, TransportError> {
        Self::start(
            transport,
            config,
            protocol::STANDALONE_PROXY_NAME,
            true,
            None,
        )
        .await
    }

    /// The client of a service: its reply queue is named after the service. The service's
    /// connection is the runner's, which starts the service again on a new one.
    pub(crate) async fn for_service(
        transport: SharedTransport,
        config: &Config,
        service_name: &str,
    ) -> Result<ClusterRpcClient, TransportError> {
        Self::start(transport, config, service_name, false, None).await
    }

    async fn start(
        transport: SharedTransport,
        config: &Config,
        owner: &str,
        standalone: bool,
        reconnect: Option<(String, AmqpOptions)>,
    ) -> Result<ClusterRpcClient, TransportError> {
        let listener =
            ReplyListener::start(transport, &config.rpc_exchange, owner, reconnect).await?;
        Ok(ClusterRpcClient {
            core: Arc::new(Core {
                listener,
                exchange: config.rpc_exchange.as_str().into(),
                standalone: standalone.then(|| {
                    let call_id = protocol::new_call_id(protocol::STANDALONE_PROXY_NAME, "call");
                    Arc::new(Value::Array(vec![Value::String(call_id)]))
                }),
            }),
            timeout: config.rpc_timeout,
            context_data: Arc::default(),
            priority: 0,
            expiration: None,
        })
    }

    /// A client whose calls time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> ClusterRpcClient {
        ClusterRpcClient {
            timeout,
            ..self.clone()
        }
    }

    /// A client whose calls carry this context data (e.g. `auth_token`), on top of the current
    /// worker's.
    pub fn with_context_data(&self, data: ContextData) -> ClusterRpcClient {
        ClusterRpcClient {
            context_data: Arc::new(data),
            ..self.clone()
        }
    }

    /// A client whose requests have this priority: on a service queue declared with
    /// `x-max-priority` (see [`Config::queue_arguments`]), they are taken before those of a
    /// lower one. 0 unless set, as in Nameko.
    pub fn with_priority(&self, priority: u8) -> ClusterRpcClient {
        ClusterRpcClient {
            priority,
            ..self.clone()
        }
    }

    /// A client whose requests are dropped (or dead-lettered) if still queued after
    /// `expiration`: a request no service took by then is not run late (its call times out).
    pub fn with_expiration(&self, expiration: Duration) -> ClusterRpcClient {
        ClusterRpcClient {
            expiration: Some(expiration),
            ..self.clone()
        }
    }

    /// The timeout of this client's calls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A proxy for calling the methods of one service.
    pub fn service(&self, name: impl Into<Arc<str>>) -> ServiceProxy {
        ServiceProxy {
            client: self.clone(),
            service: name.into(),
        }
    }

    /// The headers of a call: the worker's context, or the standalone client's call id stack.
    fn headers(&self) -> protocol::Headers {
        let mut headers = match WorkerContext::current() {
            Some(worker) => worker.outgoing_headers(),
            None => {
                let mut headers = protocol::Headers::with_capacity(1);
                if let Some(stack) = &self.core.standalone {
                    headers.insert_shared(protocol::CALL_ID_STACK_HEADER, stack.clone());
                }
                headers
            }
        };
        if !self.context_data.is_empty() {
            headers.extend(protocol::headers_from_context(&self.context_data));
        }
        crate::trace::inject(&mut headers);
        headers
    }

    /// The broker's transport and the reply queue once the client is connected, if it is by
    /// `deadline`.
    async fn link_by(&self, deadline: Instant) -> Result<(SharedTransport, Arc<str>), RpcError> {
        match tokio::time::timeout_at(deadline, self.core.transport()).await {
            Ok(link) => link,
            // A call that could not even be sent says why, rather than only that time ran out.
            Err(_) => Err(match self.core.disconnected() {
                Some(reason) => RpcError::Transport(TransportError::Connection(format!(
                    "not connected to the broker within {:?}: {reason}",
                    self.timeout
                ))),
                None => RpcError::Timeout(self.timeout),
            }),
        }
    }

    /// Sends a request body to `service.method` and returns the raw reply body.
    ///
    /// (Not an `async fn`, and the message made just before it is published: a caller's future
    /// holds this one, so it is kept small.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would copy its arguments"
    )]
    fn request<'a>(
        &'a self,
        service: &'a str,
        method: &'a str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, RpcError>> + Send + 'a {
        async move {
            // The call's timeout runs from here. While the client is connected, no timer is
            // armed for it: the reply listener's sweeper ends it at its deadline.
            let deadline = Instant::now()
                .checked_add(self.timeout)
                .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
            let (transport, reply_to) = match self.core.link_now() {
                Some(link) => link?,
                // Boxed: rare, and its timer must not enlarge every call's future.
                None => Box::pin(self.link_by(deadline)).await?,
            };
            let correlation_id = uuid::Uuid::new_v4();
            let (tx, mut rx) = oneshot::channel();
            let pending = &*self.core.listener.pending;
            pending.insert(correlation_id.as_u128(), tx, deadline, self.timeout);
            let mut guard = PendingGuard {
                pending,
                correlation_id: correlation_id.as_u128(),
                armed: true,
            };
            // The listener marks the client closed before it fails the pending calls: a call
            // that got in after that would wait for nothing.
            if let Some(reason) = self.core.closed() {
                return Err(RpcError::Transport(TransportError::Connection(reason)));
            }
            let message = OutgoingMessage {
                exchange: self.core.exchange.clone(),
                routing_key: protocol::rpc_routing_key(service, method),
                mandatory: true,
                properties: Properties {
                    // Copied as they are, not through `Display`.
                    correlation_id: Some(String::from(
                        correlation_id
                            .hyphenated()
                            .encode_lower(&mut uuid::Uuid::encode_buffer()),
                    )),
                    reply_to: Some(String::from(&*reply_to)),
                    headers: self.headers(),
                    priority: Some(self.priority),
                    expiration: self.expiration,
                    ..Properties::nameko_json()
                },
                body,
            };
            // The call's outcome may come while the publish is still being confirmed: its
            // timeout (a broker that blocks publishers), or even its reply.
            let mut publishing = transport.publish(message);
            let first = std::future::poll_fn(|cx| {
                if let Poll::Ready(published) = Pin::new(&mut publishing).poll(cx) {
                    return Poll::Ready(Ok(published));
                }
                Pin::new(&mut rx).poll(cx).map(Err)
            })
            .await;
            let outcome = match first {
                Ok(Ok(())) => (&mut rx).await,
                Ok(Err(TransportError::Unroutable { .. })) => {
                    return Err(RpcError::UnknownService(service.to_owned()));
                }
                Ok(Err(other)) => return Err(RpcError::Transport(other)),
                Err(outcome) => outcome,
            };
            // Whoever sent the outcome took the entry out.
            guard.armed = false;
            outcome
                .map_err(|_| {
                    RpcError::Transport(TransportError::Connection("reply listener stopped".into()))
                })?
                .map_err(|error| *error)
        }
    }
}

/// A deadline for a timeout too long for the clock: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Calls the methods of one service by name, with any serialisable arguments.
#[derive(Clone, Debug)]
pub struct ServiceProxy {
    client: ClusterRpcClient,
    service: Arc<str>,
}

impl ServiceProxy {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.service
    }

    /// A proxy whose calls time out after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> ServiceProxy {
        ServiceProxy {
            client: self.client.with_timeout(timeout),
            service: self.service.clone(),
        }
    }

    /// A proxy whose requests have this priority ([`ClusterRpcClient::with_priority`]).
    pub fn with_priority(&self, priority: u8) -> ServiceProxy {
        ServiceProxy {
            client: self.client.with_priority(priority),
            service: self.service.clone(),
        }
    }

    /// A proxy whose requests expire if still queued after `expiration`
    /// ([`ClusterRpcClient::with_expiration`]).
    pub fn with_expiration(&self, expiration: Duration) -> ServiceProxy {
        ServiceProxy {
            client: self.client.with_expiration(expiration),
            service: self.service.clone(),
        }
    }

    /// Calls `method` with positional arguments (anything that serialises to a JSON array: a
    /// tuple, an array, a `Vec`, `json!([...])`; `()` for none) and reads the result as an `R`.
    pub fn call<'a, A, R>(
        &'a self,
        method: &'a str,
        args: A,
    ) -> impl Future<Output = Result<R, RpcError>> + Send + use<'a, A, R>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        self.call_with(method, args, ())
    }

    /// Calls `method` with positional and keyword arguments (`kwargs` serialises to a JSON
    /// object: a map, a struct, `json!({...})`; `()` for none).
    pub fn call_with<'a, A, K, R>(
        &'a self,
        method: &'a str,
        args: A,
        kwargs: K,
    ) -> impl Future<Output = Result<R, RpcError>> + Send + use<'a, A, K, R>
    where
        A: Serialize,
        K: Serialize,
        R: DeserializeOwned,
    {
        self.call_decoded_with(method, args, kwargs, decode_reply::<R>)
    }

    /// Calls `method` and reads the reply with `decode` (the generated clients' path).
    pub(crate) fn call_decoded<'a, A, R>(
        &'a self,
        method: &'a str,
        args: A,
        decode: fn(&[u8]) -> Result<R, RpcError>,
    ) -> impl Future<Output = Result<R, RpcError>> + Send + use<'a, A, R>
    where
        A: Serialize,
    {
        self.call_decoded_with(method, args, (), decode)
    }

    fn call_decoded_with<'a, A, K, R>(
        &'a self,
        method: &'a str,
        args: A,
        kwargs: K,
        decode: fn(&[u8]) -> Result<R, RpcError>,
    ) -> impl Future<Output = Result<R, RpcError>> + Send + use<'a, A, K, R>
    where
        A: Serialize,
        K: Serialize,
    {
        // Serialised now: the arguments are not part of the future, nor is an error.
        let call = match protocol::encode_request(&args, &kwargs) {
            Ok(body) => Either::Left(async move {
                let reply = self.client.request(&self.service, method, body).await?;
                decode(&reply)
            }),
            Err(e) => {
                let error = RpcError::Serialization(format!("arguments: {e}"));
                Either::Right(async move { Err(error) })
            }
        };
        // A `map`, not an `async` block: that would hold the call's state twice.
        crate::trace::rpc_call(&self.service, method, call).map(move |result| {
            crate::metrics::rpc_call(&self.service, method, outcome(&result));
            result
        })
    }
}

/// A call's outcome, as `nameko_rpc_client_calls_total` counts it.
fn outcome<R>(result: &Result<R, RpcError>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(
            RpcError::Remote(_)
            | RpcError::MethodNotFound(_)
            | RpcError::IncorrectSignature(_)
            | RpcError::MalformedRequest(_),
        ) => CallOutcome::RemoteError,
        Err(RpcError::Timeout(_)) => CallOutcome::Timeout,
        Err(RpcError::UnknownService(_)) => CallOutcome::UnknownService,
        Err(RpcError::ReplyLost(_)) => CallOutcome::ReplyLost,
        Err(_) => CallOutcome::Failed,
    }
}

/// Reads a reply body as a result of type `R`, or the error it carries: in one pass, straight
/// into `R`; a reply that does not read so is read again in two steps, for the precise error.
pub(crate) fn decode_reply<R: DeserializeOwned>(reply: &[u8]) -> Result<R, RpcError> {
    #[derive(Deserialize)]
    struct Reply<R> {
        result: Option<R>,
        #[serde(default)]
        error: Option<RemoteError>,
    }
    match serde_json::from_slice::<Reply<R>>(reply) {
        Ok(Reply {
            error: Some(error), ..
        }) => Err(RpcError::from_remote(error)),
        Ok(Reply {
            result: Some(result),
            ..
        }) => Ok(result),
        // `null` (or no result at all): what `R` makes of `null` (`()`, `None`) or an error.
        Ok(Reply { result: None, .. }) => serde_json::from_str("null")
            .map_err(|e| RpcError::Serialization(format!("result: {e}"))),
        Err(_) => decode_reply_in_two_steps(reply),
    }
}

/// The reply read raw first, then its result: tells a reply that is not Nameko's from a
/// result that does not fit `R`.
fn decode_reply_in_two_steps<R: DeserializeOwned>(reply: &[u8]) -> Result<R, RpcError> {
    let body = ReplyBody::parse(reply)
        .map_err(|e| RpcError::Serialization(format!("reply is not a Nameko reply: {e}")))?;
    if let Some(error) = body.error {
        return Err(RpcError::from_remote(error));
    }
    let text = body.result.as_ref().map_or("null", |r| r.get());
    serde_json::from_str(text).map_err(|e| RpcError::Serialization(format!("result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_into_results_and_errors() {
        let ok: String = decode_reply(br#"{"result": "Hello Tim!", "error": null}"#).unwrap();
        assert_eq!(ok, "Hello Tim!");
        let unit: () = decode_reply(br#"{"result": null, "error": null}"#).unwrap();
        assert_eq!(unit, ());
        let err = decode_reply::<String>(
            br#"{"result": null, "error": {"exc_type": "ValueError", "exc_path": "builtins.ValueError", "exc_args": ["boom"], "value": "boom"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.remote().map(|e| e.exc_type.as_str()),
            Some("ValueError")
        );
        let wrong = decode_reply::<u32>(br#"{"result": "x", "error": null}"#).unwrap_err();
        assert!(
            matches!(&wrong, RpcError::Serialization(m) if m.starts_with("result: invalid type")),
            "{wrong:?}"
        );
        let not_nameko = decode_reply::<u32>(b"not json").unwrap_err();
        assert!(
            matches!(&not_nameko, RpcError::Serialization(m) if m.starts_with("reply is not a Nameko reply")),
            "{not_nameko:?}"
        );
        // An error wins over a result, whether or not the result fits.
        let both = br#"{"result": "x", "error": {"exc_type": "E", "exc_path": "m.E", "exc_args": [], "value": ""}}"#;
        assert_eq!(
            decode_reply::<u32>(both)
                .unwrap_err()
                .remote()
                .map(|e| e.exc_type.as_str()),
            Some("E")
        );
        assert_eq!(
            decode_reply::<String>(both)
                .unwrap_err()
                .remote()
                .map(|e| e.exc_type.as_str()),
            Some("E")
        );
        // No result at all reads as `null`.
        assert_eq!(
            decode_reply::<Option<u32>>(br#"{"error": null}"#).unwrap(),
            None
        );
    }
}
