//! The transport boundary: the few broker operations the runtime needs, and its two
//! implementations, RabbitMQ ([`amqp`]) and an embedded in-process broker ([`memory`]).
//!
//! Everything above this module speaks only in these terms: exchanges (direct, fanout, topic,
//! headers), named queues with their arguments, bindings, confirmed publishes, and consumers
//! whose deliveries are acknowledged by hand. Both transports pass one conformance suite
//! (`tests/transport_conformance.rs`).
//!
//! (Over 800 lines with its unit tests, which stay next to the topic matching and URI
//! handling they cover.)

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::protocol::Headers;

pub mod amqp;
pub(crate) use amqp::amqp_user;
pub mod memory;

/// Errors from the broker.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// A mandatory message matched no queue.
    #[error("message to exchange `{exchange}` with routing key `{routing_key}` was unroutable")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// An exchange or queue does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A queue or exchange exists with other flags or arguments.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The broker refused to take responsibility for a message.
    #[error("the broker did not confirm the message")]
    Nacked,
    /// The connection failed or was closed.
    #[error("connection error: {0}")]
    Connection(String),
    /// The URI names no known transport.
    #[error("unsupported broker URI `{0}`: expected amqp://, amqps:// or memory://")]
    UnsupportedUri(String),
    /// A message's headers (its context data, mostly) do not fit in one AMQP frame; it was not
    /// sent.
    #[error(
        "the message's headers take {size} bytes, more than the {limit} one AMQP frame carries on this connection: send less context data"
    )]
    HeadersTooLarge {
        /// Their encoded size.
        size: usize,
        /// The most the connection carries.
        limit: usize,
    },
    /// The broker did not confirm a message in time: it may be blocking publishers (a memory
    /// or disk alarm). The message may still reach its queue later.
    #[error(
        "the broker did not confirm the message within {0:?}; it may be blocking publishers (a memory or disk alarm)"
    )]
    PublishTimeout(std::time::Duration),
}

/// How an exchange routes a message to the queues bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum ExchangeType {
    /// To the queues bound with exactly the message's routing key.
    Direct,
    /// To every queue bound to it, whatever the routing key.
    Fanout,
    /// To the queues whose binding pattern (`*` one word, `#` any number) matches the
    /// routing key: what Nameko declares for events and RPC.
    #[default]
    Topic,
    /// To the queues whose binding arguments match the message's headers (`x-match`: `all`,
    /// the default, or `any` of the others); the routing key is not looked at.
    Headers,
}

impl ExchangeType {
    /// Its AMQP name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
        }
    }

    /// Whether a binding with `binding_key` and `arguments` takes a message with
    /// `routing_key` and `headers`.
    pub(crate) fn routes(
        self,
        binding_key: &str,
        arguments: &Headers,
        routing_key: &str,
        headers: &Headers,
    ) -> bool {
        match self {
            ExchangeType::Direct => binding_key == routing_key,
            ExchangeType::Fanout => true,
            ExchangeType::Topic => topic_matches(binding_key, routing_key),
            ExchangeType::Headers => headers_match(arguments, headers),
        }
    }
}

/// RabbitMQ's headers exchange rule: every (`x-match: all`, the default) or any (`any`) of the
/// binding's arguments not starting with `x-` is a header of the message with the same value.
fn headers_match(arguments: &Headers, headers: &Headers) -> bool {
    let any = arguments
        .get("x-match")
        .is_some_and(|v| v.as_str() == Some("any"));
    let mut wanted = arguments.iter().filter(|(k, _)| !k.starts_with("x-"));
    let matches = |(key, value): (&str, &serde_json::Value)| headers.get(key) == Some(value);
    if any {
        wanted.any(matches)
    } else {
        wanted.all(matches)
    }
}

/// An exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// How it routes.
    pub kind: ExchangeType,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
}

impl ExchangeSpec {
    /// A durable exchange of type `kind`.
    pub fn durable(name: impl Into<String>, kind: ExchangeType) -> Self {
        ExchangeSpec {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
        }
    }

    /// A durable topic exchange, as Nameko declares every exchange.
    pub fn durable_topic(name: impl Into<String>) -> Self {
        ExchangeSpec {
            name: name.into(),
            kind: ExchangeType::Topic,
            durable: true,
            auto_delete: false,
        }
    }
}

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// RabbitMQ's classic queue, on one node.
    #[default]
    Classic,
    /// A replicated queue (RabbitMQ's Raft-based quorum queue); always durable.
    Quorum,
}

