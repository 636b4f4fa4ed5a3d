//! Services: what `#[service]` implements ([`Service`], [`Dependencies`]), dependencies
//! ([`Dependency`]), and entrypoints ([`Entrypoint`], the extension API every entrypoint kind
//! is written on).
//!
//! Everything a running service does lives here too: `container` (one service's start and
//! stop), `worker` (the one path of every worker), `consume` (consuming a queue for an
//! entrypoint), `hooks` (entrypoint hooks and waiters).

use tokio::sync::OnceCell;

use crate::config::Config;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::protocol::RemoteError;
use crate::rpc::client::ClusterRpcClient;
use crate::transport::SharedTransport;

pub mod arguments;
mod consume;
pub(crate) mod container;
pub mod entrypoint;
mod extension;
pub(crate) mod hooks;
pub(crate) mod io;
pub(crate) mod redelivery;
pub(crate) mod worker;

pub use consume::{DeliveryHandler, QueueDeclaration};
pub use entrypoint::{
    BoundEntrypoint, Entrypoint, EntrypointContext, Handler, MethodInfo, Started,
};
pub use extension::{ServiceContext, SharedExtension, WorkerSlot};
pub use io::{WorkerInput, WorkerOutput};

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

    /// The service's entrypoints, each bound to its method.
    fn entrypoints() -> Vec<BoundEntrypoint<Self>>;
}

/// How a service struct is built from its fields, and the lifecycle of those fields.
///
/// Derive it with `#[derive(Dependencies)]`: each field is built by its type's [`Dependency`]
/// implementation when the service starts, and each lifecycle hook calls the fields' hooks in
/// declaration order (teardown-like hooks too, so each runs for every field).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not declare its dependencies",
    label = "add `#[derive(Dependencies)]` to this struct",
    note = "a service struct's fields are its dependencies; `#[derive(nameko::Dependencies)]` builds them (a unit struct has none)"
)]
pub trait Dependencies: Sized + Send + Sync + 'static {
    /// Builds the service's dependencies (Nameko's `setup`).
    fn build(cx: &DependencyContext) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Starts every dependency, before any entrypoint fires.
    fn start(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Stops every dependency, once the service's workers have finished.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Kills every dependency: the service is going away at once.
    fn kill(&self) {}

    /// Runs each dependency's [`Dependency::worker_setup`] before a worker; stops at the first
    /// error, which fails the worker.
    fn worker_setup(
        &self,
        worker: &WorkerContext,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = worker;
        async { Ok(()) }
    }

    /// Shows each dependency the worker's result; the first refusal (error) is returned, after
    /// every dependency has seen the result.
    fn worker_result(
        &self,
        worker: &WorkerContext,
        result: &WorkerResult<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (worker, result);
        async { Ok(()) }
    }

    /// Runs each dependency's [`Dependency::worker_teardown`] after a worker.
    fn worker_teardown(&self, worker: &WorkerContext) -> impl Future<Output = ()> + Send {
        let _ = worker;
        async {}
    }
}

/// A dependency provider: a type that can be a field of a service struct.
///
/// It follows Nameko's `DependencyProvider` lifecycle. For the service: [`build`](Self::build)
/// (Nameko's `setup`) when the service starts, [`start`](Self::start) before the first
/// entrypoint fires, [`stop`](Self::stop) once the last worker has finished, [`kill`](Self::kill)
/// when the service is killed. For each worker (one firing of one entrypoint):
/// [`worker_setup`](Self::worker_setup) before the method runs, [`worker_result`](Self::worker_result)
/// with its result or error, [`worker_teardown`](Self::worker_teardown) at the end. Every hook
/// but `build` has a default that does nothing.
///
/// What a worker sees of the dependency is the field itself, shared by all workers, plus
/// whatever the dependency keeps for that worker: `worker_setup` can store a value in the
/// worker's context ([`WorkerContext::insert_local`]) and the field's methods fetch it for the
/// current worker ([`WorkerContext::current`], [`WorkerContext::local`]), like the transaction
/// of a database dependency.
///
/// The order per worker is: `worker_setup`, the method, `worker_result`, `worker_teardown`,
/// then the entrypoint answers (RPC reply and acknowledgement, HTTP response, event
/// acknowledgement). So a dependency that commits in `worker_result` has committed before the
/// caller hears of success.
///
/// Built in, on this same trait: [`ClusterRpcClient`] (any service, by name), the typed client
/// `#[service]` generates for each service, [`EventDispatcher`](crate::events::EventDispatcher)
/// and [`Config`].
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use nameko::{Dependency, DependencyContext, Error, WorkerContext};
/// use nameko::service::WorkerResult;
///
/// /// Counts the workers of its service that failed.
/// #[derive(Default)]
/// pub struct FailureCounter(AtomicU64);
///
/// impl FailureCounter {
///     pub fn failures(&self) -> u64 {
///         self.0.load(Ordering::Relaxed)
///     }
/// }
///
/// impl Dependency for FailureCounter {
///     async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
///         Ok(FailureCounter::default())
///     }
///
///     async fn worker_result(&self, _worker: &WorkerContext, result: &WorkerResult<'_>) -> Result<(), Error> {
///         if result.error().is_some() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a dependency of a service",
    label = "this field's type does not implement `nameko::Dependency`",
    note = "fields of a service struct are built when the service starts: use a client, `Config`, or implement `Dependency`"
)]
pub trait Dependency: Sized + Send + Sync + 'static {
    /// Builds the dependency for the field `field` of the service in `cx` (Nameko's `setup`).
    fn build(
        cx: &DependencyContext,
        field: &'static str,
    ) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Starts the dependency (opens connections, spawns tasks) before any entrypoint fires; an
    /// error fails the service's start.
    fn start(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Stops the dependency gracefully, once the service's workers have finished.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Releases what the dependency holds at once: the service is being killed.
    fn kill(&self) {}

    /// Prepares for one worker, before its method runs; an error fails the worker (its caller
    /// gets the error, as from the method) and the method does not run.
    fn worker_setup(
        &self,
        worker: &WorkerContext,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = worker;
        async { Ok(()) }
    }

    /// Sees the worker's result or error (including a panic), before the entrypoint answers.
    ///
    /// An error refuses a success: the worker fails with a `DependencyError` carrying it, and
    /// that is what the caller hears (e.g. a transaction that could not be committed). For a
    /// worker that failed already, an error is only logged.
    fn worker_result(
        &self,
        worker: &WorkerContext,
        result: &WorkerResult<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (worker, result);
        async { Ok(()) }
    }

    /// Cleans up after one worker; runs whatever happened to it.
    fn worker_teardown(&self, worker: &WorkerContext) -> impl Future<Output = ()> + Send {
        let _ = worker;
        async {}
    }
}

