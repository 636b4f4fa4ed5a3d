//! Entrypoints: what fires a service's methods, as a public extension API.
//!
//! Every entrypoint, built in or not, is a value of a type implementing [`Entrypoint`], bound
//! to one method of a service. When the service starts, each is given an
//! [`EntrypointContext`] and [`start`](Entrypoint::start)s: it declares and consumes queues,
//! binds routes, starts a schedule, spawns what it needs on tokio. When something arrives, it
//! runs a worker of its method through the context ([`EntrypointContext::run_worker`] or
//! [`spawn_worker`](EntrypointContext::spawn_worker)), which takes the service's path of every
//! worker: one of the `max_workers` slots, a [`WorkerContext`](crate::WorkerContext), the
//! dependencies' worker hooks, a caught panic, the failure logged with its sensitive arguments
//! redacted, entrypoint hooks and waiters in tests. It then answers with the worker's outcome
//! (replies, acknowledges, requeues, answers HTTP). A stop ends the loops an entrypoint
//! started ([`ServiceContext::stopped`]) and waits for its workers; a kill abandons them.
//!
//! Several entrypoints of a service, or of every service in the process, can share one
//! extension ([`ServiceContext::service_extension`], [`ServiceContext::process_extension`],
//! Nameko's `SharedExtension`): the RPC methods of a service share one consumer, the HTTP
//! routes of the process one server.
//!
//! What a method receives and gives is the entrypoint's [`Input`](Entrypoint::Input) and
//! [`Output`](Entrypoint::Output): [`RequestBody`] and `Result<Vec<u8>, RemoteError>` for
//! methods called with JSON arguments (`#[rpc]`, `#[timer]`, `#[once]`, `#[dummy]` and every
//! `#[entrypoint(...)]`: the arguments bind to the parameters as an RPC call's do, and the
//! result is the method's value as JSON), the event body for `#[event_handler]`, the request
//! for `#[http]`.
//!
//! ```
//! use std::time::Duration;
//! use nameko::prelude::*;
//! use nameko::service::{Entrypoint, EntrypointContext, Started};
//!
//! /// Fires its method every `period`, with the tick's number as its only argument.
//! pub struct Every {
//!     period: Duration,
//! }
//!
//! impl Every {
//!     pub fn new(period: Duration) -> Self {
//!         Every { period }
//!     }
//! }
//!
//! impl Entrypoint for Every {
//!     type Input = RequestBody;
//!     type Output = Result<Vec<u8>, RemoteError>;
//!
//!     async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, nameko::Error> {
//!         Ok(Started::running(async move {
//!             let mut interval = tokio::time::interval(self.period);
//!             for tick in 0u64.. {
//!                 tokio::select! {
//!                     _ = cx.stopped() => break,
//!                     _ = interval.tick() => {}
//!                 }
//!                 let arguments = RequestBody::new().arg(tick);
//!                 // The outcome was logged if it failed; there is no one to answer.
//!                 let _ = cx.spawn_worker(arguments, ContextData::new()).await;
//!             }
//!             Ok(())
//!         }))
//!     }
//! }
//!
//! #[derive(Dependencies)]
//! pub struct Ticker;
//!
//! #[service(name = "ticker")]
//! impl Ticker {
//!     #[entrypoint(Every::new(Duration::from_millis(10)))]
//!     async fn tick(&self, tick: u64) {
//!         tracing::info!(tick, "tick");
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let running = ServiceRunner::new(Config::default().with_broker("memory://doc-entrypoint"))
//!     .with_service::<Ticker>()
//!     .start()
//!     .await?;
//! let finished = running.entrypoint_waiter("ticker", "tick").wait().await?;
//! assert!(finished.result().is_ok());
//! running.stop().await?;
//! # Ok(()) }
//! ```

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::sealed::{Input as _, Output as _};
use super::{Service, WorkerResult};
use super::arguments::LoggedArguments;
use super::consume::{DeliveryHandler, QueueDeclaration};
use super::hooks::Hook;
use super::container::Shared;
use super::worker;
use crate::config::Config;
use crate::context::{ContextData, WorkerContext};
use crate::error::Error;
use crate::protocol::{RemoteError, RequestBody};
use crate::transport::SharedTransport;

