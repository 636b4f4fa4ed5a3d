//! One running service: its consumers, its workers, their limit, and its stop.
//!
//! Each entrypoint that listens on a queue (the RPC queue `rpc-<service>`, one queue per event
//! handler) has a consumer loop. A loop takes a delivery, waits for one of the service's
//! `max_workers` worker slots (shared by all its entrypoints) and spawns a worker for it. The
//! worker runs the entrypoint's handler inside a [`WorkerContext`] and settles the delivery: an
//! RPC request is acknowledged only after its reply is published; an event after its handler
//! finished.

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
    DependencyContext, Entrypoint, EventEntrypoint, HttpEntrypoint, RpcEntrypoint, Service,
    TimerEntrypoint,
};
use crate::context::WorkerContext;
use crate::error::Error;
use crate::events::{EventError, HandlerType};
use crate::http::{Route, error_response};
use crate::protocol::Headers;
use crate::protocol::{self, CONTENT_TYPE_JSON, MalformedRequest, RemoteError, RequestBody};
use crate::transport::{Consumer, Delivery, ExchangeSpec, OutgoingMessage, Properties, QueueSpec};
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// A started service. Stop it through the runner's [`StopHandle`](super::runner::StopHandle).
pub struct ServiceContainer {
    pub(crate) name: &'static str,
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

/// An HTTP route of service `S`: each request waits for a worker slot, then runs in a worker
/// context of its own (empty context data, as in Nameko).
fn http_route<S: Service>(
    service: Arc<S>,
    entrypoint: HttpEntrypoint<S>,
    workers: Arc<Semaphore>,
    shared: &Shared,
) -> Route {
    let (kill, tracked) = (shared.kill.clone(), shared.config.parent_calls_tracked);
    let (name, handler) = (entrypoint.name, entrypoint.handler);
    Route {
        service: S::NAME,
        entrypoint: name,
        methods: entrypoint.methods,
        route: entrypoint.route,
        segments: entrypoint.segments,
        handler: Arc::new(move |call| {
            let (service, workers, kill) = (service.clone(), workers.clone(), kill.clone());
            Box::pin(async move {
                let Ok(_permit) = workers.acquire_owned().await else {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                let context = Arc::new(WorkerContext::new(S::NAME, name, &Headers::new(), tracked));
                tokio::select! {
                    biased;
                    _ = kill.cancelled() => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    outcome = run_worker(context, handler(service, call)) => outcome.unwrap_or_else(|panic| {
                        tracing::error!(service = S::NAME, entrypoint = name, panic = %panic.value, "worker panicked");
                        error_response(&panic, &[])
                    }),
                }
            })
        }),
    }
}

/// A timer's loop: the n-th run is due at `start + n * interval` (n from 0 if eager, else 1);
/// one run at a time; a run that overruns makes the next start at once, so none is skipped.
/// A failing run is logged and the timer goes on; a stop interrupts the wait.
async fn run_timer<S: Service>(
    service: Arc<S>,
    timer: TimerEntrypoint<S>,
    workers: Arc<Semaphore>,
    shared: Shared,
) {
    let start = tokio::time::Instant::now();
    let mut n: u32 = if timer.eager { 0 } else { 1 };
    loop {
        let due = start + timer.interval * n;
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let _permit = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let context = Arc::new(WorkerContext::new(
            S::NAME,
            timer.name,
            &Headers::new(),
            shared.config.parent_calls_tracked,
        ));
        let call_id = context.call_id().to_owned();
        let outcome = tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return,
            outcome = run_worker(context, (timer.handler)(service.clone())) => outcome,
        };
        match outcome {
            Ok(Ok(())) => {
                tracing::debug!(service = S::NAME, timer = timer.name, %call_id, "timer ran")
            }
            Ok(Err(error)) | Err(error) => {
                tracing::error!(service = S::NAME, timer = timer.name, %call_id, %error, "timer run failed; the timer goes on")
            }
        }
        n = n.saturating_add(1);
    }
}

/// Runs a worker's future inside its context and its `worker` span (service, entrypoint, call
/// id: every log line of the worker carries them); a panic becomes the error object of the panic.
async fn run_worker<T>(
    context: Arc<WorkerContext>,
    future: impl Future<Output = T>,
) -> Result<T, RemoteError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "worker",
        service = context.service_name(),
        entrypoint = context.entrypoint(),
        call_id = context.call_id()
    );
    context
        .scope(AssertUnwindSafe(future).catch_unwind())
        .instrument(span)
        .await
        .map_err(|panic| panic_error(panic.as_ref()))
}

/// Handles the deliveries of one consumer.
trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, ()>;
}

/// A queue being consumed and what handles its deliveries.
struct Listener {
    queue: String,
    consumer: Consumer,
    handler: Arc<dyn Handler>,
}

