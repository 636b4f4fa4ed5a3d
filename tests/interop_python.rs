//! Interop with the real Python nameko 2.14.1 on a real RabbitMQ: Python calls Rust, Rust
//! calls Python, and instances in both languages share one service queue.

mod common;

use common::{PythonServices, TestBroker, python, python_calls, wait_for_service};
use nameko::RunningServices;
use nameko::prelude::*;
use serde_json::{Value, json};

#[derive(Dependencies)]
pub struct RustService;

#[service(name = "rust_service")]
impl RustService {
    #[rpc]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc]
    async fn greet(&self, name: String, greeting: Option<String>) -> String {
        format!("{} {name}!", greeting.as_deref().unwrap_or("Hello"))
    }

    #[rpc]
    async fn fail(&self, message: String) -> Result<(), RemoteError> {
        Err(RemoteError::new("ValueError", message.clone()).with_path("builtins.ValueError"))
    }

    #[rpc]
    async fn explode(&self) -> String {
        panic!("boom")
    }
}

#[derive(Dependencies)]
pub struct SharedService;

#[service(name = "shared_service")]
impl SharedService {
    #[rpc]
    async fn who(&self) -> String {
        "rust".into()
    }
}

async fn start_rust(broker: &TestBroker) -> RunningServices {
    ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<RustService>()
        .start()
        .await
        .expect("the Rust service starts")
}

