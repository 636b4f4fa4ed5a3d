//! Nameko-style microservices in Rust, wire-compatible with Python Nameko 2.x.
//!
//! Annotate an `impl` block with [`#[service]`](macro@service), its methods with [`#[rpc]`](macro@rpc), and
//! derive [`Dependencies`] on the struct whose fields are the service's dependencies:
//!
//! ```
//! use nameko::prelude::*;
//!
//! #[derive(Dependencies)]
//! pub struct GreeterService;
//!
//! #[service(name = "greeter_service")]
//! impl GreeterService {
//!     #[rpc]
//!     async fn greet(&self, name: String) -> String {
//!         format!("Hello {name}!")
//!     }
//! }
//!
//! #[derive(Dependencies)]
//! pub struct ExpandedGreeterService {
//!     // The typed client `#[service]` generated for greeter_service.
//!     greeter_service: GreeterServiceClient,
//! }
//!
//! #[service(name = "expanded_greeter_service")]
//! impl ExpandedGreeterService {
//!     #[rpc]
//!     async fn greet(&self, name: String) -> Result<String, RpcError> {
//!         let greeting = self.greeter_service.greet(name).await?;
//!         Ok(format!("{greeting} Welcome to Pygotham!"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Run both on the embedded broker and call one of them.
//! let running = ServiceRunner::new(Config::default().with_broker("memory://doc-lib"))
//!     .with_service::<GreeterService>()
//!     .with_service::<ExpandedGreeterService>()
//!     .start()
//!     .await?;
//! let client = ClusterRpcClient::standalone(running.transport(), running.config()).await?;
//! let greeting = ExpandedGreeterServiceClient::new(&client).greet("Tim".into()).await?;
//! assert_eq!(greeting, "Hello Tim! Welcome to Pygotham!");
//! running.stop().await?;
//! # Ok(()) }
//! ```
//!
//! A service binary's `main` is one line, [`main()`], which gives it a command line
//! (`run [SERVICE...] [--broker URI]`). See `ARCHITECTURE.md` for how the pieces fit.

#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as nameko;

pub mod cli;
pub mod config;
pub mod context;
pub mod discovery;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod log;
mod management;
pub mod messaging;
pub mod metrics;
pub mod protocol;
pub mod rpc;
pub mod runner;
pub mod service;
pub mod shell;
pub mod testing;
pub mod timer;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod trace;
#[cfg(not(feature = "opentelemetry"))]
mod trace;
pub mod transport;
pub mod websocket;

pub use cli::main;
pub use config::Config;
pub use context::{ContextData, WorkerContext};
pub use error::{Error, RpcError, ToRemoteError};
pub use protocol::RemoteError;
pub use rpc::{ClusterRpcClient, ServiceProxy};
pub use runner::{RunningServices, ServiceRegistration, ServiceRunner, StopHandle};
pub use service::{Dependencies, Dependency, DependencyContext, Service, ServiceClient};

/// Declares a service on an `impl` block: `#[service(name = "greeter_service")]`.
///
/// Keys: `name` (required) is the service's name on the wire; `crate = "path"` names this crate
/// when it is renamed. The block's `#[rpc]` methods become RPC entrypoints, and a typed client
/// `<Type>Client` is generated next to it.
pub use nameko_macros::service;

/// Marks a method of a `#[service]` block as an RPC entrypoint: `#[rpc]`, or
/// `#[rpc(name = "wire_name")]` to expose it under another name.
///
/// Arguments bind by position and by keyword; an `Option<T>` argument may be left out. A method
/// may be `async` or not (a synchronous one runs on the blocking pool). It returns any
/// serialisable value, or a `Result` whose error becomes the error reply (see
/// [`ToRemoteError`]).
pub use nameko_macros::rpc;

/// Marks a method of a `#[service]` block as an event handler:
/// `#[event_handler("source_service", "event_type")]`.
///
/// Keys: `handler_type = "service_pool" | "singleton" | "broadcast"` (default service pool),
/// `reliable_delivery = bool` (default `true`: the queue outlives the service),
/// `requeue_on_error = bool` (default `false`: a failed event is logged and acknowledged). The
/// method takes the payload, decoded from JSON, as its only argument; a payload that does not
/// decode is logged and dropped, never retried.
pub use nameko_macros::event_handler;

/// Marks a method of a `#[service]` block as the consumer of a queue (Nameko's `consume`):
/// `#[consume(queue = orders_queue())]`, where the expression is a [`messaging::Queue`] (with
/// its exchange, routing key and arguments).
///
/// Keys: `requeue_on_error = bool` (default `false`: a failed message is logged and
/// acknowledged). The method takes the message's body, decoded from JSON, as its only argument,
/// and its context data from the message's `nameko.*` headers; a body that does not decode is
/// logged and rejected (dead-lettered where the queue has a dead-letter exchange, else
/// dropped), never retried. See [`messaging`].
pub use nameko_macros::consume;

