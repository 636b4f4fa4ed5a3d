//! Messaging as a user sees it, on the embedded broker and on RabbitMQ: `#[consume]` methods
//! taking messages from queues of any exchange type, with their context data; what happens to
//! a body that does not fit and to a failed message; and the `Publisher` with its options
//! (priority, expiration, mandatory, headers), standalone and as a dependency.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::TestBroker;
use futures_util::StreamExt;
use nameko::messaging::{Exchange, PublishError, Publisher, Queue};
use nameko::prelude::*;
use nameko::testing::TestServices;
use nameko::transport::{ExchangeSpec, ExchangeType, QueueSpec, TransportError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item-{id}"),
    }
}

/// The orders queue: a direct exchange, a dead-letter exchange for what cannot be read.
fn orders() -> Queue {
    Queue::new("orders")
        .exchange(Exchange::direct("shop"))
        .routing_key("order.new")
        .dead_letter_exchange("shop.dead")
}

/// An order a consumer took, and its context data's `user_id`.
type Taken = (Order, Option<String>);

/// What the consumers saw.
fn taken() -> &'static Mutex<Vec<Taken>> {
    static TAKEN: OnceLock<Mutex<Vec<Taken>>> = OnceLock::new();
    TAKEN.get_or_init(Default::default)
}

fn taken_ids() -> Vec<u64> {
    taken().lock().unwrap().iter().map(|(o, _)| o.id).collect()
}

#[derive(Dependencies)]
struct Fulfilment {
    publisher: Publisher,
}