/// What a worker came to: what [`Dependency::worker_result`] sees.
#[derive(Debug, Clone)]
pub enum WorkerResult<'a> {
    /// An RPC method (or a hooked entrypoint) returned this value, as JSON.
    Value(&'a [u8]),
    /// The method finished without a value (an event handler, a timer, an HTTP endpoint).
    Done,
    /// The method failed, panicked, or a dependency's `worker_setup` refused the worker.
    Failed(std::borrow::Cow<'a, RemoteError>),
}

impl WorkerResult<'_> {
    /// Whether the method succeeded.
    pub fn is_ok(&self) -> bool {
        !matches!(self, WorkerResult::Failed(_))
    }

    /// The error, if the method failed.
    pub fn error(&self) -> Option<&RemoteError> {
        match self {
            WorkerResult::Failed(error) => Some(error),
            _ => None,
        }
    }

    /// The method's result as JSON, if it returned one.
    pub fn json(&self) -> Option<&[u8]> {
        match self {
            WorkerResult::Value(json) => Some(json),
            _ => None,
        }
    }
}

/// What a dependency can use while it is built: the service, its configuration, its broker.
pub struct DependencyContext {
    service_name: &'static str,
    config: Config,
    transport: SharedTransport,
    rpc_client: OnceCell<ClusterRpcClient>,
    replacements: std::sync::Mutex<Replacements>,
    extensions: container::ProcessExtensions,
}

/// Values given for fields in place of building them (tests' `replace_dependency`).
pub(crate) type Replacements = Vec<(String, Box<dyn std::any::Any + Send>)>;

impl DependencyContext {
    pub(crate) fn new(
        service_name: &'static str,
        config: Config,
        transport: SharedTransport,
        replacements: Replacements,
        extensions: container::ProcessExtensions,
    ) -> Self {
        DependencyContext {
            service_name,
            config,
            transport,
            rpc_client: OnceCell::new(),
            replacements: std::sync::Mutex::new(replacements),
            extensions,
        }
    }

    /// The value of type `T` the services of this process share (as
    /// [`ServiceContext::process_extension`] gives entrypoints), made by `make` if there is none
    /// yet: how a dependency reaches what an entrypoint runs (the websocket hub, for one).
    pub fn process_extension<T: Send + Sync + 'static>(
        &self,
        make: impl FnOnce() -> T,
    ) -> std::sync::Arc<T> {
        self.extensions.get_or_make(make)
    }

    /// The value given for `field` in place of building it, if any.
    pub(crate) fn take_replacement(&self, field: &str) -> Option<Box<dyn std::any::Any + Send>> {
        let mut replacements = self.replacements.lock().unwrap_or_else(|p| p.into_inner());
        let index = replacements.iter().position(|(name, _)| name == field)?;
        Some(replacements.swap_remove(index).1)
    }

    /// Fails if a replacement was given for a field the service does not have (a misspelt
    /// name): every field has been built by now.
    pub(crate) fn check_replacements_taken(&self) -> Result<(), Error> {
        let replacements = self.replacements.lock().unwrap_or_else(|p| p.into_inner());
        if replacements.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = replacements.iter().map(|(name, _)| name.as_str()).collect();
        Err(Error::NoSuchDependency {
            service: self.service_name.to_owned(),
            names: names.join(", "),
        })
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
