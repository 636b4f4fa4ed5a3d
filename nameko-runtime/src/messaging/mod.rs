//! Messaging, as Nameko's `nameko.messaging` has it: consume any AMQP queue with
//! `#[consume(queue = ...)]`, publish to any exchange or queue with a [`Publisher`]. The bridge
//! to producers and consumers that are not Nameko services.
//!
//! Queues and exchanges are described as kombu describes them ([`Queue`], [`Exchange`]: direct,
//! fanout, topic or headers), with RabbitMQ's queue arguments (priorities, dead-lettering, message TTL, the queue type). A
//! `#[consume]` method takes the message's JSON body decoded into its parameter's type, and its
//! context data from the message's `nameko.*` headers; the message is acknowledged after the
//! method returns, requeued on a failure if `requeue_on_error`, and rejected (so dead-lettered
//! where the queue has a dead-letter exchange, else dropped) when its body does not fit.
//!
//! ```
//! use nameko::prelude::*;
//! use nameko::messaging::{Exchange, Publisher, Queue};
//!
//! fn orders() -> Queue {
//!     Queue::new("orders")
//!         .exchange(Exchange::direct("shop"))
//!         .routing_key("order")
//!         .max_priority(10)
//! }
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! #[derive(Dependencies)]
//! struct Fulfilment {
//!     publisher: Publisher,
//! }
//!
//! #[service(name = "fulfilment")]
//! impl Fulfilment {
//!     #[consume(queue = orders())]
//!     async fn take(&self, order: Order) -> Result<(), nameko::messaging::PublishError> {
//!         let shipped = Exchange::topic("shipping");
//!         self.publisher.publish(&order).to_exchange(&shipped).routing_key("order.shipped").await
//!     }
//! }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::context::{ContextData, WorkerContext};
use crate::error::Error;
use crate::protocol;
use crate::service::{Dependency, DependencyContext};
use crate::transport::{
    ExchangeSpec, ExchangeType, OutgoingMessage, Properties, QueueSpec, QueueType, SharedTransport,
    TransportError,
};

pub use consume::Consume;

mod consume;

/// An exchange, as kombu's `Exchange`: a name and a type; durable unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange(ExchangeSpec);

impl Exchange {
    /// A durable exchange of type `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeType) -> Self {
        Exchange(ExchangeSpec::durable(name, kind))
    }

    /// A durable topic exchange (bindings with `*` and `#` patterns).
    pub fn topic(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Topic)
    }

    /// A durable direct exchange (bindings with exact routing keys).
    pub fn direct(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Direct)
    }

    /// A durable fanout exchange (every bound queue gets every message).
    pub fn fanout(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Fanout)
    }

    /// A durable headers exchange (bindings match messages' headers; see
    /// [`Queue::binding_arguments`]).
    pub fn headers(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Headers)
    }

    /// Whether it survives a broker restart.
    pub fn durable(mut self, durable: bool) -> Self {
        self.0.durable = durable;
        self
    }

    /// Whether it is deleted when its last binding goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.0.auto_delete = auto_delete;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// What is declared.
    pub fn spec(&self) -> &ExchangeSpec {
        &self.0
    }
}

/// A queue, as kombu's `Queue`: a name, optionally the exchange it is bound to with a routing
/// key (`""` unless given, as in kombu), and its flags and arguments. Durable unless said
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    spec: QueueSpec,
    exchange: Option<Exchange>,
    routing_key: String,
    binding_arguments: protocol::Headers,
}

