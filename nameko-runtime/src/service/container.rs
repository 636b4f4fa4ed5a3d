//! One running service: its consumers, its workers, their limit, and its stop.
//!
//! Each entrypoint that listens on a queue (the RPC queue `rpc-<service>`, one queue per event
//! handler) has a consumer loop. A loop takes a delivery, waits for one of the service's
//! `max_workers` worker slots (shared by all its entrypoints) and spawns a worker for it. The
//! worker runs the entrypoint's handler inside a [`WorkerContext`] and settles the delivery: an
//! RPC request is acknowledged only after its reply is published; an event after its handler
//! finished.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::runner::Shared;
use super::{
    DependencyContext, Entrypoint, EventEntrypoint, HttpEntrypoint, Replacements, RpcEntrypoint,
    Service, TimerEntrypoint, WorkerResult, arguments,
};
use crate::context::{ContextData, WorkerContext};
use crate::error::Error;
use crate::events::{EventError, HandlerType};
use crate::http::{Route, error_response};
use crate::protocol::{self, MalformedRequest, RemoteError, RequestBody};
use crate::transport::{Consumer, Delivery, ExchangeSpec, OutgoingMessage, Properties, QueueSpec};
use arguments::LoggedArguments;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A started service. Stop it through the runner's [`StopHandle`](super::runner::StopHandle).
pub struct ServiceContainer {
    pub(crate) name: &'static str,
    /// The names of all its entrypoints, restricted or not.
    pub(crate) entrypoints: Vec<&'static str>,
    pub(crate) task: JoinHandle<Result<(), Error>>,
}

/// The error object for a panic, with the panic's message.
pub(crate) fn panic_error(payload: &(dyn std::any::Any + Send)) -> RemoteError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    RemoteError::new("WorkerPanic", message).with_path("nameko_rs.WorkerPanic")
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a started service may be given besides its configuration (by tests, mostly).
#[derive(Default)]
pub(crate) struct ServiceOptions {
    /// Values for fields, used instead of building them.
    pub(crate) replacements: Replacements,
    /// When set, only these entrypoints fire (the others can still be hooked).
    pub(crate) restrict: Option<Vec<String>>,
}

/// What a worker came to, for the dependencies' `worker_result` and the entrypoint waiters.
trait Outcome {
    fn result(&self) -> WorkerResult<'_>;
    /// The outcome of the same worker, failed with `error` (a dependency's `worker_result`
    /// refused a success).
    fn fail(self, error: RemoteError) -> Self;
}

impl Outcome for Result<Vec<u8>, RemoteError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(json) => WorkerResult::Value(json),
            Err(error) => WorkerResult::Failed(Cow::Borrowed(error)),
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(error)
    }
}

impl Outcome for Result<(), RemoteError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(()) => WorkerResult::Done,
            Err(error) => WorkerResult::Failed(Cow::Borrowed(error)),
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(error)
    }
}

impl Outcome for Result<(), EventError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(()) => WorkerResult::Done,
            Err(EventError::Handler(error)) => WorkerResult::Failed(Cow::Borrowed(error)),
            Err(EventError::Payload(reason)) => WorkerResult::Failed(Cow::Owned(
                RemoteError::new("EventPayloadError", reason.clone())
                    .with_path("nameko_rs.EventPayloadError"),
            )),
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(EventError::Handler(error))
    }
}

impl Outcome for Response {
    fn result(&self) -> WorkerResult<'_> {
        match self.extensions().get::<RemoteError>() {
            Some(error) => WorkerResult::Failed(Cow::Borrowed(error)),
            None => WorkerResult::Done,
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        error_response(&error, &[])
    }
}

/// Logs a failed worker: a warning when its error is one the entrypoint expects, an error
/// otherwise; with its arguments when it has any, redacted, and the error's text scrubbed of
/// the redacted values.
fn log_failure(
    context: &WorkerContext,
    error: &RemoteError,
    expected: &[&str],
    arguments: impl FnOnce() -> Option<LoggedArguments>,
) {
    let (service, entrypoint, call_id) = (
        context.service_name(),
        context.entrypoint(),
        context.call_id(),
    );
    let arguments = arguments();
    let text = match &arguments {
        Some(arguments) => arguments.scrub(&error.value),
        None => error.value.clone(),
    };
    let error_type = error.exc_type.as_str();
    let arguments = arguments.map(|a| a.shown.to_string()).unwrap_or_default();
    if expected.contains(&error_type) {
        tracing::warn!(service, entrypoint, call_id, error_type, error = %text, arguments, "worker failed (expected)");
    } else if error_type == "WorkerPanic" {
        tracing::error!(service, entrypoint, call_id, panic = %text, arguments, "worker panicked");
    } else {
        tracing::error!(service, entrypoint, call_id, error_type, error = %text, arguments, "worker failed");
    }
}

