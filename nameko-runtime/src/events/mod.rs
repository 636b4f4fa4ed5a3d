//! Events: publish/subscribe between services, as Nameko does it.
//!
//! A service dispatches with an [`EventDispatcher`] field: the payload is published as raw JSON
//! to the topic exchange `<service>.events` with the event type as routing key. Handlers are
//! methods marked `#[event_handler("source_service", "event_type")]`; each gets a queue named by
//! its [`HandlerType`] and bound to the source's exchange. Code outside services dispatches with
//! a [`StandaloneEventDispatcher`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Config;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::protocol;
use crate::service::{Dependency, DependencyContext};
use crate::transport::{
    self, ExchangeSpec, OutgoingMessage, Properties, SharedTransport, TransportError,
};

pub use crate::protocol::HandlerType;
pub use handler::{EventBody, EventError, EventHandler};

pub(crate) mod handler;

/// An event type known by its payload's type, for [`EventDispatcher::dispatch_event`].
///
/// ```
/// use nameko::events::Event;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { order_id: u64 }
///
/// impl Event for OrderPlaced {
///     const EVENT_TYPE: &'static str = "order_placed";
/// }
/// ```
pub trait Event: Serialize {
    /// The event type (the routing key).
    const EVENT_TYPE: &'static str;
}

/// Why an event could not be dispatched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The payload does not serialise to JSON.
    #[error("event payload could not be serialised: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The broker did not take the event.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// The publish options of an event (Nameko's dispatcher takes them at construction).
#[derive(Debug, Clone, Copy, Default)]
struct EventOptions {
    priority: u8,
    expiration: Option<std::time::Duration>,
}

fn event_message(
    source: &str,
    event_type: &str,
    body: Vec<u8>,
    headers: protocol::Headers,
    options: EventOptions,
) -> OutgoingMessage {
    OutgoingMessage {
        exchange: protocol::event_exchange_name(source).into(),
        routing_key: event_type.to_owned(),
        mandatory: false,
        properties: Properties {
            headers,
            priority: Some(options.priority),
            expiration: options.expiration,
            ..Properties::nameko_json()
        },
        body,
    }
}

/// Dispatches the events of one service (Nameko's `EventDispatcher`); a field of a service.
///
/// Events carry the current worker's context data and call id stack, like every message a worker
/// sends. `dispatch` returns once the broker has confirmed the event.
#[derive(Clone)]
pub struct EventDispatcher {
    transport: SharedTransport,
    source: Arc<str>,
    options: EventOptions,
}

impl fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDispatcher")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl EventDispatcher {
    /// A dispatcher of `source`'s events; declares `<source>.events`.
    pub async fn new(
        transport: SharedTransport,
        config: &Config,
        source: &str,
    ) -> Result<EventDispatcher, TransportError> {
        transport
            .declare_exchange(&event_exchange(config, source))
            .await?;
        Ok(EventDispatcher {
            transport,
            source: Arc::from(source),
            options: EventOptions::default(),
        })
    }

    /// The same dispatcher, its events of this priority (for handlers' queues declared with
    /// `x-max-priority`). 0 unless set.
    pub fn with_priority(&self, priority: u8) -> Self {
        let mut dispatcher = self.clone();
        dispatcher.options.priority = priority;
        dispatcher
    }

    /// The same dispatcher, its events dropped (or dead-lettered) if still queued after
    /// `expiration`.
    pub fn with_expiration(&self, expiration: std::time::Duration) -> Self {
        let mut dispatcher = self.clone();
        dispatcher.options.expiration = Some(expiration);
        dispatcher
    }

    /// The service whose events these are.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes `payload` as an event of type `event_type`.
    pub async fn dispatch<T: Serialize + ?Sized>(
        &self,
        event_type: &str,
        payload: &T,
    ) -> Result<(), DispatchError> {
        let body = serde_json::to_vec(payload)?;
        let publish = async {
            let mut headers = WorkerContext::current()
                .map(|w| w.outgoing_headers())
                .unwrap_or_default();
            crate::trace::inject(&mut headers);
            self.transport
                .publish(event_message(
                    &self.source,
                    event_type,
                    body,
                    headers,
                    self.options,
                ))
                .await
        };
        crate::trace::event_dispatch(&self.source, event_type, publish).await?;
        crate::metrics::event_dispatched(&self.source, event_type);
        Ok(())
    }

    /// Publishes a typed event.
    pub async fn dispatch_event<E: Event>(&self, event: &E) -> Result<(), DispatchError> {
        self.dispatch(E::EVENT_TYPE, event).await
    }
}

impl Dependency for EventDispatcher {
    async fn build(cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(EventDispatcher::new(cx.transport().clone(), cx.config(), cx.service_name()).await?)
    }
}

pub(crate) fn event_exchange(config: &Config, source: &str) -> ExchangeSpec {
    ExchangeSpec {
        auto_delete: config.auto_delete_event_exchanges,
        ..ExchangeSpec::durable_topic(protocol::event_exchange_name(source))
    }
}

