//! Running several services in one process, on one broker connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use tokio_util::sync::CancellationToken;

use super::container::{Hook, ServiceContainer, ServiceOptions};
use super::{Service, ServiceRegistration, WorkerResult};
use crate::config::Config;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::http::{self, Route};
use crate::testing::{EntrypointHook, EntrypointWaiter, FinishedWorker};
use crate::transport::SharedTransport;
use std::collections::HashMap;
use tokio::sync::broadcast;

/// What every container of a runner shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) transport: SharedTransport,
    pub(crate) stop: CancellationToken,
    pub(crate) kill: CancellationToken,
    /// The HTTP routes of every service, collected as they start.
    pub(crate) http_routes: Arc<Mutex<Vec<Route>>>,
    /// Every non-HTTP entrypoint's hook, by service and entrypoint.
    pub(crate) hooks: Arc<Mutex<HashMap<(&'static str, &'static str), Hook>>>,
    /// Where finished workers are announced to entrypoint waiters.
    pub(crate) finished: broadcast::Sender<FinishedWorker>,
    /// How many entrypoint waiters listen (the sender's own count takes a lock).
    pub(crate) waiters: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    /// Announces a finished worker, if an entrypoint waiter listens.
    pub(crate) fn worker_finished(
        &self,
        context: &Arc<WorkerContext>,
        payload: Option<&[u8]>,
        result: &WorkerResult<'_>,
    ) {
        if self.waiters.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let result = match result {
            WorkerResult::Value(json) => {
                Ok(serde_json::from_slice(json).unwrap_or(serde_json::Value::Null))
            }
            WorkerResult::Done => Ok(serde_json::Value::Null),
            WorkerResult::Failed(error) => Err(error.clone().into_owned()),
        };
        let payload = payload.and_then(|json| serde_json::from_slice(json).ok());
        let _ = self
            .finished
            .send(FinishedWorker::new(context.clone(), payload, result));
    }
}

/// The process's HTTP server, when a service has HTTP entrypoints.
struct HttpServer {
    address: SocketAddr,
    router: axum::Router,
    task: JoinHandle<std::io::Result<()>>,
}

/// Collects services and starts them together (Nameko's `ServiceRunner`).
///
/// ```
/// use nameko::prelude::*;
///
/// #[derive(Dependencies)]
/// pub struct Echo;
///
/// #[service(name = "echo")]
/// impl Echo {
///     #[rpc]
///     async fn echo(&self, value: serde_json::Value) -> serde_json::Value {
///         value
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let running = ServiceRunner::new(Config::default().with_broker("memory://doc-runner"))
///     .with_service::<Echo>()
///     .start()
///     .await?;
/// let client = ClusterRpcClient::standalone(running.transport(), running.config()).await?;
/// let echoed: String = client.service("echo").call("echo", ["hi"]).await?;
/// assert_eq!(echoed, "hi");
/// running.stop().await?;
/// # Ok(()) }
/// ```
pub struct ServiceRunner {
    config: Config,
    transport: Option<SharedTransport>,
    services: Vec<ServiceRegistration>,
    options: HashMap<&'static str, ServiceOptions>,
}

impl ServiceRunner {
    /// A runner with this configuration and no services yet.
    pub fn new(config: Config) -> Self {
        ServiceRunner {
            config,
            transport: None,
            services: Vec::new(),
            options: HashMap::new(),
        }
    }

    pub(crate) fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Uses this transport instead of connecting to the configured broker.
    pub fn with_transport(mut self, transport: SharedTransport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Adds service `S` (explicit registration).
    pub fn with_service<S: Service>(mut self) -> Self {
        self.services.push(ServiceRegistration::of::<S>());
        self
    }

    /// Adds a registered service.
    pub fn with_registration(mut self, registration: ServiceRegistration) -> Self {
        self.services.push(registration);
        self
    }

    /// Adds every service registered with `#[service]` in this binary.
    pub fn with_all_registered(mut self) -> Self {
        self.services.extend(ServiceRegistration::all());
        self
    }

    /// Adds the registered services with these names; an unknown name is an error.
    pub fn with_registered(mut self, names: &[impl AsRef<str>]) -> Result<Self, Error> {
        let all = ServiceRegistration::all();
        for name in names {
            let name = name.as_ref();
            let found =
                all.iter()
                    .find(|r| r.name() == name)
                    .ok_or_else(|| Error::NoSuchService {
                        name: name.to_owned(),
                        registered: all.iter().map(|r| r.name()).collect::<Vec<_>>().join(", "),
                    })?;
            self.services.push(*found);
        }
        Ok(self)
    }

    /// Gives service `S`'s field `field` this value instead of building it (Nameko's
    /// `replace_dependencies`, for tests): a test double, or a value the test keeps a handle
    /// to. Starting fails if `S` has no such field or the value is not of the field's type.
    pub fn replace_dependency<S: Service, T: Send + 'static>(
        mut self,
        field: &str,
        value: T,
    ) -> Self {
        self.options
            .entry(S::NAME)
            .or_default()
            .replacements
            .push((field.to_owned(), Box::new(value)));
        self
    }

