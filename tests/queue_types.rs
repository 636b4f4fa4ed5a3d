//! `QUEUE_TYPE: quorum` and `DELIVERY_LIMIT` for the queues a service owns, on the embedded
//! broker and on RabbitMQ (a single node here; the cluster's tests are for a multi-node one).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::TestBroker;
use futures_util::StreamExt;
use nameko::events::StandaloneEventDispatcher;
use nameko::prelude::*;
use nameko::testing::TestServices;
use nameko::transport::{QueueSpec, QueueType, TransportError};

static ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[derive(Dependencies)]
struct Ledger;

#[service(name = "ledger")]
impl Ledger {
    #[rpc]
    fn balance(&self) -> u32 {
        7
    }

    /// Always fails, and asks for the event back.
    #[event_handler("bank", "posted", requeue_on_error = true)]
    fn post(&self, amount: u32) -> Result<(), String> {
        ATTEMPTS.fetch_add(1, Ordering::SeqCst);
        Err(format!("cannot post {amount}"))
    }
}

const EVENT_QUEUE: &str = "evt-bank-posted--ledger.post";

fn quorum(config: &mut Config) {
    config.define("QUEUE_TYPE", "quorum").unwrap();
    config.define("DELIVERY_LIMIT", "2").unwrap();
    // The runtime's own limit stays out of the way: the broker's is the one tested.
    config.define("MAX_REDELIVERIES", "100").unwrap();
    config
        .define(
            "QUEUE_ARGUMENTS",
            &format!("{{{EVENT_QUEUE}: {{x-dead-letter-exchange: ledger.dead}}}}"),
        )
        .unwrap();
}

on_both_transports! {
    async fn a_service_s_own_queues_are_quorum_queues_and_a_message_ends_at_the_delivery_limit(broker: &TestBroker) {
        let t = broker.connect().await;
        // Where the event ends.
        t.declare_exchange(&nameko::transport::ExchangeSpec::durable(
            "ledger.dead",
            nameko::transport::ExchangeType::Fanout,
        ))
        .await
        .unwrap();
        t.declare_queue(&QueueSpec::durable("ledger-dead")).await.unwrap();
        t.bind_queue("ledger-dead", "ledger.dead", "").await.unwrap();
        ATTEMPTS.store(0, Ordering::SeqCst);
        let services = TestServices::on_uri(&broker.uri)
            .with_config(quorum)
            .with_service::<Ledger>()
            .start()
            .await
            .unwrap();
        // RPC works on its quorum queue.
        let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
        assert_eq!(client.service("ledger").call::<_, u32>("balance", ()).await.unwrap(), 7);
        // The queues are quorum queues with the delivery limit: declared so again, they are
        // the same; declared as classic ones, they are not.
        let as_quorum = QueueSpec::durable("rpc-ledger").queue_type(QueueType::Quorum).delivery_limit(2);
        t.declare_queue(&as_quorum).await.expect("the same queue");
        let t = broker.connect().await;
        let classic = t.declare_queue(&QueueSpec::durable("rpc-ledger")).await;
        assert!(matches!(classic, Err(TransportError::PreconditionFailed(_))), "{classic:?}");
        // An event whose handler always fails: delivered once and twice again, then dead-lettered.
        let t = broker.connect().await;
        StandaloneEventDispatcher::new(t.clone(), &Config::default())
            .dispatch("bank", "posted", &5)
            .await
            .unwrap();
        let mut dead = t.consume("ledger-dead", 1).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(20), dead.next())
            .await
            .expect("the event is dead-lettered")
            .unwrap()
            .unwrap();
        assert_eq!(d.body, b"5");
        assert_eq!(d.properties.headers["x-death"][0]["reason"], "delivery_limit");
        assert_eq!(d.properties.headers["x-death"][0]["queue"], EVENT_QUEUE);
        d.ack().await.unwrap();
        assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 3);
        services.stop().await.unwrap();
    }
}

#[test]
fn queue_type_and_delivery_limit_come_from_the_config_and_queue_arguments_win() {
    let mut config = Config::default();
    assert_eq!(
        config.owned_queue_arguments("rpc-a").queue_type,
        None,
        "classic: as Nameko declares them"
    );
    config.define("QUEUE_TYPE", "quorum").unwrap();
    config.define("DELIVERY_LIMIT", "4").unwrap();
    config
        .define(
            "QUEUE_ARGUMENTS",
            "{rpc-b: {x-delivery-limit: 1, x-max-priority: 3}}",
        )
        .unwrap();
    let a = config.owned_queue_arguments("rpc-a");
    assert_eq!(
        (a.queue_type, a.delivery_limit, a.max_priority),
        (Some(QueueType::Quorum), Some(4), None)
    );
    let b = config.owned_queue_arguments("rpc-b");
    assert_eq!(
        (b.queue_type, b.delivery_limit, b.max_priority),
        (Some(QueueType::Quorum), Some(1), Some(3))
    );
    let error = config
        .define("QUEUE_TYPE", "stream")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`QUEUE_TYPE` must be `classic` or `quorum`, not `stream`"),
        "{error}"
    );
}
