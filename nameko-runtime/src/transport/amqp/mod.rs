//! RabbitMQ through lapin.
//!
//! Two connections per transport, as kombu (and so Nameko) keeps them: one consumes, declares
//! and acknowledges; the other only publishes, so that when RabbitMQ blocks publishers (a memory
//! or disk alarm) consumers still receive and acknowledge. Declarations each use a short-lived
//! channel (a failed declare closes its channel in AMQP, and must not take anything else down
//! with it); publishes share one channel in confirm mode, except large messages, which get a
//! channel of their own (a message the broker refuses for its size closes its channel, and must
//! not fail the other messages waiting for their confirms), and messages whose channel closed
//! under them, which are published again on one of their own; each consumer has a channel of its
//! own with its own prefetch. Every publish waits for its confirm at most
//! [`AmqpOptions::publish_timeout`]; the headers of a message must fit in one frame, and a
//! message whose headers do not is refused before it is sent
//! ([`TransportError::HeadersTooLarge`]) rather than making the broker close the connection.
//!
//! (Over 600 lines with its unit tests; the code itself is about 620 lines: the connection,
//! its watcher and the `Transport` operations, which share the connection state. Field
//! tables, the consumer and URIs are in the submodules.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;
use tokio::sync::{Mutex, watch};

use super::{
    Consumer, ConsumerSource, Delivery, ExchangeSpec, ExchangeType, OutgoingMessage, Properties,
    Publishing, QueueSpec, Settler, TlsOptions, Transport, TransportError, Unpublished,
    mask_password,
};
use crate::protocol::Headers;

mod consumer;
mod fields;
mod uri;

pub(crate) use consumer::AmqpAcker;
use consumer::*;
use fields::*;
pub(crate) use uri::{amqp_user, parse_amqp_uri};

/// A RabbitMQ connection (two AMQP connections: see the module's documentation).
pub struct AmqpTransport {
    uri: String,
    /// Consumers, declarations, acknowledgements.
    connection: Connection,
    /// Publishes only; `None`: publishes share `connection` ([`AmqpOptions::separate_publisher`]).
    publish_connection: Option<Connection>,
    /// Held while the publishing channel is (re)opened.
    publisher: Mutex<Option<Channel>>,
    /// The publishing channel, read without waiting: every publish takes it.
    current_publisher: std::sync::Mutex<Option<Channel>>,
    closed: std::sync::atomic::AtomicBool,
    /// Why a connection was lost, once one is (set by the connections' watchers).
    lost: watch::Receiver<Option<String>>,
    options: AmqpOptions,
}

/// Settings of a RabbitMQ transport besides its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// TLS settings (Nameko's `AMQP_SSL`); `None`: as the URI says.
    pub tls: Option<TlsOptions>,
    /// How long a publish waits for the broker's confirm before it fails with
    /// [`TransportError::PublishTimeout`] (a broker blocking publishers never confirms).
    pub publish_timeout: std::time::Duration,
    /// Publish on a connection of its own (the default, and what services need: a broker
    /// blocking publishers then stalls no consumer and no acknowledgement). A standalone client,
    /// whose every call publishes, gains nothing from it and saves a connection without it.
    pub separate_publisher: bool,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            tls: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            separate_publisher: true,
        }
    }
}

/// How long a publish waits for its confirm unless told otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long closing a connection waits for the broker's answer.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages with a body larger than this are published on a channel of their own.
pub const DEDICATED_CHANNEL_BODY_BYTES: usize = 64 * 1024;

/// How many times a publish is tried again, on a channel of its own, when its channel closed
/// under it (this message or another on the shared channel was refused) while the connection
/// stayed up.
const PUBLISH_RETRIES: usize = 2;

/// Nesting deeper than this in a message's header table is refused (the message is rejected):
/// the conversion of headers recurses, and a hostile sender must not exhaust a stack.
pub const MAX_HEADER_DEPTH: usize = 64;

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AmqpTransport({})", mask_password(&self.uri))
    }
}

fn connection_error(error: lapin::Error) -> TransportError {
    let text = error.to_string();
    if text.contains("NOT_FOUND") || text.contains("NOTFOUND") {
        TransportError::NotFound(text)
    } else if text.contains("PRECONDITION_FAILED") || text.contains("PRECONDITIONFAILED") {
        TransportError::PreconditionFailed(text)
    } else {
        TransportError::Connection(text)
    }
}

