//! The event handler entrypoint (`#[event_handler]`), on the public entrypoint API: a queue of
//! its own, bound to the source service's events exchange with the event type, consumed for
//! as long as the service runs. Each event runs one worker; it is then acknowledged, requeued
//! (on a failure, if asked) or dropped (a payload that does not fit the handler).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::HandlerType;
use crate::context::Incoming;
use crate::error::Error;
use crate::protocol::{self, RemoteError};
use crate::service::arguments::{LoggedArguments, event_arguments};
use crate::service::io::sealed;
use crate::service::{
    DeliveryHandler, Entrypoint, EntrypointContext, MethodInfo, QueueDeclaration, SharedExtension,
    Started, WorkerResult, WorkerSlot,
};
use crate::transport::{Delivery, QueueSpec};

/// `#[event_handler("source_service", "event_type", ...)]`: the method handles every event of
/// that type its source dispatches, as its `handler_type` shares them out.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct EventHandler {
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
}

impl EventHandler {
    /// Handles `source_service`'s events of type `event_type`, with Nameko's defaults: a
    /// service pool, reliable delivery, no requeue on error.
    pub const fn new(source_service: &'static str, event_type: &'static str) -> Self {
        EventHandler {
            source_service,
            event_type,
            handler_type: HandlerType::ServicePool,
            reliable_delivery: true,
            requeue_on_error: false,
        }
    }

    /// Who gets each event.
    pub const fn handler_type(mut self, handler_type: HandlerType) -> Self {
        self.handler_type = handler_type;
        self
    }

    /// Whether the queue survives the service being down.
    pub const fn reliable_delivery(mut self, reliable_delivery: bool) -> Self {
        self.reliable_delivery = reliable_delivery;
        self
    }

    /// Whether a failed event goes back to the queue.
    pub const fn requeue_on_error(mut self, requeue_on_error: bool) -> Self {
        self.requeue_on_error = requeue_on_error;
        self
    }
}

/// The body of an event, or of a message a `#[consume]` method takes, as its worker is given it
/// (JSON, decoded by the method's generated code into its parameter's type).
#[derive(Debug, Clone)]
pub struct EventBody(pub Vec<u8>);

/// Why an event handler (or a `#[consume]` method) did not finish.
#[derive(Debug)]
pub enum EventError {
    /// The body does not decode into the method's parameter type: never retried.
    Payload(String),
    /// The handler failed.
    Handler(RemoteError),
}

impl From<RemoteError> for EventError {
    fn from(error: RemoteError) -> Self {
        EventError::Handler(error)
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Payload(e) => write!(f, "payload does not fit the handler: {e}"),
            EventError::Handler(e) => write!(f, "{e}"),
        }
    }
}

/// A random identifier for the broadcast queues of one service instance, when the
/// configuration gives none (shared by its handlers).
struct InstanceIdentifier(String);

impl SharedExtension for InstanceIdentifier {}

impl Entrypoint for EventHandler {
    type Input = EventBody;
    type Output = Result<(), EventError>;

    fn describe(&self, method: &str) -> String {
        format!(
            "event {method} <- {}.{} ({})",
            self.source_service, self.event_type, self.handler_type
        )
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        let config = cx.config();
        let random =
            cx.service_extension(|| InstanceIdentifier(uuid::Uuid::new_v4().simple().to_string()));
        let identifier = match (
            &config.broadcast_identifier,
            self.handler_type,
            self.reliable_delivery,
        ) {
            (Some(identifier), _, _) => identifier.as_str(),
            (None, HandlerType::Broadcast, true) => {
                return Err(Error::Config(format!(
                    "{}.{}: a broadcast handler with reliable_delivery needs a stable broadcast identifier \
                     (set Config::broadcast_identifier, e.g. to the host name), or declare it with \
                     reliable_delivery = false",
                    cx.service_name(),
                    cx.method().name()
                )));
            }
            (None, _, _) => random.0.as_str(),
        };
        let queue = protocol::event_queue_name(
            self.source_service,
            self.event_type,
            self.handler_type,
            cx.service_name(),
            cx.method().name(),
            identifier,
        );
        let exchange = super::event_exchange(config, self.source_service);
        // A service pool's or singleton's reliable queue is the service's own: it takes
        // `QUEUE_TYPE`; broadcast and unreliable queues stay as Nameko declares them.
        let owned = self.reliable_delivery && self.handler_type != HandlerType::Broadcast;
        let arguments = if owned {
            config.owned_queue_arguments(&queue)
        } else {
            config
                .queue_arguments
                .get(&queue)
                .cloned()
                .unwrap_or_default()
        };
        let spec = QueueSpec {
            arguments,
            auto_delete: !self.reliable_delivery,
            exclusive: self.handler_type == HandlerType::Broadcast && !self.reliable_delivery,
            ..QueueSpec::durable(&queue)
        };
        let declaration = QueueDeclaration::new(spec).bind(exchange, self.event_type);
        let handler = Arc::new(MessageConsumer {
            entrypoint: self,
            cx: cx.clone(),
        });
        cx.consume(declaration, handler).await
    }
}

/// An entrypoint whose messages are JSON payloads handled by [`handle_json_message`]: an event
/// handler, or a `#[consume]`.
pub(crate) trait JsonMessageEntrypoint:
    Entrypoint<Input = EventBody, Output = Result<(), EventError>> + Sync
{
    /// What its log lines name.
    fn subject(&self) -> Subject<'_>;
    /// Whether a failed message goes back to its queue.
    fn requeue_on_error(&self) -> bool;
}