/// An HTTP route of service `S`: each request waits for a worker slot, then runs in a worker
/// context of its own (empty context data, as in Nameko), tracked with the container's other
/// workers so that a stop waits for it before stopping the dependencies.
fn http_route<S: Service>(
    service: Arc<S>,
    entrypoint: HttpEntrypoint<S>,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    shared: &Shared,
) -> Route {
    /// What every request of the route needs: one reference count per request, not three.
    struct RouteState<S> {
        service: Arc<S>,
        workers: Arc<Semaphore>,
        shared: Shared,
    }
    let tracked = shared.config.parent_calls_tracked;
    let state = Arc::new(RouteState {
        service,
        workers,
        shared: shared.clone(),
    });
    let (name, handler) = (entrypoint.name, entrypoint.handler);
    let (expected, sensitive) = (
        entrypoint.expected_exceptions,
        entrypoint.sensitive_arguments,
    );
    let (segments, params) = (entrypoint.segments, entrypoint.params);
    Route {
        service: S::NAME,
        entrypoint: name,
        methods: entrypoint.methods,
        route: entrypoint.route,
        segments,
        handler: Arc::new(move |call| {
            let state = state.clone();
            Box::pin(tracker.track_future(async move {
                let Ok(_permit) = state.workers.acquire().await else {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                let context = Arc::new(WorkerContext::for_entrypoint(S::NAME, name, ContextData::new(), tracked));
                let path = call.path.clone();
                let worker = run_worker(state.service.clone(), &state.shared, context.clone(), None, |service| handler(service, call));
                // The worker first: the kill switch is only looked at (a lock) while the worker
                // waits, not for a worker that is done at its first poll.
                let outcome = tokio::select! {
                    biased;
                    outcome = worker => outcome,
                    _ = state.shared.kill.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
                };
                let response = outcome.unwrap_or_else(|error| error_response(&error, &[]));
                if let Some(error) = response.extensions().get::<RemoteError>() {
                    log_failure(&context, error, expected, || {
                        Some(arguments::named_arguments(params.iter().copied(), path.iter(), sensitive))
                    });
                }
                response
            }))
        }),
    }
}

/// A timer's loop: the n-th run is due at `start + n * interval` (n from 0 if eager, else 1);
/// one run at a time; a run that overruns makes the next start at once, so none is skipped.
/// A failing run is logged and the timer goes on; a stop interrupts the wait. With `once`, the
/// first run is at start and is the only one.
async fn run_timer<S: Service>(
    service: Arc<S>,
    timer: TimerEntrypoint<S>,
    once: bool,
    workers: Arc<Semaphore>,
    stop: CancellationToken,
    shared: Shared,
) {
    let start = tokio::time::Instant::now();
    let mut n: u32 = if timer.eager || once { 0 } else { 1 };
    loop {
        let due = start + timer.interval * n;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let _permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let context = Arc::new(WorkerContext::for_entrypoint(
            S::NAME,
            timer.name,
            ContextData::new(),
            shared.config.parent_calls_tracked,
        ));
        let outcome = tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return,
            outcome = run_worker(service.clone(), &shared, context.clone(), None, timer.handler) => outcome,
        };
        match outcome {
            Ok(Ok(())) => {
                tracing::debug!(
                    service = S::NAME,
                    timer = timer.name,
                    call_id = context.call_id(),
                    "timer ran"
                )
            }
            Ok(Err(error)) | Err(error) => {
                log_failure(&context, &error, timer.expected_exceptions, || None);
            }
        }
        if once {
            return;
        }
        n = n.saturating_add(1);
    }
}

/// Runs one worker: inside its context (and its `worker` span when `debug` is on), the
/// dependencies' `worker_setup`, the method, their `worker_result` and `worker_teardown`; then
/// tells the entrypoint waiters. A panic of the method or of `worker_setup` becomes the error
/// object of the panic (the derived `Dependencies` also guards each dependency's other hooks);
/// a refused `worker_setup` becomes the worker's error and the method does not run.
fn run_worker<'a, S, T, F>(
    service: Arc<S>,
    shared: &'a Shared,
    context: Arc<WorkerContext>,
    payload: Option<&'a [u8]>,
    call: impl FnOnce(Arc<S>) -> F + 'a,
) -> impl Future<Output = Result<T, RemoteError>> + 'a
where
    S: Service,
    T: Outcome,
    F: Future<Output = T>,
{
    use tracing::Instrument;
    // At `debug`: a span per worker costs more than a simple worker; `nameko::main`'s log
    // format shows the worker of each line from its context instead (`cli::WorkerFormat`).
    let span = tracing::debug_span!(
        "worker",
        service = context.service_name(),
        entrypoint = context.entrypoint(),
        call_id = context.call_id()
    );
    let worker = context.clone();
    let lifecycle = async move {
        // Each step keeps only what the next needs across its `await`: this future is part of
        // every worker's, so its size is paid at every message.
        let refused = AssertUnwindSafe(service.worker_setup(&worker))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::Config(panic_error(panic.as_ref()).value)))
            .err()
            .map(dependency_error);
        if let Some(error) = refused {
            // Rare, so boxed: its state does not enlarge every worker's future.
            return Box::pin(refuse(&*service, &worker, shared, payload, error)).await;
        }
        let mut outcome = AssertUnwindSafe(call(service.clone()))
            .catch_unwind()
            .await
            .map_err(|panic| panic_error(panic.as_ref()));
        let refusal = service
            .worker_result(&worker, &worker_result(&outcome))
            .await
            .err();
        if let Some(error) = refusal {
            let succeeded = matches!(&outcome, Ok(value) if value.result().is_ok());
            if succeeded {
                // A dependency could not stand by the worker's success (a commit failed): the
                // caller hears of the failure instead.
                outcome = outcome.map(|value| value.fail(dependency_error(error)));
            } else {
                tracing::warn!(%error, "a dependency's worker_result failed for a failed worker");
            }
        }
        service.worker_teardown(&worker).await;
        shared.worker_finished(&worker, payload, &worker_result(&outcome));
        outcome
    };
    // One future whether or not the span is enabled (entering a disabled span is a check of
    // an `Option`): two branches would each hold a copy of the lifecycle's state. And no
    // `async fn` around it, which would keep a second copy of the arguments.
    context.scope(lifecycle).instrument(span)
}

/// What a worker came to, as the dependencies' `worker_result` sees it.
fn worker_result<T: Outcome>(outcome: &Result<T, RemoteError>) -> WorkerResult<'_> {
    match outcome {
        Ok(outcome) => outcome.result(),
        Err(error) => WorkerResult::Failed(Cow::Borrowed(error)),
    }
}