/// Something that fires a method of a service: a queue consumer, a route, a schedule.
///
/// A value of it is bound to one method (`#[entrypoint(MyEntrypoint::new(...))]`, or a
/// built-in attribute) and started with its service. See the [module](self) for the whole
/// picture and an example.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entrypoint",
    label = "this value's type does not implement `nameko::service::Entrypoint`",
    note = "`#[entrypoint(...)]` takes an expression whose type implements `Entrypoint`"
)]
pub trait Entrypoint: Send + Sized + 'static {
    /// What a worker of the method is given: [`RequestBody`] (JSON arguments, bound to the
    /// method's parameters as an RPC call's are) for an `#[entrypoint(...)]`.
    type Input: WorkerInput;
    /// What a worker gives back: `Result<Vec<u8>, RemoteError>` (the method's value as JSON,
    /// or its error) for an `#[entrypoint(...)]`.
    type Output: WorkerOutput;

    /// How `list` shows the entrypoint on `method`, in one line.
    fn describe(&self, method: &str) -> String {
        let kind = std::any::type_name::<Self>()
            .rsplit("::")
            .next()
            .unwrap_or("entrypoint")
            .to_lowercase();
        format!("{kind} {method}")
    }

    /// Starts firing the method: declare what it needs (an error fails the service's start),
    /// then return what keeps running ([`Started::running`]: a loop the service watches; it
    /// must end once [`stopped`](ServiceContext::stopped) resolves) or [`Started::idle`].
    ///
    /// Not called for an entrypoint a test restricted out: it can still be fired by a hook.
    fn start(
        self,
        cx: EntrypointContext<Self>,
    ) -> impl Future<Output = Result<Started, Error>> + Send;
}

/// What an entrypoint (or a shared extension) left running once started.
#[must_use = "a `Started` holds the entrypoint's loop: return it from `start`"]
pub struct Started {
    pub(crate) run: Option<BoxFuture<'static, Result<(), Error>>>,
}

impl Started {
    /// Nothing keeps running (the entrypoint registered itself somewhere, or waits for hooks).
    pub fn idle() -> Started {
        Started { run: None }
    }

    /// `run` keeps running until the service stops. The service watches it: an error fails
    /// the service (it stops, and `run` answers the error); ending early with `Ok` is fine.
    pub fn running(run: impl Future<Output = Result<(), Error>> + Send + 'static) -> Started {
        Started {
            run: Some(Box::pin(run)),
        }
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.run.is_some() {
            "Started::running"
        } else {
            "Started::idle"
        })
    }
}

/// The method an entrypoint is bound to: its name and what the macro read off it.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    name: &'static str,
    params: &'static [&'static str],
    expected_exceptions: &'static [&'static str],
    sensitive_arguments: &'static [&'static str],
}

impl MethodInfo {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        params: &'static [&'static str],
        expected_exceptions: &'static [&'static str],
        sensitive_arguments: &'static [&'static str],
    ) -> Self {
        MethodInfo {
            name,
            params,
            expected_exceptions,
            sensitive_arguments,
        }
    }

    /// The entrypoint's name: the method's, or its name on the wire (`#[rpc(name = "...")]`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The method's parameters, in order (`&self` left out).
    pub fn params(&self) -> &'static [&'static str] {
        self.params
    }

    /// Error types (`exc_type`s) that are part of the method's contract: logged as warnings.
    pub fn expected_exceptions(&self) -> &'static [&'static str] {
        self.expected_exceptions
    }

    /// Arguments (or paths into them) shown as `********` wherever arguments are logged.
    pub fn sensitive_arguments(&self) -> &'static [&'static str] {
        self.sensitive_arguments
    }
}

