//! Services: what `#[service]` implements, how services register, and their dependencies.
//!
//! The macros emit implementations of [`Service`] and [`Dependencies`] and an
//! `inventory::submit!` of a [`ServiceRegistration`]; everything they do at run time lives in
//! [`container`] (one running service) and [`runner`] (several, sharing one broker connection).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::error::Error;
use crate::events::{EventError, HandlerType};
use crate::http::{HttpCall, HttpFuture, Segment};
use crate::protocol::{RemoteError, RequestBody};
use crate::rpc::ClusterRpcClient;
use crate::transport::SharedTransport;

pub mod container;
pub mod runner;

/// A service: a name, entrypoints, and a struct of dependencies.
///
/// Implemented by `#[service(name = "...")]` on the service's `impl` block.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service",
    label = "not a service",
    note = "annotate an `impl {Self}` block with `#[service(name = \"...\")]`"
)]
pub trait Service: Dependencies + Send + Sync + Sized + 'static {
    /// The service's name on the wire (`rpc-<name>`, `<name>.<method>`).
    const NAME: &'static str;

    /// The service's entrypoints.
    fn entrypoints() -> Vec<Entrypoint<Self>>;
}

/// The future an RPC handler returns: the result as JSON, or the error object to reply with.
pub type RpcFuture = BoxFuture<'static, Result<Vec<u8>, RemoteError>>;

/// One entrypoint of a service.
#[non_exhaustive]
pub enum Entrypoint<S> {
    /// An `#[rpc]` method.
    Rpc(RpcEntrypoint<S>),
    /// An `#[event_handler]` method.
    Event(EventEntrypoint<S>),
    /// An `#[http]` method (one per route attribute).
    Http(HttpEntrypoint<S>),
    /// A `#[timer]` method.
    Timer(TimerEntrypoint<S>),
}

/// The future a timer method returns.
pub type TimerFuture = BoxFuture<'static, Result<(), RemoteError>>;

/// A `#[timer]` method: run every `interval`, one run at a time.
pub struct TimerEntrypoint<S> {
    /// The method's name.
    pub name: &'static str,
    /// Time between the scheduled starts.
    pub interval: std::time::Duration,
    /// Whether the first run is at start rather than one interval later.
    pub eager: bool,
    /// Calls the method.
    pub handler: fn(Arc<S>) -> TimerFuture,
}

/// An `#[http]` route of a method.
pub struct HttpEntrypoint<S> {
    /// The method's name.
    pub name: &'static str,
    /// The HTTP methods it answers (`GET` also answers `HEAD`).
    pub methods: &'static [&'static str],
    /// The route as written (`/multiply/<int:first>/<int:second>`).
    pub route: &'static str,
    /// The route's segments.
    pub segments: &'static [Segment],
    /// Error types (`exc_type`s) answered with 400 rather than 500.
    pub expected_exceptions: &'static [&'static str],
    /// Extracts the parameters, calls the method, makes the response.
    pub handler: fn(Arc<S>, HttpCall) -> HttpFuture,
}

/// The future an event handler returns.
pub type EventFuture = BoxFuture<'static, Result<(), EventError>>;

/// An `#[event_handler]` method: what it listens to and how.
pub struct EventEntrypoint<S> {
    /// The method's name.
    pub name: &'static str,
    /// The service whose events it handles.
    pub source_service: &'static str,
    /// The event type (routing key) it handles.
    pub event_type: &'static str,
    /// Who gets each event.
    pub handler_type: HandlerType,
    /// Whether its queue survives the service being down (`auto_delete` when not).
    pub reliable_delivery: bool,
    /// Whether a failed event goes back to the queue (else it is acknowledged and logged).
    pub requeue_on_error: bool,
    /// Decodes the payload and calls the method.
    pub handler: fn(Arc<S>, Vec<u8>) -> EventFuture,
}

/// An `#[rpc]` method: its name on the wire and the function that binds the arguments, calls
/// the method and encodes its result.
pub struct RpcEntrypoint<S> {
    /// The method's name (the last segment of the routing key).
    pub name: &'static str,
    /// Binds, calls and encodes.
    pub handler: fn(Arc<S>, RequestBody) -> RpcFuture,
}

impl<S> Entrypoint<S> {
    /// An RPC entrypoint.
    pub fn rpc(name: &'static str, handler: fn(Arc<S>, RequestBody) -> RpcFuture) -> Self {
        Entrypoint::Rpc(RpcEntrypoint { name, handler })
    }

    /// The entrypoint's (method's) name.
    pub fn name(&self) -> &'static str {
        match self {
            Entrypoint::Rpc(rpc) => rpc.name,
            Entrypoint::Event(event) => event.name,
            Entrypoint::Http(http) => http.name,
            Entrypoint::Timer(timer) => timer.name,
        }
    }

    /// A one-line description, as `list` prints it.
    pub fn describe(&self) -> String {
        match self {
            Entrypoint::Rpc(rpc) => format!("rpc {}", rpc.name),
            Entrypoint::Event(e) => format!(
                "event {} <- {}.{} ({})",
                e.name, e.source_service, e.event_type, e.handler_type
            ),
            Entrypoint::Http(h) => format!("http {} {} {}", h.name, h.methods.join(","), h.route),
            Entrypoint::Timer(t) => format!(
                "timer {} every {:?}{}",
                t.name,
                t.interval,
                if t.eager { " (eager)" } else { "" }
            ),
        }
    }
}

