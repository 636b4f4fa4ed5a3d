//! The testing toolkit (`nameko::testing`) as a user's tests use it: the worker factory,
//! entrypoint hooks and waiters, replaced dependencies, restricted entrypoints, `#[once]` and
//! `#[dummy]`, and services on a RabbitMQ virtual host of their own.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nameko::prelude::*;
use nameko::testing::{TestBroker, TestServices, WaitError, worker_factory};
use nameko::{Dependency, DependencyContext, Error};
use serde_json::{Value, json};

/// A mailbox: what the service "sends". Tests give one they keep a handle to.
#[derive(Clone, Default)]
pub struct Mailer(Arc<Mutex<Vec<String>>>);

impl Mailer {
    fn send(&self, to: &str, text: &str) {
        self.0.lock().unwrap().push(format!("{to}: {text}"));
    }
    fn sent(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Dependency for Mailer {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Mailer::default())
    }
}

/// Counts how often something ran.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Dependency for Counter {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Counter::default())
    }
}

#[derive(Dependencies)]
pub struct Notifier {
    mailer: Mailer,
    started: Counter,
    ticks: Counter,
}

#[service(name = "notifier")]
impl Notifier {
    #[rpc]
    async fn notify(&self, to: String, text: Option<String>) -> String {
        let language = WorkerContext::current()
            .and_then(|w| w.language().map(str::to_owned))
            .unwrap_or_else(|| "en".into());
        let text = text.unwrap_or_else(|| "hello".into());
        self.mailer.send(&to, &text);
        format!("{language}:{to}")
    }

    #[rpc]
    async fn count(&self) -> usize {
        self.mailer.sent().len()
    }

    #[event_handler("shop", "order_placed")]
    async fn on_order(&self, order: Value) -> Result<(), RemoteError> {
        let Some(email) = order["email"].as_str() else {
            return Err(RemoteError::new("NoEmail", order.to_string()));
        };
        self.mailer.send(email, "thanks for your order");
        Ok(())
    }

    #[timer(interval = 3600)]
    async fn tick(&self) {
        self.ticks.bump();
    }

    #[once]
    async fn warm_up(&self) {
        self.started.bump();
    }

    #[dummy]
    async fn probe(&self, word: String) -> String {
        word.to_uppercase()
    }

    #[dummy]
    async fn linger(&self) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }

    #[http("GET", "/sent")]
    async fn sent(&self) -> String {
        self.mailer.sent().join("\n")
    }
}