/// One of the service's `max_workers` worker slots, held by a worker from before it starts
/// until its entrypoint has answered.
#[derive(Debug)]
pub struct WorkerSlot {
    _permit: OwnedSemaphorePermit,
}

/// What a running service offers its extensions: its name, configuration and broker, its
/// stop and kill, its worker slots, tasks that a stop waits for, shared extensions.
///
/// Cloning it is cheap.
#[derive(Clone)]
pub struct ServiceContext {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    service: &'static str,
    shared: Shared,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    /// The service's shared extensions, in the order they were made.
    extensions: Mutex<Vec<SharedEntry>>,
}

struct SharedEntry {
    type_id: TypeId,
    value: Arc<dyn Any + Send + Sync>,
    start: StartShared,
}

type StartShared =
    fn(Arc<dyn Any + Send + Sync>, ServiceContext) -> BoxFuture<'static, Result<Started, Error>>;

/// An extension several entrypoints share (Nameko's `SharedExtension`): one per service
/// ([`ServiceContext::service_extension`]), started once every entrypoint of the service has
/// started (so it knows them all), and stopped with the service.
pub trait SharedExtension: Send + Sync + 'static {
    /// Starts the extension (consume a queue the entrypoints registered with, say). The
    /// default starts nothing.
    fn start(
        self: Arc<Self>,
        cx: ServiceContext,
    ) -> impl Future<Output = Result<Started, Error>> + Send {
        let _ = cx;
        async { Ok(Started::idle()) }
    }
}

fn start_shared<T: SharedExtension>(
    value: Arc<dyn Any + Send + Sync>,
    cx: ServiceContext,
) -> BoxFuture<'static, Result<Started, Error>> {
    match value.downcast::<T>() {
        Ok(value) => Box::pin(value.start(cx)),
        Err(_) => Box::pin(async { Ok(Started::idle()) }),
    }
}

impl ServiceContext {
    pub(crate) fn new(service: &'static str, shared: Shared) -> Self {
        let workers = Arc::new(Semaphore::new(shared.config.max_workers.max(1)));
        ServiceContext {
            inner: Arc::new(ServiceInner {
                service,
                shared,
                workers,
                tracker: TaskTracker::new(),
                extensions: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.inner.shared.stop
    }

    pub(crate) fn kill_token(&self) -> &CancellationToken {
        &self.inner.shared.kill
    }

    /// The service's name.
    pub fn service_name(&self) -> &'static str {
        self.inner.service
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// The broker.
    pub fn transport(&self) -> &SharedTransport {
        &self.inner.shared.transport
    }

    /// Resolves when the service is asked to stop: stop taking new work (workers running
    /// finish, and the stop waits for them).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.shared.stop.clone().cancelled_owned()
    }

    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.shared.stop.is_cancelled()
    }

    /// Resolves when the service is killed: running workers are abandoned (their messages are
    /// neither answered nor acknowledged).
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.shared.kill.clone().cancelled_owned()
    }