/// Starts the container of service `S`: builds its dependencies, declares its queues and starts
/// consuming them.
pub(crate) fn start<S: Service>(
    shared: Shared,
) -> BoxFuture<'static, Result<ServiceContainer, Error>> {
    Box::pin(async move {
        let cx = DependencyContext::new(S::NAME, shared.config.clone(), shared.transport.clone());
        let service = Arc::new(S::build(&cx).await?);
        let workers = Arc::new(Semaphore::new(shared.config.max_workers.max(1)));
        let mut rpc = Vec::new();
        let mut events = Vec::new();
        let mut timers = Vec::new();
        for entrypoint in S::entrypoints() {
            match entrypoint {
                Entrypoint::Rpc(e) => rpc.push(e),
                Entrypoint::Event(e) => events.push(e),
                Entrypoint::Timer(e) => timers.push(e),
                Entrypoint::Http(e) => {
                    let route = http_route(service.clone(), e, workers.clone(), &shared);
                    lock(&shared.http_routes).push(route);
                }
            }
        }
        let mut listeners = Vec::new();
        if !rpc.is_empty() {
            let t = &shared.transport;
            let exchange = &shared.config.rpc_exchange;
            let queue = protocol::rpc_queue_name(S::NAME);
            t.declare_exchange(&ExchangeSpec::durable_topic(exchange))
                .await?;
            t.declare_queue(&QueueSpec::durable(&queue)).await?;
            t.bind_queue(&queue, exchange, &protocol::rpc_binding_key(S::NAME))
                .await?;
            let consumer = t.consume(&queue, shared.config.prefetch_count).await?;
            let handler = Arc::new(RpcHandler {
                service: service.clone(),
                entrypoints: rpc,
                shared: shared.clone(),
            });
            listeners.push(Listener {
                queue,
                consumer,
                handler,
            });
        }
        let random_identifier = uuid::Uuid::new_v4().simple().to_string();
        for entrypoint in events {
            let queue = declare_event_queue::<S>(&shared, &entrypoint, &random_identifier).await?;
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
            });
        }
        tracing::info!(
            service = S::NAME,
            queues = ?listeners.iter().map(|l| l.queue.as_str()).collect::<Vec<_>>(),
            "service started"
        );
        let timers = timers
            .into_iter()
            .map(|timer| {
                Box::pin(run_timer(
                    service.clone(),
                    timer,
                    workers.clone(),
                    shared.clone(),
                )) as BoxFuture<'static, ()>
            })
            .collect();
        let task = tokio::spawn(run(S::NAME, listeners, timers, workers, shared));
        Ok(ServiceContainer {
            name: S::NAME,
            task,
        })
    })
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

async fn run(
    service: &'static str,
    listeners: Vec<Listener>,
    timers: Vec<BoxFuture<'static, ()>>,
    workers: Arc<Semaphore>,
    shared: Shared,
) -> Result<(), Error> {
    let tracker = TaskTracker::new();
    // Stops this container's loops: on a stop of the runner, or when one loop fails.
    let stop = shared.stop.child_token();
    let timers: Vec<_> = timers.into_iter().map(tokio::spawn).collect();
    if listeners.is_empty() {
        // Nothing to consume (HTTP or timers only): run until stopped.
        stop.cancelled().await;
    }
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(consume(
                listener,
                workers.clone(),
                tracker.clone(),
                stop.clone(),
                shared.kill.clone(),
            ))
        })
        .collect();
    let mut consumers = Vec::new();
    let mut failure = None;
    for handle in loops {
        match handle.await {
            Ok((consumer, None)) => consumers.push(consumer),
            Ok((consumer, Some(reason))) => {
                consumers.push(consumer);
                failure.get_or_insert(reason);
                stop.cancel();
            }
            Err(e) => {
                failure.get_or_insert(format!("a consumer loop ended abnormally: {e}"));
                stop.cancel();
            }
        }
    }
    for timer in timers {
        // A timer loop ends at the stop, once its running tick (if any) has finished.
        let _ = timer.await;
    }
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = shared.kill.cancelled() => tracker.wait().await,
        _ = tokio::time::sleep(shared.config.stop_timeout) => {
            tracing::warn!(service, "workers still running after the stop timeout; killing them");
            shared.kill.cancel();
            tracker.wait().await;
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

/// One consumer's loop: returns the consumer (cancelled, to be closed once the workers are done)
/// and why it failed, if it did.
async fn consume(
    listener: Listener,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    kill: CancellationToken,
) -> (Consumer, Option<String>) {
    let Listener {
        queue,
        mut consumer,
        handler,
    } = listener;
    let mut failure = None;
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
            None => {
                failure = Some(format!("consumer of {queue} was cancelled by the broker"));
                break;
            }
        };
        let permit = tokio::select! {
            biased;
            // Not acknowledged: the delivery goes back to the queue.
            _ = stop.cancelled() => break,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
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
    (consumer, failure)
}

struct RpcHandler<S> {
    service: Arc<S>,
    entrypoints: Vec<RpcEntrypoint<S>>,
    shared: Shared,
}

impl<S: Service> Handler for RpcHandler<S> {
    fn handle(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.reply(delivery).await })
    }
}

