//! RabbitMQ through lapin.
//!
//! One connection per transport. Declarations each use a short-lived channel (a failed declare
//! closes its channel in AMQP, and must not take anything else down with it); publishes share
//! one channel in confirm mode; each consumer has a channel of its own with its own prefetch.

use std::collections::BTreeMap;
use std::task::{Context, Poll};

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
use tokio::sync::Mutex;

use super::{
    Acker, Consumer, ConsumerSource, Delivery, ExchangeSpec, OutgoingMessage, Properties,
    QueueSpec, TlsOptions, Transport, TransportError, mask_password,
};
use crate::protocol::Headers;

/// A RabbitMQ connection.
pub struct AmqpTransport {
    uri: String,
    connection: Connection,
    /// Held while the publishing channel is (re)opened.
    publisher: Mutex<Option<Channel>>,
    /// The publishing channel, read without waiting: every publish takes it.
    current_publisher: std::sync::Mutex<Option<Channel>>,
    closed: std::sync::atomic::AtomicBool,
}

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

/// The largest AMQP frame a connection asks for. The client keeps read and write buffers of 32
/// frames each: at RabbitMQ's default (128 KiB) that is 8 MiB for an idle service; at 32 KiB,
/// 2 MiB. A larger message simply takes more frames.
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

impl AmqpTransport {
    /// Connects to RabbitMQ. Accepts `amqp://`, `amqps://` and Python's `pyamqp://`; a URI
    /// without a path uses the `/` virtual host. The largest frame is [`DEFAULT_FRAME_MAX`]
    /// unless the URI asks for another (`?frame_max=131072`).
    pub async fn connect(uri: &str) -> Result<AmqpTransport, TransportError> {
        Self::connect_with(uri, None).await
    }

    /// Connects like [`connect`](Self::connect); with `tls`, over TLS with those settings
    /// (an `amqp://` URI becomes `amqps://`).
    pub async fn connect_with(
        uri: &str,
        tls: Option<&TlsOptions>,
    ) -> Result<AmqpTransport, TransportError> {
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
        let connection = lapin::DefaultConnectionBuilder::new()
            .map_err(|e| cannot(&e))?
            .with_uri(super::parse_amqp_uri(&normalized).map_err(|e| cannot(&e))?)
            .with_properties(ConnectionProperties::default())
            .with_tls_config(tls_config)
            .connect()
            .await
            .map_err(|e| cannot(&e))?;
        Ok(AmqpTransport {
            uri: normalized,
            connection,
            publisher: Mutex::new(None),
            current_publisher: std::sync::Mutex::new(None),
            closed: Default::default(),
        })
    }

    async fn channel(&self) -> Result<Channel, TransportError> {
        self.connection
            .create_channel()
            .await
            .map_err(connection_error)
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
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(connection_error)?;
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

/// Converts headers to an AMQP field table.
pub(crate) fn to_field_table(headers: &Headers) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = headers
        .iter()
        .map(|(k, v)| (ShortString::from(k.as_str()), to_amqp(v)))
        .collect();
    FieldTable::from(map)
}

fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item));
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(ShortString::from(k.as_str()), to_amqp(v));
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// Converts an AMQP field table to headers.
pub(crate) fn from_field_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
        .collect()
}

fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_amqp).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

fn to_basic_properties(p: &Properties) -> BasicProperties {
    let mut props = BasicProperties::default().with_headers(to_field_table(&p.headers));
    if let Some(v) = &p.content_type {
        props = props.with_content_type(v.as_str().into());
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(v.as_str().into());
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(v.as_str().into());
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    props
}

fn from_basic_properties(p: &BasicProperties) -> Properties {
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        headers: p
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default(),
    }
}

struct AmqpAcker(lapin::Acker);

impl Acker for AmqpAcker {
    fn ack(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        async move {
            self.0
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(connection_error)
        }
        .boxed()
    }

    fn reject(&mut self, requeue: bool) -> BoxFuture<'_, Result<(), TransportError>> {
        async move {
            self.0
                .reject(BasicRejectOptions { requeue })
                .await
                .map(drop)
                .map_err(connection_error)
        }
        .boxed()
    }
}

struct AmqpConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    cancelled: bool,
}

impl ConsumerSource for AmqpConsumer {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Delivery, TransportError>>> {
        std::pin::Pin::new(&mut self.consumer)
            .poll_next(cx)
            .map(|item| {
                item.map(|result| {
                    result.map_err(connection_error).map(|d| {
                        Delivery::new(
                            d.exchange.as_str().to_owned(),
                            d.routing_key.as_str().to_owned(),
                            d.redelivered,
                            from_basic_properties(&d.properties),
                            d.data,
                            Box::new(AmqpAcker(d.acker)),
                        )
                    })
                })
            })
    }

    fn cancel(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if !self.cancelled && self.channel.status().connected() {
                self.cancelled = true;
                let tag = self.consumer.tag();
                if let Err(e) = self
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    tracing::debug!(error = %e, "consumer cancel failed");
                }
            }
        }
        .boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if self.channel.status().connected() {
                let _ = self.channel.close(200, "OK".into()).await;
            }
        }
        .boxed()
    }
}

impl Transport for AmqpTransport {
    fn declare_exchange(&self, spec: &ExchangeSpec) -> BoxFuture<'_, Result<(), TransportError>> {
        let spec = spec.clone();
        async move {
            self.with_channel(|ch| async move {
                ch.exchange_declare(
                    spec.name.as_str().into(),
                    ExchangeKind::Topic,
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
            let mut arguments = FieldTable::default();
            if let Some(expires) = spec.expires {
                // Python's py-amqp sends this int as a signed 32-bit value; so do we.
                let ms = i32::try_from(expires.as_millis()).unwrap_or(i32::MAX);
                arguments.insert("x-expires".into(), AMQPValue::LongInt(ms));
            }
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

    fn bind_queue<'a>(
        &'a self,
        queue: &'a str,
        exchange: &'a str,
        binding_key: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        async move {
            self.with_channel(|ch| async move {
                ch.queue_bind(
                    queue.into(),
                    exchange.into(),
                    binding_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            })
            .await
        }
        .boxed()
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), TransportError>> {
        async move {
            let channel = self.publisher().await?;
            let confirm = channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..Default::default()
                    },
                    &message.body,
                    to_basic_properties(&message.properties),
                )
                .await
                .map_err(connection_error)?
                .await
                .map_err(connection_error)?;
            match confirm {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(TransportError::Unroutable {
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                }),
                Confirmation::Nack(_) => Err(TransportError::Nacked),
            }
        }
        .boxed()
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
                channel,
                consumer,
                cancelled: false,
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
        !self.is_closed() && !self.connection.status().connected()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        async move {
            if self.connection.status().connected() {
                let _ = self.connection.close(200, "OK".into()).await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(from_field_table(&to_field_table(&headers)), headers);
    }
}