    /// Waits for one of the service's `max_workers` worker slots, shared by all its
    /// entrypoints: `None` once the service stops.
    pub async fn worker_slot(&self) -> Option<WorkerSlot> {
        let stop = &self.inner.shared.stop;
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = self.inner.workers.clone().acquire_owned() => {
                permit.ok().map(|permit| WorkerSlot { _permit: permit })
            }
        }
    }

    /// Runs `task` on tokio as part of the service: a stop waits for it (as for the
    /// workers, up to `stop_timeout`), a kill drops it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let kill = self.inner.shared.kill.clone();
        self.inner.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = kill.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// `future`, tracked as part of the service: a stop waits for it (as for the workers, up
    /// to `stop_timeout`). For work the caller awaits itself, such as answering a request;
    /// [`spawn`](Self::spawn) runs it as a task instead.
    pub fn track<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        self.inner.tracker.track_future(future)
    }

    /// Resolves once the service is stopping and every worker and spawned task has finished
    /// (or was killed): when a consumer can be closed without losing an acknowledgement.
    pub async fn workers_finished(&self) {
        self.inner.shared.stop.cancelled().await;
        self.inner.tracker.wait().await;
    }

    /// Consumes `queue` for as long as the service runs, handing each delivery, with a worker
    /// slot, to `handler`: what the RPC and event entrypoints do. `declaration` declares the
    /// queue and its bindings; it runs now, and again if the broker cancels the consumer (its
    /// queue deleted, a node lost), after which the queue is consumed again. A message
    /// redelivered more than `MAX_REDELIVERIES` times goes to
    /// [`DeliveryHandler::give_up`]. At the stop, messages received but not started go back
    /// to the queue at once, and the consumer is closed once the workers have finished.
    pub async fn consume(
        &self,
        declaration: QueueDeclaration,
        handler: Arc<dyn DeliveryHandler>,
    ) -> Result<Started, Error> {
        super::consume::start(self.clone(), Arc::new(declaration), handler).await
    }

    /// The service's shared extension of type `T`, made by `make` if no entrypoint of the
    /// service asked for one yet. It is [started](SharedExtension::start) once every
    /// entrypoint of the service has started.
    pub fn service_extension<T: SharedExtension>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut extensions = lock(&self.inner.extensions);
        if let Some(found) = extensions
            .iter()
            .find(|e| e.type_id == TypeId::of::<T>())
            .and_then(|e| e.value.clone().downcast::<T>().ok())
        {
            return found;
        }
        let value = Arc::new(make());
        extensions.push(SharedEntry {
            type_id: TypeId::of::<T>(),
            value: value.clone(),
            start: start_shared::<T>,
        });
        value
    }

    /// The process's shared value of type `T` (one for every service the runner runs), made
    /// by `make` if none was yet: a connection, a registry, a server that several services
    /// use. It has no lifecycle of its own; start what it holds on first use.
    pub fn process_extension<T: Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        self.inner.shared.process_extension(make)
    }

    /// Starts the service's shared extensions not started yet, each once, in the order they
    /// were made.
    pub(crate) async fn start_extensions(&self) -> Result<Vec<Started>, Error> {
        let mut started = Vec::new();
        let mut next = 0;
        loop {
            let entry = {
                let extensions = lock(&self.inner.extensions);
                match extensions.get(next) {
                    Some(entry) => (entry.value.clone(), entry.start),
                    None => break,
                }
            };
            next += 1;
            started.push((entry.1)(entry.0, self.clone()).await?);
        }
        Ok(started)
    }
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an entrypoint is given when its service starts: the [`ServiceContext`] (through
/// `Deref`), the method it is bound to, and the way to run a worker of that method.
pub struct EntrypointContext<E: Entrypoint> {
    service: ServiceContext,
    method: Arc<dyn RunMethod<E::Input, E::Output>>,
}

impl<E: Entrypoint> Clone for EntrypointContext<E> {
    fn clone(&self) -> Self {
        EntrypointContext {
            service: self.service.clone(),
            method: self.method.clone(),
        }
    }
}

impl<E: Entrypoint> std::ops::Deref for EntrypointContext<E> {
    type Target = ServiceContext;

    fn deref(&self) -> &ServiceContext {
        &self.service
    }
}

impl<E: Entrypoint> std::fmt::Debug for EntrypointContext<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrypointContext")
            .field("service", &self.service.service_name())
            .field("method", self.method.info())
            .finish_non_exhaustive()
    }
}

impl<E: Entrypoint> EntrypointContext<E> {
    /// The method this entrypoint fires.
    pub fn method(&self) -> &MethodInfo {
        self.method.info()
    }

    /// The service's context (also reachable through `Deref`).
    pub fn service(&self) -> &ServiceContext {
        &self.service
    }