/// Marks a method of a `#[service]` block as callable over the websocket at `/ws` (Nameko's
/// `nameko.web.websocket.rpc`): `#[ws_rpc]`.
///
/// The method takes the socket's id (a `String`) as its first argument; the request's `data`
/// binds to the others by name, as an RPC call's keyword arguments do. Keys:
/// `expected_exceptions = "A,B"`, `sensitive_arguments = "password,..."`. See [`websocket`]
/// for the protocol and the [`websocket::WebSocketHub`].
pub use nameko_macros::ws_rpc;

/// Marks a method of a `#[service]` block as an HTTP endpoint:
/// `#[http("GET", "/multiply/<int:first>/<int:second>")]`; several attributes may stand on one
/// method.
///
/// The first argument is the method, or several separated by commas (`"GET,POST"`; `GET` also
/// answers `HEAD`); the second is the route in Nameko's (werkzeug's) syntax with converters
/// `<int:x>`, `<float:x>`, `<string:x>` or `<x>`, `<path:x>` (last segment), `<uuid:x>`,
/// `<any(a,b):x>`. Each route parameter binds to the method's parameter of the same name; a
/// value its converter rejects (`abc` for `<int:x>`) is a 404. Other parameters are extractors:
/// [`http::Request`], `Json<T>`, any axum extractor (the last one may read the body).
///
/// The method returns anything implementing axum's `IntoResponse` (a `String` is a 200
/// `text/plain; charset=utf-8`), or a `Result` whose error is answered with its own
/// `IntoResponse` if it has one, else with Nameko's `Error: <exc_type>: <value>` body: 400 when
/// its `exc_type` is listed in `expected_exceptions = "A,B"`, 500 otherwise.
pub use nameko_macros::http;

/// Runs a method of a `#[service]` block on a schedule: `#[timer(interval = 1)]`.
///
/// `interval` is in seconds (`1`, `0.5`) or a duration string (`"500ms"`, `"2s"`, `"1m"`); with
/// `eager = true` the first run is at start. As in Nameko the schedule is anchored to the start,
/// one run at a time: a run that overruns makes the next one start at once, so none is skipped;
/// a failing run is logged and the timer goes on; a stop interrupts the wait. Every instance of the
/// service runs its timers (they are not coordinated across a cluster).
pub use nameko_macros::timer;

/// Runs a method of a `#[service]` block once, when the service starts (Nameko's testing
/// entrypoint `once`): `#[once]`. Like a timer that fires at start and never again; the method
/// takes no arguments. Useful in tests, and for start-up work that needs the service's
/// dependencies.
pub use nameko_macros::once;

/// Marks a method of a `#[service]` block as an entrypoint that never fires by itself
/// (Nameko's testing entrypoint `dummy`): `#[dummy]`. Tests fire it with an
/// [`entrypoint hook`](RunningServices::entrypoint_hook); its arguments bind as an RPC method's.
pub use nameko_macros::dummy;

/// Puts an entrypoint of your own on a method of a `#[service]` block:
/// `#[entrypoint(my_crate::Cron::new("0 */5 * * * *"))]`.
///
/// The argument is any expression whose type implements [`service::Entrypoint`] with
/// [`protocol::RequestBody`] as its input: the entrypoint calls the method with JSON arguments,
/// which bind to its parameters as an RPC call's do (by position or by name; an `Option<T>`
/// may be left out; a mismatch is an `IncorrectSignature` error), and gets its result as
/// JSON. Keys after the expression: `expected_exceptions = "A,B"`, `sensitive_arguments =
/// "password,..."`. See `service::entrypoint` for writing one.
pub use nameko_macros::entrypoint;

/// Builds a service struct from its fields, each a [`Dependency`], and runs their lifecycle
/// hooks.
///
/// In a crate that renames `nameko` or re-exports it, name its path as `#[service(crate =
/// "...")]` does: `#[nameko(crate = "my_framework::nameko")]` on the struct.
pub use nameko_macros::Dependencies;

/// The names a service module needs.
pub mod prelude {
    pub use crate::events::{DispatchError, EventDispatcher, HandlerType};
    pub use crate::http::{Json, Request};
    pub use crate::protocol::RequestBody;
    pub use crate::service::WorkerResult;
    pub use crate::{
        ClusterRpcClient, Config, ContextData, Dependencies, Dependency, DependencyContext, Error,
        RemoteError, RpcError, ServiceProxy, ServiceRunner, ToRemoteError, WorkerContext, consume,
        dummy, entrypoint, event_handler, http, once, rpc, service, timer, ws_rpc,
    };
}

/// Used by the code the macros generate; not a public API.
#[doc(hidden)]
pub mod __private;