/// A worker refused by a dependency's `worker_setup`: the dependencies set up before the
/// refusal see it and clean up, the waiters hear of it, the method does not run.
async fn refuse<S: Service, T>(
    service: &S,
    worker: &Arc<WorkerContext>,
    shared: &Shared,
    payload: Option<&[u8]>,
    error: RemoteError,
) -> Result<T, RemoteError> {
    let refused = WorkerResult::Failed(Cow::Borrowed(&error));
    let _ = service.worker_result(worker, &refused).await;
    service.worker_teardown(worker).await;
    shared.worker_finished(worker, payload, &refused);
    drop(refused);
    Err(error)
}

/// The error object for a dependency's refusal of a worker.
fn dependency_error(error: Error) -> RemoteError {
    RemoteError::new("DependencyError", error.to_string()).with_path("nameko_rs.DependencyError")
}

/// Handles the deliveries of one consumer.
trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, ()>;
    /// Settles a message delivered too many times without being settled for good (a poison
    /// message): rejected without requeue, dead-lettered where its queue has a dead-letter
    /// exchange.
    fn give_up(self: Arc<Self>, delivery: Delivery, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tracing::error!(routing_key = %delivery.routing_key, %reason, "dropped a message");
            if let Err(error) = delivery.reject(false).await {
                tracing::warn!(%error, "could not reject a message");
            }
        })
    }
}

/// Declares a listener's queue again (after the broker cancelled its consumer).
type Redeclare = Arc<dyn Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// A queue being consumed and what handles its deliveries.
struct Listener {
    queue: String,
    consumer: Consumer,
    handler: Arc<dyn Handler>,
    /// Declares the queue (and its bindings) again.
    redeclare: Redeclare,
}

/// Starts the container of service `S`: builds and starts its dependencies, declares its
/// queues and starts consuming them.
pub(crate) fn start<S: Service>(
    shared: Shared,
    options: ServiceOptions,
) -> BoxFuture<'static, Result<ServiceContainer, Error>> {
    Box::pin(async move {
        let cx = DependencyContext::new(
            S::NAME,
            shared.config.clone(),
            shared.transport.clone(),
            options.replacements,
        );
        let service = Arc::new(S::build(&cx).await?);
        cx.check_replacements_taken()?;
        let entrypoints = S::entrypoints();
        if let Some(restrict) = &options.restrict {
            let names: Vec<_> = entrypoints.iter().map(Entrypoint::name).collect();
            if let Some(unknown) = restrict.iter().find(|r| !names.contains(&r.as_str())) {
                return Err(Error::Config(format!(
                    "{}: no entrypoint named `{unknown}` (it has {})",
                    S::NAME,
                    names.join(", ")
                )));
            }
        }
        service.start().await?;
        match listen(service.clone(), entrypoints, options.restrict, &shared).await {
            Ok(container) => Ok(container),
            Err(error) => {
                // Started dependencies are stopped again.
                service.stop().await;
                Err(error)
            }
        }
    })
}

/// Registers the hooks, declares and consumes the queues, starts the timers and the container's
/// loop: everything of a start after the dependencies have started.
async fn listen<S: Service>(
    service: Arc<S>,
    entrypoints: Vec<Entrypoint<S>>,
    restrict: Option<Vec<String>>,
    shared: &Shared,
) -> Result<ServiceContainer, Error> {
    // This container's stop (by the runner, or when one of its loops fails) and kill (by the
    // runner, or when its workers outlive the stop timeout): cancelling them touches no other
    // container.
    let mut shared = shared.clone();
    shared.stop = shared.stop.child_token();
    shared.kill = shared.kill.child_token();
    {
        let stop = shared.stop.clone();
        // Every worker of the container, whatever fired it: a stop waits for them all.
        let tracker = TaskTracker::new();
        let workers = Arc::new(Semaphore::new(shared.config.max_workers.max(1)));
        for entrypoint in &entrypoints {
            if let Some(hook) = hook(&service, entrypoint, &workers, &tracker, &stop, &shared) {
                lock(&shared.hooks).insert((S::NAME, entrypoint.name()), hook);
            }
        }
        let names = entrypoints.iter().map(Entrypoint::name).collect();
        let mut rpc = Vec::new();
        let mut events = Vec::new();
        let mut timers = Vec::new();
        for entrypoint in entrypoints {
            if let Some(restrict) = &restrict
                && !restrict.iter().any(|r| r == entrypoint.name())
            {
                continue;
            }
            match entrypoint {
                Entrypoint::Rpc(e) => rpc.push(e),
                Entrypoint::Event(e) => events.push(e),
                Entrypoint::Timer(e) => timers.push((e, false)),
                Entrypoint::Once(e) => timers.push((e, true)),
                Entrypoint::Dummy(_) => {}
                Entrypoint::Http(e) => {
                    let route = http_route(
                        service.clone(),
                        e,
                        workers.clone(),
                        tracker.clone(),
                        &shared,
                    );
                    lock(&shared.http_routes).push(route);
                }
            }
        }
        let mut listeners = Vec::new();
        if !rpc.is_empty() {
            let queue = protocol::rpc_queue_name(S::NAME);
            let redeclare: Redeclare = Arc::new({
                let shared = shared.clone();
                move || {
                    let shared = shared.clone();
                    Box::pin(async move {
                        let t = &shared.transport;
                        let exchange = &shared.config.rpc_exchange;
                        let queue = protocol::rpc_queue_name(S::NAME);
                        t.declare_exchange(&ExchangeSpec::durable_topic(exchange))
                            .await?;
                        t.declare_queue(&QueueSpec::durable(&queue)).await?;
                        t.bind_queue(&queue, exchange, &protocol::rpc_binding_key(S::NAME))
                            .await?;
                        Ok(())
                    })
                }
            });
            redeclare().await?;
            let consumer = shared
                .transport
                .consume(&queue, shared.config.prefetch_count)
                .await?;
            let handler = Arc::new(RpcHandler {
                service: service.clone(),
                entrypoints: rpc,
                shared: shared.clone(),
            });
            listeners.push(Listener {
                queue,
                consumer,
                handler,
                redeclare,
            });
        }
        let random_identifier = uuid::Uuid::new_v4().simple().to_string();
        for entrypoint in events {
            let queue = declare_event_queue::<S>(&shared, &entrypoint, &random_identifier).await?;
            let redeclare: Redeclare = Arc::new({
                let (shared, identifier) = (shared.clone(), random_identifier.clone());
                move || {
                    let (shared, identifier) = (shared.clone(), identifier.clone());
                    Box::pin(async move {
                        declare_event_queue::<S>(&shared, &entrypoint, &identifier).await?;
                        Ok(())
                    })
                }
            });
            let consumer = shared
                .transport
                .consume(&queue, shared.config.prefetch_count)
                .await?;
            let handler = Arc::new(EventHandler {
                service: service.clone(),
                entrypoint,
                shared: shared.clone(),
            });
            listeners.push(Listener {
                queue,
                consumer,
                handler,
                redeclare,
            });
        }
        tracing::info!(
            service = S::NAME,
            queues = ?listeners.iter().map(|l| l.queue.as_str()).collect::<Vec<_>>(),
            "service started"
        );
        let timers = timers
            .into_iter()
            .map(|(timer, once)| {
                Box::pin(run_timer(
                    service.clone(),
                    timer,
                    once,
                    workers.clone(),
                    stop.clone(),
                    shared.clone(),
                )) as BoxFuture<'static, ()>
            })
            .collect();
        let lifecycle: Arc<dyn Lifecycle> = service;
        let container = Container {
            service: S::NAME,
            workers,
            tracker,
            stop,
            dependencies: lifecycle,
            shared,
        };
        let task = tokio::spawn(run(container, listeners, timers));
        Ok(ServiceContainer {
            name: S::NAME,
            entrypoints: names,
            task,
        })
    }
}

