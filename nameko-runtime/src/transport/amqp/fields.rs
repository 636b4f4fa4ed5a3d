//! Headers and properties between Nameko's JSON and AMQP's field tables, and the size a
//! message's headers take in a frame.

use std::borrow::Cow;

use crate::protocol::HeaderName;

use super::*;

/// The size of a field value as AMQP encodes it (its type octet included).
pub(super) fn encoded_value_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(encoded_value_size).sum::<usize>(),
        AMQPValue::FieldTable(t) => encoded_table_size(t),
        AMQPValue::Void => 0,
    }
}

/// The size of a field table as AMQP encodes it (its length prefix included).
pub(super) fn encoded_table_size(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + encoded_value_size(v))
        .sum::<usize>()
}

/// The size of the content header frame's payload that carries these properties.
pub(super) fn content_header_size(p: &BasicProperties) -> usize {
    let short = |v: &Option<ShortString>| v.as_ref().map_or(0, |s| 1 + s.as_str().len());
    // class id, weight, body size, property flags
    let fixed = 2 + 2 + 8 + 2;
    fixed
        + short(p.content_type())
        + short(p.content_encoding())
        + p.headers().as_ref().map_or(0, encoded_table_size)
        + p.delivery_mode().map_or(0, |_| 1)
        + p.priority().map_or(0, |_| 1)
        + short(p.correlation_id())
        + short(p.reply_to())
        + short(p.expiration())
        + short(p.message_id())
        + p.timestamp().map_or(0, |_| 8)
        + short(p.kind())
        + short(p.user_id())
        + short(p.app_id())
        + short(p.cluster_id())
}

/// Converts headers to an AMQP field table.
pub(crate) fn to_field_table(headers: &Headers) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = headers
        .iter()
        .map(|(k, v)| (ShortString::from(k), to_amqp(v)))
        .collect();
    FieldTable::from(map)
}

pub(super) fn to_amqp(value: &Value) -> AMQPValue {
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

/// Converts an AMQP field table to headers; `None` when it nests deeper than
/// [`MAX_HEADER_DEPTH`].
pub(crate) fn from_field_table(table: &FieldTable) -> Option<Headers> {
    // A field table's names differ from each other, so they are taken as they come.
    let entries = table
        .inner()
        .iter()
        .map(|(k, v)| Some((header_name(k.as_str()), from_amqp(v, MAX_HEADER_DEPTH)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Headers::from_unique(entries))
}

/// A received header's name: the call id stack's, which nearly every message carries, without a
/// copy.
fn header_name(name: &str) -> HeaderName {
    if name == crate::protocol::CALL_ID_STACK_HEADER {
        HeaderName::Borrowed(crate::protocol::CALL_ID_STACK_HEADER)
    } else {
        HeaderName::Owned(name.to_owned())
    }
}

pub(super) fn from_amqp(value: &AMQPValue, depth: usize) -> Option<Value> {
    let depth = depth.checked_sub(1)?;
    Some(match value {
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
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| from_amqp(v, depth))
                .collect::<Option<_>>()?,
        ),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| Some((k.as_str().to_owned(), from_amqp(v, depth)?)))
                .collect::<Option<_>>()?,
        ),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    })
}

/// A queue's `x-...` arguments. Integers go as signed 32-bit values, as Python's py-amqp sends
/// them (RabbitMQ compares a redeclaration's arguments by type too).
pub(super) fn queue_arguments(spec: &QueueSpec) -> FieldTable {
    let ms = |d: Duration| AMQPValue::LongInt(i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut arguments = FieldTable::default();
    let a = &spec.arguments;
    if let Some(expires) = spec.expires {
        arguments.insert("x-expires".into(), ms(expires));
    }
    if let Some(max) = a.max_priority {
        arguments.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(max)));
    }
    if let Some(exchange) = &a.dead_letter_exchange {
        arguments.insert("x-dead-letter-exchange".into(), text(exchange));
    }
    if let Some(key) = &a.dead_letter_routing_key {
        arguments.insert("x-dead-letter-routing-key".into(), text(key));
    }
    if let Some(ttl) = a.message_ttl {
        arguments.insert("x-message-ttl".into(), ms(ttl));
    }
    if let Some(kind) = a.queue_type {
        arguments.insert("x-queue-type".into(), text(kind.as_str()));
    }
    if let Some(limit) = a.delivery_limit {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
    }
    arguments
}

pub(super) fn to_basic_properties(p: &Properties) -> BasicProperties {
    let mut props = BasicProperties::default().with_headers(to_field_table(&p.headers));
    if let Some(v) = &p.content_type {
        props = props.with_content_type(v.as_ref().into());
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(v.as_ref().into());
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
    if let Some(v) = p.expiration {
        props = props.with_expiration(v.as_millis().to_string().into());
    }
    props
}

/// A message's properties; `None` when its headers nest deeper than [`MAX_HEADER_DEPTH`].
pub(super) fn from_basic_properties(p: &BasicProperties) -> Option<Properties> {
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    // What every Nameko message carries, without a copy.
    let known = |v: &Option<ShortString>| {
        v.as_ref().map(|s| match s.as_str() {
            crate::protocol::CONTENT_TYPE_JSON => Cow::Borrowed(crate::protocol::CONTENT_TYPE_JSON),
            crate::protocol::CONTENT_ENCODING_UTF8 => {
                Cow::Borrowed(crate::protocol::CONTENT_ENCODING_UTF8)
            }
            other => Cow::Owned(other.to_owned()),
        })
    };
    let headers = match p.headers() {
        Some(table) => from_field_table(table)?,
        None => Headers::default(),
    };
    Some(Properties {
        content_type: known(p.content_type()),
        content_encoding: known(p.content_encoding()),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        // Milliseconds, as a string; one that does not parse is left out.
        expiration: p
            .expiration()
            .as_ref()
            .and_then(|ms| ms.as_str().parse().ok())
            .map(Duration::from_millis),
        headers,
    })
}