#[tokio::test]
async fn python_calls_a_rust_service() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let running = start_rust(&broker).await;
    let nested =
        json!({"ünïcödé": "日本語 ✓", "list": [1, 2.5, null, true], "deep": {"a": [{"b": "c"}]}});
    let calls = json!([
        {"service": "rust_service", "method": "greet", "args": ["Tim"]},
        {"service": "rust_service", "method": "greet", "kwargs": {"name": "Tim", "greeting": "Hi"}},
        {"service": "rust_service", "method": "greet", "args": ["Zoë"], "kwargs": {"greeting": "Grüß"}},
        {"service": "rust_service", "method": "echo", "args": [nested]},
        {"service": "rust_service", "method": "nope"},
        {"service": "rust_service", "method": "greet", "args": ["a", "b", "c"]},
        {"service": "rust_service", "method": "greet"},
        {"service": "rust_service", "method": "greet", "kwargs": {"nom": "x"}},
        {"service": "rust_service", "method": "greet", "args": [42]},
        {"service": "rust_service", "method": "fail", "args": ["boom"]},
        {"service": "rust_service", "method": "explode"},
        {"service": "no_such_service", "method": "foo"},
        {"service": "rust_service", "method": "greet", "args": ["still serving"]},
    ]);
    let out = python_calls(&python, &broker, &calls).await;
    assert_eq!(out.len(), 13, "{out:#?}");
    assert_eq!(out[0], json!({"result": "Hello Tim!"}));
    assert_eq!(out[1], json!({"result": "Hi Tim!"}));
    assert_eq!(out[2], json!({"result": "Grüß Zoë!"}));
    assert_eq!(out[3], json!({"result": nested}));
    assert_eq!(out[4]["error"]["class"], "MethodNotFound");
    assert_eq!(out[4]["error"]["value"], "nope");
    assert_eq!(out[5]["error"]["class"], "IncorrectSignature");
    assert_eq!(
        out[5]["error"]["value"],
        "greet() takes 3 positional arguments but 4 were given"
    );
    assert_eq!(out[6]["error"]["class"], "IncorrectSignature");
    assert_eq!(
        out[6]["error"]["value"],
        "greet() missing 1 required positional argument: 'name'"
    );
    assert_eq!(
        out[7]["error"]["value"],
        "greet() got an unexpected keyword argument 'nom'"
    );
    assert_eq!(out[8]["error"]["class"], "IncorrectSignature");
    assert_eq!(
        out[9]["error"],
        json!({"class": "RemoteError", "exc_type": "ValueError", "value": "boom", "args": ["ValueError boom"]})
    );
    assert_eq!(out[10]["error"]["exc_type"], "WorkerPanic");
    assert_eq!(out[10]["error"]["value"], "boom");
    assert_eq!(out[11]["error"]["class"], "UnknownService");
    assert_eq!(out[12], json!({"result": "Hello still serving!"}));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn rust_calls_a_python_service() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let _python = PythonServices::start(&python, &broker, &["PythonService"]);
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    wait_for_service(&client, "python_service", "echo", json!([1])).await;
    let py = client.service("python_service");
    let nested = json!({"ünïcödé": "日本語 ✓", "list": [1, 2.5, null, true]});
    assert_eq!(
        py.call::<_, Value>("echo", [&nested]).await.unwrap(),
        nested
    );
    assert_eq!(
        py.call_with::<_, _, i64>("add", [40], json!({"b": 2}))
            .await
            .unwrap(),
        42
    );
    let error = py
        .call::<_, Value>("raise_value_error", ["boom"])
        .await
        .unwrap_err();
    let remote = error.remote().expect("a RemoteError");
    assert_eq!(remote.exc_type, "ValueError");
    assert_eq!(remote.exc_path, "builtins.ValueError");
    assert_eq!(remote.exc_args, vec![json!("boom")]);
    assert_eq!(remote.value, "boom");
    let error = py.call::<_, Value>("nope", ()).await.unwrap_err();
    assert!(
        matches!(&error, RpcError::MethodNotFound(m) if m == "nope"),
        "{error:?}"
    );
    let error = py.call::<_, Value>("add", [1, 2, 3]).await.unwrap_err();
    assert!(
        matches!(&error, RpcError::IncorrectSignature(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn python_and_rust_instances_share_one_queue() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let rust = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<SharedService>()
        .start()
        .await
        .unwrap();
    let _python = PythonServices::start(&python, &broker, &["SharedService"]);
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    let who = client.service("shared_service");
    // Wait until the Python instance consumes too: then answers come from both.
    let mut answers = Vec::new();
    for _ in 0..200 {
        answers.push(who.call::<_, String>("who", ()).await.unwrap());
        if answers.iter().any(|a| a == "python") && answers.iter().any(|a| a == "rust") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answers.iter().any(|a| a == "python"), "{answers:?}");
    assert!(answers.iter().any(|a| a == "rust"), "{answers:?}");
    rust.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Events across languages.

/// A payload and the call id stack of the worker that recorded it.
type Recorded = (Value, Vec<String>);

fn recorded() -> &'static std::sync::Mutex<Vec<Recorded>> {
    static RECORDED: std::sync::OnceLock<std::sync::Mutex<Vec<Recorded>>> =
        std::sync::OnceLock::new();
    RECORDED.get_or_init(Default::default)
}

fn record(payload: Value) {
    let stack = WorkerContext::current()
        .map(|w| w.call_id_stack().to_vec())
        .unwrap_or_default();
    recorded().lock().unwrap().push((payload, stack));
}

fn recorded_with(token: &str) -> Option<Recorded> {
    recorded()
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p["token"] == token)
        .cloned()
}

#[derive(Dependencies)]
pub struct RustListener;

#[service(name = "rust_listener")]
impl RustListener {
    #[event_handler("python_publisher", "python_event")]
    async fn on_python_event(&self, payload: Value) {
        record(payload);
    }
}

#[derive(Dependencies)]
pub struct RustRecorder;

#[service(name = "rust_recorder")]
impl RustRecorder {
    #[rpc]
    async fn record(&self, payload: Value) {
        record(payload);
    }
}

#[derive(Dependencies)]
pub struct RustPublisher {
    dispatch: EventDispatcher,
}

#[service(name = "rust_publisher")]
impl RustPublisher {
    #[rpc]
    async fn publish(&self, payload: Value) -> Result<(), nameko::events::DispatchError> {
        self.dispatch.dispatch("rust_event", &payload).await
    }

    #[rpc]
    async fn publish_shared(&self, payload: Value) -> Result<(), nameko::events::DispatchError> {
        self.dispatch.dispatch("shared_event", &payload).await
    }
}

#[derive(Dependencies)]
pub struct SharedListener;

#[service(name = "shared_listener")]
impl SharedListener {
    #[event_handler("rust_publisher", "shared_event")]
    async fn on_event(&self, mut payload: Value) {
        payload["by"] = json!("rust");
        record(payload);
    }
}

#[tokio::test]
async fn a_python_event_reaches_a_rust_handler() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let rust = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<RustListener>()
        .start()
        .await
        .unwrap();
    let _python = PythonServices::start(&python, &broker, &["PythonPublisher"]);
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    wait_for_service(
        &client,
        "python_publisher",
        "publish",
        json!([{"warm-up": true}]),
    )
    .await;
    let token = uuid::Uuid::new_v4().to_string();
    let payload = json!({"token": token, "text": "grüße aus Python"});
    client
        .service("python_publisher")
        .call::<_, Value>("publish", [&payload])
        .await
        .unwrap();
    for _ in 0..500 {
        if recorded_with(&token).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (received, stack) = recorded_with(&token).expect("the Rust handler got the Python event");
    assert_eq!(received, payload);
    assert!(
        stack
            .iter()
            .any(|id| id.starts_with("python_publisher.publish.")),
        "{stack:?}"
    );
    assert!(
        stack
            .last()
            .is_some_and(|id| id.starts_with("rust_listener.on_python_event.")),
        "{stack:?}"
    );
    rust.stop().await.unwrap();
}

#[tokio::test]
async fn a_rust_event_reaches_a_python_handler() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let rust = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<RustRecorder>()
        .with_service::<RustPublisher>()
        .start()
        .await
        .unwrap();
    let _python = PythonServices::start(&python, &broker, &["PythonListener"]);
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    let token = uuid::Uuid::new_v4().to_string();
    let payload = json!({"token": token, "nested": {"list": [1, 2, 3]}});
    // Events sent before the Python handler's queue exists are lost (as in Nameko): repeat
    // until one arrives.
    for _ in 0..150 {
        client
            .service("rust_publisher")
            .call::<_, ()>("publish", [&payload])
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if recorded_with(&token).is_some() {
            break;
        }
    }
    let (received, stack) = recorded_with(&token).expect("the Python handler got the Rust event");
    assert_eq!(received, payload);
    assert!(
        stack
            .iter()
            .any(|id| id.starts_with("rust_publisher.publish.")),
        "{stack:?}"
    );
    assert!(
        stack
            .iter()
            .any(|id| id.starts_with("python_listener.on_rust_event.")),
        "{stack:?}"
    );
    assert!(
        stack
            .last()
            .is_some_and(|id| id.starts_with("rust_recorder.record.")),
        "{stack:?}"
    );
    rust.stop().await.unwrap();
}