/// How a service struct is built from its fields.
///
/// Derive it with `#[derive(Dependencies)]`: each field is built by its type's [`Dependency`]
/// implementation when the service starts.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not declare its dependencies",
    label = "add `#[derive(Dependencies)]` to this struct",
    note = "a service struct's fields are its dependencies; `#[derive(nameko::Dependencies)]` builds them (a unit struct has none)"
)]
pub trait Dependencies: Sized + Send + Sync + 'static {
    /// Builds the service's dependencies.
    fn build(cx: &DependencyContext) -> impl Future<Output = Result<Self, Error>> + Send;
}

/// A type that can be a field of a service struct: it knows how to build itself when the
/// service starts.
///
/// Built in: [`ClusterRpcClient`] (any service, by name), the typed client `#[service]`
/// generates for each service, and [`Config`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a dependency of a service",
    label = "this field's type does not implement `nameko::Dependency`",
    note = "fields of a service struct are built when the service starts: use a client, `Config`, or implement `Dependency`"
)]
pub trait Dependency: Sized + Send + Sync + 'static {
    /// Builds the dependency for the field `field` of the service in `cx`.
    fn build(
        cx: &DependencyContext,
        field: &'static str,
    ) -> impl Future<Output = Result<Self, Error>> + Send;
}

/// What a dependency can use while it is built: the service, its configuration, its broker.
pub struct DependencyContext {
    service_name: &'static str,
    config: Config,
    transport: SharedTransport,
    rpc_client: OnceCell<ClusterRpcClient>,
}

impl DependencyContext {
    pub(crate) fn new(
        service_name: &'static str,
        config: Config,
        transport: SharedTransport,
    ) -> Self {
        DependencyContext {
            service_name,
            config,
            transport,
            rpc_client: OnceCell::new(),
        }
    }

    /// The service being built.
    pub fn service_name(&self) -> &'static str {
        self.service_name
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The broker.
    pub fn transport(&self) -> &SharedTransport {
        &self.transport
    }

    /// The service's RPC client; its reply queue (`rpc.reply-<service>-<uuid>`) is created on
    /// first use and shared by every client dependency of the service.
    pub async fn rpc_client(&self) -> Result<ClusterRpcClient, Error> {
        self.rpc_client
            .get_or_try_init(|| {
                ClusterRpcClient::for_service(
                    self.transport.clone(),
                    &self.config,
                    self.service_name,
                )
            })
            .await
            .cloned()
            .map_err(Error::from)
    }
}

impl Dependency for ClusterRpcClient {
    async fn build(cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        cx.rpc_client().await
    }
}

impl Dependency for Config {
    async fn build(cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(cx.config.clone())
    }
}

/// A typed client generated by `#[service]` for calling that service.
pub trait ServiceClient: Sized {
    /// The name of the service it calls.
    const SERVICE_NAME: &'static str;
    /// A typed client sending its calls through `client`.
    fn from_client(client: &ClusterRpcClient) -> Self;
}

/// Starts one service's container.
pub(crate) type StartFn =
    fn(runner::Shared) -> BoxFuture<'static, Result<container::ServiceContainer, Error>>;

/// A service as registered with the runtime: its name and how to start it.
///
/// `#[service]` submits one to [`inventory`]; [`ServiceRegistration::of`] makes one for explicit
/// registration.
#[derive(Clone, Copy)]
pub struct ServiceRegistration {
    name: &'static str,
    start: StartFn,
    entrypoints: fn() -> Vec<String>,
}

impl std::fmt::Debug for ServiceRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRegistration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ServiceRegistration {
    /// The registration of service `S`.
    pub const fn of<S: Service>() -> Self {
        ServiceRegistration {
            name: S::NAME,
            start: container::start::<S>,
            entrypoints: entrypoint_names::<S>,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A description of each of the service's entrypoints.
    pub fn entrypoints(&self) -> Vec<String> {
        (self.entrypoints)()
    }

    pub(crate) fn start(
        &self,
        shared: runner::Shared,
    ) -> BoxFuture<'static, Result<container::ServiceContainer, Error>> {
        (self.start)(shared)
    }

    /// Every service registered with `#[service]` in this binary, sorted by name.
    pub fn all() -> Vec<ServiceRegistration> {
        let mut all: Vec<_> = inventory::iter::<ServiceRegistration>
            .into_iter()
            .copied()
            .collect();
        all.sort_by_key(|r| r.name);
        all
    }
}

fn entrypoint_names<S: Service>() -> Vec<String> {
    S::entrypoints().iter().map(Entrypoint::describe).collect()
}

inventory::collect!(ServiceRegistration);
