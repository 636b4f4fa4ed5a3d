//! Redeliveries counted per message, so that one poison message (a request whose reply can
//! never be published, an event that always fails a `requeue_on_error` handler, a message that
//! keeps ending its worker's connection) cannot loop for ever.
//!
//! The broker only says whether a message was delivered before (`redelivered`); quorum queues
//! also count (`x-delivery-count`). This process keeps its own count of each redelivered
//! message, across the restarts of its services after a lost connection, and the larger of the
//! two counts decides. The count is kept only for messages seen redelivered, in a map that is
//! emptied when it grows large, so that it costs nothing on the usual path and is bounded.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::transport::Delivery;

/// The most messages counted at once; the map starts again empty beyond.
const MAX_COUNTED: usize = 10_000;

static COUNTS: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);

/// What identifies a message across its deliveries: its queue, routing key, correlation id,
/// headers and body.
fn key(queue: &str, delivery: &Delivery) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    queue.hash(&mut hasher);
    delivery.routing_key.hash(&mut hasher);
    delivery.properties.correlation_id.hash(&mut hasher);
    for (name, value) in &delivery.properties.headers {
        name.hash(&mut hasher);
        value.to_string().hash(&mut hasher);
    }
    delivery.body.hash(&mut hasher);
    hasher.finish()
}

/// How many times `delivery` has been delivered before (0 for a first delivery), counting this
/// one in.
pub(crate) fn redeliveries(queue: &str, delivery: &Delivery) -> u32 {
    if !delivery.redelivered {
        return 0;
    }
    let from_broker = delivery
        .properties
        .headers
        .get("x-delivery-count")
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let key = key(queue, delivery);
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let counts = counts.get_or_insert_with(HashMap::new);
    if counts.len() >= MAX_COUNTED {
        counts.clear();
    }
    let count = counts.entry(key).or_insert(0);
    *count = count.saturating_add(1);
    (*count).max(from_broker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Acker, Properties, TransportError};
    use futures_util::future::BoxFuture;

    struct NoAcker;
    impl Acker for NoAcker {
        fn ack(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
            Box::pin(async { Ok(()) })
        }
        fn reject(&mut self, _: bool) -> BoxFuture<'_, Result<(), TransportError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn delivery(redelivered: bool, body: &str, headers: crate::protocol::Headers) -> Delivery {
        let properties = Properties {
            headers,
            ..Properties::default()
        };
        Delivery::new(
            "x".into(),
            "svc.method".into(),
            redelivered,
            properties,
            body.as_bytes().to_vec(),
            Box::new(NoAcker),
        )
    }

    #[test]
    fn each_redelivery_of_one_message_counts_and_first_deliveries_do_not() {
        let body = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            redeliveries("q", &delivery(false, &body, Default::default())),
            0
        );
        assert_eq!(
            redeliveries("q", &delivery(true, &body, Default::default())),
            1
        );
        assert_eq!(
            redeliveries("q", &delivery(true, &body, Default::default())),
            2
        );
        // Another queue, another message.
        assert_eq!(
            redeliveries("q2", &delivery(true, &body, Default::default())),
            1
        );
        // A quorum queue's own count wins when it is larger.
        let counted = [("x-delivery-count".to_owned(), serde_json::json!(7))].into();
        assert_eq!(redeliveries("q3", &delivery(true, &body, counted)), 7);
    }
}
