//! One suite, two transports: the embedded broker must behave as RabbitMQ does for everything
//! the runtime relies on.

mod common;

use std::time::Duration;

use common::TestBroker;
use futures_util::StreamExt;
use nameko::transport::{
    Consumer, Delivery, ExchangeSpec, ExchangeType, OutgoingMessage, Properties, QueueSpec,
    SharedTransport, TransportError,
};
use serde_json::json;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn topology(t: &SharedTransport, bindings: &[&str]) -> (String, String) {
    let exchange = unique("ex");
    let queue = unique("q");
    t.declare_exchange(&ExchangeSpec::durable_topic(&exchange))
        .await
        .unwrap();
    t.declare_queue(&QueueSpec::durable(&queue)).await.unwrap();
    for key in bindings {
        t.bind_queue(&queue, &exchange, key).await.unwrap();
    }
    (exchange, queue)
}

fn message(exchange: &str, routing_key: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        properties: Properties::nameko_json(),
        body: body.as_bytes().to_vec(),
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer still open")
        .expect("no transport error")
}

/// Waits briefly and asserts nothing more arrives.
async fn assert_nothing(consumer: &mut Consumer) {
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

on_both_transports! {
    async fn delivers_body_properties_and_headers(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["svc.*"]).await;
        let mut consumer = t.consume(&queue, 10).await.unwrap();
        let mut out = message(&exchange, "svc.greet", r#"{"args": ["Tim"], "kwargs": {}}"#);
        out.properties.correlation_id = Some("corr-1".into());
        out.properties.reply_to = Some("reply-key".into());
        out.properties.headers.insert("nameko.call_id_stack", json!(["a.b.c"]));
        out.properties.headers.insert("nameko.auth_token", json!("tok"));
        t.publish(out).await.unwrap();
        let d = next(&mut consumer).await;
        assert_eq!(*d.exchange, *exchange);
        assert_eq!(d.routing_key, "svc.greet");
        assert!(!d.redelivered);
        assert_eq!(d.body, br#"{"args": ["Tim"], "kwargs": {}}"#);
        assert_eq!(d.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(d.properties.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(d.properties.delivery_mode, Some(2));
        assert_eq!(d.properties.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(d.properties.reply_to.as_deref(), Some("reply-key"));
        assert_eq!(d.properties.headers["nameko.call_id_stack"], json!(["a.b.c"]));
        assert_eq!(d.properties.headers["nameko.auth_token"], json!("tok"));
        d.ack().await.unwrap();
    }
}

on_both_transports! {
    async fn topic_bindings_route_by_word(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["svc.*"]).await;
        let mut consumer = t.consume(&queue, 10).await.unwrap();
        for key in ["svc.a.b", "other.a", "svc", "svc.match"] {
            t.publish(message(&exchange, key, key)).await.unwrap();
        }
        let d = next(&mut consumer).await;
        assert_eq!(d.routing_key, "svc.match");
        d.ack().await.unwrap();
        assert_nothing(&mut consumer).await;
    }
}

on_both_transports! {
    async fn an_unroutable_mandatory_message_is_refused(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, _queue) = topology(&t, &["svc.*"]).await;
        let mut out = message(&exchange, "nobody.listens", "{}");
        out.mandatory = true;
        let error = t.publish(out.clone()).await.unwrap_err();
        assert!(matches!(error, TransportError::Unroutable { ref routing_key, .. } if routing_key == "nobody.listens"), "{error:?}");
        out.mandatory = false;
        t.publish(out).await.expect("a non-mandatory unroutable message is dropped quietly");
        // The transport still works after a refusal.
        let mut ok = message(&exchange, "svc.x", "{}");
        ok.mandatory = true;
        t.publish(ok).await.unwrap();
    }
}

on_both_transports! {
    async fn publishing_to_a_missing_exchange_fails(broker: &TestBroker) {
        let t = broker.connect().await;
        let error = t.publish(message(&unique("missing"), "k", "{}")).await.unwrap_err();
        assert!(matches!(error, TransportError::NotFound(_)), "{error:?}");
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut consumer = t.consume(&queue, 1).await.unwrap();
        t.publish(message(&exchange, "k", "after")).await.unwrap();
        assert_eq!(next(&mut consumer).await.body, b"after");
    }
}

on_both_transports! {
    async fn competing_consumers_each_get_a_share(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut a = t.consume(&queue, 1).await.unwrap();
        let mut b = t.consume(&queue, 1).await.unwrap();
        for i in 0..4 {
            t.publish(message(&exchange, "k", &i.to_string())).await.unwrap();
        }
        let (mut seen, mut from_a, mut from_b) = (Vec::new(), 0, 0);
        while seen.len() < 4 {
            let (d, first) = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::select! {
                    Some(d) = a.next() => (d, true),
                    Some(d) = b.next() => (d, false),
                }
            })
            .await
            .expect("a delivery within 5 s");
            let d = d.expect("no transport error");
            if first { from_a += 1 } else { from_b += 1 }
            seen.push(String::from_utf8(d.body.clone()).unwrap());
            d.ack().await.unwrap();
        }
        assert!(from_a >= 1 && from_b >= 1, "a got {from_a}, b got {from_b}");
        seen.sort();
        assert_eq!(seen, ["0", "1", "2", "3"]);
    }
}

on_both_transports! {
    async fn prefetch_bounds_unsettled_deliveries(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut consumer = t.consume(&queue, 2).await.unwrap();
        for i in 0..3 {
            t.publish(message(&exchange, "k", &i.to_string())).await.unwrap();
        }
        let first = next(&mut consumer).await;
        let _second = next(&mut consumer).await;
        assert_nothing(&mut consumer).await;
        first.ack().await.unwrap();
        assert_eq!(next(&mut consumer).await.body, b"2");
    }
}

on_both_transports! {
    async fn unsettled_deliveries_return_when_the_consumer_goes(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut first = t.consume(&queue, 10).await.unwrap();
        t.publish(message(&exchange, "k", "work")).await.unwrap();
        let d = next(&mut first).await;
        assert!(!d.redelivered);
        let properties = d.properties.clone();
        drop(d);
        first.cancel().await;
        first.close().await;
        let mut second = t.consume(&queue, 10).await.unwrap();
        let again = next(&mut second).await;
        assert_eq!(again.body, b"work");
        assert_eq!(again.routing_key, "k");
        assert_eq!(*again.exchange, *exchange);
        assert_eq!(again.properties, properties);
        assert!(again.redelivered);
        again.ack().await.unwrap();
        assert_nothing(&mut second).await;
    }
}

on_both_transports! {
    async fn reject_requeues_or_drops(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut consumer = t.consume(&queue, 10).await.unwrap();
        t.publish(message(&exchange, "k", "once")).await.unwrap();
        let first = next(&mut consumer).await;
        let properties = first.properties.clone();
        first.reject(true).await.unwrap();
        // The same message again, whole.
        let again = next(&mut consumer).await;
        assert!(again.redelivered);
        assert_eq!(again.body, b"once");
        assert_eq!(again.routing_key, "k");
        assert_eq!(*again.exchange, *exchange);
        assert_eq!(again.properties, properties);
        again.reject(false).await.unwrap();
        assert_nothing(&mut consumer).await;
    }
}

on_both_transports! {
    async fn redeclaring_a_queue_with_other_flags_fails(broker: &TestBroker) {
        let t = broker.connect().await;
        let name = unique("q");
        t.declare_queue(&QueueSpec::durable(&name)).await.unwrap();
        t.declare_queue(&QueueSpec::durable(&name)).await.expect("same flags are fine");
        let other = QueueSpec { expires: Some(Duration::from_secs(300)), ..QueueSpec::durable(&name) };
        let error = t.declare_queue(&other).await.unwrap_err();
        assert!(matches!(error, TransportError::PreconditionFailed(_)), "{error:?}");
        // The transport keeps working after a failed declaration.
        t.declare_queue(&QueueSpec::durable(unique("q"))).await.unwrap();
    }
}

on_both_transports! {
    async fn each_bound_queue_gets_its_own_copy(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, first) = topology(&t, &["my_event"]).await;
        let second = unique("q");
        t.declare_queue(&QueueSpec::durable(&second)).await.unwrap();
        t.bind_queue(&second, &exchange, "my_event").await.unwrap();
        let mut a = t.consume(&first, 10).await.unwrap();
        let mut b = t.consume(&second, 10).await.unwrap();
        t.publish(message(&exchange, "my_event", "\"hi\"")).await.unwrap();
        assert_eq!(next(&mut a).await.body, b"\"hi\"");
        assert_eq!(next(&mut b).await.body, b"\"hi\"");
    }
}