#[tokio::test]
async fn python_and_rust_handlers_of_one_service_share_one_event_queue() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let rust = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<RustRecorder>()
        .with_service::<RustPublisher>()
        .with_service::<SharedListener>()
        .start()
        .await
        .unwrap();
    let _python = PythonServices::start(&python, &broker, &["SharedListener"]);
    let client = ClusterRpcClient::connect(&broker.uri).await.unwrap();
    let token = uuid::Uuid::new_v4().to_string();
    let handled_by = || -> Vec<String> {
        recorded()
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p["token"] == token)
            .map(|(p, _)| p["by"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    for n in 0..300 {
        let payload = json!({"token": token, "n": n});
        client
            .service("rust_publisher")
            .call::<_, ()>("publish_shared", [&payload])
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let by = handled_by();
        if by.iter().any(|b| b == "python") && by.iter().any(|b| b == "rust") {
            break;
        }
    }
    let by = handled_by();
    assert!(by.iter().any(|b| b == "python"), "{by:?}");
    assert!(by.iter().any(|b| b == "rust"), "{by:?}");
    rust.stop().await.unwrap();
}

/// Where Python's `PythonMessenger.send` publishes: the `interop` direct exchange, routing key
/// `to_rust`, a priority queue.
fn rust_inbox() -> nameko::messaging::Queue {
    nameko::messaging::Queue::new("rust_inbox")
        .exchange(nameko::messaging::Exchange::direct("interop"))
        .routing_key("to_rust")
        .max_priority(10)
}

/// A message the Rust consumer took, and its context data's `user_id`.
type Taken = (Value, Option<String>);

fn inbox() -> &'static std::sync::Mutex<Vec<Taken>> {
    static INBOX: std::sync::OnceLock<std::sync::Mutex<Vec<Taken>>> = std::sync::OnceLock::new();
    INBOX.get_or_init(Default::default)
}