impl QueueType {
    /// Its AMQP name.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// A queue's optional arguments (`x-...`), as RabbitMQ takes them at declaration. A queue that
/// exists must be declared again with the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueArguments {
    /// `x-max-priority`: messages of a higher priority (up to this) are delivered first.
    pub max_priority: Option<u8>,
    /// `x-dead-letter-exchange`: where rejected (not requeued) and expired messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: their routing key there (else their own).
    pub dead_letter_routing_key: Option<String>,
    /// `x-message-ttl`: how long a message may wait in the queue.
    pub message_ttl: Option<Duration>,
    /// `x-queue-type` (not sent when `None`: the broker's default, classic).
    pub queue_type: Option<QueueType>,
    /// `x-delivery-limit` (quorum queues): a message returned unsettled more than this many
    /// times is dead-lettered (or dropped) instead of delivered again.
    pub delivery_limit: Option<u32>,
}

/// A queue to declare; the flags must match any existing queue of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Only the declaring connection may use it; deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Deleted after being unused this long (`x-expires`).
    pub expires: Option<Duration>,
    /// Its other arguments.
    pub arguments: QueueArguments,
}

impl fmt::Display for QueueSpec {
    /// Its flags and arguments, as an error about a declaration shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.push(if self.durable { "durable" } else { "transient" }.to_owned());
        if self.exclusive {
            parts.push("exclusive".into());
        }
        if self.auto_delete {
            parts.push("auto-delete".into());
        }
        if let Some(expires) = self.expires {
            parts.push(format!("x-expires={}", expires.as_millis()));
        }
        let a = &self.arguments;
        if let Some(max) = a.max_priority {
            parts.push(format!("x-max-priority={max}"));
        }
        if let Some(exchange) = &a.dead_letter_exchange {
            parts.push(format!("x-dead-letter-exchange={exchange}"));
        }
        if let Some(key) = &a.dead_letter_routing_key {
            parts.push(format!("x-dead-letter-routing-key={key}"));
        }
        if let Some(ttl) = a.message_ttl {
            parts.push(format!("x-message-ttl={}", ttl.as_millis()));
        }
        if let Some(kind) = a.queue_type {
            parts.push(format!("x-queue-type={}", kind.as_str()));
        }
        if let Some(limit) = a.delivery_limit {
            parts.push(format!("x-delivery-limit={limit}"));
        }
        f.write_str(&parts.join(", "))
    }
}

impl QueueSpec {
    /// A durable queue with no arguments, as Nameko declares `rpc-<service>`.
    pub fn durable(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            durable: true,
            ..QueueSpec::default()
        }
    }

    /// With `x-max-priority`.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.arguments.max_priority = Some(max);
        self
    }

    /// With `x-dead-letter-exchange`.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.arguments.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// With `x-dead-letter-routing-key`.
    pub fn dead_letter_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.arguments.dead_letter_routing_key = Some(routing_key.into());
        self
    }

    /// With `x-message-ttl`.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.arguments.message_ttl = Some(ttl);
        self
    }

    /// With `x-queue-type`.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.arguments.queue_type = Some(queue_type);
        self
    }

    /// With `x-delivery-limit` (a quorum queue's).
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.arguments.delivery_limit = Some(limit);
        self
    }
}

/// The AMQP properties the runtime uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// `content_type` (Nameko's `application/json` is a static string, not a copy).
    pub content_type: Option<Cow<'static, str>>,
    /// `content_encoding` (Nameko's `utf-8` is a static string, not a copy).
    pub content_encoding: Option<Cow<'static, str>>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `expiration`: the message is dropped (or dead-lettered) if still queued after this.
    pub expiration: Option<Duration>,
    /// Headers (always sent, possibly empty).
    pub headers: Headers,
}

impl Properties {
    /// JSON, UTF-8, persistent, priority 0: the properties of every Nameko message.
    pub fn nameko_json() -> Self {
        Properties {
            content_type: Some(Cow::Borrowed(crate::protocol::CONTENT_TYPE_JSON)),
            content_encoding: Some(Cow::Borrowed(crate::protocol::CONTENT_ENCODING_UTF8)),
            delivery_mode: Some(crate::protocol::DELIVERY_MODE_PERSISTENT),
            priority: Some(0),
            ..Properties::default()
        }
    }
}

/// A message to publish. Publishing waits for the broker's confirm.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The exchange (`""` is the default exchange). Shared: the same few names go on every
    /// message.
    pub exchange: Arc<str>,
    /// The routing key.
    pub routing_key: String,
    /// Fail with [`TransportError::Unroutable`] if no queue is bound for the routing key.
    pub mandatory: bool,
    /// Properties and headers.
    pub properties: Properties,
    /// The body.
    pub body: Vec<u8>,
}