/// Dispatches events from outside any service, in the name of any source service (Nameko's
/// standalone `event_dispatcher`). Like Nameko's, it sends no context headers, unless given
/// context data with [`with_context_data`](Self::with_context_data).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use nameko::events::StandaloneEventDispatcher;
///
/// let dispatcher = StandaloneEventDispatcher::connect("amqp://guest:guest@localhost").await?;
/// dispatcher.dispatch("my_event_publisher_service", "my_event", &"hi").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StandaloneEventDispatcher {
    transport: Arc<Mutex<SharedTransport>>,
    /// Where to connect again after a lost connection, for a dispatcher that owns it.
    reconnect: Option<Arc<Reconnect>>,
    config: Config,
    declared: Arc<Mutex<HashSet<String>>>,
    headers: Arc<protocol::Headers>,
    options: EventOptions,
}

struct Reconnect {
    uri: String,
    options: transport::amqp::AmqpOptions,
    /// One reconnection at a time.
    lock: tokio::sync::Mutex<()>,
}

impl StandaloneEventDispatcher {
    /// Connects to the broker at `uri`.
    ///
    /// The dispatcher owns this connection: when it has been lost, the next dispatch connects
    /// again first (a dispatch cut off by the loss fails with the transport's error).
    pub async fn connect(uri: &str) -> Result<Self, TransportError> {
        Self::connect_with(&Config {
            amqp_uri: Some(uri.to_owned()),
            ..Config::default()
        })
        .await
    }

    /// Like [`connect`](Self::connect), with the broker, heartbeat, TLS settings and event
    /// exchange options of `config`.
    pub async fn connect_with(config: &Config) -> Result<Self, TransportError> {
        let mut dispatcher = Self::new(config.connect_client().await?, config);
        dispatcher.reconnect = Some(Arc::new(Reconnect {
            uri: config.connection_uri(),
            options: config.client_options(),
            lock: tokio::sync::Mutex::new(()),
        }));
        Ok(dispatcher)
    }

    /// A dispatcher on an existing transport (which it does not renew if its connection is
    /// lost).
    pub fn new(transport: SharedTransport, config: &Config) -> Self {
        StandaloneEventDispatcher {
            transport: Arc::new(Mutex::new(transport)),
            reconnect: None,
            config: config.clone(),
            declared: Arc::default(),
            headers: Arc::default(),
            options: EventOptions::default(),
        }
    }

    /// A dispatcher whose events carry this context data (e.g. an `auth_token`) as `nameko.*`
    /// headers, for the handlers' `WorkerContext`.
    pub fn with_context_data(&self, data: crate::ContextData) -> Self {
        StandaloneEventDispatcher {
            headers: Arc::new(protocol::headers_from_context(&data)),
            ..self.clone()
        }
    }

    /// The same dispatcher, its events of this priority. 0 unless set.
    pub fn with_priority(&self, priority: u8) -> Self {
        let mut dispatcher = self.clone();
        dispatcher.options.priority = priority;
        dispatcher
    }

    /// The same dispatcher, its events dropped (or dead-lettered) if still queued after
    /// `expiration`.
    pub fn with_expiration(&self, expiration: std::time::Duration) -> Self {
        let mut dispatcher = self.clone();
        dispatcher.options.expiration = Some(expiration);
        dispatcher
    }

    /// The transport to publish on: a new connection if the dispatcher owns its connection and
    /// that was lost.
    async fn transport(&self) -> Result<SharedTransport, TransportError> {
        let current = self
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(reconnect) = &self.reconnect else {
            return Ok(current);
        };
        if !current.connection_lost() {
            return Ok(current);
        }
        let _one_at_a_time = reconnect.lock.lock().await;
        let current = self
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !current.connection_lost() {
            return Ok(current);
        }
        // Bounded, so that a broker that accepts but never answers does not hold every later
        // dispatch behind this one.
        let attempt = transport::connect_with_options(&reconnect.uri, &reconnect.options);
        let fresh = tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
            .await
            .map_err(|_| TransportError::Connection("no connection within 10 s".into()))??;
        tracing::info!(broker = %fresh.describe(), "event dispatcher reconnected");
        *self.transport.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(fresh)
    }

    /// Publishes `payload` as `source`'s event of type `event_type`, declaring `<source>.events`
    /// the first time.
    pub async fn dispatch<T: Serialize + ?Sized>(
        &self,
        source: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<(), DispatchError> {
        let body = serde_json::to_vec(payload)?;
        let transport = self.transport().await?;
        let known = self
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(source);
        if !known {
            transport
                .declare_exchange(&event_exchange(&self.config, source))
                .await?;
            self.declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(source.to_owned());
        }
        let publish = async {
            let mut headers = (*self.headers).clone();
            crate::trace::inject(&mut headers);
            let message = event_message(source, event_type, body, headers, self.options);
            transport.publish(message).await
        };
        crate::trace::event_dispatch(source, event_type, publish).await?;
        crate::metrics::event_dispatched(source, event_type);
        Ok(())
    }
}
