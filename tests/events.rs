//! Events as a user sees them, on the embedded broker and on RabbitMQ: each handler type's
//! delivery semantics, requeueing, payloads that do not fit, context propagation and the
//! standalone dispatcher.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::TestBroker;
use nameko::events::StandaloneEventDispatcher;
use nameko::prelude::*;
use nameko::testing::{TestCluster, TestServices};
use nameko::transport::{ExchangeSpec, OutgoingMessage, Properties, QueueSpec};
use nameko::{Dependency, DependencyContext};
use serde::{Deserialize, Serialize};

/// What a handler saw.
#[derive(Debug, Clone)]
struct Seen {
    token: String,
    handler: &'static str,
    instance: String,
    n: u32,
}

fn seen() -> &'static Mutex<Vec<Seen>> {
    static SEEN: OnceLock<Mutex<Vec<Seen>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

fn seen_for(token: &str) -> Vec<Seen> {
    seen()
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.token == token)
        .cloned()
        .collect()
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

/// Identifies one running instance of a service.
pub struct Instance(String);

impl Dependency for Instance {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Instance(uuid::Uuid::new_v4().to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    token: String,
    n: u32,
    /// How many times the handler fails before it succeeds.
    #[serde(default)]
    fail_times: u32,
}

impl Instance {
    fn record(&self, handler: &'static str, ping: &Ping) {
        seen().lock().unwrap().push(Seen {
            token: ping.token.clone(),
            handler,
            instance: self.0.clone(),
            n: ping.n,
        });
    }
}

#[derive(Dependencies)]
pub struct Source {
    dispatch: EventDispatcher,
}

#[service(name = "ev_source")]
impl Source {
    #[rpc]
    async fn emit(
        &self,
        event_type: String,
        ping: Ping,
    ) -> Result<(), nameko::events::DispatchError> {
        self.dispatch.dispatch(&event_type, &ping).await
    }
}

macro_rules! handler_service {
    ($ty:ident, $name:literal, $event:literal $(, $key:ident = $value:expr)*) => {
        #[derive(Dependencies)]
        pub struct $ty {
            instance: Instance,
        }

        #[service(name = $name)]
        impl $ty {
            #[event_handler("ev_source", $event $(, $key = $value)*)]
            async fn on_ping(&self, ping: Ping) -> Result<(), String> {
                self.instance.record($name, &ping);
                let attempts = seen_for(&ping.token).iter().filter(|s| s.handler == $name && s.n == ping.n).count();
                if attempts as u32 <= ping.fail_times {
                    return Err(format!("failing attempt {attempts}"));
                }
                Ok(())
            }
        }
    };
}

handler_service!(PoolA, "pool_a", "pooled");
handler_service!(PoolB, "pool_b", "pooled");
handler_service!(SingleA, "single_a", "solo", handler_type = "singleton");
handler_service!(SingleB, "single_b", "solo", handler_type = "singleton");
handler_service!(
    Broad,
    "broad",
    "all",
    handler_type = "broadcast",
    reliable_delivery = false
);
handler_service!(Retrying, "retrying", "flaky", requeue_on_error = true);
handler_service!(NotRetrying, "not_retrying", "flaky");
handler_service!(
    BroadReliable,
    "broad_reliable",
    "all",
    handler_type = "broadcast"
);

async fn start(
    broker: &TestBroker,
    register: impl FnOnce(TestServices) -> TestServices,
) -> TestCluster {
    register(TestServices::on_uri(&broker.uri).with_service::<Source>())
        .start()
        .await
        .expect("services start")
}

async fn start_instance<S: nameko::Service>(broker: &TestBroker) -> TestCluster {
    TestServices::on_uri(&broker.uri)
        .with_service::<S>()
        .start()
        .await
        .unwrap()
}

fn ping(token: &str, n: u32) -> Ping {
    Ping {
        token: token.to_owned(),
        n,
        fail_times: 0,
    }
}

async fn emit(client: &ClusterRpcClient, event_type: &str, ping: &Ping) {
    client
        .service("ev_source")
        .call::<_, ()>("emit", (event_type, ping))
        .await
        .expect("emit");
}

async fn client(broker: &TestBroker) -> ClusterRpcClient {
    ClusterRpcClient::connect(&broker.uri).await.unwrap()
}

on_both_transports! {
    async fn service_pool_each_service_gets_each_event_once_shared_by_its_instances(broker: &TestBroker) {
        let source = start(broker, |r| r.with_service::<PoolA>().with_service::<PoolB>()).await;
        let second_a = start_instance::<PoolA>(broker).await;
        let client = client(broker).await;
        let token = uuid::Uuid::new_v4().to_string();
        for n in 0..6 {
            emit(&client, "pooled", &ping(&token, n)).await;
        }
        wait_until("both services saw 6 events", || seen_for(&token).len() == 12).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = seen_for(&token);
        assert_eq!(all.len(), 12, "{all:#?}");
        for handler in ["pool_a", "pool_b"] {
            let mut ns: Vec<u32> = all.iter().filter(|s| s.handler == handler).map(|s| s.n).collect();
            ns.sort();
            assert_eq!(ns, [0, 1, 2, 3, 4, 5], "{handler} gets each event once");
        }
        let a_instances: std::collections::HashSet<_> =
            all.iter().filter(|s| s.handler == "pool_a").map(|s| &s.instance).collect();
        assert_eq!(a_instances.len(), 2, "both instances of pool_a share the work");
        second_a.stop().await.unwrap();
        source.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn singleton_one_handler_in_the_cluster_gets_each_event(broker: &TestBroker) {
        let running = start(broker, |r| r.with_service::<SingleA>().with_service::<SingleB>()).await;
        let client = client(broker).await;
        let token = uuid::Uuid::new_v4().to_string();
        for n in 0..4 {
            emit(&client, "solo", &ping(&token, n)).await;
        }
        wait_until("4 events handled", || seen_for(&token).len() == 4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ns: Vec<u32> = seen_for(&token).iter().map(|s| s.n).collect();
        ns.sort();
        assert_eq!(ns, [0, 1, 2, 3]);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn broadcast_every_instance_gets_every_event(broker: &TestBroker) {
        let first = start(broker, |r| r.with_service::<Broad>()).await;
        let second = start_instance::<Broad>(broker).await;
        let client = client(broker).await;
        let token = uuid::Uuid::new_v4().to_string();
        for n in 0..3 {
            emit(&client, "all", &ping(&token, n)).await;
        }
        wait_until("both instances saw 3 events", || seen_for(&token).len() == 6).await;
        let all = seen_for(&token);
        let instances: std::collections::HashSet<_> = all.iter().map(|s| &s.instance).collect();
        assert_eq!(instances.len(), 2);
        for instance in instances {
            let mut ns: Vec<u32> = all.iter().filter(|s| &s.instance == instance).map(|s| s.n).collect();
            ns.sort();
            assert_eq!(ns, [0, 1, 2]);
        }
        second.stop().await.unwrap();
        first.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_reliable_broadcast_handler_needs_a_stable_identifier() {
    let broker = TestBroker::memory();
    let runner = |config: Config| {
        ServiceRunner::new(config.with_broker(&broker.uri)).with_service::<BroadReliable>()
    };
    let error = runner(Config::default())
        .start()
        .await
        .err()
        .expect("refused without an identifier");
    assert!(
        error
            .to_string()
            .contains("needs a stable broadcast identifier"),
        "{error}"
    );
    let running = runner(Config::default().with_broadcast_identifier("host-1"))
        .start()
        .await
        .expect("starts with one");
    running.stop().await.unwrap();
}

on_both_transports! {
    async fn a_failed_event_is_requeued_only_when_asked(broker: &TestBroker) {
        let running = start(broker, |r| r.with_service::<Retrying>().with_service::<NotRetrying>()).await;
        let client = client(broker).await;
        let token = uuid::Uuid::new_v4().to_string();
        emit(&client, "flaky", &Ping { token: token.clone(), n: 0, fail_times: 2 }).await;
        let attempts = |handler: &str| seen_for(&token).iter().filter(|s| s.handler == handler).count();
        wait_until("the retrying handler succeeded on its third attempt", || attempts("retrying") == 3).await;
        // A later event is handled by both; by then the failed one would have come back.
        emit(&client, "flaky", &ping(&token, 1)).await;
        wait_until("the next event reached both", || {
            seen_for(&token).iter().filter(|s| s.n == 1).count() == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(attempts("not_retrying"), 2, "one attempt per event: the failed one was not retried");
        assert_eq!(attempts("retrying"), 4);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_payload_that_does_not_fit_is_dropped_and_handling_goes_on(broker: &TestBroker) {
        let running = start(broker, |r| r.with_service::<PoolA>()).await;
        let dispatcher = StandaloneEventDispatcher::new(broker.connect().await, &Config::default());
        let token = uuid::Uuid::new_v4().to_string();
        dispatcher.dispatch("ev_source", "pooled", &serde_json::json!({"unexpected": true})).await.unwrap();
        dispatcher.dispatch("ev_source", "pooled", &"not even an object").await.unwrap();
        dispatcher.dispatch("ev_source", "pooled", &ping(&token, 7)).await.unwrap();
        wait_until("the good event was handled", || seen_for(&token).len() == 1).await;
        assert_eq!(seen_for(&token)[0].n, 7);
        // Nothing is left to be retried: with the service stopped, its queue is empty.
        running.stop().await.unwrap();
        let t = broker.connect().await;
        let mut probe = t.consume("evt-ev_source-pooled--pool_a.on_ping", 0).await.expect("the queue outlives the service");
        use futures_util::StreamExt;
        let next = tokio::time::timeout(Duration::from_millis(300), probe.next()).await;
        assert!(next.is_err(), "a dropped event came back: {next:?}");
    }
}

on_both_transports! {
    async fn events_carry_the_dispatching_worker_s_call_id_stack(broker: &TestBroker) {
        let running = start(broker, |r| r.with_service::<PoolA>()).await;
        let client = client(broker).await;
        let token = uuid::Uuid::new_v4().to_string();
        let waiter = running.entrypoint_waiter("pool_a", "on_ping");
        emit(&client, "pooled", &ping(&token, 0)).await;
        let handled = waiter.wait().await.unwrap();
        let stack = handled.context().call_id_stack();
        assert_eq!(stack.len(), 3, "{stack:?}");
        assert!(stack[0].starts_with("standalone_rpc_proxy.call."), "{stack:?}");
        assert!(stack[1].starts_with("ev_source.emit."), "{stack:?}");
        assert!(stack[2].starts_with("pool_a.on_ping."), "{stack:?}");
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn the_standalone_dispatcher_impersonates_a_source(broker: &TestBroker) {
        let running = ServiceRunner::new(Config::default().with_broker(&broker.uri))
            .with_service::<PoolA>()
            .start()
            .await
            .unwrap();
        let dispatcher = StandaloneEventDispatcher::new(broker.connect().await, &Config::default());
        let token = uuid::Uuid::new_v4().to_string();
        let waiter = running.entrypoint_waiter("pool_a", "on_ping");
        dispatcher.dispatch("ev_source", "pooled", &ping(&token, 3)).await.unwrap();
        let handled = waiter.wait().await.unwrap();
        let stack = handled.context().call_id_stack();
        assert_eq!(stack.len(), 1, "no caller: only the handler's own call id ({stack:?})");
        running.stop().await.unwrap();
    }
}

impl nameko::events::Event for Ping {
    const EVENT_TYPE: &'static str = "pooled";
}

on_both_transports! {
    async fn a_typed_event_knows_its_event_type(broker: &TestBroker) {
        let running = start(broker, |r| r.with_service::<PoolA>()).await;
        let dispatcher = EventDispatcher::new(broker.connect().await, &Config::default(), "ev_source").await.unwrap();
        let token = uuid::Uuid::new_v4().to_string();
        let waiter = running.entrypoint_waiter("pool_a", "on_ping");
        dispatcher.dispatch_event(&ping(&token, 9)).await.unwrap();
        waiter.wait().await.unwrap().into_result().unwrap();
        assert_eq!(seen_for(&token)[0].handler, "pool_a");
        running.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_messages_go_to_the_dead_letter_exchange_when_the_broker_has_one() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    // The operator's side: a policy giving every queue a dead-letter exchange, and a queue
    // collecting what reaches it.
    broker
        .inner()
        .management_api(
            "PUT",
            "/api/policies/{vhost}/dlx",
            r#"{"pattern": ".*", "apply-to": "queues", "definition": {"dead-letter-exchange": "dead-letters"}}"#,
        )
        .unwrap();
    let t = broker.connect().await;
    t.declare_exchange(&ExchangeSpec::durable_topic("dead-letters"))
        .await
        .unwrap();
    t.declare_queue(&QueueSpec::durable("dead")).await.unwrap();
    t.bind_queue("dead", "dead-letters", "#").await.unwrap();
    let running = start(&broker, |r| r.with_service::<PoolA>()).await;
    // A request nobody can answer (no reply_to) and an event that does not fit its handler.
    t.publish(OutgoingMessage {
        exchange: "nameko-rpc".into(),
        routing_key: "ev_source.emit".into(),
        mandatory: true,
        properties: Properties::nameko_json(),
        body: br#"{"args": [], "kwargs": {}}"#.to_vec(),
    })
    .await
    .unwrap();
    let dispatcher = StandaloneEventDispatcher::new(broker.connect().await, &Config::default());
    dispatcher
        .dispatch("ev_source", "pooled", &"not a ping")
        .await
        .unwrap();
    let mut dead = t.consume("dead", 0).await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..2 {
        use futures_util::StreamExt;
        let message = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("a dead letter")
            .unwrap()
            .unwrap();
        // RabbitMQ records where it came from and why.
        let death = message.properties.headers.get("x-death").expect("x-death");
        assert_eq!(death[0]["reason"], "rejected", "{death}");
        keys.push((message.routing_key.clone(), message.body.clone()));
        message.ack().await.unwrap();
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            (
                "ev_source.emit".to_owned(),
                br#"{"args": [], "kwargs": {}}"#.to_vec()
            ),
            ("pooled".to_owned(), br#""not a ping""#.to_vec()),
        ]
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standalone_dispatcher_reconnects_after_its_connection_is_lost() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let running = start(&broker, |r| r.with_service::<PoolA>()).await;
    let dispatcher = StandaloneEventDispatcher::connect(&broker.uri)
        .await
        .unwrap();
    let token = uuid::Uuid::new_v4().to_string();
    dispatcher
        .dispatch("ev_source", "pooled", &ping(&token, 1))
        .await
        .unwrap();
    wait_until("the first event was handled", || {
        seen_for(&token).len() == 1
    })
    .await;
    // The broker drops every connection of the virtual host, the dispatcher's included.
    common::close_all_connections(&broker);
    // Give the client a moment to see the close; then dispatching works again, on a new
    // connection. (The service lost its connection too: a new instance handles the event.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.kill().await;
    let running = start(&broker, |r| r.with_service::<PoolA>()).await;
    dispatcher
        .dispatch("ev_source", "pooled", &ping(&token, 2))
        .await
        .expect("the dispatcher reconnects");
    wait_until("the second event was handled", || {
        seen_for(&token).len() == 2
    })
    .await;
    running.stop().await.unwrap();
}