/// A message received by a consumer. Settle it with [`ack`](Delivery::ack) or
/// [`reject`](Delivery::reject); one dropped unsettled goes back to its queue.
///
/// On the embedded broker the fields are the only copy of the message: one requeued goes back
/// as its fields are then, so leave them whole unless it is acknowledged.
pub struct Delivery {
    /// The exchange it was published to.
    pub exchange: Arc<str>,
    /// Its routing key.
    pub routing_key: String,
    /// Whether it was delivered before and not acknowledged.
    pub redelivered: bool,
    /// Properties and headers.
    pub properties: Properties,
    /// The body.
    pub body: Vec<u8>,
    /// `None` once settled.
    settler: Option<Settler>,
    /// Its place in the service's `nameko_messages_held`, given up when it is settled (or
    /// dropped).
    held: Option<Held>,
}

/// One delivery counted in a gauge (`nameko_messages_held`), until dropped.
#[derive(Debug)]
struct Held(prometheus_client::metrics::gauge::Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The message of a delivery going back to its queue, handed to its [`Acker`].
#[derive(Debug, Clone)]
pub struct ReturnedMessage {
    /// The exchange it was published to.
    pub exchange: Arc<str>,
    /// Its routing key.
    pub routing_key: String,
    /// Properties and headers.
    pub properties: Properties,
    /// The body.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("properties", &self.properties)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish_non_exhaustive()
    }
}

/// Settles one delivery; implemented by each transport.
pub trait Acker: Send + Sync {
    /// Acknowledges the delivery.
    fn ack(&mut self) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Rejects the delivery, putting it back on its queue if `requeue`.
    fn reject(&mut self, requeue: bool) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Takes the delivery's message back when the delivery is settled (before `ack` or
    /// `reject` runs) or dropped unsettled: an acker dropped before it settled must requeue it.
    /// For a transport that keeps no copy of what it delivered, such as the embedded broker; by
    /// default the message is not needed (RabbitMQ keeps its own).
    fn take_back(&mut self, message: ReturnedMessage) {
        let _ = message;
    }
}

/// How a delivery is settled: the two transports' own ackers kept inline (no allocation per
/// message), any other transport's boxed.
pub(crate) enum Settler {
    Memory(memory::MemoryAcker),
    Amqp(amqp::AmqpAcker),
    Other(Box<dyn Acker>),
}

impl Settler {
    /// Acknowledges (`reject: None`) or rejects (`Some(requeue)`) when the future runs, the
    /// delivery's message handed back to the transports that keep no copy of it (a future
    /// dropped before it ran leaves the delivery unsettled, to be requeued, as RabbitMQ would).
    fn settle(self, message: ReturnedMessage, reject: Option<bool>) -> Settling {
        match self {
            Settler::Memory(acker) => Settling::Memory(Some((acker.holding(message), reject))),
            Settler::Amqp(acker) => Settling::Amqp(Some((acker, reject))),
            Settler::Other(mut acker) => {
                acker.take_back(message);
                Settling::Waiting(Box::pin(async move {
                    match reject {
                        None => acker.ack().await,
                        Some(requeue) => acker.reject(requeue).await,
                    }
                }))
            }
        }
    }

    /// The delivery was dropped unsettled: its message goes back to its queue.
    fn unsettled(self, message: ReturnedMessage) {
        match self {
            Settler::Memory(acker) => drop(acker.holding(message)),
            // RabbitMQ requeues it when the channel closes: when its consumer is closed, or
            // once the consumer and every delivery of it are dropped (each holds the channel).
            Settler::Amqp(_) => {}
            Settler::Other(mut acker) => acker.take_back(message),
        }
    }
}

