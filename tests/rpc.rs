//! RPC as a user sees it, on the embedded broker and on RabbitMQ: calls, arguments, every
//! error a caller can get, context propagation, worker limits, blocking methods, stop and kill.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use common::TestBroker;
use common::fuzz::Fuzz;
use futures_util::StreamExt;
use nameko::prelude::*;
use nameko::testing::{TestCluster, TestServices};
use nameko::transport::{OutgoingMessage, Properties, SharedTransport};
use nameko::{Dependency, DependencyContext};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The services under test.

/// Counts workers running at once.
#[derive(Clone, Default)]
pub struct Gauge(Arc<(AtomicUsize, AtomicUsize)>);

impl Gauge {
    fn enter(&self) -> GaugeGuard {
        let now = self.0.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.1.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }
    fn max(&self) -> usize {
        self.0.1.load(Ordering::SeqCst)
    }
}

struct GaugeGuard(Gauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dependency for Gauge {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Gauge::default())
    }
}

/// Tokens of the slow calls that have started, so tests can wait for a worker to be running.
fn started() -> &'static Mutex<Vec<String>> {
    static STARTED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    STARTED.get_or_init(Default::default)
}

async fn wait_started(token: &str) {
    for _ in 0..500 {
        if started().lock().unwrap().iter().any(|t| t == token) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the call {token} never started");
}

/// A meeting point for two synchronous calls; each waits up to 5 s for the other.
fn rendezvous(token: &str) -> bool {
    type Point = Arc<(Mutex<usize>, Condvar)>;
    static POINTS: OnceLock<Mutex<HashMap<String, Point>>> = OnceLock::new();
    let point = POINTS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(token.to_owned())
        .or_default()
        .clone();
    let (count, arrived) = &*point;
    let mut count = count.lock().unwrap();
    *count += 1;
    arrived.notify_all();
    let (count, _) = arrived
        .wait_timeout_while(count, Duration::from_secs(5), |c| *c < 2)
        .unwrap();
    *count >= 2
}

#[derive(Debug)]
pub struct DivisionByZero;

impl ToRemoteError for DivisionByZero {
    fn to_remote_error(&self) -> RemoteError {
        RemoteError::new("ZeroDivisionError", "division by zero")
            .with_path("builtins.ZeroDivisionError")
    }
}

#[derive(Debug)]
pub struct OutOfStock(String);

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no {} left", self.0)
    }
}

#[derive(Dependencies)]
pub struct Calculator {
    gauge: Gauge,
}

#[service(name = "calculator")]
impl Calculator {
    #[rpc]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc]
    async fn greet(&self, name: String, greeting: Option<String>) -> String {
        format!("{} {name}!", greeting.as_deref().unwrap_or("Hello"))
    }

    #[rpc]
    async fn divide(&self, a: f64, b: f64) -> Result<f64, DivisionByZero> {
        if b == 0.0 {
            Err(DivisionByZero)
        } else {
            Ok(a / b)
        }
    }

    #[rpc]
    async fn buy(&self, item: String) -> Result<(), OutOfStock> {
        Err(OutOfStock(item))
    }

    #[rpc]
    async fn explode(&self) -> String {
        panic!("the worker fell over")
    }

    #[rpc]
    async fn unserializable(&self) -> HashMap<(i32, i32), i32> {
        HashMap::from([((1, 2), 3)])
    }

    #[rpc]
    async fn context(&self) -> Value {
        let worker = WorkerContext::current().expect("a worker context");
        json!({
            "call_id": worker.call_id(),
            "call_id_stack": worker.call_id_stack(),
            "auth_token": worker.auth_token(),
        })
    }

    #[rpc]
    async fn slow(&self, token: String, millis: u64) -> String {
        let _running = self.gauge.enter();
        started().lock().unwrap().push(token.clone());
        tokio::time::sleep(Duration::from_millis(millis)).await;
        token
    }

    #[rpc]
    async fn max_concurrency(&self) -> usize {
        self.gauge.max()
    }

    #[rpc]
    fn meet(&self, token: String) -> bool {
        rendezvous(&token)
    }

    #[rpc(name = "public_name")]
    async fn internal_name(&self) -> String {
        "renamed".into()
    }
}

#[derive(Dependencies)]
pub struct Relay {
    calculator: CalculatorClient,
    rpc: ClusterRpcClient,
}