/// The service's dependencies, as the (non-generic) end of a container sees them.
trait Lifecycle: Send + Sync + 'static {
    fn stop(&self) -> BoxFuture<'_, ()>;
    fn kill(&self);
}

impl<S: Service> Lifecycle for S {
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(super::Dependencies::stop(self))
    }
    fn kill(&self) {
        super::Dependencies::kill(self)
    }
}

/// Fires an entrypoint directly (tests' entrypoint hooks): arguments as JSON, context data.
pub(crate) type Hook = Arc<
    dyn Fn(
            serde_json::Value,
            ContextData,
        ) -> BoxFuture<'static, Result<serde_json::Value, RemoteError>>
        + Send
        + Sync,
>;

/// The hook of one entrypoint: the worker runs as if the entrypoint had fired (a worker slot,
/// a context with the given data, the dependencies' hooks). HTTP entrypoints have none: tests
/// send them requests.
fn hook<S: Service>(
    service: &Arc<S>,
    entrypoint: &Entrypoint<S>,
    workers: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    shared: &Shared,
) -> Option<Hook> {
    enum Kind<S> {
        Rpc(
            fn(Arc<S>, RequestBody) -> super::RpcFuture,
            &'static [&'static str],
        ),
        Event(fn(Arc<S>, Vec<u8>) -> super::EventFuture, &'static str),
        Timer(fn(Arc<S>) -> super::TimerFuture),
    }
    let (kind, expected, sensitive) = match entrypoint {
        Entrypoint::Rpc(e) | Entrypoint::Dummy(e) => (
            Kind::Rpc(e.handler, e.params),
            e.expected_exceptions,
            e.sensitive_arguments,
        ),
        Entrypoint::Event(e) => (
            Kind::Event(e.handler, e.param),
            e.expected_exceptions,
            e.sensitive_arguments,
        ),
        Entrypoint::Timer(e) | Entrypoint::Once(e) => {
            (Kind::Timer(e.handler), e.expected_exceptions, &[][..])
        }
        Entrypoint::Http(_) => return None,
    };
    let kind = Arc::new(kind);
    let name = entrypoint.name();
    let (service, workers, shared) = (service.clone(), workers.clone(), shared.clone());
    let (tracker, stop) = (tracker.clone(), stop.clone());
    Some(Arc::new(
        move |args: serde_json::Value, data: ContextData| {
            let (service, workers, shared, kind) = (
                service.clone(),
                workers.clone(),
                shared.clone(),
                kind.clone(),
            );
            let stop = stop.clone();
            Box::pin(tracker.track_future(async move {
                let stopped = || {
                    RemoteError::new("ServiceStopped", format!("{} has stopped", S::NAME))
                        .with_path("nameko_rs.ServiceStopped")
                };
                if stop.is_cancelled() {
                    return Err(stopped());
                }
                let _permit = workers.acquire_owned().await.map_err(|_| stopped())?;
                let tracked = shared.config.parent_calls_tracked;
                let context = Arc::new(WorkerContext::for_entrypoint(S::NAME, name, data, tracked));
                match &*kind {
                    Kind::Rpc(handler, params) => {
                        let body = match args {
                            serde_json::Value::Array(args) => {
                                serde_json::json!({"args": args, "kwargs": {}})
                            }
                            serde_json::Value::Object(kwargs) => {
                                serde_json::json!({"args": [], "kwargs": kwargs})
                            }
                            serde_json::Value::Null => {
                                serde_json::json!({"args": [], "kwargs": {}})
                            }
                            one => serde_json::json!({"args": [one], "kwargs": {}}),
                        };
                        let payload = body.to_string().into_bytes();
                        let body = RequestBody::parse(&payload)
                            .map_err(|e| RemoteError::nameko("MalformedRequest", e.to_string()))?;
                        let worker = context.clone();
                        let json = run_worker(service, &shared, worker, Some(&payload), |s| {
                            handler(s, body)
                        })
                        .await
                        .and_then(|result| result)
                        .inspect_err(|error| {
                            // Logged as the worker's failure would be, had a message fired it.
                            log_failure(&context, error, expected, || {
                                Some(arguments::rpc_arguments(&payload, params, sensitive))
                            });
                        })?;
                        serde_json::from_slice(&json).map_err(|e| {
                            RemoteError::nameko("UnserializableValueError", e.to_string())
                        })
                    }
                    Kind::Event(handler, param) => {
                        let payload = args.to_string().into_bytes();
                        let body = payload.clone();
                        let worker = context.clone();
                        run_worker(service, &shared, worker, Some(&payload), |s| {
                            handler(s, body)
                        })
                        .await
                        .and_then(|result| {
                            result.map_err(|e| match e {
                                EventError::Handler(error) => error,
                                EventError::Payload(reason) => {
                                    RemoteError::new("EventPayloadError", reason)
                                        .with_path("nameko_rs.EventPayloadError")
                                }
                            })
                        })
                        .inspect_err(|error| {
                            log_failure(&context, error, expected, || {
                                Some(arguments::event_arguments(&payload, param, sensitive))
                            });
                        })?;
                        Ok(serde_json::Value::Null)
                    }
                    Kind::Timer(handler) => {
                        run_worker(service, &shared, context.clone(), None, handler)
                            .await
                            .and_then(|result| result)
                            .inspect_err(|error| {
                                log_failure(&context, error, expected, || None);
                            })?;
                        Ok(serde_json::Value::Null)
                    }
                }
            })) as BoxFuture<'static, _>
        },
    ))
}