    /// Runs one worker of the method in `slot`: its [`WorkerContext`](crate::WorkerContext)
    /// carries `context_data` (as from `nameko.*` headers); the dependencies' worker hooks run
    /// around the method; a panic becomes the worker's error; a failure is logged (a warning
    /// if its type is one of the method's `expected_exceptions`) with the arguments,
    /// sensitive ones redacted; entrypoint waiters hear of it.
    ///
    /// `payload` is what fired the worker as JSON, if there is such a thing (an RPC request's
    /// body, an event): what logs show of the arguments and what waiters see.
    ///
    /// `None` if the service was killed before the worker finished: answer nothing then (the
    /// broker redelivers an unacknowledged message).
    pub fn run_worker<'a>(
        &'a self,
        slot: WorkerSlot,
        input: E::Input,
        context_data: ContextData,
        payload: Option<&'a [u8]>,
    ) -> impl Future<Output = Option<E::Output>> + Send + 'a {
        let kill = &self.service.inner.shared.kill;
        let info = *self.method.info();
        let context = Arc::new(WorkerContext::for_entrypoint(
            self.service.inner.service,
            info.name,
            context_data,
            self.service.inner.shared.config.parent_calls_tracked,
        ));
        let kept = input.keep();
        let worker = self.method.run(context.clone(), input, payload);
        async move {
            let _slot = slot;
            // The worker first: the kill switch is only looked at while the worker waits.
            let outcome = tokio::select! {
                biased;
                outcome = worker => outcome,
                _ = kill.cancelled() => return None,
            };
            match outcome.failure() {
                Some(error) => worker::log_failure(&context, error, info.expected_exceptions, || {
                    E::Input::arguments(kept, payload, &info)
                }),
                None => tracing::debug!(
                    service = context.service_name(),
                    entrypoint = info.name,
                    call_id = context.call_id(),
                    "worker finished"
                ),
            }
            Some(outcome)
        }
    }

    /// Waits for a worker slot, then runs one worker (as [`run_worker`](Self::run_worker),
    /// without a payload) as a task of the service, so that a stop waits for it: `None` if
    /// the service stopped before a slot was free, or was killed.
    pub fn spawn_worker(
        &self,
        input: E::Input,
        context_data: ContextData,
    ) -> impl Future<Output = Option<E::Output>> + Send + 'static {
        let cx = self.clone();
        self.service.inner.tracker.track_future(async move {
            let slot = cx.worker_slot().await?;
            cx.run_worker(slot, input, context_data, None).await
        })
    }
}

/// Runs workers of one method of one service (`S` erased).
trait RunMethod<I, O>: Send + Sync + 'static {
    fn info(&self) -> &MethodInfo;
    fn run<'a>(
        &'a self,
        context: Arc<WorkerContext>,
        input: I,
        payload: Option<&'a [u8]>,
    ) -> BoxFuture<'a, O>;
}

/// Calls a method of service `S`: the function `#[service]` generated for it.
pub type Handler<S, I, O> = fn(Arc<S>, I) -> BoxFuture<'static, O>;

struct MethodOf<S, I, O> {
    service: Arc<S>,
    info: MethodInfo,
    handler: Handler<S, I, O>,
    shared: Shared,
}

impl<S: Service, I: WorkerInput, O: WorkerOutput> RunMethod<I, O> for MethodOf<S, I, O> {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn run<'a>(
        &'a self,
        context: Arc<WorkerContext>,
        input: I,
        payload: Option<&'a [u8]>,
    ) -> BoxFuture<'a, O> {
        let handler = self.handler;
        Box::pin(worker::run_worker(
            self.service.clone(),
            &self.shared,
            context,
            payload,
            move |service| handler(service, input),
        ))
    }
}

/// An entrypoint bound to a method of service `S`: what `#[service]` lists in
/// [`Service::entrypoints`].
pub struct BoundEntrypoint<S> {
    inner: Box<dyn ErasedEntrypoint<S>>,
}