impl Queue {
    /// A durable queue, bound to nothing (messages reach it through the default exchange, by
    /// its name).
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            spec: QueueSpec::durable(name),
            exchange: None,
            routing_key: String::new(),
            binding_arguments: protocol::Headers::new(),
        }
    }

    /// Bound to `exchange` (declared with the queue).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// The binding's routing key (a pattern, on a topic exchange).
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// A binding argument: on a headers exchange, a header the messages must have with this
    /// value, or `x-match` (`"all"` of them, the default, or `"any"`).
    pub fn binding_argument(
        mut self,
        name: impl Into<protocol::HeaderName>,
        value: impl Into<Value>,
    ) -> Self {
        self.binding_arguments.insert(name.into(), value.into());
        self
    }

    /// Whether it survives a broker restart.
    pub fn durable(mut self, durable: bool) -> Self {
        self.spec.durable = durable;
        self
    }

    /// Whether it is deleted when its last consumer goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.spec.auto_delete = auto_delete;
        self
    }

    /// Whether only the declaring connection may use it.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.spec.exclusive = exclusive;
        self
    }

    /// `x-max-priority`: messages of a higher priority, up to `max`, are delivered first.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.spec = self.spec.max_priority(max);
        self
    }

    /// `x-dead-letter-exchange`: where rejected and expired messages go.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.spec = self.spec.dead_letter_exchange(exchange);
        self
    }

    /// `x-dead-letter-routing-key`: their routing key there (else their own).
    pub fn dead_letter_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.spec = self.spec.dead_letter_routing_key(routing_key);
        self
    }

    /// `x-message-ttl`: how long a message may wait in it.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.spec = self.spec.message_ttl(ttl);
        self
    }

    /// `x-queue-type` (a quorum queue is replicated across a cluster's nodes).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.spec = self.spec.queue_type(queue_type);
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What is declared.
    pub fn spec(&self) -> &QueueSpec {
        &self.spec
    }

    /// Its exchange and the binding's routing key, if it is bound.
    pub fn binding(&self) -> Option<(&Exchange, &str)> {
        self.exchange
            .as_ref()
            .map(|e| (e, self.routing_key.as_str()))
    }

    /// The binding's arguments ([`binding_argument`](Self::binding_argument)).
    pub fn binding_arguments(&self) -> &protocol::Headers {
        &self.binding_arguments
    }

    /// Declares its exchange, itself and the binding.
    async fn declare(&self, transport: &SharedTransport) -> Result<(), TransportError> {
        if let Some(exchange) = &self.exchange {
            transport.declare_exchange(exchange.spec()).await?;
        }
        transport.declare_queue(&self.spec).await?;
        if let Some(exchange) = &self.exchange {
            transport
                .bind_queue_with(
                    &self.spec.name,
                    exchange.name(),
                    &self.routing_key,
                    &self.binding_arguments,
                )
                .await?;
        }
        Ok(())
    }
}

/// Why a message could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The body does not serialise to JSON.
    #[error("message body could not be serialised: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The broker did not take the message; with `mandatory`, [`TransportError::Unroutable`]
    /// when no queue was bound for its routing key.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Publishes messages to any exchange or queue (Nameko's `Publisher`): a field of a service,
/// or standalone ([`Publisher::connect`]).
///
/// A message carries the current worker's context data as `nameko.*` headers, as everything a
/// worker sends does (standalone, the context data given with
/// [`with_context_data`](Self::with_context_data)). Its body is JSON; it is persistent and of
/// priority 0 unless said otherwise, and `publish(...).await` returns once the broker has
/// confirmed it. What it is published to is declared first (once per publisher).
#[derive(Clone)]
pub struct Publisher {
    transport: SharedTransport,
    declared: Arc<Mutex<HashSet<String>>>,
    headers: Arc<protocol::Headers>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.transport.describe())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on `transport`.
    pub fn new(transport: SharedTransport) -> Self {
        Publisher {
            transport,
            declared: Arc::default(),
            headers: Arc::default(),
        }
    }

    /// A standalone publisher, connected to the broker `uri` names.
    pub async fn connect(uri: &str) -> Result<Self, TransportError> {
        let config = Config {
            amqp_uri: Some(uri.to_owned()),
            ..Config::default()
        };
        Ok(Publisher::new(config.connect_client().await?))
    }

    /// The same publisher, sending `data` as the context data of every message (outside a
    /// worker; a worker's own context data is sent otherwise).
    pub fn with_context_data(&self, data: ContextData) -> Self {
        Publisher {
            headers: Arc::new(protocol::headers_from_context(&data)),
            ..self.clone()
        }
    }

    /// A message with `body`, to be sent with `.await`: to the default exchange unless
    /// [`to_exchange`](Publish::to_exchange) or [`to_queue`](Publish::to_queue) says where.
    pub fn publish<'a, T: Serialize + ?Sized>(&'a self, body: &'a T) -> Publish<'a, T> {
        Publish {
            publisher: self,
            body,
            exchange: None,
            queue: None,
            routing_key: None,
            mandatory: false,
            properties: Properties::nameko_json(),
        }
    }

    async fn declare_once(
        &self,
        key: String,
        declare: impl Future<Output = Result<(), TransportError>>,
    ) -> Result<(), TransportError> {
        let known = self
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        if !known {
            declare.await?;
            self.declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
        Ok(())
    }
}

