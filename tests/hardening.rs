//! The failure modes a real RabbitMQ deployment meets: headers larger than a frame, a broker
//! that cancels a consumer or closes every connection, a reply the broker refuses, a broker
//! blocking publishers, a stop with prefetched work, poison messages, odd content types.
//!
//! Two tests change the whole broker (its largest message, its memory alarm): they take the
//! write side of [`BROKER`], every other test its read side, so that nothing else in this
//! binary runs while the broker is changed (cargo runs test binaries one at a time).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{TestBroker, close_all_connections as close_connections, rabbitmqctl};
use futures_util::StreamExt;
use nameko::prelude::*;
use nameko::testing::TestServices;
use nameko::transport::{ExchangeSpec, OutgoingMessage, Properties, QueueSpec, TransportError};
use serde_json::{Value, json};

static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Every log line of this binary, for the tests that check what is logged.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    let lines = LOGS.get_or_init(Default::default);
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        struct Writer;
        impl std::io::Write for Writer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(|| Writer)
            .init();
    });
    lines
}

fn logged(text: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(text)
}

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// Starts service `S` on `broker`, with the defaults.
async fn start<S: nameko::Service>(broker: &TestBroker) -> nameko::testing::TestCluster {
    TestServices::on_uri(&broker.uri)
        .with_service::<S>()
        .start()
        .await
        .unwrap()
}

/// Asserts that `echo` answers through `client`.
async fn assert_echoes(client: &ClusterRpcClient) {
    let echoed: String = client
        .service("echo")
        .call("echo", ["after"])
        .await
        .unwrap();
    assert_eq!(echoed, "after");
}

// ---------------------------------------------------------------------------------------------
// The services under test.

static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

/// Answers with what its callers sent.
#[derive(Dependencies)]
pub struct Echo;

#[service(name = "echo")]
impl Echo {
    #[rpc]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    /// The length of the caller's `auth_token` context data.
    #[rpc]
    async fn token_length(&self) -> usize {
        WorkerContext::current()
            .and_then(|c| c.auth_token().map(str::len))
            .unwrap_or(0)
    }

    /// A text of `bytes` bytes; counts its executions.
    #[rpc]
    async fn large(&self, bytes: usize) -> String {
        EXECUTIONS.fetch_add(1, Ordering::SeqCst);
        "x".repeat(bytes)
    }

    /// Takes its time.
    #[rpc]
    async fn slow(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
}

/// Dispatches a `tick` every 200 ms, and has no other entrypoint.
#[derive(Dependencies)]
pub struct Ticker {
    dispatch: EventDispatcher,
}

#[service(name = "ticker")]
impl Ticker {
    #[timer(interval = "200ms")]
    async fn tick(&self) -> Result<(), DispatchError> {
        self.dispatch.dispatch("tick", "tock").await
    }
}

fn received() -> &'static Mutex<Vec<String>> {
    static RECEIVED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    RECEIVED.get_or_init(Default::default)
}

/// Handles `source.note` events, and has an RPC method too.
#[derive(Dependencies)]
pub struct Listener;

#[service(name = "listener")]
impl Listener {
    #[event_handler("source", "note")]
    async fn note(&self, payload: String) {
        received().lock().unwrap().push(payload);
    }

    #[rpc]
    async fn ping(&self) -> String {
        "pong".into()
    }
}

/// The payloads of the poison events each time a handler ran for one.
fn poisoned() -> &'static Mutex<Vec<String>> {
    static POISONED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    POISONED.get_or_init(Default::default)
}

/// Fails on every `source.poison` event, and asks for it to be requeued.
#[derive(Dependencies)]
pub struct Fussy;

