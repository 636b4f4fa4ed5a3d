//! Entrypoints: what fires a service's methods, as a public extension API.
//!
//! Every entrypoint, built in or not, is a value of a type implementing [`Entrypoint`], bound
//! to one method of a service. When the service starts, each is given an
//! [`EntrypointContext`] and [`start`](Entrypoint::start)s: it declares and consumes queues,
//! binds routes, starts a schedule, spawns what it needs on tokio. When something arrives, it
//! runs a worker of its method through the context ([`EntrypointContext::run_worker`] or
//! [`spawn_worker`](EntrypointContext::spawn_worker)), which takes the service's path of every
//! worker: one of the `max_workers` slots, a [`WorkerContext`], the
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
//! [`Output`](Entrypoint::Output): [`RequestBody`](crate::protocol::RequestBody) and `Result<Vec<u8>, RemoteError>` for
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

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;

use super::Service;
use super::container::Shared;
use super::extension::{ServiceContext, WorkerSlot};
use super::hooks::Hook;
use super::io::sealed::{Input as _, Output as _};
use super::io::{WorkerInput, WorkerOutput};
use super::worker;
use crate::context::{ContextData, Incoming, WorkerContext};
use crate::error::Error;
use crate::protocol::RemoteError;

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
    /// What a worker of the method is given: [`RequestBody`](crate::protocol::RequestBody) (JSON arguments, bound to the
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
    signature: Option<&'static str>,
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
            signature: None,
        }
    }

    /// The entrypoint's name: the method's, or its name on the wire (`#[rpc(name = "...")]`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The same, with the method's signature as written (`(name: String) -> String`).
    #[doc(hidden)]
    pub const fn with_signature(mut self, signature: &'static str) -> Self {
        self.signature = Some(signature);
        self
    }

    /// The method's parameters and result as written (`(name: String) -> String`), for the
    /// methods whose callers need them (RPC): what `list` and service discovery show.
    pub fn signature(&self) -> Option<&'static str> {
        self.signature
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

    /// Runs one worker of the method in `slot`: its [`WorkerContext`]
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
    ) -> BoxFuture<'a, Option<E::Output>> {
        self.run_worker_from(slot, input, context_data.into(), payload)
    }

    /// [`run_worker`](Self::run_worker) with context data as a message brought it (the
    /// callers' call id stack read apart).
    pub(crate) fn run_worker_from<'a>(
        &'a self,
        slot: WorkerSlot,
        input: E::Input,
        incoming: Incoming,
        payload: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Option<E::Output>> {
        self.method
            .run(&self.service, slot, input, incoming, payload)
    }

    /// Waits for a worker slot, then runs one worker (as [`run_worker`](Self::run_worker),
    /// without a payload) as part of the service, so that a stop waits for it: `None` if the
    /// service stopped before a slot was free, or was killed. (Two allocations: the method's
    /// future, made at once, and the future that waits for the slot and runs the worker.)
    pub fn spawn_worker(
        &self,
        input: E::Input,
        context_data: ContextData,
    ) -> BoxFuture<'static, Option<E::Output>> {
        self.method
            .clone()
            .spawn(self.service.clone(), input, context_data.into())
    }
}

/// Runs workers of one method of one service (`S` erased). `run` is one boxed future, whatever
/// it includes: the per-message path allocates once here; `spawn` boxes the method's future
/// too, rather than hold its input while it waits for a slot.
trait RunMethod<I, O>: Send + Sync + 'static {
    fn info(&self) -> &MethodInfo;
    fn run<'a>(
        &'a self,
        cx: &'a ServiceContext,
        slot: WorkerSlot,
        input: I,
        incoming: Incoming,
        payload: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Option<O>>;
    fn spawn(
        self: Arc<Self>,
        cx: ServiceContext,
        input: I,
        incoming: Incoming,
    ) -> BoxFuture<'static, Option<O>>;
}

/// A function that calls a method of service `S` and returns its future, boxed: one kind of
/// handler [`BoundEntrypoint::new`] takes. `#[service]` generates closures returning the
/// method's own future instead, which the worker holds without a box of its own.
///
/// A handler is called when its worker is asked for, which may be before a worker slot is
/// free: it should only make the future, and leave the work to it.
pub type Handler<S, I, O> = fn(Arc<S>, I) -> BoxFuture<'static, O>;

/// Calls a method of service `S` (a closure `#[service]` generates, or a [`Handler`]): any
/// `Fn(Arc<S>, I) -> impl Future<Output = O>`.
trait CallMethod<S, I, O>: Send + Sync + 'static {
    fn call(&self, service: Arc<S>, input: I) -> impl Future<Output = O> + Send + 'static;
}

impl<S, I, O, H, F> CallMethod<S, I, O> for H
where
    H: Fn(Arc<S>, I) -> F + Send + Sync + 'static,
    F: Future<Output = O> + Send + 'static,
{
    fn call(&self, service: Arc<S>, input: I) -> impl Future<Output = O> + Send + 'static {
        self(service, input)
    }
}

struct MethodOf<S, I, O, H> {
    service: Arc<S>,
    info: MethodInfo,
    handler: H,
    shared: Shared,
    metrics: crate::metrics::EntrypointMetrics,
    _io: std::marker::PhantomData<fn(I) -> O>,
}