/// The future of a settlement. (Written out rather than an `async` block: it is part of the
/// future of every delivery's handler, so its size is paid at every message.)
#[allow(
    clippy::large_enum_variant,
    reason = "boxing the embedded broker's would cost an allocation per message"
)]
enum Settling {
    /// Nothing to do (settled already).
    Done,
    /// The embedded broker's, done when first polled.
    Memory(Option<(memory::MemorySettling, Option<bool>)>),
    /// RabbitMQ's, handed to the delivery's channel when first polled.
    Amqp(Option<(amqp::AmqpAcker, Option<bool>)>),
    Waiting(BoxFuture<'static, Result<(), TransportError>>),
}

impl Future for Settling {
    type Output = Result<(), TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Settling::Done => Poll::Ready(Ok(())),
            Settling::Memory(settling) => {
                match settling.take() {
                    Some((settling, None)) => settling.ack(),
                    Some((settling, Some(requeue))) => settling.reject(requeue),
                    None => {}
                }
                Poll::Ready(Ok(()))
            }
            Settling::Amqp(settling) => Poll::Ready(match settling.take() {
                Some((acker, reject)) => acker.settle(reject),
                None => Ok(()),
            }),
            Settling::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// The future of [`Delivery::ack_at_once`].
pub(crate) enum AckAtOnce {
    /// Acknowledged already (or failed to be).
    Done(Option<Result<(), TransportError>>),
    /// The transport's acknowledgement.
    Waiting(BoxFuture<'static, Result<(), TransportError>>),
}

impl Future for AckAtOnce {
    type Output = Result<(), TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AckAtOnce::Done(outcome) => Poll::Ready(outcome.take().unwrap_or(Ok(()))),
            AckAtOnce::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl Delivery {
    /// A delivery settled through `acker` (for transport implementations).
    pub fn new(
        exchange: Arc<str>,
        routing_key: String,
        redelivered: bool,
        properties: Properties,
        body: Vec<u8>,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery::settled_by(
            exchange,
            routing_key,
            redelivered,
            properties,
            body,
            Settler::Other(acker),
        )
    }

    /// A delivery of one of this crate's transports.
    pub(crate) fn settled_by(
        exchange: Arc<str>,
        routing_key: String,
        redelivered: bool,
        properties: Properties,
        body: Vec<u8>,
        settler: Settler,
    ) -> Self {
        let mut delivery = Delivery::settled(exchange, routing_key, redelivered, properties, body);
        delivery.settler = Some(settler);
        delivery
    }

    /// A delivery of this crate's transports that needs no settling (its message already
    /// forgotten by the broker).
    pub(crate) fn settled(
        exchange: Arc<str>,
        routing_key: String,
        redelivered: bool,
        properties: Properties,
        body: Vec<u8>,
    ) -> Self {
        Delivery {
            exchange,
            routing_key,
            redelivered,
            properties,
            body,
            settler: None,
            held: None,
        }
    }

    /// Counts the delivery in `gauge` until it is settled or dropped.
    pub(crate) fn hold(&mut self, gauge: &prometheus_client::metrics::gauge::Gauge) {
        gauge.inc();
        self.held = Some(Held(gauge.clone()));
    }

    /// Acknowledges the delivery: the broker forgets it. (On RabbitMQ, `Ok` means the
    /// acknowledgement is queued on its channel; one lost with the connection leaves the
    /// delivery unsettled, to be delivered again.)
    ///
    /// The future keeps only the acknowledgement's own state, and the message where the
    /// transport keeps no copy of it; one dropped before it ran leaves the delivery unsettled.
    pub fn ack(mut self) -> impl Future<Output = Result<(), TransportError>> + Send + 'static {
        match self.settler.take() {
            Some(settler) => settler.settle(self.take_message(), None),
            None => Settling::Done,
        }
    }

    /// Rejects the delivery; with `requeue` it goes back to its queue, otherwise it is dropped
    /// (or dead-lettered, where the queue has a dead-letter exchange).
    pub fn reject(
        mut self,
        requeue: bool,
    ) -> impl Future<Output = Result<(), TransportError>> + Send + 'static {
        match self.settler.take() {
            Some(settler) => settler.settle(self.take_message(), Some(requeue)),
            None => Settling::Done,
        }
    }

    /// [`ack`](Self::ack) for a caller that awaits it at once: this crate's transports settle
    /// the delivery now, so the future keeps nothing of the message (and, being done, needs no
    /// task of its own); another transport's acknowledgement is its own future.
    pub(crate) fn ack_at_once(mut self) -> AckAtOnce {
        match self.settler.take() {
            None => AckAtOnce::Done(None),
            // The message is not needed: the broker keeps no copy, and it is acknowledged.
            Some(Settler::Memory(acker)) => {
                acker.ack();
                AckAtOnce::Done(None)
            }
            Some(Settler::Amqp(acker)) => AckAtOnce::Done(Some(acker.settle(None))),
            Some(settler) => match settler.settle(self.take_message(), None) {
                Settling::Waiting(future) => AckAtOnce::Waiting(future),
                other => AckAtOnce::Waiting(Box::pin(other)),
            },
        }
    }