#[derive(Dependencies)]
pub struct RustInbox;

#[service(name = "rust_inbox")]
impl RustInbox {
    #[consume(queue = rust_inbox())]
    async fn take(&self, body: Value) {
        let user = WorkerContext::current()
            .and_then(|w| w.data().get("user_id").cloned())
            .and_then(|v| v.as_str().map(str::to_owned));
        inbox().lock().unwrap().push((body, user));
    }
}

#[tokio::test]
async fn a_python_publisher_reaches_a_rust_consumer_highest_priority_first() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    // The consumer declares its priority queue, and stops: messages wait for it.
    let config = Config::default()
        .with_broker(&broker.uri)
        .with_max_workers(1);
    let first = ServiceRunner::new(config.clone())
        .with_service::<RustInbox>()
        .start()
        .await
        .unwrap();
    first.stop().await.unwrap();
    let _python = PythonServices::start(&python, &broker, &["PythonMessenger"]);
    let client = ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap()
        .with_context_data([("user_id".to_owned(), json!("py-user"))].into());
    wait_for_service(&client, "python_messenger", "send", json!([[]])).await;
    let messages = json!([[{"n": "low"}, 1], [{"n": "high"}, 9], [{"n": "middle"}, 5]]);
    client
        .service("python_messenger")
        .call::<_, ()>("send", [&messages])
        .await
        .unwrap();
    // One worker at a time: the order they ran in is the order they came in.
    let rust = ServiceRunner::new(config)
        .with_service::<RustInbox>()
        .start()
        .await
        .unwrap();
    for _ in 0..500 {
        if inbox().lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let got = inbox().lock().unwrap().clone();
    let order: Vec<&Value> = got.iter().map(|(body, _)| &body["n"]).collect();
    assert_eq!(order, ["high", "middle", "low"]);
    // Python's publisher sent the context data it was called with as `nameko.*` headers.
    assert!(
        got.iter()
            .all(|(_, user)| user.as_deref() == Some("py-user")),
        "{got:?}"
    );
    rust.stop().await.unwrap();
}

#[tokio::test]
async fn a_rust_publisher_reaches_a_python_consumer_with_its_context() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let rust = ServiceRunner::new(Config::default().with_broker(&broker.uri))
        .with_service::<RustRecorder>()
        .start()
        .await
        .unwrap();
    let _python = PythonServices::start(&python, &broker, &["PythonMessenger"]);
    let publisher = nameko::messaging::Publisher::connect(&broker.uri)
        .await
        .unwrap()
        .with_context_data([("user_id".to_owned(), json!("rust-user"))].into());
    let token = uuid::Uuid::new_v4().to_string();
    let interop = nameko::messaging::Exchange::direct("interop");
    // The Python consumer's queue exists once it runs: mandatory says when it does.
    for _ in 0..150 {
        let sent = publisher
            .publish(&json!({"token": token}))
            .to_exchange(&interop)
            .routing_key("to_python")
            .mandatory(true)
            .await;
        if sent.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..500 {
        if recorded()
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p["body"]["token"] == token)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (received, stack) = recorded()
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p["body"]["token"] == token)
        .cloned()
        .expect("the Python consumer got the Rust message");
    assert_eq!(received["user_id"], "rust-user");
    assert!(
        stack
            .iter()
            .any(|id| id.starts_with("python_messenger.take.")),
        "{stack:?}"
    );
    rust.stop().await.unwrap();
}