impl<S: Service> BoundEntrypoint<S> {
    /// Binds `entrypoint` to the method `method`, called through `handler`.
    #[doc(hidden)]
    pub fn new<E: Entrypoint>(
        entrypoint: E,
        method: MethodInfo,
        handler: Handler<S, E::Input, E::Output>,
    ) -> Self {
        BoundEntrypoint {
            inner: Box::new(Bound {
                entrypoint,
                method,
                handler,
            }),
        }
    }

    /// The entrypoint's name (its method's, or its RPC name on the wire).
    pub fn name(&self) -> &'static str {
        self.inner.method().name
    }

    /// The method it is bound to.
    pub fn method(&self) -> &MethodInfo {
        self.inner.method()
    }

    /// A one-line description, as `list` prints it.
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// Gives the entrypoint its service: its hook, and its start.
    pub(crate) fn bind(self, service: Arc<S>, cx: &ServiceContext) -> Binding<S> {
        self.inner.bind(service, cx)
    }
}

impl<S> std::fmt::Debug for BoundEntrypoint<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundEntrypoint")
            .field("method", self.inner.method())
            .finish_non_exhaustive()
    }
}

/// A bound entrypoint given its service: its hook (if its input can come from JSON
/// arguments), and its start.
pub(crate) struct Binding<S> {
    pub(crate) hook: Option<Hook>,
    pub(crate) start: BoxFuture<'static, Result<Started, Error>>,
    _service: std::marker::PhantomData<fn() -> S>,
}

trait ErasedEntrypoint<S>: Send {
    fn method(&self) -> &MethodInfo;
    fn describe(&self) -> String;
    fn bind(self: Box<Self>, service: Arc<S>, cx: &ServiceContext) -> Binding<S>;
}

struct Bound<S, E: Entrypoint> {
    entrypoint: E,
    method: MethodInfo,
    handler: Handler<S, E::Input, E::Output>,
}

impl<S: Service, E: Entrypoint> ErasedEntrypoint<S> for Bound<S, E> {
    fn method(&self) -> &MethodInfo {
        &self.method
    }

    fn describe(&self) -> String {
        self.entrypoint.describe(self.method.name)
    }

    fn bind(self: Box<Self>, service: Arc<S>, cx: &ServiceContext) -> Binding<S> {
        let Bound {
            entrypoint,
            method,
            handler,
        } = *self;
        let cx = EntrypointContext::<E> {
            service: cx.clone(),
            method: Arc::new(MethodOf {
                service,
                info: method,
                handler,
                shared: cx.shared().clone(),
            }),
        };
        Binding {
            hook: hook(&cx),
            start: Box::pin(entrypoint.start(cx)),
            _service: std::marker::PhantomData,
        }
    }
}

/// The hook of one entrypoint: the worker runs as if the entrypoint had fired (a worker
/// slot, a context with the given data, the dependencies' hooks). `None` for an entrypoint
/// whose input cannot come from JSON arguments (HTTP: tests send requests).
fn hook<E: Entrypoint>(cx: &EntrypointContext<E>) -> Option<Hook> {
    if !E::Input::HOOKABLE {
        return None;
    }
    let cx = cx.clone();
    Some(Arc::new(move |args: Value, data: ContextData| {
        let cx = cx.clone();
        Box::pin(cx.service.inner.tracker.clone().track_future(async move {
            let service = cx.service_name();
            let stopped = || {
                RemoteError::new("ServiceStopped", format!("{service} has stopped"))
                    .with_path("nameko_rs.ServiceStopped")
            };
            if cx.is_stopping() {
                return Err(stopped());
            }
            let (input, payload) = E::Input::from_hook(args)?;
            let slot = cx.worker_slot().await.ok_or_else(stopped)?;
            let outcome = cx
                .run_worker(slot, input, data, payload.as_deref())
                .await
                .ok_or_else(stopped)?;
            outcome.into_hook()
        })) as BoxFuture<'static, _>
    }))
}

pub(crate) mod sealed {
    use super::*;