async fn declare_event_queue<S: Service>(
    shared: &Shared,
    e: &EventEntrypoint<S>,
    random_identifier: &str,
) -> Result<String, Error> {
    let identifier = match (
        &shared.config.broadcast_identifier,
        e.handler_type,
        e.reliable_delivery,
    ) {
        (Some(identifier), _, _) => identifier.as_str(),
        (None, HandlerType::Broadcast, true) => {
            return Err(Error::Config(format!(
                "{}.{}: a broadcast handler with reliable_delivery needs a stable broadcast identifier \
                 (set Config::broadcast_identifier, e.g. to the host name), or declare it with \
                 reliable_delivery = false",
                S::NAME,
                e.name
            )));
        }
        (None, _, _) => random_identifier,
    };
    let queue = protocol::event_queue_name(
        e.source_service,
        e.event_type,
        e.handler_type,
        S::NAME,
        e.name,
        identifier,
    );
    let exchange = crate::events::event_exchange(&shared.config, e.source_service);
    let spec = QueueSpec {
        auto_delete: !e.reliable_delivery,
        exclusive: e.handler_type == HandlerType::Broadcast && !e.reliable_delivery,
        ..QueueSpec::durable(&queue)
    };
    let t = &shared.transport;
    t.declare_exchange(&exchange).await?;
    t.declare_queue(&spec).await?;
    t.bind_queue(&queue, &exchange.name, e.event_type).await?;
    Ok(queue)
}

/// A started container, as its loop (`run`) sees it.
struct Container {
    service: &'static str,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    dependencies: Arc<dyn Lifecycle>,
    shared: Shared,
}