/// lapin's TLS settings from Nameko's: the files read, and checked to be PEM.
fn tls_config(tls: &TlsOptions) -> Result<OwnedTLSConfig, String> {
    let read = |what: &str, path: &std::path::Path| {
        let data = std::fs::read(path)
            .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
        if !data.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!("{what} {} is not a PEM file", path.display()));
        }
        Ok(data)
    };
    let cert_chain = match &tls.ca_certs {
        Some(path) => Some(
            String::from_utf8(read("AMQP_SSL ca_certs", path)?)
                .map_err(|_| format!("AMQP_SSL ca_certs {} is not text", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("AMQP_SSL certfile", cert)?,
            key: read("AMQP_SSL keyfile", key)?,
        }),
        (None, None) => None,
        _ => return Err("AMQP_SSL needs both certfile and keyfile, or neither".into()),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// The largest AMQP frame a connection asks for: RabbitMQ's and Python Nameko's (py-amqp's)
/// 128 KiB. A message's headers travel in one frame, so this is also the most header data (the
/// context data of a call, for one) a message can carry: a Python caller may send up to this
/// much, and a connection that asked for less would be closed by the first such message. A
/// larger body simply takes more frames.
pub const DEFAULT_FRAME_MAX: u32 = 128 * 1024;

impl AmqpTransport {
    /// Connects to RabbitMQ. Accepts `amqp://`, `amqps://` and Python's `pyamqp://`; a URI
    /// without a path uses the `/` virtual host. The largest frame is [`DEFAULT_FRAME_MAX`]
    /// unless the URI asks for another (`?frame_max=131072`).
    pub async fn connect(uri: &str) -> Result<AmqpTransport, TransportError> {
        Self::connect_with_options(uri, &AmqpOptions::default()).await
    }

    /// Connects like [`connect`](Self::connect); with `tls`, over TLS with those settings
    /// (an `amqp://` URI becomes `amqps://`).
    pub async fn connect_with(
        uri: &str,
        tls: Option<&TlsOptions>,
    ) -> Result<AmqpTransport, TransportError> {
        let options = AmqpOptions {
            tls: tls.cloned(),
            ..AmqpOptions::default()
        };
        Self::connect_with_options(uri, &options).await
    }

    /// Connects like [`connect`](Self::connect), with these options.
    pub async fn connect_with_options(
        uri: &str,
        options: &AmqpOptions,
    ) -> Result<AmqpTransport, TransportError> {
        let tls = options.tls.as_ref();
        let mut normalized = match uri.strip_prefix("pyamqp://") {
            Some(rest) => format!("amqp://{rest}"),
            None => uri.to_owned(),
        };
        if tls.is_some()
            && let Some(rest) = normalized.strip_prefix("amqp://")
        {
            normalized = format!("amqps://{rest}");
        }
        if !normalized.contains("frame_max=") {
            let separator = if normalized.contains('?') { '&' } else { '?' };
            normalized = format!("{normalized}{separator}frame_max={DEFAULT_FRAME_MAX}");
        }
        let cannot = |e: &dyn std::fmt::Display| {
            TransportError::Connection(format!("cannot connect to {}: {e}", mask_password(uri)))
        };
        let tls_config = match tls {
            Some(tls) => tls_config(tls).map_err(|e| cannot(&e))?,
            None => OwnedTLSConfig::default(),
        };
        let parsed = parse_amqp_uri(&normalized).map_err(|e| cannot(&e))?;
        let open = |role: &str| {
            let (uri, tls_config) = (parsed.clone(), tls_config.clone());
            let name = format!("nameko-rs {role} (pid {})", std::process::id());
            async move {
                lapin::DefaultConnectionBuilder::new()
                    .map_err(|e| cannot(&e))?
                    .with_uri(uri)
                    .with_properties(
                        ConnectionProperties::default().with_connection_name(name.into()),
                    )
                    .with_tls_config(tls_config)
                    .connect()
                    .await
                    .map_err(|e| cannot(&e))
            }
        };
        let separate = options.separate_publisher;
        let connection = open(if separate { "consumer" } else { "client" }).await?;
        let publish_connection = if separate {
            match open("publisher").await {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = connection.close(200, "OK".into()).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let (lost_tx, lost) = watch::channel(None);
        let lost_tx = Arc::new(lost_tx);
        let role = if separate { "consumer" } else { "client" };
        watch_connection(&connection, role, lost_tx.clone(), mask_password(uri));
        if let Some(publish_connection) = &publish_connection {
            watch_connection(publish_connection, "publisher", lost_tx, mask_password(uri));
        }
        Ok(AmqpTransport {
            uri: normalized,
            connection,
            publish_connection,
            publisher: Mutex::new(None),
            current_publisher: std::sync::Mutex::new(None),
            closed: Default::default(),
            lost,
            options: options.clone(),
        })
    }

    /// The connection that publishes.
    fn publishing(&self) -> &Connection {
        self.publish_connection.as_ref().unwrap_or(&self.connection)
    }

    /// The largest frame the publishing connection negotiated.
    fn frame_max(&self) -> usize {
        self.publishing().configuration().frame_max() as usize
    }

    /// Publishes `message` and waits for the broker's confirm: again on a channel of its own
    /// if the shared one closed under it.
    async fn publish_message(&self, message: &OutgoingMessage) -> Result<(), TransportError> {
        let properties = to_basic_properties(&message.properties);
        // The headers travel in one frame: a message whose headers do not fit would make
        // the broker close the whole connection.
        let (size, limit) = (content_header_size(&properties), self.frame_max());
        if size + 8 > limit {
            return Err(TransportError::HeadersTooLarge {
                size,
                limit: limit.saturating_sub(8),
            });
        }
        let mut dedicated = message.body.len() > DEDICATED_CHANNEL_BODY_BYTES;
        // Built once for the first attempt (its header table is the costly part), again only
        // for another.
        let mut properties = Some(properties);
        let mut retries = 0;
        loop {
            let channel = if dedicated {
                self.confirm_channel().await?
            } else {
                self.publisher().await?
            };
            let properties = properties
                .take()
                .unwrap_or_else(|| to_basic_properties(&message.properties));
            let published = tokio::time::timeout(
                self.options.publish_timeout,
                publish_on(&channel, message, properties),
            )
            .await;
            if dedicated && channel.status().connected() {
                let _ = channel.close(200, "OK".into()).await;
            }
            match published {
                Ok(Err(error))
                    if !matches!(
                        error,
                        TransportError::Unroutable { .. } | TransportError::Nacked
                    ) && !channel.status().connected()
                        && self.publishing().status().connected()
                        && retries < PUBLISH_RETRIES =>
                {
                    // The channel closed under this message: the broker refused this one or
                    // another one on it, which cannot be told apart. Again, on a channel of
                    // its own, so that a message the broker refuses closes only its own.
                    retries += 1;
                    dedicated = true;
                    tracing::debug!(%error, retries, "publishing again on a channel of its own");
                }
                Ok(result) => return result,
                Err(_) => {
                    return Err(TransportError::PublishTimeout(self.options.publish_timeout));
                }
            }
        }
    }

    async fn channel(&self) -> Result<Channel, TransportError> {
        self.connection
            .create_channel()
            .await
            .map_err(connection_error)
    }

    /// A new channel in confirm mode on the publishing connection.
    async fn confirm_channel(&self) -> Result<Channel, TransportError> {
        let channel = self
            .publishing()
            .create_channel()
            .await
            .map_err(connection_error)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(connection_error)?;
        Ok(channel)
    }

    async fn publisher(&self) -> Result<Channel, TransportError> {
        {
            // The common case: a quick look, no queueing behind other publishers.
            let current = self
                .current_publisher
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(channel) = current.as_ref()
                && channel.status().connected()
            {
                return Ok(channel.clone());
            }
        }
        let mut publisher = self.publisher.lock().await;
        if let Some(channel) = publisher.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.confirm_channel().await?;
        *publisher = Some(channel.clone());
        *self
            .current_publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
        Ok(channel)
    }

    async fn with_channel<T, F>(&self, op: impl FnOnce(Channel) -> F) -> Result<T, TransportError>
    where
        F: std::future::Future<Output = lapin::Result<T>>,
    {
        let channel = self.channel().await?;
        let result = op(channel.clone()).await.map_err(connection_error);
        if channel.status().connected() {
            let _ = channel.close(200, "OK".into()).await;
        }
        result
    }
}

/// Watches one of a transport's connections: logs the broker blocking and unblocking it, and
/// tells the transport when it is lost. Ends when the transport is dropped.
fn watch_connection(
    connection: &Connection,
    role: &'static str,
    lost: Arc<watch::Sender<Option<String>>>,
    broker: String,
) {
    let mut events: std::pin::Pin<Box<dyn Stream<Item = lapin::Event> + Send>> =
        Box::pin(connection.events_listener());
    let status = connection.status().clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        use futures_util::StreamExt;
        let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut last_error = None;
        loop {
            tokio::select! {
                // The transport was dropped.
                _ = lost.closed() => return,
                event = events.next() => match event {
                    Some(lapin::Event::ConnectionBlocked(reason)) => tracing::warn!(
                        %broker, connection = role, %reason,
                        "the broker blocked this connection: its publishes wait (for at most the publish timeout) until it unblocks"
                    ),
                    Some(lapin::Event::ConnectionUnblocked) => {
                        tracing::info!(%broker, connection = role, "the broker unblocked this connection")
                    }
                    Some(lapin::Event::Error(error)) => last_error = Some(error.to_string()),
                    Some(_) => {}
                    None => events = Box::pin(futures_util::stream::pending()),
                },
                _ = check.tick() => {}
            }
            if !status.connected() && !status.connecting() && !status.reconnecting() {
                let reason = match last_error.take() {
                    Some(error) => format!("{role} connection: {error}"),
                    None => format!("{role} connection closed"),
                };
                lost.send_if_modified(|lost| {
                    lost.get_or_insert(reason);
                    true
                });
                return;
            }
        }
    });
}

impl Transport for AmqpTransport {
    fn declare_exchange(&self, spec: &ExchangeSpec) -> BoxFuture<'_, Result<(), TransportError>> {
        let spec = spec.clone();
        async move {
            self.with_channel(|ch| async move {
                let kind = match spec.kind {
                    ExchangeType::Direct => ExchangeKind::Direct,
                    ExchangeType::Fanout => ExchangeKind::Fanout,
                    ExchangeType::Topic => ExchangeKind::Topic,
                    ExchangeType::Headers => ExchangeKind::Headers,
                };
                ch.exchange_declare(
                    spec.name.as_str().into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: spec.durable,
                        auto_delete: spec.auto_delete,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await
        }
        .boxed()
    }

    fn declare_queue(&self, spec: &QueueSpec) -> BoxFuture<'_, Result<(), TransportError>> {
        let spec = spec.clone();
        async move {
            let arguments = fields::queue_arguments(&spec);
            self.with_channel(|ch| async move {
                ch.queue_declare(
                    spec.name.as_str().into(),
                    QueueDeclareOptions {
                        durable: spec.durable,
                        exclusive: spec.exclusive,
                        auto_delete: spec.auto_delete,
                        ..Default::default()
                    },
                    arguments,
                )
                .await
                .map(drop)
            })
            .await
        }
        .boxed()
    }

    fn bind_queue_with<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
        arguments: &'a Headers,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        async move {
            self.with_channel(|ch| async move {
                ch.queue_bind(
                    queue.into(),
                    exchange.into(),
                    binding_key.into(),
                    QueueBindOptions::default(),
                    to_field_table(arguments),
                )
                .await
            })
            .await
        }
        .boxed()
    }

    fn publish(&self, message: OutgoingMessage) -> Publishing<'_> {
        Publishing::waiting(async move { self.publish_message(&message).await })
    }

    fn publish_or_return(&self, message: OutgoingMessage) -> Publishing<'_, Box<Unpublished>> {
        Publishing::waiting(async move {
            match self.publish_message(&message).await {
                Ok(()) => Ok(()),
                Err(error) => Err(Box::new(Unpublished { error, message })),
            }
        })
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        prefetch: u16,
    ) -> BoxFuture<'a, Result<Consumer, TransportError>> {
        async move {
            let channel = self.channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(connection_error)?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(connection_error)?;
            Ok(Consumer::new(Box::new(AmqpConsumer {
                channel: Arc::new(channel),
                consumer,
                cancelled: false,
                exchange: Arc::default(),
            })))
        }
        .boxed()
    }

    fn describe(&self) -> String {
        mask_password(&self.uri)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn connection_lost(&self) -> bool {
        !self.is_closed()
            && (!self.connection.status().connected()
                || !self.publishing().status().connected()
                || self.lost.borrow().is_some())
    }

    fn lost(&self) -> BoxFuture<'_, String> {
        let mut lost = self.lost.clone();
        async move {
            let reason = match lost.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                Err(_) => None,
            };
            match reason {
                // A connection closed by `close` is not lost.
                Some(reason) if !self.is_closed() => reason,
                _ => std::future::pending().await,
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        async move {
            for connection in [self.publish_connection.as_ref(), Some(&self.connection)]
                .into_iter()
                .flatten()
            {
                if connection.status().connected() {
                    // A connection whose socket just died may not have noticed yet: its close
                    // would wait for an answer that never comes.
                    let closing = connection.close(200, "OK".into());
                    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                        tracing::warn!(timeout = ?CLOSE_TIMEOUT, "the broker did not answer the connection's close; dropping it");
                    }
                }
            }
        }
        .boxed()
    }
}