    /// What [`WorkerInput`](super::WorkerInput) needs of its types; not for other crates.
    pub trait Input: Send + Sized + 'static {
        /// Whether tests can fire an entrypoint with this input from JSON arguments.
        const HOOKABLE: bool = true;
        /// What is kept of the input, before the method takes it, to show its arguments
        /// if the worker fails.
        type Kept: Send + 'static;
        fn keep(&self) -> Self::Kept;
        /// The arguments a failure's log line shows, sensitive ones redacted.
        fn arguments(
            kept: Self::Kept,
            payload: Option<&[u8]>,
            method: &MethodInfo,
        ) -> Option<LoggedArguments>;
        /// The input from a hook's arguments, and its payload as JSON.
        fn from_hook(args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError>;
    }

    /// What [`WorkerOutput`](super::WorkerOutput) needs of its types; not for other crates.
    pub trait Output: Send + Sized + 'static {
        /// What the worker came to, for the dependencies' `worker_result` and the waiters.
        fn result(&self) -> WorkerResult<'_>;
        /// The outcome of the same worker, failed with `error` (a dependency's
        /// `worker_result` refused a success).
        fn fail(self, error: RemoteError) -> Self;
        /// The outcome of a worker that failed outside its method (a panic, a refusal).
        fn from_error(error: RemoteError) -> Self;
        /// The error to log, if the worker failed in a way the worker path logs (an event
        /// that does not decode is logged by its entrypoint, which drops it).
        fn failure(&self) -> Option<&RemoteError>;
        /// The outcome as a hook returns it.
        fn into_hook(self) -> Result<Value, RemoteError>;
    }
}

/// A type a method can be given by its entrypoint: [`RequestBody`] (JSON arguments: every
/// `#[entrypoint(...)]`, `#[rpc]`, `#[timer]`), `EventBody` (`#[event_handler]`), `HttpCall`
/// (`#[http]`). Sealed: the macro generates the method's side of each.
pub trait WorkerInput: sealed::Input {}
impl<T: sealed::Input> WorkerInput for T {}

/// A type a worker gives its entrypoint: `Result<Vec<u8>, RemoteError>` (the method's value
/// as JSON, or its error), the event handler's outcome, the HTTP response. Sealed, as
/// [`WorkerInput`].
pub trait WorkerOutput: sealed::Output {}
impl<T: sealed::Output> WorkerOutput for T {}

impl sealed::Input for RequestBody {
    type Kept = ();
    fn keep(&self) {}
    fn arguments(
        _kept: (),
        payload: Option<&[u8]>,
        method: &MethodInfo,
    ) -> Option<LoggedArguments> {
        payload.map(|payload| {
            super::arguments::rpc_arguments(payload, method.params, method.sensitive_arguments)
        })
    }
    fn from_hook(args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError> {
        let body = match args {
            Value::Array(args) => serde_json::json!({"args": args, "kwargs": {}}),
            Value::Object(kwargs) => serde_json::json!({"args": [], "kwargs": kwargs}),
            Value::Null => serde_json::json!({"args": [], "kwargs": {}}),
            one => serde_json::json!({"args": [one], "kwargs": {}}),
        };
        let payload = body.to_string().into_bytes();
        let body = RequestBody::parse(&payload)
            .map_err(|e| RemoteError::nameko("MalformedRequest", e.to_string()))?;
        Ok((body, Some(payload)))
    }
}

impl sealed::Output for Result<Vec<u8>, RemoteError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(json) => WorkerResult::Value(json),
            Err(error) => WorkerResult::Failed(std::borrow::Cow::Borrowed(error)),
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(error)
    }
    fn from_error(error: RemoteError) -> Self {
        Err(error)
    }
    fn failure(&self) -> Option<&RemoteError> {
        self.as_ref().err()
    }
    fn into_hook(self) -> Result<Value, RemoteError> {
        let json = self?;
        serde_json::from_slice(&json)
            .map_err(|e| RemoteError::nameko("UnserializableValueError", e.to_string()))
    }
}