on_both_transports! {
    async fn a_queue_bound_twice_for_a_key_gets_one_copy(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["order.*", "*.placed", "order.placed"]).await;
        let mut consumer = t.consume(&queue, 10).await.unwrap();
        t.publish(message(&exchange, "order.placed", "one")).await.unwrap();
        next(&mut consumer).await.ack().await.unwrap();
        assert_nothing(&mut consumer).await;
    }
}

on_both_transports! {
    async fn an_empty_routing_key_has_no_words(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, any) = topology(&t, &["#"]).await;
        let one_word = unique("q");
        t.declare_queue(&QueueSpec::durable(&one_word)).await.unwrap();
        t.bind_queue(&one_word, &exchange, "*").await.unwrap();
        let mut any = t.consume(&any, 10).await.unwrap();
        let mut one_word = t.consume(&one_word, 10).await.unwrap();
        t.publish(message(&exchange, "", "empty")).await.unwrap();
        assert_eq!(next(&mut any).await.body, b"empty");
        assert_nothing(&mut one_word).await;
    }
}

on_both_transports! {
    async fn an_acknowledgement_dropped_before_it_ran_leaves_the_message_unsettled(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut first = t.consume(&queue, 10).await.unwrap();
        t.publish(message(&exchange, "k", "kept")).await.unwrap();
        // Never polled: nothing was settled.
        drop(next(&mut first).await.ack());
        first.cancel().await;
        first.close().await;
        let mut second = t.consume(&queue, 10).await.unwrap();
        let again = next(&mut second).await;
        assert_eq!(again.body, b"kept");
        assert!(again.redelivered);
        again.ack().await.unwrap();
        assert_nothing(&mut second).await;
    }
}