impl<S: Service, I: WorkerInput, O: WorkerOutput, H: CallMethod<S, I, O>> MethodOf<S, I, O, H> {
    /// One worker in `slot`: its context, the worker path, the failure logged; `None` if the
    /// service is killed first.
    ///
    /// `method` is the method's call on the input, not started yet; `kept` what the input
    /// leaves for the log of a failure.
    fn worker<'a>(
        &'a self,
        cx: &'a ServiceContext,
        slot: WorkerSlot,
        kept: I::Kept,
        method: impl Future<Output = O> + Send + 'a,
        incoming: Incoming,
        payload: Option<&'a [u8]>,
    ) -> impl Future<Output = Option<O>> + Send + 'a {
        let info = &self.info;
        let context = Arc::new(WorkerContext::for_entrypoint(
            cx.service_name(),
            info.name,
            incoming,
            cx.config().parent_calls_tracked,
        ));
        let started = std::time::Instant::now();
        self.metrics.started();
        let worker = worker::run_worker(
            &*self.service,
            Some(&self.shared),
            context.clone(),
            <I as crate::service::io::sealed::Input>::KIND.into(),
            payload,
            method,
        );
        // The worker first: the kill switch is only looked at while the worker waits. What
        // follows it is synchronous, so a `map` rather than an `async` block, which would hold
        // the worker's state twice.
        worker::Killable::new(worker, cx.kill_token()).map(move |outcome| {
            let _slot = slot;
            let outcome = outcome?;
            match outcome.failure() {
                Some(error) => {
                    let error_type = error.exc_type.as_str();
                    let expected = info.expected_exceptions.contains(&error_type);
                    self.metrics
                        .finished(started.elapsed(), Some((error_type, expected)));
                    worker::log_failure(&context, error, info.expected_exceptions, || {
                        I::arguments(kept, payload, info)
                    })
                }
                None => {
                    self.metrics.finished(started.elapsed(), None);
                    tracing::debug!(
                        service = context.service_name(),
                        entrypoint = info.name,
                        call_id = context.call_id(),
                        "worker finished"
                    )
                }
            }
            Some(outcome)
        })
    }
}

impl<S: Service, I: WorkerInput, O: WorkerOutput, H: CallMethod<S, I, O>> RunMethod<I, O>
    for MethodOf<S, I, O, H>
{
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn run<'a>(
        &'a self,
        cx: &'a ServiceContext,
        slot: WorkerSlot,
        input: I,
        incoming: Incoming,
        payload: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Option<O>> {
        let kept = input.keep();
        let method = self.handler.call(self.service.clone(), input);
        Box::pin(self.worker(cx, slot, kept, method, incoming, payload))
    }

    fn spawn(
        self: Arc<Self>,
        cx: ServiceContext,
        input: I,
        incoming: Incoming,
    ) -> BoxFuture<'static, Option<O>> {
        let tracker = cx.tracker().clone();
        // The method's call made now and boxed, rather than its input held until a slot is
        // free: the future waiting for the slot, which this boxes too, then holds a pointer.
        let kept = input.keep();
        let method = Box::pin(self.handler.call(self.service.clone(), input));
        Box::pin(tracker.track_future(async move {
            let slot = cx.worker_slot().await?;
            self.worker(&cx, slot, kept, method, incoming, None).await
        }))
    }
}

/// An entrypoint bound to a method of service `S`: what `#[service]` lists in
/// [`Service::entrypoints`].
pub struct BoundEntrypoint<S> {
    inner: Box<dyn ErasedEntrypoint<S>>,
}

impl<S: Service> BoundEntrypoint<S> {
    /// Binds `entrypoint` to the method `method`, called through `handler` (a function that
    /// calls the method with the entrypoint's input and returns its future).
    #[doc(hidden)]
    pub fn new<E, H, F>(entrypoint: E, method: MethodInfo, handler: H) -> Self
    where
        E: Entrypoint,
        H: Fn(Arc<S>, E::Input) -> F + Send + Sync + 'static,
        F: Future<Output = E::Output> + Send + 'static,
    {
        BoundEntrypoint {
            inner: Box::new(Bound {
                entrypoint,
                method,
                handler,
                _service: std::marker::PhantomData,
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

struct Bound<S, E: Entrypoint, H> {
    entrypoint: E,
    method: MethodInfo,
    handler: H,
    _service: std::marker::PhantomData<fn() -> S>,
}

impl<S: Service, E: Entrypoint, H: CallMethod<S, E::Input, E::Output>> ErasedEntrypoint<S>
    for Bound<S, E, H>
{
    fn method(&self) -> &MethodInfo {
        &self.method
    }

    fn describe(&self) -> String {
        let line = self.entrypoint.describe(self.method.name);
        // `rpc greet(name: String) -> String`, when the line ends with the method's name.
        match self.method.signature {
            Some(signature) if line.ends_with(self.method.name) => line + signature,
            _ => line,
        }
    }

    fn bind(self: Box<Self>, service: Arc<S>, cx: &ServiceContext) -> Binding<S> {
        let Bound {
            entrypoint,
            method,
            handler,
            ..
        } = *self;
        let cx = EntrypointContext::<E> {
            service: cx.clone(),
            method: Arc::new(MethodOf {
                service,
                metrics: crate::metrics::EntrypointMetrics::new(cx.service_name(), method.name),
                info: method,
                handler,
                shared: cx.shared().clone(),
                _io: std::marker::PhantomData,
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
        Box::pin(cx.service.tracker().clone().track_future(async move {
            let service = cx.service_name();
            let stopped =
                || RemoteError::nameko_rs("ServiceStopped", format!("{service} has stopped"));
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