impl JsonMessageEntrypoint for EventHandler {
    fn subject(&self) -> Subject<'_> {
        Subject::Event {
            source: self.source_service,
            event_type: self.event_type,
        }
    }

    fn requeue_on_error(&self) -> bool {
        self.requeue_on_error
    }
}

/// The consumer of one message entrypoint's queue.
pub(crate) struct MessageConsumer<E: Entrypoint> {
    pub(crate) entrypoint: E,
    pub(crate) cx: EntrypointContext<E>,
}

impl<E: JsonMessageEntrypoint> DeliveryHandler for MessageConsumer<E> {
    // Not an `async fn`: the delivery is boxed before the future is made, so that the future
    // (a task of its own) holds a pointer, not the whole delivery.
    #[allow(
        clippy::manual_async_fn,
        reason = "the delivery is boxed before the future is made"
    )]
    fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        slot: WorkerSlot,
    ) -> impl Future<Output = ()> + Send + 'static {
        let delivery = Box::new(delivery);
        async move {
            let e = &self.entrypoint;
            handle_json_message(&self.cx, delivery, slot, e.requeue_on_error(), e.subject()).await;
        }
    }
}

/// What a message handler handles, as its log lines name it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// An event type of a source service.
    Event {
        source: &'a str,
        event_type: &'a str,
    },
    /// A queue (`#[consume]`).
    Queue(&'a str),
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Event { source, event_type } => write!(f, "event {source}.{event_type}"),
            Subject::Queue(queue) => write!(f, "queue {queue}"),
        }
    }
}

/// Runs the worker for a JSON message (an event, or a consumed message), and settles it:
/// acknowledged when done; requeued when the method failed, if `requeue_on_error`, else
/// acknowledged (the failure is logged by the worker); rejected, never to be retried
/// (dead-lettered where its queue has a dead-letter exchange, else dropped), when its body
/// does not fit the method.
pub(crate) async fn handle_json_message<E>(
    cx: &EntrypointContext<E>,
    delivery: Box<Delivery>,
    slot: WorkerSlot,
    requeue_on_error: bool,
    subject: Subject<'_>,
) where
    E: Entrypoint<Input = EventBody, Output = Result<(), EventError>>,
{
    let method = cx.method();
    let content_type = delivery.properties.content_type.as_deref();
    let outcome = match content_type {
        _ if protocol::is_json(content_type) => {
            let incoming = Incoming::from_headers(&delivery.properties.headers);
            let body = EventBody(delivery.body.clone());
            let worker = cx.run_worker_from(slot, body, incoming, Some(&delivery.body));
            match worker.await {
                Some(outcome) => outcome,
                // Killed: neither settled nor answered; the broker redelivers it.
                None => return,
            }
        }
        other => Err(EventError::Payload(protocol::shorten(format!(
            "unsupported content type `{}`",
            other.unwrap_or_default()
        )))),
    };
    let (service, handler) = (cx.service_name(), method.name());
    let settled = match outcome {
        Ok(()) => delivery.ack_at_once().await,
        Err(EventError::Payload(reason)) => {
            let arguments = event_arguments(
                &delivery.body,
                method.params().first().copied().unwrap_or("payload"),
                method.sensitive_arguments(),
            );
            tracing::error!(
                service, handler, %subject,
                reason = %arguments.scrub(&reason),
                arguments = %arguments.shown,
                "rejected a message whose body does not fit its handler (dead-lettered where its queue has a dead-letter exchange, else dropped)"
            );
            // Boxed: rare, and a settlement's state must not enlarge every message's future.
            Box::pin(delivery.reject(false)).await
        }
        Err(EventError::Handler(_)) if requeue_on_error => {
            tracing::warn!(service, handler, %subject, "requeueing the failed message");
            Box::pin(delivery.reject(true)).await
        }
        Err(EventError::Handler(_)) => delivery.ack_at_once().await,
    };
    if let Err(error) = settled {
        tracing::warn!(service, handler, %subject, %error, "could not settle a message");
    }
}

impl sealed::Input for EventBody {
    const KIND: sealed::InputKind = sealed::InputKind::Message;
    type Kept = ();
    fn keep(&self) {}
    fn arguments(
        _kept: (),
        payload: Option<&[u8]>,
        method: &MethodInfo,
    ) -> Option<LoggedArguments> {
        let param = method.params().first().copied().unwrap_or("payload");
        payload.map(|payload| event_arguments(payload, param, method.sensitive_arguments()))
    }
    fn from_hook(args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError> {
        let payload = args.to_string().into_bytes();
        Ok((EventBody(payload.clone()), Some(payload)))
    }
}

impl sealed::Output for Result<(), EventError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(()) => WorkerResult::Done,
            Err(EventError::Handler(error)) => WorkerResult::Failed(Cow::Borrowed(error)),
            Err(EventError::Payload(reason)) => {
                WorkerResult::Failed(Cow::Owned(payload_error(reason.clone())))
            }
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(EventError::Handler(error))
    }
    fn from_error(error: RemoteError) -> Self {
        Err(EventError::Handler(error))
    }
    fn failure(&self) -> Option<&RemoteError> {
        match self {
            Err(EventError::Handler(error)) => Some(error),
            // Logged by the event's consumer, which drops the event.
            _ => None,
        }
    }
    fn into_hook(self) -> Result<Value, RemoteError> {
        match self {
            Ok(()) => Ok(Value::Null),
            Err(EventError::Handler(error)) => Err(error),
            Err(EventError::Payload(reason)) => Err(payload_error(reason)),
        }
    }
}

fn payload_error(reason: String) -> RemoteError {
    RemoteError::nameko_rs("EventPayloadError", reason)
}