    /// Lets only these entrypoints of service `S` fire (Nameko's `restrict_entrypoints`, for
    /// tests); the others stay reachable through [`RunningServices::entrypoint_hook`].
    /// Starting fails if a name is not an entrypoint of `S`.
    pub fn restrict_entrypoints<S: Service>(mut self, entrypoints: &[&str]) -> Self {
        self.options.entry(S::NAME).or_default().restrict =
            Some(entrypoints.iter().map(|e| (*e).to_owned()).collect());
        self
    }

    /// The services added so far.
    pub fn services(&self) -> &[ServiceRegistration] {
        &self.services
    }

    /// Connects (unless a transport was given) and starts every service. Duplicate names are
    /// refused; if one service fails to start, those already started are stopped.
    pub async fn start(mut self) -> Result<RunningServices, Error> {
        let mut seen = HashSet::new();
        for service in &self.services {
            if !seen.insert(service.name()) {
                return Err(Error::DuplicateService(service.name().to_owned()));
            }
        }
        let transport = match self.transport {
            Some(t) => t,
            None => self.config.connect().await?,
        };
        let stop = CancellationToken::new();
        // A lost connection stops every service, whatever its entrypoints (one with only HTTP
        // routes or timers consumes nothing that would notice), so that `wait` ends with
        // `Error::ConnectionLost` and `run` starts them again on a new connection.
        tokio::spawn({
            let (transport, stop) = (transport.clone(), stop.clone());
            async move {
                tokio::select! {
                    reason = transport.lost() => {
                        tracing::error!(%reason, broker = %transport.describe(), "lost the broker connection; stopping the services");
                        stop.cancel();
                    }
                    _ = stop.cancelled() => {}
                }
            }
        });
        let shared = Shared {
            config: self.config,
            transport,
            stop,
            kill: CancellationToken::new(),
            http_routes: Arc::default(),
            hooks: Arc::default(),
            finished: broadcast::channel(1024).0,
            waiters: Arc::default(),
        };
        let mut containers = Vec::new();
        let mut started = Ok(());
        if let Some(name) = self
            .options
            .keys()
            .find(|name| !self.services.iter().any(|s| s.name() == **name))
        {
            started = Err(Error::Config(format!(
                "dependencies or entrypoints of `{name}` were given, but it is not one of the services to run"
            )));
        }
        for service in &self.services {
            if started.is_err() {
                break;
            }
            let options = self.options.remove(service.name()).unwrap_or_default();
            match service.start(shared.clone(), options).await {
                Ok(container) => containers.push(container),
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        let http = match started {
            Ok(()) => serve_http(&shared).await,
            Err(e) => Err(e),
        };
        match http {
            Ok(http) => Ok(RunningServices {
                shared,
                containers,
                http,
            }),
            Err(e) => {
                shared.stop.cancel();
                for c in containers {
                    let _ = c.task.await;
                }
                Err(e)
            }
        }
    }
}

/// Binds `WEB_SERVER_ADDRESS` and serves the collected routes, if there are any, until the
/// runner stops (in-flight requests finish; a kill aborts them).
async fn serve_http(shared: &Shared) -> Result<Option<HttpServer>, Error> {
    let routes = std::mem::take(&mut *shared.http_routes.lock().unwrap_or_else(|p| p.into_inner()));
    if routes.is_empty() {
        return Ok(None);
    }
    let dispatch = http::router(routes, &shared.config)?;
    let address = http::parse_address(&shared.config.web_server_address)?;
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        Error::Config(format!(
            "cannot listen on {address} (WEB_SERVER_ADDRESS): {e}"
        ))
    })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let serve = http::serve(
        listener,
        dispatch.clone(),
        http::Limits::of(&shared.config),
        shared.stop.clone(),
    );
    let task = tokio::spawn(serve);
    tracing::info!(%address, "HTTP server listening");
    Ok(Some(HttpServer {
        address,
        router: dispatch.into_router(),
        task,
    }))
}

/// Stops the services of a runner from anywhere (clone it freely).
#[derive(Clone, Debug)]
pub struct StopHandle {
    stop: CancellationToken,
    kill: CancellationToken,
}

impl StopHandle {
    /// Graceful stop: no new work; running workers finish and reply.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Immediate stop: running workers are abandoned, their requests redelivered.
    pub fn kill(&self) {
        self.stop.cancel();
        self.kill.cancel();
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Services started by a [`ServiceRunner`].
pub struct RunningServices {
    shared: Shared,
    containers: Vec<ServiceContainer>,
    http: Option<HttpServer>,
}

impl RunningServices {
    /// A handle that stops these services.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.shared.stop.clone(),
            kill: self.shared.kill.clone(),
        }
    }