impl Dependency for Publisher {
    async fn build(cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Publisher::new(cx.transport().clone()))
    }
}

/// One message being published: set its destination and options, then `.await` it.
#[must_use = "a message is sent when awaited"]
pub struct Publish<'a, T: ?Sized> {
    publisher: &'a Publisher,
    body: &'a T,
    exchange: Option<&'a Exchange>,
    queue: Option<&'a Queue>,
    routing_key: Option<String>,
    mandatory: bool,
    properties: Properties,
}

impl<'a, T: Serialize + ?Sized> Publish<'a, T> {
    /// To `exchange` (declared first).
    pub fn to_exchange(mut self, exchange: &'a Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// To `queue` (declared first, with its exchange and binding): through its exchange with
    /// its binding's routing key, or, unbound, through the default exchange by its name.
    pub fn to_queue(mut self, queue: &'a Queue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The routing key (else the queue's, or `""`).
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    /// The priority, for a queue declared with `x-max-priority` (0 unless given).
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }

    /// Dropped (or dead-lettered) if still queued after `expiration`.
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.properties.expiration = Some(expiration);
        self
    }

    /// Whether the broker keeps it on disk (`delivery_mode` 2, the default) or in memory only
    /// (1).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.properties.delivery_mode = Some(if persistent { 2 } else { 1 });
        self
    }

    /// Whether a message no queue is bound for is an error
    /// ([`TransportError::Unroutable`]) rather than dropped by the broker.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// A header, besides the context data's (which win over one of the same name, as in
    /// Nameko).
    pub fn header(
        mut self,
        name: impl Into<crate::protocol::HeaderName>,
        value: impl Into<Value>,
    ) -> Self {
        self.properties.headers.insert(name.into(), value.into());
        self
    }

    /// The `correlation_id` property.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(correlation_id.into());
        self
    }

    /// The `reply_to` property.
    pub fn reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.properties.reply_to = Some(reply_to.into());
        self
    }

    async fn send(self) -> Result<(), PublishError> {
        let body = serde_json::to_vec(self.body)?;
        let Publish {
            publisher,
            exchange,
            queue,
            routing_key,
            mandatory,
            properties,
            ..
        } = self;
        let transport = &publisher.transport;
        if let Some(queue) = queue {
            publisher
                .declare_once(format!("queue {}", queue.name()), queue.declare(transport))
                .await?;
        }
        let exchange = exchange.or_else(|| queue.and_then(|q| q.exchange.as_ref()));
        if let Some(exchange) = exchange {
            publisher
                .declare_once(
                    format!("exchange {}", exchange.name()),
                    transport.declare_exchange(exchange.spec()),
                )
                .await?;
        }
        let routing_key = routing_key.unwrap_or_else(|| match queue {
            Some(q) if q.exchange.is_some() => q.routing_key.clone(),
            Some(q) => q.name().to_owned(),
            None => String::new(),
        });
        let mut message = OutgoingMessage {
            exchange: exchange.map(|e| Arc::from(e.name())).unwrap_or_default(),
            routing_key,
            mandatory,
            properties,
            body,
        };
        let span = crate::trace::publish_span(&message.exchange, &message.routing_key);
        let publish = async move {
            // The message's own headers, then the context data's over them, as Nameko does.
            let mut context = match WorkerContext::current() {
                Some(worker) => worker.outgoing_headers(),
                None => (*publisher.headers).clone(),
            };
            crate::trace::inject(&mut context);
            message.properties.headers.append(&mut context);
            transport.publish(message).await
        };
        crate::trace::producer(span, publish).await?;
        Ok(())
    }
}

impl<'a, T: Serialize + ?Sized + Sync> IntoFuture for Publish<'a, T> {
    type Output = Result<(), PublishError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