/// A container's life after its start: consume until stopped, let the running workers finish
/// (up to the stop timeout, then kill them), stop its dependencies (up to the stop timeout too,
/// then kill them), close its consumers.
async fn run(
    container: Container,
    listeners: Vec<Listener>,
    timers: Vec<BoxFuture<'static, ()>>,
) -> Result<(), Error> {
    let Container {
        service,
        workers,
        tracker,
        stop,
        dependencies,
        shared,
    } = container;
    let kill = shared.kill.clone();
    let timers: Vec<_> = timers.into_iter().map(tokio::spawn).collect();
    if listeners.is_empty() {
        // Nothing to consume (HTTP or timers only): run until stopped (the runner stops every
        // service when the connection is lost).
        stop.cancelled().await;
    }
    // Every loop is watched at once: the first to fail stops the container at once.
    let mut loops: futures_util::stream::FuturesUnordered<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(consume(
                listener,
                workers.clone(),
                tracker.clone(),
                stop.clone(),
                kill.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let mut consumers = Vec::new();
    let mut failure = None;
    while let Some(ended) = loops.next().await {
        match ended {
            Ok((ended, None)) => consumers.extend(ended),
            Ok((ended, Some(reason))) => {
                consumers.extend(ended);
                failure.get_or_insert(reason);
                stop.cancel();
            }
            Err(e) => {
                failure.get_or_insert(format!("a consumer loop ended abnormally: {e}"));
                stop.cancel();
            }
        }
    }
    // The workers (and timer runs) in progress finish, within the stop timeout.
    tracker.close();
    let drained = async {
        for timer in timers {
            // A timer loop ends at the stop once its running tick, if any, has finished.
            let _ = timer.await;
        }
        tracker.wait().await;
    };
    tokio::pin!(drained);
    let done = tokio::select! {
        _ = &mut drained => true,
        _ = kill.cancelled() => false,
        _ = tokio::time::sleep(shared.config.stop_timeout) => {
            tracing::warn!(service, "workers still running after the stop timeout; killing them");
            kill.cancel();
            false
        }
    };
    if !done {
        drained.await;
    }
    if kill.is_cancelled() {
        dependencies.kill();
    } else {
        tokio::select! {
            _ = dependencies.stop() => {}
            _ = kill.cancelled() => dependencies.kill(),
            _ = tokio::time::sleep(shared.config.stop_timeout) => {
                tracing::warn!(service, "dependencies still stopping after the stop timeout; killing them");
                dependencies.kill();
            }
        }
    }
    for consumer in consumers {
        consumer.close().await;
    }
    tracing::info!(service, "service stopped");
    match failure {
        Some(reason) => {
            tracing::error!(service, %reason, "service failed");
            Err(Error::ServiceFailed {
                service: service.to_owned(),
                reason,
            })
        }
        None => Ok(()),
    }
}

/// The first wait before declaring a cancelled consumer's queue again; it doubles.
const FIRST_RECONSUME_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_RECONSUME_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
/// Attempts to consume a cancelled consumer's queue again before the service fails (about 30 s).
const RECONSUME_ATTEMPTS: u32 = 10;
/// How long a stop waits for a cancelled consumer to hand back the messages it prefetched.
const RETURN_PREFETCHED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One consumer's loop: returns its consumers (cancelled, to be closed once the workers are
/// done: a consumer the broker cancelled was replaced by a new one) and why it failed, if it did.
///
/// A consumer the broker cancels (its queue deleted, a node lost, a `consumer_timeout`) is
/// replaced: the queue is declared again and consumed again, with a doubling delay, and the
/// service fails only when that does not work. At the stop, the consumer is cancelled and every
/// message it received but did not start is returned to the queue at once, for the service's
/// other instances, instead of waiting for this one's running workers.
async fn consume(
    listener: Listener,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    kill: CancellationToken,
    shared: Shared,
) -> (Vec<Consumer>, Option<String>) {
    let Listener {
        queue,
        mut consumer,
        handler,
        redeclare,
    } = listener;
    let mut retired = Vec::new();
    let mut failure = None;
    let max_redeliveries = shared.config.max_redeliveries;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                failure = Some(format!("consumer of {queue} failed: {e}"));
                break;
            }
            None if stop.is_cancelled() => break,
            None if shared.transport.is_closed() || shared.transport.connection_lost() => {
                failure = Some(format!("consumer of {queue} ended with the connection"));
                break;
            }
            None => {
                tracing::warn!(
                    %queue,
                    "the broker cancelled the consumer (its queue deleted, a node lost, or a consumer timeout); declaring the queue and consuming it again"
                );
                match reconsume(&queue, &redeclare, &shared, &stop).await {
                    Ok(Some(fresh)) => {
                        tracing::info!(%queue, "consuming again");
                        retired.push(std::mem::replace(&mut consumer, fresh));
                        continue;
                    }
                    Ok(None) => break,
                    Err(reason) => {
                        failure = Some(reason);
                        break;
                    }
                }
            }
        };
        if delivery.redelivered {
            let count = super::redelivery::redeliveries(&queue, &delivery);
            if count > max_redeliveries {
                let reason = format!(
                    "delivered {} times without being settled (MAX_REDELIVERIES is {max_redeliveries})",
                    count.saturating_add(1)
                );
                tracker.spawn(handler.clone().give_up(delivery, reason));
                continue;
            }
        }
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                return_to_queue(delivery).await;
                break;
            }
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => {
                    return_to_queue(delivery).await;
                    break;
                }
            },
        };
        let (handler, kill) = (handler.clone(), kill.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                biased;
                // Killed: the delivery is neither settled nor answered; the broker redelivers it.
                _ = kill.cancelled() => {}
                _ = handler.handle(delivery) => {}
            }
        });
    }
    consumer.cancel().await;
    if failure.is_none() {
        // What the consumer holds but no worker started goes back now, not after the drain.
        let returned = async {
            let mut returned = 0usize;
            while let Some(Ok(delivery)) = consumer.next().await {
                return_to_queue(delivery).await;
                returned += 1;
            }
            returned
        };
        match tokio::time::timeout(RETURN_PREFETCHED_TIMEOUT, returned).await {
            Ok(0) => {}
            Ok(returned) => {
                tracing::info!(%queue, returned, "returned prefetched messages to the queue")
            }
            Err(_) => tracing::debug!(%queue, "the consumer did not end after its cancel"),
        }
    }
    retired.push(consumer);
    (retired, failure)
}

/// Puts a delivery no worker started back on its queue.
async fn return_to_queue(delivery: Delivery) {
    if let Err(error) = delivery.reject(true).await {
        tracing::debug!(%error, "could not return a message to its queue");
    }
}