impl<S: Service> RpcHandler<S> {
    async fn reply(&self, delivery: Delivery) {
        let Some(reply_to) = delivery.properties.reply_to.clone() else {
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
            .unwrap_or(&delivery.routing_key)
            .to_owned();
        let reply = self.call(&method, &delivery).await;
        let reply_body = match &reply {
            Ok(result) => protocol::encode_reply_result(result),
            Err(error) => protocol::encode_reply_error(error),
        };
        let message = OutgoingMessage {
            exchange: self.shared.config.rpc_exchange.clone(),
            routing_key: reply_to,
            mandatory: false,
            properties: Properties {
                correlation_id: delivery.properties.correlation_id.clone(),
                ..Properties::nameko_json()
            },
            body: reply_body,
        };
        match self.shared.transport.publish(message).await {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(service = S::NAME, error = %e, "could not acknowledge a request");
                }
            }
            Err(e) => {
                tracing::error!(service = S::NAME, %method, error = %e, "could not publish a reply; requeueing the request");
                if let Err(e) = delivery.reject(true).await {
                    tracing::warn!(error = %e, "could not requeue a request");
                }
            }
        }
    }

    async fn call(&self, method: &str, delivery: &Delivery) -> Result<Vec<u8>, RemoteError> {
        let Some(entrypoint) = self.entrypoints.iter().find(|e| e.name == method) else {
            tracing::warn!(service = S::NAME, %method, "MethodNotFound");
            return Err(RemoteError::nameko("MethodNotFound", method.to_owned()));
        };
        let body = match delivery.properties.content_type.as_deref() {
            None | Some(CONTENT_TYPE_JSON) => RequestBody::parse(&delivery.body),
            Some(other) => Err(MalformedRequest::ContentType(other.to_owned())),
        };
        let body = body.map_err(|e| {
            tracing::warn!(service = S::NAME, %method, error = %e, "MalformedRequest");
            RemoteError::nameko("MalformedRequest", e.to_string())
        })?;
        let context = Arc::new(WorkerContext::new(
            S::NAME,
            entrypoint.name,
            &delivery.properties.headers,
            self.shared.config.parent_calls_tracked,
        ));
        let call_id = context.call_id().to_owned();
        let future = (entrypoint.handler)(self.service.clone(), body);
        match run_worker(context, future).await {
            Ok(Ok(result)) => {
                tracing::debug!(service = S::NAME, %method, %call_id, "worker finished");
                Ok(result)
            }
            Ok(Err(error)) => {
                tracing::warn!(service = S::NAME, %method, %call_id, error = %error, "worker failed");
                Err(error)
            }
            Err(panic) => {
                tracing::error!(service = S::NAME, %method, %call_id, panic = %panic.value, "worker panicked");
                Err(panic)
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
        Box::pin(async move { self.handle_event(delivery).await })
    }
}

impl<S: Service> EventHandler<S> {
    async fn handle_event(&self, delivery: Delivery) {
        let e = &self.entrypoint;
        let context = Arc::new(WorkerContext::new(
            S::NAME,
            e.name,
            &delivery.properties.headers,
            self.shared.config.parent_calls_tracked,
        ));
        let outcome = match delivery.properties.content_type.as_deref() {
            None | Some(CONTENT_TYPE_JSON) => {
                let future = (e.handler)(self.service.clone(), delivery.body.clone());
                run_worker(context.clone(), future)
                    .await
                    .unwrap_or_else(|panic| Err(EventError::Handler(panic)))
            }
            Some(other) => Err(EventError::Payload(format!(
                "unsupported content type `{other}`"
            ))),
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
                tracing::error!(
                    service, handler, source, event_type, %reason,
                    payload = %String::from_utf8_lossy(&delivery.body),
                    "dropped an event whose payload does not fit the handler"
                );
                delivery.reject(false).await
            }
            Err(EventError::Handler(error)) if e.requeue_on_error => {
                tracing::warn!(service, handler, call_id, source, event_type, %error, "event handler failed; requeueing the event");
                delivery.reject(true).await
            }
            Err(EventError::Handler(error)) => {
                tracing::error!(service, handler, call_id, source, event_type, %error, "event handler failed");
                delivery.ack().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(service, handler, %error, "could not settle an event");
        }
    }
}
