//! Websockets, as Nameko's `nameko.web.websocket` has them: `#[ws_rpc]` methods called over a
//! websocket at `/ws` on the HTTP server, and a [`WebSocketHub`] that pushes events to the
//! sockets subscribed to a channel.
//!
//! The protocol is Nameko's, byte for byte (frames are JSON as Python writes it). On connect the
//! server sends `{"type": "event", "event": "connected", "data": {"socket_id": "<uuid>"}}`. A
//! client sends `{"method": "greet", "data": {"name": "Ann"}, "correlation_id": "1"}`; the method
//! is called with the socket's id as its first argument and `data` as keyword arguments, and
//! the answer is `{"type": "result", "success": true, "data": <result>, "correlation_id": "1"}`,
//! or `"success": false` with `"error"`, Nameko's error object (`MethodNotFound`,
//! `IncorrectSignature`, `MalformedRequest`, or the method's own error). One request is handled
//! at a time per socket, in order; hub events come in between.
//!
//! ```
//! use nameko::prelude::*;
//! use nameko::websocket::{HubError, WebSocketHub};
//!
//! #[derive(Dependencies)]
//! struct Chat {
//!     hub: WebSocketHub,
//! }
//!
//! #[service(name = "chat")]
//! impl Chat {
//!     /// Puts the socket on `room`.
//!     #[ws_rpc]
//!     fn join(&self, socket_id: String, room: String) -> Result<(), HubError> {
//!         self.hub.subscribe(&socket_id, &room)
//!     }
//!
//!     /// Tells everyone on `room`.
//!     #[ws_rpc]
//!     fn say(&self, socket_id: String, room: String, text: String) -> Result<usize, HubError> {
//!         let _ = socket_id;
//!         self.hub.broadcast(&room, "said", &serde_json::json!({"text": text}))
//!     }
//! }
//! ```

use std::sync::Arc;

use serde::Serialize;

use crate::context::ContextData;
use crate::error::Error;
use crate::protocol::{RemoteError, RequestBody};
use crate::service::{Dependency, DependencyContext, Entrypoint, EntrypointContext, Started};

pub use server::HubError;
pub(crate) use server::WsServer;

mod json;
mod server;

/// `#[ws_rpc]`: the method is called over the process's websocket at `/ws` (Nameko's
/// `nameko.web.websocket.rpc`), with the socket's id and the request's `data` as keyword
/// arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsRpc;

impl Entrypoint for WsRpc {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        format!("websocket rpc {method}")
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        let server = cx.process_extension(WsServer::default);
        let handler: server::WsHandler = Arc::new({
            let cx = cx.clone();
            move |body: RequestBody, data: ContextData| cx.spawn_worker(body, data)
        });
        let stop = cx.shared().stop.clone();
        server.register(cx.service_name(), cx.method().name(), handler, &stop)?;
        Ok(Started::idle())
    }
}

/// Pushes events to websockets (Nameko's `WebSocketHubProvider`): a field of a service.
///
/// A socket subscribes to channels (usually in a `#[ws_rpc]` method it calls); `broadcast`
/// sends an event to every socket of a channel, `unicast` to one socket. An event frame is
/// `{"type": "event", "event": <event>, "data": <data>}`. A socket's subscriptions go when it
/// closes. Sending never waits: a socket more than 256 frames behind is dropped (and logged),
/// so that a slow or dead one never holds up the others. One hub serves the whole process.
#[derive(Clone)]
pub struct WebSocketHub {
    server: Arc<WsServer>,
}

impl std::fmt::Debug for WebSocketHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketHub").finish_non_exhaustive()
    }
}

impl WebSocketHub {
    /// Subscribes the socket to `channel`; [`HubError::ConnectionNotFound`] if it is not
    /// connected.
    pub fn subscribe(&self, socket_id: &str, channel: &str) -> Result<(), HubError> {
        self.server.subscribe(socket_id, channel)
    }

    /// Unsubscribes the socket from `channel` (nothing happens if it was not subscribed, or is
    /// gone).
    pub fn unsubscribe(&self, socket_id: &str, channel: &str) {
        self.server.unsubscribe(socket_id, channel);
    }

    /// The channels the socket is subscribed to, sorted (none if it is not connected).
    pub fn get_subscriptions(&self, socket_id: &str) -> Vec<String> {
        self.server.subscriptions_of(socket_id)
    }

    /// Sends the event `event` with `data` to every socket subscribed to `channel`; returns how
    /// many it was sent to.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        event: &str,
        data: &T,
    ) -> Result<usize, HubError> {
        let frame = server::event_frame(event, &serde_json::to_string(data)?);
        Ok(self.server.send_to_channel(channel, &frame))
    }

    /// Sends the event `event` with `data` to one socket; `false` if it is not connected (as in
    /// Nameko) or was dropped for falling behind.
    pub fn unicast<T: Serialize + ?Sized>(
        &self,
        socket_id: &str,
        event: &str,
        data: &T,
    ) -> Result<bool, HubError> {
        let frame = server::event_frame(event, &serde_json::to_string(data)?);
        Ok(self.server.send_to(socket_id, &frame))
    }
}

impl Dependency for WebSocketHub {
    async fn build(cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(WebSocketHub {
            server: cx.process_extension(WsServer::default),
        })
    }
}