#[service(name = "relay")]
impl Relay {
    #[rpc]
    async fn add_via(&self, a: i64, b: i64) -> Result<i64, RpcError> {
        self.calculator.add(a, b).await
    }

    #[rpc]
    async fn context_via(&self) -> Result<Value, RpcError> {
        self.calculator.context().await
    }

    #[rpc]
    async fn buy_via(&self, item: String) -> Result<(), RpcError> {
        self.calculator.buy(item).await
    }

    #[rpc]
    async fn call_nowhere(&self) -> Result<Value, RpcError> {
        self.rpc.service("nowhere").call("anything", ()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn start(
    broker: &TestBroker,
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> (TestCluster, ClusterRpcClient) {
    let running = TestServices::on_uri(&broker.uri)
        .with_service::<Calculator>()
        .with_service::<Relay>()
        .with_config(configure)
        .start()
        .await
        .expect("services start");
    // On a connection of its own: some tests kill the services' connection.
    let client = ClusterRpcClient::standalone(broker.connect().await, running.config())
        .await
        .unwrap();
    (running, client)
}

/// Publishes a hand-made request and returns the reply body, or `None` if none came.
async fn raw_request(
    t: &SharedTransport,
    routing_key: &str,
    body: &[u8],
    properties: Properties,
) -> Option<Value> {
    let (reply_key, mut replies) = common::reply_queue(t).await;
    let reply_to = properties.reply_to.clone().map(|_| reply_key);
    // A reply may take a while to come (16 MiB in a debug build on a busy machine); without
    // `reply_to` none can come to this queue, and the wait only shows that.
    let wait = Duration::from_secs(if reply_to.is_some() { 10 } else { 2 });
    let message = OutgoingMessage {
        exchange: "nameko-rpc".into(),
        routing_key: routing_key.into(),
        mandatory: true,
        properties: Properties {
            reply_to,
            correlation_id: Some("raw".into()),
            ..properties
        },
        body: body.to_vec(),
    };
    t.publish(message).await.unwrap();
    let reply = tokio::time::timeout(wait, replies.next())
        .await
        .ok()??
        .ok()?;
    assert_eq!(reply.properties.correlation_id.as_deref(), Some("raw"));
    let body = serde_json::from_slice(&reply.body).expect("the reply is JSON");
    reply.ack().await.unwrap();
    Some(body)
}

fn with_reply_to() -> Properties {
    Properties {
        reply_to: Some("set by raw_request".into()),
        ..Properties::nameko_json()
    }
}

fn error_type(reply: &Value) -> &str {
    reply["error"]["exc_type"].as_str().unwrap_or("<no error>")
}

// ---------------------------------------------------------------------------------------------
// Tests.

on_both_transports! {
    async fn calls_bind_positional_keyword_and_optional_arguments(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = client.service("calculator");
        assert_eq!(calc.call::<_, i64>("add", (1, 2)).await.unwrap(), 3);
        assert_eq!(calc.call_with::<_, _, i64>("add", [1], json!({"b": 41})).await.unwrap(), 42);
        assert_eq!(calc.call::<_, String>("greet", ["Tim"]).await.unwrap(), "Hello Tim!");
        assert_eq!(
            calc.call_with::<_, _, String>("greet", json!([]), json!({"name": "Tim", "greeting": "Hi"})).await.unwrap(),
            "Hi Tim!"
        );
        let nested = json!({"ünïcödé": "日本語 ✓", "list": [1, 2.5, null, true], "deep": {"a": [{"b": "c"}]}});
        assert_eq!(calc.call::<_, Value>("echo", [&nested]).await.unwrap(), nested);
        // Larger than one AMQP frame (32 KiB) both ways.
        let large = json!("x".repeat(300_000));
        assert_eq!(calc.call::<_, Value>("echo", [&large]).await.unwrap(), large);
        assert_eq!(CalculatorClient::new(&client).internal_name().await.unwrap(), "renamed");
        assert_eq!(calc.call::<_, String>("public_name", ()).await.unwrap(), "renamed");
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_service_calls_another_through_its_typed_client(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        assert_eq!(RelayClient::new(&client).add_via(20, 22).await.unwrap(), 42);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn context_data_and_call_ids_flow_through_nested_calls(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let client = client.with_context_data(BTreeMap::from([("auth_token".to_owned(), json!("tok"))]));
        let seen = RelayClient::new(&client).context_via().await.unwrap();
        assert_eq!(seen["auth_token"], "tok");
        let stack: Vec<&str> = seen["call_id_stack"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(stack.len(), 3, "{stack:?}");
        assert!(stack[0].starts_with("standalone_rpc_proxy.call."), "{stack:?}");
        assert!(stack[1].starts_with("relay.context_via."), "{stack:?}");
        assert!(stack[2].starts_with("calculator.context."), "{stack:?}");
        assert_eq!(seen["call_id"], stack[2]);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn an_unknown_method_replies_method_not_found(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let error = client.service("calculator").call::<_, Value>("subtract", (1, 2)).await.unwrap_err();
        assert!(matches!(&error, RpcError::MethodNotFound(m) if m == "subtract"), "{error:?}");
        assert_eq!(client.service("calculator").call::<_, i64>("add", (1, 1)).await.unwrap(), 2);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn wrong_arguments_reply_incorrect_signature(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = client.service("calculator");
        let cases = [
            (json!([1, 2, 3]), json!({}), "add() takes 3 positional arguments but 4 were given"),
            (json!([1]), json!({}), "add() missing 1 required positional argument: 'b'"),
            (json!([1, 2]), json!({"c": 3}), "add() got an unexpected keyword argument 'c'"),
            (json!([1, 2]), json!({"a": 3}), "add() got multiple values for argument 'a'"),
        ];
        for (args, kwargs, message) in cases {
            let error = calc.call_with::<_, _, Value>("add", args, kwargs).await.unwrap_err();
            assert!(matches!(&error, RpcError::IncorrectSignature(m) if m == message), "{error:?}");
        }
        let error = calc.call::<_, Value>("add", ("one", 2)).await.unwrap_err();
        assert!(
            matches!(&error, RpcError::IncorrectSignature(m) if m.starts_with("add() argument 'a': invalid type: string \"one\"")),
            "{error:?}"
        );
        assert_eq!(calc.call::<_, i64>("add", (1, 1)).await.unwrap(), 2);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn malformed_requests_get_malformed_request_replies(broker: &TestBroker) {
        let (running, _client) = start(broker, |_| {}).await;
        let t = broker.connect().await;
        let missing_kwargs = raw_request(&t, "calculator.add", br#"{"args": [1, 2]}"#, with_reply_to()).await.unwrap();
        assert_eq!(missing_kwargs["error"]["exc_path"], "nameko.exceptions.MalformedRequest");
        assert_eq!(missing_kwargs["error"]["value"], "Message missing `args` or `kwargs`");
        assert_eq!(missing_kwargs["result"], Value::Null);
        for body in [&b"{not json"[..], b"[1, 2]", b"\xff\xfe\x00", b""] {
            let reply = raw_request(&t, "calculator.add", body, with_reply_to()).await.unwrap();
            assert_eq!(error_type(&reply), "MalformedRequest", "{body:?}: {reply}");
        }
        let pickle = Properties { content_type: Some("application/x-python-serialize".into()), ..with_reply_to() };
        let reply = raw_request(&t, "calculator.add", br#"{"args": [1, 2], "kwargs": {}}"#, pickle).await.unwrap();
        assert_eq!(error_type(&reply), "MalformedRequest");
        assert!(reply["error"]["value"].as_str().unwrap().contains("application/x-python-serialize"));
        let fine = raw_request(&t, "calculator.add", br#"{"args": [1, 2], "kwargs": {}}"#, with_reply_to()).await.unwrap();
        assert_eq!(fine, json!({"result": 3, "error": null}));
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn huge_requests_get_clear_errors_and_the_service_keeps_serving(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let t = broker.connect().await;
        // 16 MiB that is not JSON, and 16 MiB of valid JSON where a number belongs.
        let mut garbage = vec![b'{'; 1];
        garbage.extend(std::iter::repeat_n(b'x', 16 << 20));
        let reply = raw_request(&t, "calculator.add", &garbage, with_reply_to()).await.unwrap();
        assert_eq!(error_type(&reply), "MalformedRequest");
        let big = format!(r#"{{"args": ["{}", 1], "kwargs": {{}}}}"#, "y".repeat(16 << 20));
        let reply = raw_request(&t, "calculator.add", big.as_bytes(), with_reply_to()).await.unwrap();
        assert_eq!(error_type(&reply), "IncorrectSignature");
        // The error text says what was wrong without echoing 16 MiB back.
        assert!(reply["error"]["value"].as_str().unwrap().len() < 1024, "{}", &reply.to_string()[..200]);
        assert_eq!(client.service("calculator").call::<_, i64>("add", (2, 2)).await.unwrap(), 4);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_request_without_reply_to_is_rejected_and_the_service_keeps_serving(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let t = broker.connect().await;
        let no_reply_to = Properties::nameko_json();
        let reply = raw_request(&t, "calculator.add", br#"{"args": [1, 2], "kwargs": {}}"#, no_reply_to).await;
        assert_eq!(reply, None);
        assert_eq!(client.service("calculator").call::<_, i64>("add", (2, 2)).await.unwrap(), 4);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn user_errors_become_remote_errors(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client);
        assert_eq!(calc.divide(1.0, 4.0).await.unwrap(), 0.25);
        let error = calc.divide(1.0, 0.0).await.unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(remote.exc_type, "ZeroDivisionError");
        assert_eq!(remote.exc_path, "builtins.ZeroDivisionError");
        assert_eq!(remote.value, "division by zero");

        let error = calc.buy("spam".into()).await.unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(remote.exc_type, "OutOfStock");
        assert_eq!(remote.value, "no spam left");
        assert_eq!(remote.exc_args, vec![json!("no spam left")]);

        // Re-raised by a service in between, it arrives as Nameko's RemoteError.
        let error = RelayClient::new(&client).buy_via("eggs".into()).await.unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(remote.exc_type, "RemoteError");
        assert_eq!(remote.exc_args, vec![json!("OutOfStock"), json!("no eggs left")]);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_panicking_method_replies_an_error_and_the_service_keeps_serving(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client);
        for _ in 0..3 {
            let error = calc.explode().await.unwrap_err();
            let remote = error.remote().expect("a remote error");
            assert_eq!(remote.exc_type, "WorkerPanic");
            assert_eq!(remote.value, "the worker fell over");
        }
        assert_eq!(calc.add(1, 2).await.unwrap(), 3);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn an_unserializable_result_replies_unserializable_value_error(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let error = CalculatorClient::new(&client).unserializable().await.unwrap_err();
        let remote = error.remote().expect("a remote error");
        assert_eq!(remote.exc_type, "UnserializableValueError");
        assert_eq!(remote.exc_path, "nameko.exceptions.UnserializableValueError");
        assert!(remote.value.starts_with("Unserializable value: "), "{}", remote.value);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn calling_an_unknown_service_fails_with_unknown_service(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let error = client.service("nowhere").call::<_, Value>("anything", ()).await.unwrap_err();
        assert!(matches!(&error, RpcError::UnknownService(s) if s == "nowhere"), "{error:?}");
        assert_eq!(error.to_string(), "Unknown service `nowhere`");
        // From inside a service, it reaches the caller as Nameko's UnknownService.
        let error = RelayClient::new(&client).call_nowhere().await.unwrap_err();
        assert_eq!(error.remote().map(|e| e.exc_type.as_str()), Some("UnknownService"));
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_call_without_reply_times_out(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let impatient = CalculatorClient::new(&client).with_timeout(Duration::from_millis(200));
        let token = uuid::Uuid::new_v4().to_string();
        let error = impatient.slow(token, 3_000).await.unwrap_err();
        assert!(matches!(error, RpcError::Timeout(d) if d == Duration::from_millis(200)), "{error:?}");
        running.kill().await;
    }
}

on_both_transports! {
    async fn a_short_timeout_ends_its_call_while_a_longer_one_waits(broker: &TestBroker) {
        // Calls of one client share its reply queue and the clock that ends its calls: a call
        // with a shorter timeout than one already waiting still ends at its own deadline.
        let (running, client) = start(broker, |_| {}).await;
        let patient = CalculatorClient::new(&client).with_timeout(Duration::from_secs(60));
        let impatient = CalculatorClient::new(&client).with_timeout(Duration::from_millis(200));
        let token = uuid::Uuid::new_v4().to_string();
        let long = patient.slow(token.clone(), 3_000);
        tokio::pin!(long);
        let started = tokio::select! {
            _ = wait_started(&token) => true,
            _ = &mut long => false,
        };
        assert!(started, "the long call ended before it started");
        let short = impatient.slow(uuid::Uuid::new_v4().to_string(), 3_000);
        let error = tokio::select! {
            error = short => error.unwrap_err(),
            outcome = &mut long => panic!("the 3 s call ended first: {outcome:?}"),
        };
        assert!(matches!(error, RpcError::Timeout(d) if d == Duration::from_millis(200)), "{error:?}");
        // The longer call is still waiting, and gets its reply.
        assert_eq!(long.await.unwrap(), token);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn many_calls_in_flight_from_one_client(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client);
        let calls = (0..50).map(|i| {
            let calc = calc.clone();
            async move { calc.add(i, 1000).await }
        });
        let results = futures_util::future::join_all(calls).await;
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), i as i64 + 1000);
        }
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn max_workers_bounds_concurrent_workers(broker: &TestBroker) {
        let (running, client) = start(broker, |c| {
            c.max_workers = 2;
            c.prefetch_count = 10;
        }).await;
        let calc = CalculatorClient::new(&client);
        let calls = (0..6).map(|i| calc.slow(format!("gauge-{i}-{}", uuid::Uuid::new_v4()), 100));
        for result in futures_util::future::join_all(calls).await {
            result.unwrap();
        }
        let max = calc.max_concurrency().await.unwrap();
        assert!((1..=2).contains(&max), "max concurrent workers was {max}");
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn requests_waiting_for_a_worker_run_in_the_order_they_came(broker: &TestBroker) {
        let (running, client) = start(broker, |c| {
            c.max_workers = 1;
            c.prefetch_count = 10;
        }).await;
        let calc = CalculatorClient::new(&client);
        let run = uuid::Uuid::new_v4();
        let tokens: Vec<String> = (0..6).map(|i| format!("order-{run}-{i}")).collect();
        // Sent in this order: the first runs, the others wait for its worker slot.
        let calls = tokens.iter().map(|token| calc.slow(token.clone(), 20));
        for (answer, token) in futures_util::future::join_all(calls).await.into_iter().zip(&tokens) {
            assert_eq!(&answer.unwrap(), token);
        }
        let ran: Vec<String> = started()
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.starts_with(&format!("order-{run}-")))
            .cloned()
            .collect();
        assert_eq!(ran, tokens, "the requests ran one at a time, in the order they were sent");
        assert_eq!(calc.max_concurrency().await.unwrap(), 1);
        running.stop().await.unwrap();
    }
}

/// On the embedded broker, a method done at its first poll answers within its caller's first
/// poll of the call: no task switch, as for a function call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_the_embedded_broker_answers_at_its_first_poll() {
    use futures_util::FutureExt;
    let broker = TestBroker::memory();
    let (running, client) = start(&broker, |_| {}).await;
    let calc = CalculatorClient::new(&client);
    // Once the consumer's loop runs (the first call may find it starting).
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
    assert_eq!(calc.add(1, 2).now_or_never().map(Result::unwrap), Some(3));
    running.stop().await.unwrap();
}

/// On the embedded broker a request is first polled on its caller's task, but one handed over
/// by a settle made during such a poll is spawned: a queue's backlog, each request handed over
/// as the one before it is acknowledged, is not polled one inside the other (20,000 deep, that
/// would overflow the stack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_handed_over_one_ack_at_a_time_is_not_polled_one_inside_the_other() {
    let broker = TestBroker::memory();
    let (running, client) = start(&broker, |c| {
        c.max_workers = 50_000;
        c.prefetch_count = 1;
    })
    .await;
    let calc = CalculatorClient::new(&client).with_timeout(Duration::from_secs(120));
    // The one request the service may hold unacknowledged; the others wait in the queue.
    let token = format!("backlog-{}", uuid::Uuid::new_v4());
    let slow = tokio::spawn({
        let (calc, token) = (calc.clone(), token.clone());
        async move { calc.slow(token, 1_000).await }
    });
    wait_started(&token).await;
    let calls = (0..20_000).map(|i| calc.add(i, 1));
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), i as i64 + 1);
    }
    assert_eq!(slow.await.unwrap().unwrap(), token);
    running.stop().await.unwrap();
}

/// A service whose runtime shuts down under a running request loses it not: the request goes
/// back to the queue, and the next instance answers it. (On the embedded broker the dropped
/// worker's request comes straight back to the service's consumer, which cannot start it any
/// more: it must wait, not loop.)
#[test]
fn a_request_outlives_a_runtime_shut_down_under_it() {
    let broker = TestBroker::memory();
    let uri = broker.uri.clone();
    let services = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let first = services.block_on(
        TestServices::on_uri(&uri)
            .with_service::<Calculator>()
            .start(),
    );
    let first = first.expect("services start");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let rpc = ClusterRpcClient::connect(&uri).await.unwrap();
        let calc = CalculatorClient::new(&rpc).with_timeout(Duration::from_secs(20));
        let token = format!("shut-down-{}", uuid::Uuid::new_v4());
        let call = tokio::spawn({
            let (calc, token) = (calc.clone(), token.clone());
            async move { calc.slow(token, 500).await }
        });
        wait_started(&token).await;
        services.shutdown_background();
        drop(first);
        let second = TestServices::on_uri(&uri)
            .with_service::<Calculator>()
            .start()
            .await
            .expect("services start");
        assert_eq!(
            call.await.unwrap().unwrap(),
            token,
            "the next instance answered it"
        );
        second.stop().await.unwrap();
    });
}

on_both_transports! {
    async fn synchronous_methods_run_on_the_blocking_pool(broker: &TestBroker) {
        // Two synchronous calls that each wait for the other: on a runtime worker thread (this
        // test's runtime has one) they could not both be running.
        let (running, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client);
        let token = uuid::Uuid::new_v4().to_string();
        let (a, b) = tokio::join!(calc.meet(token.clone()), calc.meet(token));
        assert!(a.unwrap() && b.unwrap(), "the two calls did not run at the same time");
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn a_graceful_stop_lets_running_workers_reply(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client);
        let token = uuid::Uuid::new_v4().to_string();
        let call = tokio::spawn({
            let (calc, token) = (calc.clone(), token.clone());
            async move { calc.slow(token, 300).await }
        });
        wait_started(&token).await;
        running.stop().await.unwrap();
        assert_eq!(call.await.unwrap().unwrap(), token);
    }
}

on_both_transports! {
    async fn a_killed_worker_leaves_its_request_to_another_instance(broker: &TestBroker) {
        let (first, client) = start(broker, |_| {}).await;
        let calc = CalculatorClient::new(&client).with_timeout(Duration::from_secs(20));
        let token = uuid::Uuid::new_v4().to_string();
        let call = tokio::spawn({
            let (calc, token) = (calc.clone(), token.clone());
            async move { calc.slow(token, 500).await }
        });
        wait_started(&token).await;
        first.kill().await;
        let (second, _) = start(broker, |_| {}).await;
        assert_eq!(call.await.unwrap().unwrap(), token, "the request was redelivered and answered");
        second.stop().await.unwrap();
    }
}

#[tokio::test]
async fn duplicate_service_names_are_refused_at_start() {
    let broker = TestBroker::memory();
    let result = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<Calculator>()
        .with_service::<Calculator>()
        .start()
        .await;
    let error = result.err().expect("duplicate names are refused");
    assert_eq!(
        error.to_string(),
        "service `calculator` is registered twice; service names must be unique"
    );
}

#[tokio::test]
async fn services_register_themselves_and_unknown_names_are_refused() {
    let names: Vec<_> = nameko::ServiceRegistration::all()
        .iter()
        .map(|r| r.name())
        .collect();
    assert_eq!(names, ["calculator", "relay"]);
    let error = ServiceRunner::new(Config::default())
        .with_registered(&["calculater"])
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "no service named `calculater` is registered (registered: calculator, relay)"
    );
}

on_both_transports! {
    async fn fuzzed_requests_never_stop_a_service_and_good_calls_go_on(broker: &TestBroker) {
        let (running, client) = start(broker, |_| {}).await;
        let calc = client.service("calculator");
        let t = broker.connect().await;
        let (reply_key, mut replies) = common::reply_queue(&t).await;
        let replied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = replied.clone();
        let drain = tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                // Every reply the service sends is a Nameko reply, whatever it was sent.
                let body: Value = serde_json::from_slice(&reply.body).expect("a JSON reply");
                assert!(body.get("result").is_some() && body.get("error").is_some(), "{body}");
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                reply.ack().await.unwrap();
            }
        });
        let mut fuzz = Fuzz(0x9E37_79B9_7F4A_7C15);
        let (mut sent, mut with_reply_to) = (0, 0);
        for round in 0..20 {
            for _ in 0..100 {
                let (message, replies) = fuzz.request("calculator", &["add", "echo", "greet"], &reply_key);
                with_reply_to += usize::from(replies);
                t.publish(message).await.unwrap();
                sent += 1;
            }
            // The service still answers good calls, correctly, while it is being fuzzed.
            assert_eq!(calc.call::<_, i64>("add", (round, 1)).await.unwrap(), round + 1);
        }
        // Every fuzzed request that named somewhere to reply got a reply.
        for _ in 0..500 {
            if replied.load(std::sync::atomic::Ordering::SeqCst) >= with_reply_to {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(replied.load(std::sync::atomic::Ordering::SeqCst), with_reply_to, "of {sent} sent");
        assert_eq!(calc.call::<_, i64>("add", (40, 2)).await.unwrap(), 42);
        drain.abort();
        running.stop().await.unwrap();
    }
}

/// Starts `calculator.slow` taking `millis` on `client` (60 s timeout) and waits until the
/// service runs it; returns the call's token and the call.
async fn slow_call_in_flight(
    client: &ClusterRpcClient,
    millis: u64,
) -> (
    ServiceProxy,
    String,
    tokio::task::JoinHandle<Result<String, RpcError>>,
) {
    let calc = client
        .service("calculator")
        .with_timeout(Duration::from_secs(60));
    let token = uuid::Uuid::new_v4().to_string();
    let call = tokio::spawn({
        let (calc, token) = (calc.clone(), token.clone());
        async move { calc.call::<_, String>("slow", (token, millis)).await }
    });
    wait_started(&token).await;
    (calc, token, call)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_in_flight_when_the_connection_drops_is_answered_after_the_reconnect() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let (first, _) = start(&broker, |_| {}).await;
    // A client that owns its connection reconnects to the same reply queue.
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    let (calc, token, call) = slow_call_in_flight(&client, 1_500).await;
    // The broker drops every connection of the virtual host, the client's included.
    common::close_all_connections(&broker);
    // The service's runner has lost its connection; a new instance (what `run` does by itself)
    // gets the request, which was never acknowledged, and answers it.
    assert!(matches!(
        first.wait().await,
        Err(nameko::Error::ConnectionLost(_))
    ));
    let (second, _) = start(&broker, |_| {}).await;
    let dropped = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call was answered long before its 60 s timeout")
        .unwrap();
    assert_eq!(outcome.unwrap(), token);
    assert!(dropped.elapsed() < Duration::from_secs(30));
    // The same client goes on working.
    let sum: i64 = calc.call("add", (1, 2)).await.unwrap();
    assert_eq!(sum, 3);
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_on_a_borrowed_connection_that_drops_fails_clearly_instead_of_hanging() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let (running, _) = start(&broker, |_| {}).await;
    // This client publishes on a connection it was given, which it cannot renew.
    let client = ClusterRpcClient::standalone(broker.connect().await, running.config())
        .await
        .unwrap();
    let (calc, _, call) = slow_call_in_flight(&client, 30_000).await;
    // The broker drops every connection of the virtual host, the client's included.
    common::close_all_connections(&broker);
    let dropped = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the pending call ended long before its 60 s timeout")
        .unwrap();
    let error = outcome.unwrap_err();
    assert!(matches!(error, RpcError::Transport(_)), "{error:?}");
    assert!(dropped.elapsed() < Duration::from_secs(10));
    // Later calls on the dead client fail at once, too.
    let later = tokio::time::timeout(Duration::from_secs(5), calc.call::<_, i64>("add", (1, 2)))
        .await
        .expect("a later call fails at once");
    assert!(matches!(later, Err(RpcError::Transport(_))), "{later:?}");
    running.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beat_at_the_configured_heartbeat() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let mut config = Config::default();
    config.heartbeat = Some(7);
    let running = ServiceRunner::new(config.with_broker(&broker.uri))
        .with_service::<Calculator>()
        .start()
        .await
        .unwrap();
    // The management API lists a connection a few seconds after it opens.
    let mut timeouts = Vec::new();
    for _ in 0..80 {
        let listed = broker
            .inner()
            .management_api("GET", "/api/vhosts/{vhost}/connections", "")
            .unwrap();
        let connections: Vec<Value> = serde_json::from_str(&listed).unwrap();
        timeouts = connections.iter().map(|c| c["timeout"].clone()).collect();
        if timeouts.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // RabbitMQ's `timeout` is the heartbeat the connection negotiated, in seconds: the same
    // for both of the transport's connections (consuming and publishing).
    assert_eq!(timeouts, [json!(7), json!(7)]);
    running.stop().await.unwrap();
}