on_both_transports! {
    async fn settled_deliveries_stay_settled_when_their_consumer_goes_at_once(broker: &TestBroker) {
        let t = broker.connect().await;
        let (exchange, queue) = topology(&t, &["k"]).await;
        let mut first = t.consume(&queue, 10).await.unwrap();
        for body in ["done", "dropped", "kept"] {
            t.publish(message(&exchange, "k", body)).await.unwrap();
        }
        let (done, dropped, kept) = (
            next(&mut first).await,
            next(&mut first).await,
            next(&mut first).await,
        );
        // Settled, then the consumer closed straight away, with nothing awaited between (no
        // cancel, whose round trip to the broker would let late settlements out first): only
        // the unsettled one comes back.
        done.ack().await.unwrap();
        dropped.reject(false).await.unwrap();
        first.close().await;
        drop(kept);
        let mut second = t.consume(&queue, 10).await.unwrap();
        let again = next(&mut second).await;
        assert_eq!(again.body, b"kept");
        assert!(again.redelivered);
        again.ack().await.unwrap();
        assert_nothing(&mut second).await;
    }
}

#[tokio::test]
async fn an_acknowledgement_on_a_closed_channel_is_an_error_and_the_message_comes_back() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let t = broker.connect().await;
    let (exchange, queue) = topology(&t, &["k"]).await;
    let mut first = t.consume(&queue, 10).await.unwrap();
    t.publish(message(&exchange, "k", "late")).await.unwrap();
    let late = next(&mut first).await;
    first.close().await;
    let error = late.ack().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("could not acknowledge the message: its channel is closed"),
        "{error}"
    );
    let mut second = t.consume(&queue, 10).await.unwrap();
    let again = next(&mut second).await;
    assert_eq!(again.body, b"late");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    assert_nothing(&mut second).await;
}

on_both_transports! {
    async fn an_auto_delete_queue_goes_with_its_last_consumer(broker: &TestBroker) {
        let t = broker.connect().await;
        let exchange = unique("ex");
        let queue = unique("q");
        t.declare_exchange(&ExchangeSpec::durable_topic(&exchange)).await.unwrap();
        t.declare_queue(&QueueSpec { auto_delete: true, ..QueueSpec::durable(&queue) }).await.unwrap();
        t.bind_queue(&queue, &exchange, "k").await.unwrap();
        let mut consumer = t.consume(&queue, 1).await.unwrap();
        let mut routed = message(&exchange, "k", "{}");
        routed.mandatory = true;
        t.publish(routed.clone()).await.expect("routed while the queue exists");
        next(&mut consumer).await.ack().await.unwrap();
        consumer.cancel().await;
        consumer.close().await;
        // RabbitMQ deletes the queue right after the consumer goes; allow it a moment.
        let mut outcome = Ok(());
        for _ in 0..50 {
            outcome = t.publish(routed.clone()).await;
            if outcome.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(outcome, Err(TransportError::Unroutable { .. })), "{outcome:?}");
    }
}