    fn take_message(&mut self) -> ReturnedMessage {
        ReturnedMessage {
            exchange: std::mem::take(&mut self.exchange),
            routing_key: std::mem::take(&mut self.routing_key),
            properties: std::mem::take(&mut self.properties),
            body: std::mem::take(&mut self.body),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settler) = self.settler.take() {
            settler.unsettled(self.take_message());
        }
    }
}

/// Where a consumer's deliveries come from; implemented by each transport.
pub trait ConsumerSource: Send {
    /// The next delivery, `None` once cancelled or when the connection is gone.
    fn poll_next(&mut self, cx: &mut Context<'_>)
    -> Poll<Option<Result<Delivery, TransportError>>>;
    /// Stops new deliveries. Deliveries received but not yet settled stay valid.
    fn cancel(&mut self) -> BoxFuture<'_, ()>;
    /// Releases the consumer: deliveries not yet settled go back to the queue.
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// A consumer on one queue: a stream of deliveries.
pub struct Consumer {
    source: Box<dyn ConsumerSource>,
}

impl Consumer {
    /// Wraps a transport's consumer.
    pub fn new(source: Box<dyn ConsumerSource>) -> Self {
        Consumer { source }
    }

    /// Stops new deliveries; those already received can still be settled.
    pub async fn cancel(&mut self) {
        self.source.cancel().await
    }

    /// Releases the consumer; unsettled deliveries return to the queue.
    pub async fn close(mut self) {
        self.source.close().await
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, TransportError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().source.poll_next(cx)
    }
}

/// What [`Transport::consume_inline`] hands each message to.
pub type InlineHandler = Arc<dyn Fn(Delivery) + Send + Sync>;

/// How the deliveries of an inline consumer ([`Transport::consume_inline`]) are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineAcks {
    /// Not at all: the broker forgets a message once it has handed it over (AMQP's `no_ack`).
    None,
    /// As a [`Consumer`]'s are: each delivery is acknowledged or rejected by whoever holds it,
    /// one dropped unsettled goes back to its queue, and at most `prefetch` are unsettled at
    /// once (0 = no limit); the next message is handed over when one of them is settled.
    Manual {
        /// The most deliveries unsettled at once (0 = no limit).
        prefetch: u16,
    },
}

/// A consumer started with [`Transport::consume_inline`]. It consumes until it is dropped.
pub struct InlineConsumer {
    ended: futures_util::future::Fuse<BoxFuture<'static, ()>>,
    cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl InlineConsumer {
    /// A transport's inline consumer: `ended` resolves when the transport ends it (its queue
    /// deleted, the connection gone); `cancel` stops it, and is called when it is dropped.
    pub fn new(
        ended: impl Future<Output = ()> + Send + 'static,
        cancel: impl FnOnce() + Send + 'static,
    ) -> Self {
        InlineConsumer {
            ended: futures_util::FutureExt::fuse(Box::pin(ended) as BoxFuture<'static, ()>),
            cancel: Some(Box::new(cancel)),
        }
    }

    /// Resolves when the transport ends the consumer (its queue deleted, the connection gone);
    /// never if it is not ended.
    pub async fn ended(&mut self) {
        (&mut self.ended).await
    }
}

impl Drop for InlineConsumer {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for InlineConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InlineConsumer")
    }
}

/// The future of [`Transport::publish`] (and, with `E` = `Box<Unpublished>`, of
/// [`Transport::publish_or_return`]): already done where the transport publishes in process
/// (the embedded broker: no allocation), otherwise the transport's own future, boxed.
#[must_use = "futures do nothing unless polled"]
pub struct Publishing<'a, E = TransportError>(PublishingState<'a, E>);

enum PublishingState<'a, E> {
    Done(Option<Result<(), E>>),
    Waiting(BoxFuture<'a, Result<(), E>>),
}

impl<'a, E> Publishing<'a, E> {
    /// A publish that is already over, with its outcome.
    pub fn done(result: Result<(), E>) -> Self {
        Publishing(PublishingState::Done(Some(result)))
    }

    /// A publish that ends when `future` does.
    pub fn waiting(future: impl Future<Output = Result<(), E>> + Send + 'a) -> Self {
        Publishing(PublishingState::Waiting(Box::pin(future)))
    }
}

impl<E: Unpin> Future for Publishing<'_, E> {
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            PublishingState::Done(result) => Poll::Ready(
                result
                    .take()
                    .expect("`Publishing` polled after it completed"),
            ),
            PublishingState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// A message a transport did not publish, handed back with the reason by
/// [`Transport::publish_or_return`].
#[derive(Debug)]
pub struct Unpublished {
    /// Why it was not published.
    pub error: TransportError,
    /// The message, as it was given.
    pub message: OutgoingMessage,
}

impl<E: fmt::Debug> fmt::Debug for Publishing<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PublishingState::Done(result) => {
                f.debug_tuple("Publishing::Done").field(result).finish()
            }
            PublishingState::Waiting(_) => f.write_str("Publishing::Waiting"),
        }
    }
}

