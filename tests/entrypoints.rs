//! Entrypoints of the application's own, on the public entrypoint API: the cron example's
//! `Cron`, and a smaller one that consumes a plain AMQP queue (on the embedded broker and on
//! RabbitMQ). Their workers take the built-ins' path: arguments bound as an RPC call's, the
//! dependencies' worker hooks, panics caught, hooks and waiters.

mod common;

#[path = "../examples/cron.rs"]
mod cron_example;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::TestBroker;
use cron_example::{Cron, ReportService};
use nameko::prelude::*;
use nameko::service::{
    DeliveryHandler, Entrypoint, EntrypointContext, QueueDeclaration, Started, WorkerSlot,
};
use nameko::transport::{Delivery, OutgoingMessage, Properties, QueueSpec};
use serde_json::json;

async fn start_reports(broker: &TestBroker) -> nameko::RunningServices {
    ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<ReportService>()
        .start()
        .await
        .expect("start report_service")
}

#[tokio::test]
async fn the_cron_example_fires_on_its_schedule_and_its_method_sees_the_due_time() {
    let broker = TestBroker::memory();
    let running = start_reports(&broker).await;
    // Every two seconds: the first run is at most two seconds away.
    let first = running
        .entrypoint_waiter("report_service", "report")
        .with_timeout(Duration::from_secs(5))
        .wait()
        .await
        .expect("a report within 5 s");
    assert_eq!(first.result().ok(), Some(&json!(1)));
    let second = running
        .entrypoint_waiter("report_service", "report")
        .with_timeout(Duration::from_secs(5))
        .wait()
        .await
        .expect("another report within 5 s");
    assert_eq!(second.result().ok(), Some(&json!(2)));
    let client = ClusterRpcClient::standalone(running.transport(), running.config())
        .await
        .unwrap();
    let made: u64 = client
        .service("report_service")
        .call("reports", ())
        .await
        .unwrap();
    assert!(made >= 2, "{made}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_hooked_cron_method_binds_its_arguments_as_an_rpc_method_does() {
    let broker = TestBroker::memory();
    let running = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<ReportService>()
        // Only the hook fires it: the schedule is not started.
        .restrict_entrypoints::<ReportService>(&["reports"])
        .start()
        .await
        .unwrap();
    let hook = running.entrypoint_hook("report_service", "report").unwrap();
    let made = hook
        .call(json!({"scheduled": "2026-12-04T18:00:00+00:00"}))
        .await
        .unwrap();
    assert_eq!(made, json!(1));
    let made = hook.call(["2026-12-04T18:00:02+00:00"]).await.unwrap();
    assert_eq!(made, json!(2));
    let missing = hook.call(()).await.unwrap_err();
    assert_eq!(missing.exc_type, "IncorrectSignature");
    assert_eq!(
        missing.value,
        "report() missing 1 required positional argument: 'scheduled'"
    );
    let wrong = hook.call([42]).await.unwrap_err();
    assert_eq!(wrong.exc_type, "IncorrectSignature", "{wrong:?}");
    running.stop().await.unwrap();
}

#[derive(Dependencies)]
pub struct BadSchedule;

#[service(name = "bad_schedule")]
impl BadSchedule {
    #[entrypoint(Cron::new("every tuesday"))]
    async fn weekly(&self, scheduled: String) {
        let _ = scheduled;
    }
}

#[tokio::test]
async fn an_invalid_cron_expression_fails_the_start_with_the_method_named() {
    let broker = TestBroker::memory();
    let error = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<BadSchedule>()
        .start()
        .await
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.starts_with("bad_schedule.weekly: invalid cron expression `every tuesday`"),
        "{message}"
    );
}

#[test]
fn list_shows_an_entrypoint_of_the_applications_own() {
    let registration = nameko::ServiceRegistration::of::<ReportService>();
    assert_eq!(
        registration.entrypoints(),
        ["cron report \"*/2 * * * * *\"", "rpc reports() -> u64"]
    );
}

// ---------------------------------------------------------------------------------------------
// An entrypoint that consumes a plain AMQP queue: each message's JSON body is the method's one
// argument; the message is acknowledged once the method succeeded, and dropped (rejected
// without requeue, so dead-lettered where the queue has a dead-letter exchange) if it failed.

/// Consumes the durable queue `queue`.
pub struct QueueMessages {
    queue: &'static str,
}

impl Entrypoint for QueueMessages {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, nameko::Error> {
        let declaration = QueueDeclaration::new(QueueSpec::durable(self.queue));
        cx.consume(declaration, Arc::new(Messages { cx: cx.clone() }))
            .await
    }
}