on_both_transports! {
    async fn direct_and_fanout_exchanges_route_as_their_type_says(broker: &TestBroker) {
        let t = broker.connect().await;
        let (direct, fanout) = (unique("direct"), unique("fanout"));
        t.declare_exchange(&ExchangeSpec::durable(&direct, ExchangeType::Direct)).await.unwrap();
        t.declare_exchange(&ExchangeSpec::durable(&fanout, ExchangeType::Fanout)).await.unwrap();
        let queue = unique("q");
        t.declare_queue(&QueueSpec::durable(&queue)).await.unwrap();
        t.bind_queue(&queue, &direct, "orders.*").await.unwrap();
        t.bind_queue(&queue, &fanout, "ignored").await.unwrap();
        let mut consumer = t.consume(&queue, 10).await.unwrap();
        // A direct exchange matches the key exactly: `*` is no wildcard there.
        let mut wild = message(&direct, "orders.new", "1");
        wild.mandatory = true;
        assert!(matches!(t.publish(wild).await, Err(TransportError::Unroutable { .. })));
        t.publish(message(&direct, "orders.*", "2")).await.unwrap();
        // A fanout exchange ignores the key.
        t.publish(message(&fanout, "anything.at.all", "3")).await.unwrap();
        for body in ["2", "3"] {
            let d = next(&mut consumer).await;
            assert_eq!(d.body, body.as_bytes());
            d.ack().await.unwrap();
        }
        assert_nothing(&mut consumer).await;
    }
}

on_both_transports! {
    async fn a_priority_queue_delivers_higher_priorities_first(broker: &TestBroker) {
        let t = broker.connect().await;
        let queue = unique("q");
        t.declare_queue(&QueueSpec::durable(&queue).max_priority(10)).await.unwrap();
        // Published while nothing consumes, then read: highest first, FIFO within one, and
        // priorities above the queue's maximum count as the maximum.
        for (body, priority) in [("low-1", 1), ("high", 9), ("low-2", 1), ("none", 0), ("over", 200), ("mid", 5)] {
            let mut m = message("", &queue, body);
            m.properties.priority = Some(priority);
            t.publish(m).await.unwrap();
        }
        let mut consumer = t.consume(&queue, 1).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..6 {
            let d = next(&mut consumer).await;
            order.push(String::from_utf8(d.body.clone()).unwrap());
            d.ack().await.unwrap();
        }
        assert_eq!(order, ["over", "high", "mid", "low-1", "low-2", "none"]);
    }
}

on_both_transports! {
    async fn a_rejected_message_goes_to_the_dead_letter_exchange(broker: &TestBroker) {
        let t = broker.connect().await;
        let (dlx, dead) = topology(&t, &["dead.#"]).await;
        let queue = unique("q");
        t.declare_queue(
            &QueueSpec::durable(&queue).dead_letter_exchange(&dlx).dead_letter_routing_key("dead.letters"),
        )
        .await
        .unwrap();
        let mut consumer = t.consume(&queue, 1).await.unwrap();
        let mut m = message("", &queue, "poison");
        m.properties.headers.insert("nameko.call_id_stack", json!(["x.y.z"]));
        t.publish(m).await.unwrap();
        next(&mut consumer).await.reject(false).await.unwrap();
        let mut dead_consumer = t.consume(&dead, 1).await.unwrap();
        let d = next(&mut dead_consumer).await;
        assert_eq!(d.body, b"poison");
        assert_eq!(*d.exchange, *dlx);
        assert_eq!(d.routing_key, "dead.letters");
        assert_eq!(d.properties.headers["nameko.call_id_stack"], json!(["x.y.z"]));
        let death = &d.properties.headers["x-death"][0];
        assert_eq!(death["reason"], "rejected");
        assert_eq!(death["queue"], queue.as_str());
        assert_eq!(death["count"], 1);
        d.ack().await.unwrap();
        assert_nothing(&mut consumer).await;
    }
}