/// The operations a broker offers the runtime.
///
/// Implemented by [`amqp::AmqpTransport`] and [`memory::MemoryBroker`].
pub trait Transport: Send + Sync + 'static {
    /// Declares a topic exchange (idempotent).
    fn declare_exchange(&self, spec: &ExchangeSpec) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Declares a queue (idempotent when the flags match).
    fn declare_queue(&self, spec: &QueueSpec) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Binds a queue to an exchange with a routing-key pattern.
    fn bind_queue<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        self.bind_queue_with(queue, exchange, binding_key, &NO_ARGUMENTS)
    }
    /// Binds a queue to an exchange with a routing-key pattern and binding arguments (what a
    /// headers exchange matches messages' headers against).
    fn bind_queue_with<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
        arguments: &'a Headers,
    ) -> BoxFuture<'a, Result<(), TransportError>>;
    /// Publishes a message and waits for the broker to confirm it.
    fn publish(&self, message: OutgoingMessage) -> Publishing<'_>;
    /// Publishes like [`publish`](Transport::publish), handing the message back if it was not
    /// published: what it carries can be used again (published again, or put back where it
    /// came from) without a copy made beforehand for a failure that rarely comes. The default
    /// makes that copy; the two transports here hand back the message itself.
    fn publish_or_return(&self, message: OutgoingMessage) -> Publishing<'_, Box<Unpublished>> {
        let copy = message.clone();
        let publishing = self.publish(message);
        Publishing::waiting(async move {
            publishing.await.map_err(|error| {
                Box::new(Unpublished {
                    error,
                    message: copy,
                })
            })
        })
    }
    /// Starts consuming a queue with manual acknowledgement; at most `prefetch` deliveries are
    /// unsettled at once (0 = no limit).
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Consumer, TransportError>>;
    /// Starts consuming a queue by handing each message to `handler` as the transport
    /// receives it, with no task between; `acks` says whether the deliveries are settled. For
    /// consumers whose work on a message is short and never waits: an RPC client's replies
    /// (handed to the waiting calls), a service's requests (each started as a worker's task).
    /// `None` where the transport has no such consumer (RabbitMQ's here):
    /// [`consume`](Transport::consume) the queue instead.
    ///
    /// The embedded broker calls `handler` where the message becomes deliverable, once its lock
    /// is released (the handler may use the broker): on the task or thread that published it,
    /// that settled or dropped the delivery that made room for it, that started this consumer
    /// (with what the queue held), or the broker's own timers. That may be a thread outside
    /// any tokio runtime. Handlers of messages published on several threads may run at once.
    /// While a thread panics, the broker runs no handler: with [`InlineAcks::Manual`], their
    /// messages go back to their queues (and are handed over again once the panic is over);
    /// with [`InlineAcks::None`], they are dropped.
    fn consume_inline<'a>(
        &'a self,
        queue: &'a str,
        acks: InlineAcks,
        handler: InlineHandler,
    ) -> Option<BoxFuture<'a, Result<InlineConsumer, TransportError>>> {
        let _ = (queue, acks, handler);
        None
    }
    /// A description for logs (URIs with passwords masked).
    fn describe(&self) -> String;
    /// Closes the connection.
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Whether [`close`](Transport::close) was called (consumers ending afterwards is expected).
    fn is_closed(&self) -> bool;
    /// Whether the connection went away without [`close`](Transport::close): the broker
    /// restarted, closed it, or the network failed. An in-process broker never loses it.
    fn connection_lost(&self) -> bool {
        false
    }
    /// Resolves, with the reason, when the connection is lost (as
    /// [`connection_lost`](Transport::connection_lost) tells); never for a transport that
    /// cannot lose it.
    fn lost(&self) -> BoxFuture<'_, String> {
        Box::pin(std::future::pending())
    }
}

/// No binding arguments.
static NO_ARGUMENTS: Headers = Headers::new();

/// A shared handle to a transport.
pub type SharedTransport = Arc<dyn Transport>;

/// Connects to the broker a URI names: `amqp://` or `amqps://` (also Python's `pyamqp://`)
/// for RabbitMQ, `memory://[name]` for the embedded broker of that name in this process.
///
/// An `amqps://` URI verifies the broker's certificate against the system's certificate
/// authorities; [`connect_with_tls`] names others, and a client certificate.
pub async fn connect(uri: &str) -> Result<SharedTransport, TransportError> {
    connect_with(uri, None).await
}

/// Connects like [`connect`], over TLS with `tls` (Nameko's `AMQP_SSL`): an `amqp://` URI is
/// taken as `amqps://` (port 5671 unless it names one). The embedded broker ignores `tls`.
pub async fn connect_with_tls(
    uri: &str,
    tls: &TlsOptions,
) -> Result<SharedTransport, TransportError> {
    connect_with(uri, Some(tls)).await
}

pub(crate) async fn connect_with(
    uri: &str,
    tls: Option<&TlsOptions>,
) -> Result<SharedTransport, TransportError> {
    let options = amqp::AmqpOptions {
        tls: tls.cloned(),
        ..amqp::AmqpOptions::default()
    };
    connect_with_options(uri, &options).await
}