/// Declares a cancelled consumer's queue again and consumes it: the new consumer, `None` if the
/// service stopped meanwhile, or why it could not.
async fn reconsume(
    queue: &str,
    redeclare: &Redeclare,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<Option<Consumer>, String> {
    let mut delay = FIRST_RECONSUME_DELAY;
    let mut last_error = String::new();
    for _ in 0..RECONSUME_ATTEMPTS {
        let attempt = async {
            redeclare().await.map_err(|e| e.to_string())?;
            shared
                .transport
                .consume(queue, shared.config.prefetch_count)
                .await
                .map_err(|e| e.to_string())
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(consumer) => return Ok(Some(consumer)),
            Err(error) => {
                if shared.transport.connection_lost() {
                    return Err(format!("consumer of {queue} ended with the connection"));
                }
                tracing::warn!(%queue, %error, "could not consume the queue again; trying again in {delay:?}");
                last_error = error;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RECONSUME_DELAY);
    }
    Err(format!(
        "the broker cancelled the consumer of {queue}, and it could not be consumed again: {last_error}"
    ))
}

struct RpcHandler<S> {
    service: Arc<S>,
    entrypoints: Vec<RpcEntrypoint<S>>,
    shared: Shared,
}

impl<S: Service> Handler for RpcHandler<S> {
    fn handle(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, ()> {
        Box::pin(self.reply(delivery))
    }

    fn give_up(self: Arc<Self>, delivery: Delivery, reason: String) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tracing::error!(
                service = S::NAME,
                routing_key = %delivery.routing_key,
                %reason,
                "gave up an RPC request: its method does not run again"
            );
            if let Some(reply_to) = delivery.properties.reply_to.clone() {
                let error = RemoteError::new(
                    "RedeliveryLimitExceeded",
                    format!("the request to {} was {reason}", delivery.routing_key),
                )
                .with_path("nameko_rs.RedeliveryLimitExceeded");
                let reply = Err(error);
                let correlation_id = delivery.properties.correlation_id.as_deref();
                if let Err(error) = self.publish_reply(&reply_to, correlation_id, &reply).await {
                    tracing::warn!(service = S::NAME, %error, "could not tell the caller");
                }
            }
            if let Err(error) = delivery.reject(false).await {
                tracing::warn!(service = S::NAME, %error, "could not reject a request");
            }
        })
    }
}

/// How many times a reply is published before the request is given up (the method never runs
/// twice for one delivery).
const REPLY_PUBLISH_ATTEMPTS: u32 = 3;
/// The wait before publishing a reply again; it doubles.
const FIRST_REPLY_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

impl<S: Service> RpcHandler<S> {
    // Not an `async fn`: that would keep the delivery twice in the future's state (once as
    // the argument, once as the local it is moved to).
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would copy the delivery"
    )]
    fn reply(self: Arc<Self>, delivery: Delivery) -> impl Future<Output = ()> + Send {
        async move {
            if delivery.properties.reply_to.is_none() {
                tracing::error!(
                    service = S::NAME,
                    routing_key = %delivery.routing_key,
                    "rejected an RPC request without reply_to: there is nowhere to send its reply"
                );
                if let Err(e) = delivery.reject(false).await {
                    tracing::warn!(error = %e, "could not reject a request");
                }
                return;
            };
            if delivery.properties.correlation_id.is_none() {
                tracing::warn!(
                    service = S::NAME,
                    routing_key = %delivery.routing_key,
                    "RPC request without correlation_id: its caller cannot match the reply"
                );
            }
            let method = delivery
                .routing_key
                .strip_prefix(S::NAME)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or(&delivery.routing_key);
            let reply = self.call(method, &delivery).await;
            let reply_to = delivery.properties.reply_to.as_deref().unwrap_or_default();
            let correlation_id = delivery.properties.correlation_id.as_deref();
            let Err(error) = self.publish_reply(reply_to, correlation_id, &reply).await else {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(service = S::NAME, error = %e, "could not acknowledge a request");
                }
                return;
            };
            // Boxed: rare, and its state must not enlarge every request's future.
            Box::pin(self.reply_failed(delivery, error)).await;
        }
    }

    /// Publishes a reply (Nameko's `{"result", "error"}`), again on a failure that may pass (a
    /// channel closed under it, a nack), up to [`REPLY_PUBLISH_ATTEMPTS`] times.
    async fn publish_reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &Result<Vec<u8>, RemoteError>,
    ) -> Result<(), crate::transport::TransportError> {
        let message = self.reply_message(reply_to, correlation_id, reply);
        match self.shared.transport.publish(message).await {
            Ok(()) => Ok(()),
            // Boxed: rare, and its state (a timer among it) must not enlarge every request's.
            Err(error) => {
                Box::pin(self.publish_reply_again(reply_to, correlation_id, reply, error)).await
            }
        }
    }

    /// The attempts after the first of [`publish_reply`](Self::publish_reply).
    async fn publish_reply_again(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &Result<Vec<u8>, RemoteError>,
        mut error: crate::transport::TransportError,
    ) -> Result<(), crate::transport::TransportError> {
        use crate::transport::TransportError;
        let mut delay = FIRST_REPLY_RETRY_DELAY;
        for attempt in 1..REPLY_PUBLISH_ATTEMPTS {
            let passing = matches!(
                error,
                TransportError::Connection(_) | TransportError::Nacked
            );
            if !passing || self.shared.transport.connection_lost() {
                break;
            }
            tracing::warn!(service = S::NAME, %error, attempt, "could not publish a reply; publishing it again");
            tokio::time::sleep(delay).await;
            delay *= 2;
            let message = self.reply_message(reply_to, correlation_id, reply);
            match self.shared.transport.publish(message).await {
                Ok(()) => return Ok(()),
                Err(again) => error = again,
            }
        }
        Err(error)
    }

    /// The reply message to `reply_to`.
    fn reply_message(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        reply: &Result<Vec<u8>, RemoteError>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            exchange: self.shared.config.rpc_exchange.clone(),
            routing_key: reply_to.to_owned(),
            mandatory: false,
            properties: Properties {
                correlation_id: correlation_id.map(str::to_owned),
                ..Properties::nameko_json()
            },
            body: match reply {
                Ok(result) => protocol::encode_reply_result(result),
                Err(error) => protocol::encode_reply_error(error),
            },
        }
    }

    /// A reply that could not be published: the caller is told so if a small error reply
    /// gets through (the request is then acknowledged: it has its answer); otherwise the
    /// request is rejected without requeue (dead-lettered where the queue has a dead-letter
    /// exchange). Never requeued: that would run the method again, with its side effects. On a
    /// lost connection nothing can be settled, and the broker redelivers the request.
    async fn reply_failed(&self, delivery: Delivery, error: crate::transport::TransportError) {
        let method = delivery.routing_key.as_str();
        if self.shared.transport.connection_lost() {
            tracing::error!(service = S::NAME, %method, %error, "could not publish a reply: the connection is lost, the request will be redelivered");
            return;
        }
        tracing::error!(service = S::NAME, %method, %error, "could not publish a reply; the method will not run again");
        if let Some(reply_to) = delivery.properties.reply_to.as_deref() {
            let failure = RemoteError::new(
                "ReplyPublishError",
                format!("the reply of {method} could not be sent: {error}"),
            )
            .with_path("nameko_rs.ReplyPublishError");
            let correlation_id = delivery.properties.correlation_id.as_deref();
            if self
                .publish_reply(reply_to, correlation_id, &Err(failure))
                .await
                .is_ok()
            {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(service = S::NAME, error = %e, "could not acknowledge a request");
                }
                return;
            }
        }
        if let Err(e) = delivery.reject(false).await {
            tracing::warn!(service = S::NAME, error = %e, "could not reject a request");
        }
    }

    async fn call(&self, method: &str, delivery: &Delivery) -> Result<Vec<u8>, RemoteError> {
        let Some(entrypoint) = self.entrypoints.iter().find(|e| e.name == method) else {
            tracing::warn!(service = S::NAME, %method, "MethodNotFound");
            return Err(RemoteError::nameko("MethodNotFound", method.to_owned()));
        };
        let content_type = delivery.properties.content_type.as_deref();
        let body = match content_type {
            _ if protocol::is_json(content_type) => RequestBody::parse(&delivery.body),
            Some(other) => Err(MalformedRequest::ContentType(protocol::shorten(
                other.to_owned(),
            ))),
            None => RequestBody::parse(&delivery.body),
        };
        let body = body.map_err(|e| {
            tracing::warn!(service = S::NAME, %method, error = %e, "MalformedRequest");
            RemoteError::nameko("MalformedRequest", crate::protocol::shorten(e.to_string()))
        })?;
        let context = Arc::new(WorkerContext::for_entrypoint(
            S::NAME,
            entrypoint.name,
            protocol::context_from_headers(&delivery.properties.headers),
            self.shared.config.parent_calls_tracked,
        ));
        let handler = entrypoint.handler;
        // Boxed on its own: the request's future (allocated and moved for every message) then
        // stays under 1 KB, where malloc is fastest; measured, `benches/rpc.rs`.
        let outcome = Box::pin(run_worker(
            self.service.clone(),
            &self.shared,
            context.clone(),
            Some(&delivery.body),
            |service| handler(service, body),
        ))
        .await;
        match outcome {
            Ok(Ok(result)) => {
                tracing::debug!(service = S::NAME, %method, call_id = context.call_id(), "worker finished");
                Ok(result)
            }
            Ok(Err(error)) | Err(error) => {
                log_failure(&context, &error, entrypoint.expected_exceptions, || {
                    Some(arguments::rpc_arguments(
                        &delivery.body,
                        entrypoint.params,
                        entrypoint.sensitive_arguments,
                    ))
                });
                Err(error)
            }
        }
    }
}