    /// The broker the services use (to make a client in the same process).
    pub fn transport(&self) -> SharedTransport {
        self.shared.transport.clone()
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The address the HTTP server listens on, if a service has HTTP entrypoints.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.address)
    }

    /// The HTTP router, to send requests without a socket (e.g. with `tower::ServiceExt::oneshot`).
    pub fn http_router(&self) -> Option<axum::Router> {
        self.http.as_ref().map(|h| h.router.clone())
    }

    /// A hook firing `service`'s entrypoint `entrypoint` directly, as if its message had come
    /// (Nameko's `entrypoint_hook`): RPC methods, event handlers, timers and `#[once]`/`#[dummy]`
    /// methods, whether or not they were restricted out. HTTP endpoints have none: send them
    /// requests ([`http_router`](Self::http_router)).
    pub fn entrypoint_hook(
        &self,
        service: &str,
        entrypoint: &str,
    ) -> Result<EntrypointHook, Error> {
        let hooks = self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let found = hooks
            .iter()
            .find(|((s, e), _)| *s == service && *e == entrypoint);
        match found {
            Some((_, hook)) => Ok(EntrypointHook::new(service, entrypoint, hook.clone())),
            None => Err(Error::Config(format!(
                "no entrypoint `{entrypoint}` to hook on a running service `{service}` (HTTP entrypoints cannot be hooked)"
            ))),
        }
    }

    /// A waiter for the next worker of `service`'s `entrypoint` to finish, whatever fired it
    /// (Nameko's `entrypoint_waiter`). It listens from now on: create it before doing what
    /// fires the entrypoint, then [`wait`](EntrypointWaiter::wait).
    ///
    /// Waiting on an entrypoint these services do not have fails at once
    /// ([`WaitError::NoSuchEntrypoint`](crate::testing::WaitError::NoSuchEntrypoint)).
    pub fn entrypoint_waiter(&self, service: &str, entrypoint: &str) -> EntrypointWaiter {
        let known = self
            .containers
            .iter()
            .any(|c| c.name == service && c.entrypoints.contains(&entrypoint));
        EntrypointWaiter::new(
            service,
            entrypoint,
            known,
            self.shared.finished.subscribe(),
            self.shared.waiters.clone(),
        )
    }

    /// The names of the running services.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.containers.iter().map(|c| c.name).collect()
    }

    /// Stops gracefully and waits until every service has stopped.
    pub async fn stop(self) -> Result<(), Error> {
        self.shared.stop.cancel();
        self.wait().await
    }

    /// Stops at once: running workers are abandoned (their requests are redelivered).
    pub async fn kill(self) {
        self.stop_handle().kill();
        let _ = self.wait().await;
    }

    /// Waits until the services stop (through a [`StopHandle`]) or one of them fails, in which
    /// case the others are stopped too and the failure returned.
    pub async fn wait(self) -> Result<(), Error> {
        let RunningServices {
            shared,
            containers,
            http,
        } = self;
        let mut tasks: futures_util::stream::FuturesUnordered<_> =
            containers.into_iter().map(|c| c.task).collect();
        let mut first_error = None;
        while let Some(result) = futures_util::StreamExt::next(&mut tasks).await {
            let result = result.unwrap_or_else(|e| {
                Err(Error::ServiceFailed {
                    service: "?".into(),
                    reason: e.to_string(),
                })
            });
            if let Err(e) = result {
                shared.stop.cancel();
                first_error.get_or_insert(e);
            }
        }
        if let Some(http) = http {
            let kill = shared.kill.clone();
            let mut task = http.task;
            tokio::select! {
                result = &mut task => {
                    if let Ok(Err(e)) = result {
                        first_error.get_or_insert(Error::ServiceFailed { service: "HTTP server".into(), reason: e.to_string() });
                    }
                }
                _ = kill.cancelled() => task.abort(),
            }
        }
        if shared.transport.connection_lost() {
            let reason = first_error
                .as_ref()
                .map_or_else(|| "the broker closed it".to_owned(), ToString::to_string);
            first_error = Some(Error::ConnectionLost(reason));
        }
        // Ends the connection's watcher.
        shared.stop.cancel();
        // The hooks hold the services (and `Shared`): let them go.
        shared
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        shared.transport.close().await;
        first_error.map_or(Ok(()), Err)
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully; a second signal kills.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        self.run_until(Signals::install()).await
    }

    /// Runs until one of `signals` arrives, then stops gracefully; a second one kills.
    pub(crate) async fn run_until(self, mut signals: Signals) -> Result<(), Error> {
        let handle = self.stop_handle();
        let listener = tokio::spawn(async move {
            signals.recv().await;
            tracing::info!("stopping services (send the signal again to kill them)");
            handle.stop();
            signals.recv().await;
            tracing::warn!("killing services");
            handle.kill();
        });
        let result = self.wait().await;
        listener.abort();
        result
    }
}

/// SIGINT and SIGTERM, listened to from the moment this is made (so a signal that arrives while
/// services are starting is not lost, and does not end the process abruptly).
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub(crate) fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGINT/SIGTERM");
                    None
                }
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.streams {
            Some((interrupt, terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