/// Connects like [`connect`]; to RabbitMQ with these options (the embedded broker has none).
pub async fn connect_with_options(
    uri: &str,
    options: &amqp::AmqpOptions,
) -> Result<SharedTransport, TransportError> {
    if let Some(name) = uri.strip_prefix("memory://") {
        return Ok(memory::MemoryBroker::named(name));
    }
    let brokers = broker_list(uri);
    if brokers.len() > 1 {
        return connect_to_one_of(uri, &brokers, options).await;
    }
    if uri.starts_with("amqp://") || uri.starts_with("amqps://") || uri.starts_with("pyamqp://") {
        return Ok(Arc::new(
            amqp::AmqpTransport::connect_with_options(uri, options).await?,
        ));
    }
    Err(TransportError::UnsupportedUri(mask_password(uri)))
}

/// The brokers of an `AMQP_URI` that lists several, separated by `;` as kombu (and so
/// Nameko) takes them: the nodes of one cluster.
pub(crate) fn broker_list(uri: &str) -> Vec<&str> {
    uri.split(';')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Connects to the first broker of `brokers` that answers, starting after the one connected
/// to last time for this list (so that a lost connection moves on to the next node, round
/// robin).
async fn connect_to_one_of(
    uri: &str,
    brokers: &[&str],
    options: &amqp::AmqpOptions,
) -> Result<SharedTransport, TransportError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// The index of the broker each list last connected to.
    static LAST: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let last = LAST.get_or_init(Default::default);
    let start = last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(uri)
        .map_or(0, |i| i + 1);
    let mut errors = Vec::new();
    for offset in 0..brokers.len() {
        let index = (start + offset) % brokers.len();
        let broker = brokers[index];
        if broker.contains(';') || broker.starts_with("memory://") {
            return Err(TransportError::UnsupportedUri(mask_password(broker)));
        }
        match Box::pin(connect_with_options(broker, options)).await {
            Ok(transport) => {
                tracing::info!(broker = %transport.describe(), node = index + 1, of = brokers.len(), "connected to one of several brokers");
                last.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uri.to_owned(), index);
                return Ok(transport);
            }
            Err(error) => {
                tracing::warn!(broker = %mask_password(broker), %error, "broker did not answer; trying the next");
                // The error names the broker already.
                errors.push(match error {
                    TransportError::Connection(message) => message,
                    other => format!("{}: {other}", mask_password(broker)),
                });
            }
        }
    }
    Err(TransportError::Connection(format!(
        "no broker answered: {}",
        errors.join("; ")
    )))
}

/// TLS settings for RabbitMQ connections: Nameko's `AMQP_SSL` (`ca_certs`, `certfile`,
/// `keyfile`). The broker's certificate is always verified.
///
/// ```no_run
/// # async fn demo() -> Result<(), nameko::transport::TransportError> {
/// use nameko::transport::{self, TlsOptions};
///
/// let tls = TlsOptions::new()
///     .with_ca_certs("/etc/ssl/rabbit/ca.pem")
///     .with_client_certificate("/etc/ssl/rabbit/client.pem", "/etc/ssl/rabbit/client.key");
/// let transport = transport::connect_with_tls("amqps://guest:guest@rabbit/", &tls).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// `ca_certs`: a PEM file of the certificate authorities that sign the broker's
    /// certificate (the system's when unset).
    pub ca_certs: Option<std::path::PathBuf>,
    /// `certfile`: a PEM client certificate, for brokers that ask for one.
    pub certfile: Option<std::path::PathBuf>,
    /// `keyfile`: the PEM private key of `certfile` (PKCS#8, RSA or EC, unencrypted).
    pub keyfile: Option<std::path::PathBuf>,
}