#[service(name = "fulfilment")]
impl Fulfilment {
    /// Takes orders; order 13 fails once, and is requeued.
    #[consume(queue = orders(), requeue_on_error = true)]
    async fn take(&self, order: Order) -> Result<(), String> {
        static FAILED: OnceLock<()> = OnceLock::new();
        if order.id == 13 && FAILED.set(()).is_ok() {
            return Err("unlucky".into());
        }
        let user = WorkerContext::current()
            .and_then(|w| w.data().get("user_id").cloned())
            .and_then(|v| v.as_str().map(str::to_owned));
        taken().lock().unwrap().push((order.clone(), user));
        // Forwards it, with this worker's context, to whoever listens for shipments.
        self.publisher
            .publish(&order)
            .to_exchange(&Exchange::topic("shipping"))
            .routing_key("order.shipped")
            .header("x-origin", "fulfilment")
            .await
            .map_err(|e| e.to_string())
    }
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The tests with consumers run one at a time: they share one record.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

on_both_transports! {
    async fn a_consume_method_takes_messages_with_their_context_and_forwards_them(broker: &TestBroker) {
        let _alone = one_at_a_time().await;
        taken().lock().unwrap().clear();
        let t = broker.connect().await;
        // Someone listens for shipments.
        t.declare_exchange(&ExchangeSpec::durable_topic("shipping")).await.unwrap();
        t.declare_queue(&QueueSpec::durable("shipped")).await.unwrap();
        t.bind_queue("shipped", "shipping", "order.#").await.unwrap();
        let services = TestServices::on_uri(&broker.uri).with_service::<Fulfilment>().start().await.unwrap();
        let publisher = Publisher::connect(&broker.uri)
            .await
            .unwrap()
            .with_context_data([("user_id".to_owned(), json!("u-1"))].into());
        let shop = Exchange::direct("shop");
        publisher.publish(&order(1)).to_exchange(&shop).routing_key("order.new").mandatory(true).await.unwrap();
        wait_until("order 1 is taken", || taken_ids() == [1]).await;
        assert_eq!(taken().lock().unwrap()[0], (order(1), Some("u-1".to_owned())));
        // The forwarded message: the order as JSON, the worker's context, the header given.
        let mut consumer = t.consume("shipped", 1).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Order>(&d.body).unwrap(), order(1));
        assert_eq!(d.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(d.properties.delivery_mode, Some(2));
        assert_eq!(d.properties.headers["nameko.user_id"], json!("u-1"));
        assert_eq!(d.properties.headers["x-origin"], json!("fulfilment"));
        let stack = d.properties.headers["nameko.call_id_stack"].as_array().unwrap();
        assert!(stack.last().unwrap().as_str().unwrap().starts_with("fulfilment.take."), "{stack:?}");
        d.ack().await.unwrap();
        services.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_body_that_does_not_fit_is_dead_lettered_and_the_next_one_served(broker: &TestBroker) {
        let _alone = one_at_a_time().await;
        taken().lock().unwrap().clear();
        let t = broker.connect().await;
        let services = TestServices::on_uri(&broker.uri).with_service::<Fulfilment>().start().await.unwrap();
        // Where dead letters go.
        t.declare_exchange(&ExchangeSpec::durable("shop.dead", ExchangeType::Fanout)).await.unwrap();
        t.declare_queue(&QueueSpec::durable("dead-orders")).await.unwrap();
        t.bind_queue("dead-orders", "shop.dead", "").await.unwrap();
        let publisher = Publisher::connect(&broker.uri).await.unwrap();
        let shop = Exchange::direct("shop");
        publisher.publish(&json!({"not": "an order"})).to_exchange(&shop).routing_key("order.new").await.unwrap();
        publisher.publish(&order(2)).to_exchange(&shop).routing_key("order.new").await.unwrap();
        wait_until("order 2 is taken", || taken_ids() == [2]).await;
        let mut consumer = t.consume("dead-orders", 10).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(d.body, br#"{"not":"an order"}"#);
        assert_eq!(d.properties.headers["x-death"][0]["reason"], "rejected");
        assert_eq!(d.properties.headers["x-death"][0]["queue"], "orders");
        d.ack().await.unwrap();
        services.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_failed_message_is_requeued_when_asked(broker: &TestBroker) {
        let _alone = one_at_a_time().await;
        taken().lock().unwrap().clear();
        let services = TestServices::on_uri(&broker.uri).with_service::<Fulfilment>().start().await.unwrap();
        let publisher = Publisher::connect(&broker.uri).await.unwrap();
        let shop = Exchange::direct("shop");
        publisher.publish(&order(13)).to_exchange(&shop).routing_key("order.new").await.unwrap();
        wait_until("order 13 is taken on its second delivery", || taken_ids() == [13]).await;
        services.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn priorities_jump_the_queue_and_expired_messages_go(broker: &TestBroker) {
        let t = broker.connect().await;
        let queue = Queue::new("urgent-first").max_priority(10);
        let publisher = Publisher::connect(&broker.uri).await.unwrap();
        for (body, priority) in [("low", 1), ("high", 9), ("middle", 5)] {
            publisher.publish(body).to_queue(&queue).priority(priority).await.unwrap();
        }
        publisher.publish("gone").to_queue(&queue).priority(9).expiration(Duration::from_millis(50)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut consumer = t.consume("urgent-first", 1).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(d.routing_key, "urgent-first");
            order.push(serde_json::from_slice::<String>(&d.body).unwrap());
            d.ack().await.unwrap();
        }
        assert_eq!(order, ["high", "middle", "low"]);
        let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
        assert!(extra.is_err(), "the expired message is gone: {extra:?}");
    }
}

on_both_transports! {
    async fn an_unroutable_mandatory_message_is_a_clear_error(broker: &TestBroker) {
        let publisher = Publisher::connect(&broker.uri).await.unwrap();
        let nowhere = Exchange::topic("nowhere");
        let error = publisher.publish(&1).to_exchange(&nowhere).routing_key("no.one").mandatory(true).await.unwrap_err();
        assert!(
            matches!(error, PublishError::Transport(TransportError::Unroutable { .. })),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "message to exchange `nowhere` with routing key `no.one` was unroutable"
        );
        // Without `mandatory`, the broker drops it.
        publisher.publish(&1).to_exchange(&nowhere).routing_key("no.one").await.unwrap();
    }
}

/// Served one request at a time, each taking a moment: requests queue up behind the first.
#[derive(Dependencies)]
struct Slow;

fn served() -> &'static Mutex<Vec<String>> {
    static SERVED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SERVED.get_or_init(Default::default)
}

#[service(name = "slow")]
impl Slow {
    #[rpc]
    async fn work(&self, name: String) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served().lock().unwrap().push(name);
    }
}

on_both_transports! {
    async fn a_high_priority_request_jumps_a_queue_declared_with_max_priority(broker: &TestBroker) {
        let _alone = one_at_a_time().await;
        served().lock().unwrap().clear();
        let services = TestServices::on_uri(&broker.uri)
            .with_config(|config| {
                config.max_workers = 1;
                config.prefetch_count = 1;
                config.define("QUEUE_ARGUMENTS", "{rpc-slow: {x-max-priority: 10}}").unwrap();
            })
            .with_service::<Slow>()
            .start()
            .await
            .unwrap();
        let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
        let slow = client.service("slow");
        let first = tokio::spawn({
            let slow = slow.clone();
            async move { slow.call::<_, ()>("work", ["first"]).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut calls = Vec::new();
        for name in ["low-1", "low-2"] {
            let slow = slow.clone();
            calls.push(tokio::spawn(async move { slow.call::<_, ()>("work", [name]).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let urgent = slow.with_priority(9);
        calls.push(tokio::spawn(async move { urgent.call::<_, ()>("work", ["urgent"]).await }));
        first.await.unwrap().unwrap();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(*served().lock().unwrap(), ["first", "urgent", "low-1", "low-2"]);
        services.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_queue_that_exists_with_other_arguments_stops_the_start_with_a_clear_error(broker: &TestBroker) {
        let t = broker.connect().await;
        t.declare_queue(&QueueSpec::durable("rpc-slow").max_priority(5)).await.unwrap();
        let started = TestServices::on_uri(&broker.uri)
            .with_config(|config| {
                config.define("QUEUE_ARGUMENTS", "{rpc-slow: {x-max-priority: 10}}").unwrap();
            })
            .with_service::<Slow>()
            .start()
            .await;
        let Err(error) = started else { panic!("the start fails") };
        let message = error.to_string();
        assert!(message.contains("rpc-slow"), "{message}");
        assert!(message.contains("x-max-priority"), "{message}");
    }
}

#[test]
fn queue_arguments_in_the_config_are_checked() {
    let mut config = Config::default();
    config
        .define(
            "QUEUE_ARGUMENTS",
            "{rpc-a: {x-max-priority: 10, x-dead-letter-exchange: dlx, x-dead-letter-routing-key: dead, x-message-ttl: 500, x-queue-type: quorum}}",
        )
        .unwrap();
    let arguments = &config.queue_arguments["rpc-a"];
    assert_eq!(arguments.max_priority, Some(10));
    assert_eq!(arguments.dead_letter_exchange.as_deref(), Some("dlx"));
    assert_eq!(arguments.dead_letter_routing_key.as_deref(), Some("dead"));
    assert_eq!(arguments.message_ttl, Some(Duration::from_millis(500)));
    let error = config
        .define("QUEUE_ARGUMENTS", "{rpc-a: {x-max-priority: 1000}}")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`x-max-priority` must be a whole number from 0 to 255"),
        "{error}"
    );
    let error = config
        .define("QUEUE_ARGUMENTS", "{rpc-a: {x-overflow: drop-head}}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown argument `x-overflow`"), "{error}");
}

fn pdfs() -> Queue {
    Queue::new("pdfs")
        .exchange(Exchange::headers("documents"))
        .binding_argument("format", "pdf")
}

fn filed() -> &'static Mutex<Vec<String>> {
    static FILED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    FILED.get_or_init(Default::default)
}

#[derive(Dependencies)]
struct Filing;

#[service(name = "filing")]
impl Filing {
    #[consume(queue = pdfs())]
    fn file(&self, name: String) {
        filed().lock().unwrap().push(name);
    }
}

on_both_transports! {
    async fn a_consume_method_on_a_headers_exchange_takes_the_messages_whose_headers_match(broker: &TestBroker) {
        let _alone = one_at_a_time().await;
        filed().lock().unwrap().clear();
        let services = TestServices::on_uri(&broker.uri).with_service::<Filing>().start().await.unwrap();
        let publisher = Publisher::connect(&broker.uri).await.unwrap();
        let documents = Exchange::headers("documents");
        for (name, format) in [("a.txt", "txt"), ("b.pdf", "pdf")] {
            publisher.publish(name).to_exchange(&documents).header("format", format).await.unwrap();
        }
        wait_until("the pdf is filed", || !filed().lock().unwrap().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*filed().lock().unwrap(), ["b.pdf"]);
        services.stop().await.unwrap();
    }
}
