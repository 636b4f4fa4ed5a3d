//! Running several services in one process, on one broker connection: [`ServiceRunner`],
//! [`RunningServices`], [`StopHandle`], and [`ServiceRegistration`] (how `#[service]` makes a
//! service known to the runner).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::health::{Health, Readiness};
use crate::http::{self, HttpRoutes};
use crate::service::container::{self, ServiceContainer, ServiceOptions, Shared};
use crate::service::hooks::{EntrypointHook, EntrypointWaiter};
use crate::service::{BoundEntrypoint, Service};
use crate::transport::SharedTransport;

/// Starts one service's container.
type StartFn = fn(Shared, ServiceOptions) -> BoxFuture<'static, Result<ServiceContainer, Error>>;

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
            entrypoints: entrypoint_descriptions::<S>,
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

fn entrypoint_descriptions<S: Service>() -> Vec<String> {
    S::entrypoints()
        .iter()
        .map(BoundEntrypoint::describe)
        .collect()
}

inventory::collect!(ServiceRegistration);

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
    health: Health,
}

impl ServiceRunner {
    /// A runner with this configuration and no services yet.
    pub fn new(config: Config) -> Self {
        ServiceRunner {
            config,
            transport: None,
            services: Vec::new(),
            health: Health::new(),
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

    /// Reports the services' readiness to `health` (instead of a health of their own), so
    /// that it can be shared with what serves it, and outlive this runner (as
    /// `nameko::main` does across reconnections).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
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
            let (transport, stop, health) = (transport.clone(), stop.clone(), self.health.clone());
            async move {
                tokio::select! {
                    reason = transport.lost() => {
                        health.set(Readiness::Reconnecting);
                        tracing::error!(%reason, broker = %transport.describe(), "lost the broker connection; stopping the services");
                        stop.cancel();
                    }
                    _ = stop.cancelled() => {
                        let readiness = if transport.connection_lost() {
                            Readiness::Reconnecting
                        } else {
                            Readiness::Stopping
                        };
                        health.set(readiness);
                    }
                }
            }
        });
        let shared = Shared::new(self.config, transport, stop);
        let health = self.health;
        let mut containers = Vec::new();
        let mut started = Ok(());
        if let Some(name) = self
            .options
            .keys()
            .find(|name| !self.services.iter().any(|s| s.name() == **name))
        {
            started = Err(Error::NotRunning((*name).to_owned()));
        }
        for service in &self.services {
            if started.is_err() {
                break;
            }
            let options = self.options.remove(service.name()).unwrap_or_default();
            match (service.start)(shared.clone(), options).await {
                Ok(container) => containers.push(container),
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        let http = match started {
            Ok(()) => serve_http(&shared, &health).await,
            Err(e) => Err(e),
        };
        match http {
            Ok(http) => {
                if !shared.stop.is_cancelled() {
                    health.set(Readiness::Ready);
                }
                Ok(RunningServices {
                    shared,
                    containers,
                    http,
                    health,
                })
            }
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
async fn serve_http(shared: &Shared, health: &Health) -> Result<Option<HttpServer>, Error> {
    let routes = shared
        .existing_extension::<HttpRoutes>()
        .map(|routes| routes.take())
        .unwrap_or_default();
    let websocket = shared
        .existing_extension::<crate::websocket::WsServer>()
        .filter(|server| server.has_methods())
        .map(|server| server as std::sync::Arc<dyn http::Upgrade>);
    if routes.is_empty() && websocket.is_none() {
        return Ok(None);
    }
    let dispatch = http::router(routes, websocket, &shared.config, health.clone())?;
    let address = http::parse_address(&shared.config.web_server_address)?;
    let listen_error = |source| Error::Listen { address, source };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(listen_error)?;
    let address = listener.local_addr().map_err(listen_error)?;
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
    health: Health,
}

impl RunningServices {
    /// The services' readiness (what `/health/ready` answers).
    pub fn health(&self) -> &Health {
        &self.health
    }

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
            None => Err(Error::NoHook {
                service: service.to_owned(),
                entrypoint: entrypoint.to_owned(),
            }),
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
            health: _,
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