impl TlsOptions {
    /// TLS with the system's certificate authorities and no client certificate
    /// (`AMQP_SSL: true`).
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trusts the certificate authorities in this PEM file instead of the system's.
    pub fn with_ca_certs(mut self, path: impl Into<std::path::PathBuf>) -> TlsOptions {
        self.ca_certs = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to the broker.
    pub fn with_client_certificate(
        mut self,
        certfile: impl Into<std::path::PathBuf>,
        keyfile: impl Into<std::path::PathBuf>,
    ) -> TlsOptions {
        self.certfile = Some(certfile.into());
        self.keyfile = Some(keyfile.into());
        self
    }
}

/// A URI with its password replaced by `********`, for logs. The user information ends at the
/// last `@`, so a password holding `/` or `@` (unescaped) is masked whole.
pub fn mask_password(uri: &str) -> String {
    if uri.contains(';') {
        // Several brokers: each masked.
        return uri
            .split(';')
            .map(mask_password)
            .collect::<Vec<_>>()
            .join(";");
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:********@{host}"),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    }
}

/// Whether `routing_key` matches the topic `binding_key` (`*` is one word, `#` zero or more).
pub fn topic_matches(binding_key: &str, routing_key: &str) -> bool {
    // Without allocating: this runs for every binding of an exchange at every publish on the
    // embedded broker. As RabbitMQ splits keys, an empty key has no words.
    fn words(key: &str) -> impl Iterator<Item = &str> + Clone {
        (!key.is_empty())
            .then(|| key.split('.'))
            .into_iter()
            .flatten()
    }
    fn matches<'a>(
        mut pattern: impl Iterator<Item = &'a str> + Clone,
        mut words: impl Iterator<Item = &'a str> + Clone,
    ) -> bool {
        match pattern.next() {
            None => words.next().is_none(),
            Some("#") => loop {
                if matches(pattern.clone(), words.clone()) {
                    return true;
                }
                if words.next().is_none() {
                    return false;
                }
            },
            Some("*") => words.next().is_some() && matches(pattern, words),
            Some(word) => words.next() == Some(word) && matches(pattern, words),
        }
    }
    if !binding_key.contains(['*', '#']) {
        return binding_key == routing_key;
    }
    matches(words(binding_key), words(routing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_follows_amqp() {
        assert!(topic_matches("svc.*", "svc.greet"));
        assert!(!topic_matches("svc.*", "svc.a.b"));
        assert!(!topic_matches("svc.*", "svc"));
        assert!(!topic_matches("svc.*", "other.greet"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert!(topic_matches("abc-123", "abc-123"));
        assert!(!topic_matches("abc-123", "abc-124"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(!topic_matches("a.#", "b.a"));
        assert!(topic_matches("#.c", "c"));
        assert!(topic_matches("#.c", "a.b.c"));
        assert!(!topic_matches("#.c", "a.c.d"));
        assert!(topic_matches("*.#.*", "a.b"));
        assert!(!topic_matches("*.#.*", "a"));
        assert!(topic_matches("a.*.#.d", "a.b.c.c.d"));
        assert!(topic_matches("a.*", "a."), "an empty word is a word");
        assert!(topic_matches("a.*", "a.x"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
        // An empty routing key has no words (RabbitMQ's split).
        assert!(topic_matches("#", ""));
        assert!(!topic_matches("*", ""));
    }

    #[test]
    fn topic_matching_agrees_with_a_plain_reference_on_every_small_case() {
        fn reference(pattern: &[&str], words: &[&str]) -> bool {
            match pattern.split_first() {
                None => words.is_empty(),
                Some((&"#", rest)) => (0..=words.len()).any(|n| reference(rest, &words[n..])),
                Some((&"*", rest)) => !words.is_empty() && reference(rest, &words[1..]),
                Some((word, rest)) => words.first() == Some(word) && reference(rest, &words[1..]),
            }
        }
        // Every key of up to four words from this alphabet, as binding and as routing key.
        let alphabet = ["a", "b", "*", "#", ""];
        let mut keys = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|k| {
                    alphabet.iter().map(move |w| {
                        if k.is_empty() {
                            (*w).to_owned()
                        } else {
                            format!("{k}.{w}")
                        }
                    })
                })
                .collect();
            keys.extend(last.iter().cloned());
        }
        let routing: Vec<&String> = keys.iter().filter(|k| !k.contains(['*', '#'])).collect();
        let split = |key: &str| -> Vec<String> {
            if key.is_empty() {
                Vec::new()
            } else {
                key.split('.').map(str::to_owned).collect()
            }
        };
        for binding in &keys {
            let pattern = split(binding);
            let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
            for key in &routing {
                let words = split(key);
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                assert_eq!(
                    topic_matches(binding, key),
                    reference(&pattern, &words),
                    "binding {binding:?}, routing key {key:?}"
                );
            }
        }
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("amqp://guest:secret@host:5672/vh"),
            "amqp://guest:********@host:5672/vh"
        );
        assert_eq!(mask_password("amqp://host"), "amqp://host");
        assert_eq!(
            mask_password("amqp://guest:se/cr@t@host/vh"),
            "amqp://guest:********@host/vh"
        );
        assert_eq!(mask_password("memory://"), "memory://");
        assert_eq!(
            mask_password("amqp://a:x@h1:5672;amqp://b:y@h2:5672"),
            "amqp://a:********@h1:5672;amqp://b:********@h2:5672"
        );
        assert_eq!(
            broker_list(" amqp://h1 ; amqp://h2;"),
            ["amqp://h1", "amqp://h2"]
        );
    }
}