#[tokio::test]
async fn the_worker_factory_builds_a_service_with_replaced_dependencies() {
    let mailer = Mailer::default();
    let notifier = worker_factory::<Notifier>()
        .replace("mailer", mailer.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(notifier.notify("ann".into(), None).await, "en:ann");
    assert_eq!(mailer.sent(), ["ann: hello"]);
    notifier
        .on_order(json!({"email": "bob@example.com"}))
        .await
        .unwrap();
    assert_eq!(mailer.sent().len(), 2);

    let misspelt = worker_factory::<Notifier>()
        .replace("mailr", Mailer::default())
        .build()
        .await
        .err()
        .unwrap();
    assert!(
        misspelt.to_string().contains("no dependency named mailr"),
        "{misspelt}"
    );
    let wrong_type = worker_factory::<Notifier>()
        .replace("mailer", 42_u32)
        .build()
        .await
        .err()
        .unwrap();
    assert!(
        wrong_type
            .to_string()
            .contains("is not a `testing::Mailer`"),
        "{wrong_type}"
    );
}

/// Books shipments for orders, through the `notifier` service.
#[derive(Dependencies)]
pub struct Shipping {
    notifier: NotifierClient,
}

#[service(name = "shipping")]
impl Shipping {
    #[rpc]
    async fn ship(&self, to: String) -> Result<String, RpcError> {
        let receipt = self.notifier.notify(to, Some("shipped".into())).await?;
        Ok(format!("shipped, {receipt}"))
    }
}

/// Stands in for `notifier` in tests of `shipping`: same name, canned answers.
#[derive(Dependencies)]
pub struct NotifierStandIn;

#[service(name = "notifier")]
impl NotifierStandIn {
    #[rpc]
    async fn notify(&self, to: String, text: Option<String>) -> String {
        format!("stand-in:{to}:{}", text.unwrap_or_default())
    }
}

#[tokio::test]
async fn the_worker_factory_builds_clients_on_a_broker_of_stand_ins() {
    let stand_ins = TestServices::new()
        .with_service::<NotifierStandIn>()
        .start()
        .await
        .unwrap();
    let shipping = worker_factory::<Shipping>()
        .on_uri(stand_ins.broker_uri())
        .build()
        .await
        .unwrap();
    assert_eq!(
        shipping.ship("ann".into()).await.unwrap(),
        "shipped, stand-in:ann:shipped"
    );
    stand_ins.stop().await.unwrap();

    // Without `on_uri`, the client is on an embedded broker of its own, where nothing answers.
    let alone = worker_factory::<Shipping>().build().await.unwrap();
    let error = alone.ship("bob".into()).await.unwrap_err();
    assert!(matches!(error, RpcError::UnknownService(_)), "{error}");
}

#[tokio::test]
async fn entrypoint_hooks_fire_each_kind_of_entrypoint_with_context_data() {
    let (mailer, ticks) = (Mailer::default(), Counter::default());
    let services = TestServices::new()
        .with_service::<Notifier>()
        .replace_dependency::<Notifier, _>("mailer", mailer.clone())
        .replace_dependency::<Notifier, _>("ticks", ticks.clone())
        .start()
        .await
        .unwrap();

    let notify = services.entrypoint_hook("notifier", "notify").unwrap();
    assert_eq!(notify.call(["ann"]).await.unwrap(), json!("en:ann"));
    let french = notify
        .clone()
        .with_context_data(BTreeMap::from([("language".to_owned(), json!("fr"))]));
    assert_eq!(
        french
            .call(json!({"to": "bob", "text": "salut"}))
            .await
            .unwrap(),
        json!("fr:bob")
    );
    let wrong = notify.call(json!([1, 2, 3])).await.unwrap_err();
    assert_eq!(wrong.exc_type, "IncorrectSignature");

    let on_order = services.entrypoint_hook("notifier", "on_order").unwrap();
    on_order
        .call(json!({"email": "cy@example.com"}))
        .await
        .unwrap();
    let failed = on_order.call(json!({"nothing": true})).await.unwrap_err();
    assert_eq!(failed.exc_type, "NoEmail");
    let undecodable = on_order.call("not an object").await.unwrap_err();
    assert_eq!(
        undecodable.exc_type, "NoEmail",
        "a JSON string is a `Value`: the handler saw it"
    );

    services
        .entrypoint_hook("notifier", "tick")
        .unwrap()
        .call(())
        .await
        .unwrap();
    assert_eq!(ticks.get(), 1);
    let probe = services.entrypoint_hook("notifier", "probe").unwrap();
    assert_eq!(probe.call(["quiet"]).await.unwrap(), json!("QUIET"));
    // A hook gives up on a worker that does not finish within its timeout.
    let slow = services
        .entrypoint_hook("notifier", "linger")
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    let timeout = slow.call(()).await.unwrap_err();
    assert_eq!(timeout.exc_type, "Timeout");
    assert_eq!(timeout.value, "Timeout on notifier.linger after 100ms");

    assert_eq!(
        mailer.sent(),
        [
            "ann: hello",
            "bob: salut",
            "cy@example.com: thanks for your order"
        ]
    );
    let unknown = services.entrypoint_hook("notifier", "nope").unwrap_err();
    assert!(
        unknown.to_string().contains("no entrypoint `nope`"),
        "{unknown}"
    );
    let http = services.entrypoint_hook("notifier", "sent").unwrap_err();
    assert!(
        http.to_string()
            .contains("HTTP entrypoints cannot be hooked"),
        "{http}"
    );
    services.stop().await.unwrap();
}

#[tokio::test]
async fn entrypoint_waiters_wait_for_the_matching_worker_or_time_out() {
    let services = TestServices::new()
        .with_service::<Notifier>()
        .start()
        .await
        .unwrap();
    let dispatcher = services.event_dispatcher();

    // The filter skips the first order; the waiter returns the second, once handled.
    let waiter = services
        .entrypoint_waiter("notifier", "on_order")
        .with_filter(|worker| worker.result().is_err());
    dispatcher
        .dispatch("shop", "order_placed", &json!({"email": "a@example.com"}))
        .await
        .unwrap();
    dispatcher
        .dispatch("shop", "order_placed", &json!({"no": "email"}))
        .await
        .unwrap();
    let finished = waiter.wait().await.unwrap();
    assert_eq!(finished.context().entrypoint(), "on_order");
    assert_eq!(finished.result().unwrap_err().exc_type, "NoEmail");
    assert_eq!(finished.payload(), Some(&json!({"no": "email"})));

    // A filter on the payload: the worker for one order among several.
    let waiter = services
        .entrypoint_waiter("notifier", "on_order")
        .with_filter(|worker| worker.payload() == Some(&json!({"email": "c@example.com"})));
    for email in ["b@example.com", "c@example.com", "d@example.com"] {
        dispatcher
            .dispatch("shop", "order_placed", &json!({ "email": email }))
            .await
            .unwrap();
    }
    let finished = waiter.wait().await.unwrap();
    assert_eq!(finished.payload().unwrap()["email"], "c@example.com");
    assert!(finished.result().is_ok());

    // An RPC worker's result is what the method returned.
    let waiter = services.entrypoint_waiter("notifier", "count");
    let client = services.rpc_client().await.unwrap();
    let count: usize = client.service("notifier").call("count", ()).await.unwrap();
    let finished = waiter.wait().await.unwrap();
    assert_eq!(finished.payload(), Some(&json!({"args": [], "kwargs": {}})));
    assert_eq!(finished.into_result().unwrap(), json!(count));

    // A misspelt entrypoint fails at once rather than after the timeout.
    let misspelt = services
        .entrypoint_waiter("notifier", "on_ordre")
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(misspelt, WaitError::NoSuchEntrypoint { .. }));
    assert_eq!(
        misspelt.to_string(),
        "no running service `notifier` has an entrypoint `on_ordre` to wait for"
    );

    let timeout = services
        .entrypoint_waiter("notifier", "on_order")
        .with_timeout(Duration::from_millis(200))
        .wait()
        .await
        .unwrap_err();
    assert!(matches!(timeout, WaitError::Timeout { .. }));
    assert_eq!(
        timeout.to_string(),
        "Timeout on notifier.on_order after 200ms"
    );

    // A waiter still waiting when the services stop says so.
    let waiter = services
        .entrypoint_waiter("notifier", "on_order")
        .with_timeout(Duration::from_secs(10));
    let waiting = tokio::spawn(waiter.wait());
    services.stop().await.unwrap();
    let stopped = waiting.await.unwrap().unwrap_err();
    assert!(matches!(stopped, WaitError::Stopped { .. }), "{stopped}");
}