on_both_transports! {
    async fn expired_messages_are_dead_lettered_even_from_an_idle_queue(broker: &TestBroker) {
        let t = broker.connect().await;
        let (dlx, dead) = topology(&t, &["#"]).await;
        let (ttl_queue, plain_queue) = (unique("ttl"), unique("plain"));
        // The queue's TTL, and a message's own expiration on a queue without one.
        t.declare_queue(&QueueSpec::durable(&ttl_queue).message_ttl(Duration::from_millis(100)).dead_letter_exchange(&dlx))
            .await
            .unwrap();
        t.declare_queue(&QueueSpec::durable(&plain_queue).dead_letter_exchange(&dlx)).await.unwrap();
        t.publish(message("", &ttl_queue, "by-queue")).await.unwrap();
        let mut short = message("", &plain_queue, "by-message");
        short.properties.expiration = Some(Duration::from_millis(100));
        t.publish(short).await.unwrap();
        let mut kept = message("", &plain_queue, "kept");
        kept.properties.expiration = Some(Duration::from_secs(60));
        t.publish(kept).await.unwrap();
        let mut dead_consumer = t.consume(&dead, 10).await.unwrap();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let d = next(&mut dead_consumer).await;
            assert_eq!(d.properties.headers["x-death"][0]["reason"], "expired");
            assert_eq!(d.properties.expiration, None, "the expiration is taken off");
            bodies.push(String::from_utf8(d.body.clone()).unwrap());
            d.ack().await.unwrap();
        }
        bodies.sort();
        assert_eq!(bodies, ["by-message", "by-queue"]);
        assert_nothing(&mut dead_consumer).await;
        let mut consumer = t.consume(&plain_queue, 1).await.unwrap();
        let d = next(&mut consumer).await;
        assert_eq!(d.body, b"kept");
        assert_eq!(d.properties.expiration, Some(Duration::from_secs(60)));
        d.ack().await.unwrap();
    }
}

on_both_transports! {
    async fn redeclaring_a_queue_with_other_arguments_fails(broker: &TestBroker) {
        let t = broker.connect().await;
        let queue = unique("q");
        t.declare_queue(&QueueSpec::durable(&queue).max_priority(5)).await.unwrap();
        t.declare_queue(&QueueSpec::durable(&queue).max_priority(5)).await.expect("the same arguments");
        let other = t.declare_queue(&QueueSpec::durable(&queue).max_priority(9)).await;
        assert!(matches!(other, Err(TransportError::PreconditionFailed(_))), "{other:?}");
        let t = broker.connect().await;
        let none = t.declare_queue(&QueueSpec::durable(&queue)).await;
        assert!(matches!(none, Err(TransportError::PreconditionFailed(_))), "{none:?}");
    }
}

on_both_transports! {
    async fn a_headers_exchange_routes_by_the_message_s_headers(broker: &TestBroker) {
        let t = broker.connect().await;
        let exchange = unique("headers");
        t.declare_exchange(&ExchangeSpec::durable(&exchange, ExchangeType::Headers)).await.unwrap();
        let (all, any) = (unique("all"), unique("any"));
        for queue in [&all, &any] {
            t.declare_queue(&QueueSpec::durable(queue)).await.unwrap();
        }
        let arguments = |pairs: serde_json::Value| -> nameko::protocol::Headers {
            serde_json::from_value(pairs).unwrap()
        };
        t.bind_queue_with(&all, &exchange, "", &arguments(json!({"format": "pdf", "type": "report"})))
            .await
            .unwrap();
        t.bind_queue_with(&any, &exchange, "", &arguments(json!({"x-match": "any", "format": "pdf", "type": "log"})))
            .await
            .unwrap();
        let with_headers = |body: &str, headers: serde_json::Value| {
            let mut m = message(&exchange, "ignored", body);
            m.properties.headers = arguments(headers);
            m
        };
        t.publish(with_headers("both", json!({"format": "pdf", "type": "report"}))).await.unwrap();
        t.publish(with_headers("pdf-only", json!({"format": "pdf"}))).await.unwrap();
        t.publish(with_headers("log", json!({"type": "log", "format": "txt"}))).await.unwrap();
        t.publish(with_headers("none", json!({"format": "txt"}))).await.unwrap();
        let mut got = Vec::new();
        for (queue, count) in [(&all, 1), (&any, 3)] {
            let mut consumer = t.consume(queue, 10).await.unwrap();
            for _ in 0..count {
                let d = next(&mut consumer).await;
                got.push(format!("{}:{}", if queue == &all { "all" } else { "any" }, String::from_utf8(d.body.clone()).unwrap()));
                d.ack().await.unwrap();
            }
            assert_nothing(&mut consumer).await;
        }
        assert_eq!(got, ["all:both", "any:both", "any:pdf-only", "any:log"]);
    }
}