/// Publishes one message on `channel` and waits for its confirm.
async fn publish_on(
    channel: &Channel,
    message: &OutgoingMessage,
    properties: BasicProperties,
) -> Result<(), TransportError> {
    let confirm = channel
        .basic_publish(
            (&*message.exchange).into(),
            message.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: message.mandatory,
                ..Default::default()
            },
            &message.body,
            properties,
        )
        .await
        .map_err(connection_error)?
        .await
        .map_err(connection_error)?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(TransportError::Unroutable {
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.clone(),
        }),
        Confirmation::Nack(_) => Err(TransportError::Nacked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_broker_hosts_are_kept() {
        let uri = parse_amqp_uri("amqp://guest:guest@[::1]:5672/").unwrap();
        assert_eq!(uri.authority.host, "::1");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.authority.userinfo.password, "guest");
        assert_eq!(uri.vhost, "");
        let uri = parse_amqp_uri("amqps://u:p@[2001:DB8::a]/%2f?heartbeat=5").unwrap();
        assert_eq!(uri.authority.host, "2001:db8::a");
        assert_eq!(uri.authority.port, 5671);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.query.heartbeat, Some(5));
        // Names and IPv4 addresses were already right.
        let uri = parse_amqp_uri("amqp://u:p@rabbit:5673/vh").unwrap();
        assert_eq!(uri.authority.host, "rabbit");
        let uri = parse_amqp_uri("amqp://10.1.2.3/").unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        // A password may hold `@` and `[`, escaped.
        let uri = parse_amqp_uri("amqp://u:p%40%5B@[::1]/").unwrap();
        assert_eq!(uri.authority.userinfo.password, "p@[");
        assert_eq!(uri.authority.host, "::1");
        assert!(parse_amqp_uri("amqp://u:p@[::1/").is_err());
    }

    use serde_json::json;

    #[test]
    fn headers_round_trip_through_field_tables() {
        let headers: Headers = [
            ("nameko.call_id_stack".to_owned(), json!(["a.b.c", "d.e.f"])),
            ("nameko.auth_token".to_owned(), json!("tok")),
            ("n".to_owned(), json!(42)),
            ("f".to_owned(), json!(1.5)),
            ("b".to_owned(), json!(true)),
            ("o".to_owned(), json!({"k": [1, "x"]})),
        ]
        .into();
        assert_eq!(from_field_table(&to_field_table(&headers)), Some(headers));
    }

    #[test]
    fn deeply_nested_headers_are_refused_not_recursed_into() {
        let mut value = AMQPValue::Void;
        for _ in 0..100_000 {
            let mut table = FieldTable::default();
            table.insert("a".into(), value);
            value = AMQPValue::FieldTable(table);
        }
        let mut headers = FieldTable::default();
        headers.insert("deep".into(), value);
        assert_eq!(from_field_table(&headers), None);
        // (Dropping such a value recurses too; leak it rather than test the allocator's stack.)
        std::mem::forget(headers);
        let mut shallow = FieldTable::default();
        shallow.insert(
            "a".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
        );
        assert!(from_field_table(&shallow).is_some());
    }

    #[test]
    fn the_content_header_size_is_what_amqp_encodes() {
        // class 2 + weight 2 + body size 8 + flags 2, then a shortstr (1 + 16) and a table:
        // 4 + key (1 + 1) + type 1 + longstr (4 + 3).
        let headers: Headers = [("k".to_owned(), json!("abc"))].into();
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(to_field_table(&headers));
        assert_eq!(content_header_size(&p), 14 + 17 + 14);
    }
}