#[service(name = "fussy")]
impl Fussy {
    #[event_handler("source", "poison", requeue_on_error = true)]
    async fn poison(&self, payload: String) -> Result<(), RemoteError> {
        poisoned().lock().unwrap().push(payload);
        Err(RemoteError::new("Poisoned", "this event always fails"))
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Headers larger than a frame.

/// One call from Python's `ClusterRpcProxy` with `bytes` of context data.
async fn python_call_with_context(
    python: &str,
    broker: &TestBroker,
    method: &str,
    args: Value,
    bytes: usize,
) -> Value {
    let output = tokio::process::Command::new(python)
        .arg(common::interop_dir().join("py_context_call.py"))
        .arg(broker.python_uri())
        .arg("echo")
        .arg(method)
        .arg(args.to_string())
        .arg(bytes.to_string())
        .output()
        .await
        .expect("run py_context_call.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "py_context_call.py printed {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn python_callers_with_large_context_data_are_answered_or_refused_and_the_service_keeps_its_connection()
 {
    let _shared = BROKER.read().await;
    let (Some(python), Some(broker)) = (common::python(), TestBroker::amqp()) else {
        return;
    };
    let services = start::<Echo>(&broker).await;
    // 60 KB of context data: more than a 32 KiB frame, less than Nameko's 128 KiB.
    let answer =
        python_call_with_context(&python, &broker, "token_length", json!([]), 60_000).await;
    assert_eq!(answer, json!({"result": 60_000}));
    // 200 KB: more than any frame; the broker refuses it from the Python client.
    let answer =
        python_call_with_context(&python, &broker, "token_length", json!([]), 200_000).await;
    let error = &answer["error"];
    assert_eq!(error["class"], "FrameError", "{answer}");
    assert!(error["value"].as_str().unwrap().contains("frame_too_large"));
    // The service never lost its connection, and answers.
    assert!(!services.transport().connection_lost());
    let answer =
        python_call_with_context(&python, &broker, "echo", json!(["still here"]), 10).await;
    assert_eq!(answer, json!({"result": "still here"}));
    assert!(!services.transport().connection_lost());
    services.stop().await.unwrap();
}

#[tokio::test]
async fn a_rust_caller_with_too_much_context_data_gets_a_clear_error_and_keeps_its_connection() {
    let _shared = BROKER.read().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let services = start::<Echo>(&broker).await;
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    let token =
        |bytes: usize| BTreeMap::from([("auth_token".to_owned(), json!("x".repeat(bytes)))]);
    let echo = |bytes| client.with_context_data(token(bytes)).service("echo");
    let length: usize = echo(60_000).call("token_length", json!([])).await.unwrap();
    assert_eq!(length, 60_000);
    let error = echo(200_000)
        .call::<_, usize>("token_length", json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RpcError::Transport(TransportError::HeadersTooLarge { size, limit })
                if size > 200_000 && limit < 131_072
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("send less context data"),
        "{error}"
    );
    // The same client goes on, on the same connection.
    assert_echoes(&client).await;
    services.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. Hostile properties.

#[tokio::test]
async fn deeply_nested_headers_from_python_are_rejected_and_the_service_serves_on() {
    let _shared = BROKER.read().await;
    let (Some(python), Some(broker)) = (common::python(), TestBroker::amqp()) else {
        return;
    };
    logs();
    let services = start::<Echo>(&broker).await;
    // Deeper than the runtime reads (64), and than lapin's parser could recurse (thousands).
    for depth in [100, 15_000] {
        let output = tokio::process::Command::new(&python)
            .arg(common::interop_dir().join("py_deep_headers.py"))
            .arg(broker.python_uri())
            .arg("echo.echo")
            .arg(depth.to_string())
            .output()
            .await
            .expect("run py_deep_headers.py");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "published",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    eventually(
        "both messages are rejected",
        Duration::from_secs(10),
        async || {
            String::from_utf8_lossy(&logs().lock().unwrap())
                .matches("rejected a message whose headers nest too deeply")
                .count()
                >= 2
        },
    )
    .await;
    // The same process, the same connection, still serving.
    assert!(!services.transport().connection_lost());
    let client = services.rpc_client().await.unwrap();
    assert_echoes(&client).await;
    services.stop().await.unwrap();
}

#[tokio::test]
async fn settling_a_delivery_whose_channel_is_gone_is_an_error_not_a_silent_ok() {
    let _shared = BROKER.read().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let t = broker.connect().await;
    let queue = format!("settle-{}", uuid::Uuid::new_v4());
    t.declare_queue(&QueueSpec::durable(&queue)).await.unwrap();
    for _ in 0..2 {
        t.publish(OutgoingMessage {
            exchange: Default::default(),
            routing_key: queue.clone(),
            mandatory: true,
            properties: Properties::default(),
            body: b"{}".to_vec(),
        })
        .await
        .unwrap();
    }
    for settle in ["ack", "reject"] {
        let mut consumer = t.consume(&queue, 1).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Its channel closes: the broker will deliver it again, and the caller must hear that
        // this settlement did not happen.
        consumer.close().await;
        let settled = match settle {
            "ack" => delivery.ack().await,
            _ => delivery.reject(false).await,
        };
        let error = settled.expect_err("a settlement on a closed channel");
        assert!(error.to_string().contains("channel is closed"), "{error}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Services with no consumers notice a lost connection.

#[tokio::test]
async fn a_timer_only_service_notices_a_lost_connection_and_dispatches_again_once_restarted() {
    let _shared = BROKER.read().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    // Where the ticks go: a queue bound to the ticker's exchange.
    let watcher = broker.connect().await;
    let queue = format!("ticks-{}", uuid::Uuid::new_v4());
    watcher
        .declare_exchange(&ExchangeSpec::durable_topic("ticker.events"))
        .await
        .unwrap();
    watcher
        .declare_queue(&QueueSpec::durable(&queue))
        .await
        .unwrap();
    watcher
        .bind_queue(&queue, "ticker.events", "tick")
        .await
        .unwrap();
    let mut ticks = watcher.consume(&queue, 0).await.unwrap();
    let services = start::<Ticker>(&broker).await;
    let tick = tokio::time::timeout(Duration::from_secs(5), ticks.next()).await;
    assert!(matches!(tick, Ok(Some(Ok(_)))), "no tick before the close");

    close_connections(&broker);
    // What `run` waits on ends with the loss (it then starts the services again).
    let ended = tokio::time::timeout(Duration::from_secs(10), services.wait())
        .await
        .expect("the timer-only service did not notice its lost connection within 10 s");
    assert!(
        matches!(ended, Err(nameko::Error::ConnectionLost(_))),
        "{ended:?}"
    );
    // The watcher's connection was closed too.
    let watcher = broker.connect().await;
    let mut ticks = watcher.consume(&queue, 0).await.unwrap();
    while let Ok(Some(Ok(old))) =
        tokio::time::timeout(Duration::from_millis(200), ticks.next()).await
    {
        old.ack().await.unwrap();
    }
    let services = start::<Ticker>(&broker).await;
    let tick = tokio::time::timeout(Duration::from_secs(5), ticks.next()).await;
    assert!(matches!(tick, Ok(Some(Ok(_)))), "no tick after the restart");
    services.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. A reply the broker refuses.

/// Sets RabbitMQ's largest message (for new channels) until dropped.
struct MaxMessageSize;

impl MaxMessageSize {
    fn set(bytes: usize) -> MaxMessageSize {
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, max_message_size, {bytes})."),
        ]);
        MaxMessageSize
    }
}

impl Drop for MaxMessageSize {
    fn drop(&mut self) {
        // RabbitMQ 3.10's default, 128 MiB.
        rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 134217728).",
        ]);
    }
}

#[tokio::test]
async fn a_reply_the_broker_refuses_runs_the_method_once_and_tells_the_caller() {
    let _alone = BROKER.write().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let _limit = MaxMessageSize::set(20_000);
    let services = start::<Echo>(&broker).await;
    let client = ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(20));
    EXECUTIONS.store(0, Ordering::SeqCst);
    let proxy = client.service("echo");
    // Small calls all along, on the same publishing channel as the refused replies.
    let small = futures_util::future::join_all((0..200).map(|i| {
        let proxy = proxy.clone();
        async move { proxy.call::<_, Value>("echo", [i]).await }
    }));
    let large = async {
        // Below the dedicated channel's threshold, and above the broker's limit.
        let first = proxy.call::<_, String>("large", [30_000]).await;
        let second = proxy.call::<_, String>("large", [30_000]).await;
        (first, second)
    };
    let (small, (first, second)) = tokio::join!(small, large);
    for (i, answer) in small.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), json!(i));
    }
    for answer in [first, second] {
        match answer {
            Err(RpcError::Remote(error)) => {
                assert_eq!(error.exc_type, "ReplyPublishError");
                assert!(error.value.contains("could not be sent"), "{}", error.value);
            }
            other => panic!("expected a ReplyPublishError, got {other:?}"),
        }
    }
    // Once each, never again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(EXECUTIONS.load(Ordering::SeqCst), 2);
    // Nothing left in the queue to loop on.
    let answered: Value = proxy.call("echo", ["after"]).await.unwrap();
    assert_eq!(answered, "after");
    services.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. A consumer the broker cancels.

#[tokio::test]
async fn an_event_handler_whose_queue_is_deleted_consumes_again() {
    let _shared = BROKER.read().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    logs();
    let services = start::<Listener>(&broker).await;
    let dispatcher = services.event_dispatcher();
    let vhost = broker.inner().vhost().unwrap().to_owned();
    let queue = "evt-source-note--listener.note";
    broker
        .inner()
        .management_api(
            "DELETE",
            &format!("/api/queues/{}/{queue}", vhost.replace('/', "%2F")),
            "",
        )
        .unwrap();
    let token = uuid::Uuid::new_v4().to_string();
    eventually(
        "the handler receives events again",
        Duration::from_secs(10),
        async || {
            dispatcher.dispatch("source", "note", &token).await.unwrap();
            received().lock().unwrap().contains(&token)
        },
    )
    .await;
    assert!(logged("the broker cancelled the consumer"));
    // The RPC entrypoint was never disturbed.
    let client = services.rpc_client().await.unwrap();
    let pong: String = client
        .service("listener")
        .call("ping", json!([]))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    services.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. A broker blocking publishers.

/// Raises RabbitMQ's memory alarm until dropped.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test]
async fn a_broker_blocking_publishers_gives_callers_a_clear_timeout_and_answers_after() {
    let _alone = BROKER.write().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    logs();
    let services = start::<Echo>(&broker).await;
    let mut config = Config::default().with_broker(&broker.uri);
    config.publish_timeout = Duration::from_secs(2);
    let client = ClusterRpcClient::connect_with(&config).await.unwrap();
    let echoed: String = client
        .service("echo")
        .call("echo", ["before"])
        .await
        .unwrap();
    assert_eq!(echoed, "before");
    let alarm = MemoryAlarm::raise();
    let started = Instant::now();
    let blocked = tokio::time::timeout(
        Duration::from_secs(15),
        client
            .service("echo")
            .call::<_, String>("echo", ["blocked"]),
    )
    .await
    .expect("the call hung while the broker blocked publishers");
    assert!(
        matches!(
            blocked,
            Err(RpcError::Transport(TransportError::PublishTimeout(_)))
        ),
        "{blocked:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(logged("the broker blocked this connection"));
    drop(alarm);
    // Answered again; the call that timed out was not lost either: it ran once unblocked.
    eventually(
        "calls are answered again",
        Duration::from_secs(20),
        async || {
            let answer = client
                .service("echo")
                .with_timeout(Duration::from_secs(5))
                .call::<_, String>("echo", ["after"])
                .await;
            answer.is_ok_and(|a| a == "after")
        },
    )
    .await;
    assert!(logged("the broker unblocked this connection"));
    services.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. A stop with prefetched work.

#[tokio::test]
async fn a_stopping_instance_hands_its_prefetched_requests_to_another_at_once() {
    let _shared = BROKER.read().await;
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let a = TestServices::on_uri(&broker.uri)
        .with_service::<Echo>()
        .with_config(|c| {
            c.max_workers = 1;
            c.prefetch_count = 10;
        })
        .start()
        .await
        .unwrap();
    let client = ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    // One slow call on A, then nine quick ones that A prefetches behind it.
    let proxy = client.service("echo");
    let slow = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.call::<_, u64>("slow", [4_000]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick: Vec<_> = (0..9)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let answer = proxy.call::<_, u64>("slow", [10]).await;
                (answer, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = start::<Echo>(&broker).await;
    let stopping = Instant::now();
    let stop = tokio::spawn(a.stop());
    for call in quick {
        let (answer, answered) = call.await.unwrap();
        assert_eq!(answer.unwrap(), 10);
        let after = answered.duration_since(stopping);
        assert!(
            after < Duration::from_secs(2),
            "a prefetched call waited {after:?} for the stopping instance"
        );
    }
    // A finished its running call before it stopped.
    assert_eq!(slow.await.unwrap().unwrap(), 4_000);
    stop.await.unwrap().unwrap();
    b.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8 and 9. Poison events, content types.

on_both_transports! {
    async fn a_requeue_on_error_handler_gives_up_a_poison_event(broker: &TestBroker) {
        let _shared = BROKER.read().await;
        logs();
        let services = TestServices::on_uri(&broker.uri)
            .with_service::<Fussy>()
            .with_config(|c| c.max_redeliveries = 3)
            .start()
            .await
            .unwrap();
        let payload = uuid::Uuid::new_v4().to_string();
        services
            .event_dispatcher()
            .dispatch("source", "poison", &payload)
            .await
            .unwrap();
        eventually("the event is given up", Duration::from_secs(10), async || {
            logged("MAX_REDELIVERIES is 3")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The first delivery and three redeliveries ran; the fifth was dropped unrun.
        let runs = poisoned().lock().unwrap().iter().filter(|p| **p == payload).count();
        assert_eq!(runs, 4);
        services.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn requests_in_json_with_a_charset_or_no_content_type_are_answered(broker: &TestBroker) {
        let _shared = BROKER.read().await;
        let services = start::<Echo>(broker).await;
        let t = broker.connect().await;
        let (reply_to, mut replies) = common::reply_queue(&t).await;
        for content_type in [Some("application/json; charset=utf-8"), None] {
            t.publish(OutgoingMessage {
                exchange: "nameko-rpc".into(),
                routing_key: "echo.echo".into(),
                mandatory: true,
                properties: Properties {
                    content_type: content_type.map(|c| c.to_owned().into()),
                    reply_to: Some(reply_to.clone()),
                    correlation_id: Some("c".into()),
                    ..Properties::default()
                },
                body: br#"{"args": ["charset"], "kwargs": {}}"#.to_vec(),
            })
            .await
            .unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body, json!({"result": "charset", "error": null}), "{content_type:?}");
            reply.ack().await.unwrap();
        }
        services.stop().await.unwrap();
    }
}