#[tokio::test]
async fn restricted_entrypoints_do_not_fire_but_can_be_hooked() {
    let mailer = Mailer::default();
    let services = TestServices::new()
        .with_service::<Notifier>()
        .replace_dependency::<Notifier, _>("mailer", mailer.clone())
        .restrict_entrypoints::<Notifier>(&["count"])
        .start()
        .await
        .unwrap();
    let client = services.rpc_client().await.unwrap();
    let notifier = client.service("notifier");
    let error = notifier
        .call::<_, String>("notify", ["ann"])
        .await
        .unwrap_err();
    assert!(matches!(error, RpcError::MethodNotFound(_)), "{error}");
    assert_eq!(notifier.call::<_, usize>("count", ()).await.unwrap(), 0);
    // Not routed over HTTP either.
    assert!(services.http_address().is_none());
    services
        .entrypoint_hook("notifier", "notify")
        .unwrap()
        .call(["ann"])
        .await
        .unwrap();
    assert_eq!(mailer.sent(), ["ann: hello"]);
    services.stop().await.unwrap();

    let unknown = TestServices::new()
        .with_service::<Notifier>()
        .restrict_entrypoints::<Notifier>(&["cuont"])
        .start()
        .await
        .err()
        .unwrap();
    assert!(
        unknown.to_string().contains("no entrypoint named `cuont`"),
        "{unknown}"
    );
}

#[tokio::test]
async fn once_runs_at_start_and_only_then() {
    let started = Counter::default();
    let services = TestServices::new()
        .with_service::<Notifier>()
        .replace_dependency::<Notifier, _>("started", started.clone())
        .start()
        .await
        .unwrap();
    for _ in 0..500 {
        if started.get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(started.get(), 1);
    // Whatever else happens, it does not run again.
    let client = services.rpc_client().await.unwrap();
    for _ in 0..5 {
        client
            .service("notifier")
            .call::<_, usize>("count", ())
            .await
            .unwrap();
    }
    services.stop().await.unwrap();
    assert_eq!(started.get(), 1);
}

#[tokio::test]
async fn services_run_on_a_rabbitmq_virtual_host_of_their_own() {
    if common::rabbitmq().is_none() {
        return;
    }
    // NAMEKO_TEST_AMQP_URI is set: a virtual host of its own there.
    let broker = TestBroker::from_env().unwrap();
    let vhost = broker.vhost().unwrap().to_owned();
    assert!(vhost.starts_with("nameko_test_"), "{vhost}");
    let uri = broker.uri().to_owned();
    let services = TestServices::on(broker)
        .with_service::<Notifier>()
        .start()
        .await
        .unwrap();
    assert_eq!(services.broker_uri(), uri);
    let client = services.rpc_client().await.unwrap();
    let greeting: String = client
        .service("notifier")
        .call("notify", ["dee"])
        .await
        .unwrap();
    assert_eq!(greeting, "en:dee");
    services.stop().await.unwrap();
    // The virtual host went with the services.
    let gone = nameko::transport::connect(&uri).await;
    assert!(gone.is_err(), "the virtual host {vhost} still exists");
}