struct EventHandler<S> {
    service: Arc<S>,
    entrypoint: EventEntrypoint<S>,
    shared: Shared,
}

impl<S: Service> Handler for EventHandler<S> {
    fn handle(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, ()> {
        Box::pin(self.handle_event(delivery))
    }
}

impl<S: Service> EventHandler<S> {
    async fn handle_event(self: Arc<Self>, delivery: Delivery) {
        let e = &self.entrypoint;
        let context = Arc::new(WorkerContext::for_entrypoint(
            S::NAME,
            e.name,
            protocol::context_from_headers(&delivery.properties.headers),
            self.shared.config.parent_calls_tracked,
        ));
        let content_type = delivery.properties.content_type.as_deref();
        let outcome = match content_type {
            _ if protocol::is_json(content_type) => {
                let (handler, body) = (e.handler, delivery.body.clone());
                run_worker(
                    self.service.clone(),
                    &self.shared,
                    context.clone(),
                    Some(&delivery.body),
                    |service| handler(service, body),
                )
                .await
                .unwrap_or_else(|panic| Err(EventError::Handler(panic)))
            }
            other => Err(EventError::Payload(protocol::shorten(format!(
                "unsupported content type `{}`",
                other.unwrap_or_default()
            )))),
        };
        let (service, handler, call_id) = (S::NAME, e.name, context.call_id());
        let (source, event_type) = (e.source_service, e.event_type);
        let settled = match outcome {
            Ok(()) => {
                tracing::debug!(
                    service,
                    handler,
                    call_id,
                    source,
                    event_type,
                    "event handled"
                );
                delivery.ack().await
            }
            Err(EventError::Payload(reason)) => {
                let arguments =
                    arguments::event_arguments(&delivery.body, e.param, e.sensitive_arguments);
                tracing::error!(
                    service, handler, source, event_type,
                    reason = %arguments.scrub(&reason),
                    arguments = %arguments.shown,
                    "dropped an event whose payload does not fit the handler"
                );
                delivery.reject(false).await
            }
            Err(EventError::Handler(error)) => {
                log_failure(&context, &error, e.expected_exceptions, || {
                    Some(arguments::event_arguments(
                        &delivery.body,
                        e.param,
                        e.sensitive_arguments,
                    ))
                });
                if e.requeue_on_error {
                    tracing::warn!(
                        service,
                        handler,
                        call_id,
                        source,
                        event_type,
                        "requeueing the failed event"
                    );
                    delivery.reject(true).await
                } else {
                    delivery.ack().await
                }
            }
        };
        if let Err(error) = settled {
            tracing::warn!(service, handler, %error, "could not settle an event");
        }
    }
}