struct Messages {
    cx: EntrypointContext<QueueMessages>,
}

impl DeliveryHandler for Messages {
    async fn handle(self: Arc<Self>, delivery: Delivery, slot: WorkerSlot) {
        let settled = match serde_json::from_slice::<serde_json::Value>(&delivery.body) {
            Ok(message) => {
                let arguments = RequestBody::new().arg(message);
                let payload = Some(&delivery.body[..]);
                match self
                    .cx
                    .run_worker(slot, arguments, ContextData::new(), payload)
                    .await
                {
                    Some(Ok(_)) => delivery.ack().await,
                    // Logged by the worker path already.
                    Some(Err(_)) => delivery.reject(false).await,
                    // Killed: the broker redelivers it.
                    None => return,
                }
            }
            Err(error) => {
                tracing::error!(%error, "dropped a message that is not JSON");
                delivery.reject(false).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a message");
        }
    }
}

/// Dependency: the orders a worker saw, and how many workers its hooks saw.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Entries>);

#[derive(Default)]
pub struct Entries {
    orders: std::sync::Mutex<Vec<serde_json::Value>>,
    workers: AtomicU64,
}

impl std::ops::Deref for Ledger {
    type Target = Entries;
    fn deref(&self) -> &Entries {
        &self.0
    }
}

impl Dependency for Ledger {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Ledger::default())
    }

    async fn worker_teardown(&self, _worker: &WorkerContext) {
        self.workers.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Dependencies)]
pub struct Orders {
    ledger: Ledger,
}

#[service(name = "orders")]
impl Orders {
    #[entrypoint(QueueMessages { queue: "plain-orders" }, expected_exceptions = "Refused")]
    async fn take(&self, order: serde_json::Value) -> Result<(), RemoteError> {
        if order["panic"] == json!(true) {
            panic!("the order was too much");
        }
        if order["refuse"] == json!(true) {
            return Err(RemoteError::new("Refused", "no"));
        }
        self.ledger.orders.lock().unwrap().push(order);
        Ok(())
    }
}

async fn publish(transport: &nameko::transport::SharedTransport, body: &str) {
    transport
        .publish(OutgoingMessage {
            exchange: Default::default(),
            routing_key: "plain-orders".into(),
            mandatory: true,
            properties: Properties::nameko_json(),
            body: body.as_bytes().to_vec(),
        })
        .await
        .expect("publish to the queue");
}

async fn a_plain_queue_entrypoint_runs_a_worker_per_message_and_survives_bad_ones(
    broker: &TestBroker,
) {
    let ledger = Ledger::default();
    let running = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<Orders>()
        .replace_dependency::<Orders, _>("ledger", ledger.clone())
        .start()
        .await
        .expect("start orders");
    let transport = running.transport();
    for body in [
        r#"{"id": 1}"#,
        "not json",
        r#"{"panic": true}"#,
        r#"{"refuse": true}"#,
        r#"{"id": 2}"#,
    ] {
        let waiter = running
            .entrypoint_waiter("orders", "take")
            .with_timeout(Duration::from_secs(10));
        publish(&transport, body).await;
        if body == "not json" {
            continue;
        }
        let finished = waiter.wait().await.expect("the worker finished");
        assert_eq!(
            finished.payload(),
            Some(&serde_json::from_str::<serde_json::Value>(body).unwrap())
        );
        match body {
            r#"{"panic": true}"# => {
                let error = finished.result().unwrap_err();
                assert_eq!(error.exc_type, "WorkerPanic");
                assert_eq!(error.value, "the order was too much");
            }
            r#"{"refuse": true}"# => {
                assert_eq!(finished.result().unwrap_err().exc_type, "Refused")
            }
            _ => assert!(finished.result().is_ok(), "{finished:?}"),
        }
    }
    assert_eq!(
        *ledger.orders.lock().unwrap(),
        [json!({"id": 1}), json!({"id": 2})]
    );
    // Every worker, the failed ones too, went through the dependencies' hooks.
    assert_eq!(ledger.workers.load(Ordering::Relaxed), 4);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_queue_entrypoint_on_the_embedded_broker() {
    a_plain_queue_entrypoint_runs_a_worker_per_message_and_survives_bad_ones(&TestBroker::memory())
        .await;
}

#[tokio::test]
async fn a_plain_queue_entrypoint_on_rabbitmq() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    a_plain_queue_entrypoint_runs_a_worker_per_message_and_survives_bad_ones(&broker).await;
}
