//! HTTP entrypoints as a client sees them, over a real socket and through the router without
//! one: routes and converters, responses, errors, limits, workers and stop.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::TestBroker;
use nameko::http::HttpError;
use nameko::prelude::*;
use nameko::testing::{TestCluster, TestServices};
use nameko::{Dependency, DependencyContext, RunningServices};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over a real socket.

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send(running: &RunningServices, method: &str, path: &str, body: &str) -> Reply {
    let address = running.http_address().expect("an HTTP server");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(running: &RunningServices, path: &str) -> Reply {
    send(running, "GET", path, "").await
}

// ---------------------------------------------------------------------------------------------
// The services under test.

#[derive(Debug)]
pub struct OutOfStock(String);

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no {} left", self.0)
    }
}

/// An error with its own response.
pub struct Teapot;

impl IntoResponse for Teapot {
    fn into_response(self) -> axum::response::Response {
        (
            StatusCode::IM_A_TEAPOT,
            Json(json!({"error": "TEAPOT", "message": "short and stout"})),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
pub struct Order {
    sku: String,
    quantity: u32,
}

/// Counts requests running at once.
#[derive(Clone, Default)]
pub struct Gauge(Arc<(AtomicUsize, AtomicUsize)>);

impl Dependency for Gauge {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Gauge::default())
    }
}

fn slow_started() -> &'static Mutex<usize> {
    static STARTED: OnceLock<Mutex<usize>> = OnceLock::new();
    STARTED.get_or_init(Default::default)
}

#[derive(Dependencies)]
pub struct WebService {
    gauge: Gauge,
    echo: EchoServiceClient,
}

#[service(name = "web_service")]
impl WebService {
    #[http("GET", "/multiply/<int:first>/<int:second>")]
    async fn multiply(&self, first: i64, second: i64, request: Request) -> Json<Value> {
        let third: i64 = request
            .args()
            .get("third")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        Json(json!({ "value": first * second * third }))
    }

    #[http("GET", "/hello/<name>")]
    #[http("GET", "/hi/<string:name>")]
    fn hello(&self, name: String) -> String {
        format!("hello {name}")
    }

    #[http("GET,POST", "/both")]
    async fn both(&self, request: Request) -> String {
        format!("{} {}", request.method(), request.text().unwrap_or(""))
    }

    #[http(
        "GET",
        "/kinds/<float:f>/<any(red,green):colour>/<uuid:id>/<path:rest>"
    )]
    async fn kinds(&self, f: f64, colour: String, id: uuid::Uuid, rest: String) -> Json<Value> {
        Json(json!({"f": f, "colour": colour, "id": id.to_string(), "rest": rest}))
    }

    #[http("POST", "/created")]
    async fn created(&self) -> (StatusCode, String) {
        (StatusCode::CREATED, "made".into())
    }

    #[http("GET", "/with-headers")]
    async fn with_headers(&self) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        (StatusCode::ACCEPTED, [("x-spam", "eggs")], "ok".into())
    }

    #[http("GET", "/buy/<item>", expected_exceptions = "OutOfStock")]
    async fn buy(&self, item: String) -> Result<String, OutOfStock> {
        Err(OutOfStock(item))
    }

    #[http("GET", "/sell/<item>")]
    async fn sell(&self, item: String) -> Result<String, OutOfStock> {
        Err(OutOfStock(item))
    }

    #[http("GET", "/teapot")]
    async fn teapot(&self) -> Result<String, Teapot> {
        Err(Teapot)
    }

    #[http("GET", "/forbidden")]
    async fn forbidden(&self) -> Result<String, HttpError> {
        Err(HttpError::new(StatusCode::FORBIDDEN, "not for you"))
    }

    #[http("GET", "/explode")]
    async fn explode(&self) -> String {
        panic!("the handler fell over")
    }

    #[http("POST", "/orders")]
    async fn orders(&self, request: Request) -> Result<String, HttpError> {
        let order: Value = request.json()?;
        Ok(format!("ordered {}", order["sku"]))
    }

    #[http("POST", "/typed-orders")]
    async fn typed_orders(&self, order: Json<Order>) -> String {
        format!("{} x {}", order.quantity, order.sku)
    }

    #[http("GET", "/slow")]
    async fn slow(&self) -> String {
        let running = self.gauge.0.0.fetch_add(1, Ordering::SeqCst) + 1;
        self.gauge.0.1.fetch_max(running, Ordering::SeqCst);
        *slow_started().lock().unwrap() += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.gauge.0.0.fetch_sub(1, Ordering::SeqCst);
        "slow".into()
    }

    #[http("GET", "/max-concurrency")]
    async fn max_concurrency(&self) -> String {
        self.gauge.0.1.load(Ordering::SeqCst).to_string()
    }

    #[http("GET", "/echo/<word>")]
    async fn echo(&self, word: String) -> Result<Json<Value>, RpcError> {
        Ok(Json(self.echo.echo(word).await?))
    }
}

#[derive(Dependencies)]
pub struct EchoService;

#[service(name = "echo_service")]
impl EchoService {
    #[rpc]
    async fn echo(&self, word: String) -> Value {
        let worker = WorkerContext::current().expect("a worker");
        json!({"word": word, "call_id_stack": worker.call_id_stack()})
    }
}

#[derive(Dependencies)]
pub struct Rival;

#[service(name = "rival")]
impl Rival {
    #[http("GET", "/multiply/<int:a>/<int:b>")]
    async fn multiply(&self, a: i64, b: i64) -> String {
        (a * b).to_string()
    }
}

async fn start(
    broker: &TestBroker,
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> TestCluster {
    TestServices::on_uri(&broker.uri)
        .with_service::<WebService>()
        .with_service::<EchoService>()
        .with_config(configure)
        .start()
        .await
        .expect("services start")
}

// ---------------------------------------------------------------------------------------------
// Tests.

on_both_transports! {
    async fn the_talk_s_multiply_endpoint_answers(broker: &TestBroker) {
        let running = start(broker, |_| {}).await;
        let reply = get(&running, "/multiply/6/7?third=2").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, r#"{"value":84}"#));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(get(&running, "/multiply/6/7").await.body, r#"{"value":42}"#);
        assert_eq!(get(&running, "/multiply/6/x").await.status, 404, "a bad path value is a 404");
        assert_eq!(get(&running, "/multiply/-6/7").await.status, 404, "<int:> takes digits only");
        assert_eq!(send(&running, "POST", "/multiply/6/7", "").await.status, 405);
        let head = send(&running, "HEAD", "/multiply/6/7", "").await;
        assert_eq!((head.status, head.body.as_str()), (200, ""), "GET also answers HEAD");
        assert_eq!(get(&running, "/nowhere").await.status, 404);
        running.stop().await.unwrap();
    }
}

on_both_transports! {
    async fn an_http_worker_calls_another_service_with_its_context(broker: &TestBroker) {
        let running = start(broker, |_| {}).await;
        let reply = get(&running, "/echo/spam").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["word"], "spam");
        let stack = body["call_id_stack"].as_array().unwrap();
        assert_eq!(stack.len(), 2, "{stack:?}");
        assert!(stack[0].as_str().unwrap().starts_with("web_service.echo."));
        assert!(stack[1].as_str().unwrap().starts_with("echo_service.echo."));
        running.stop().await.unwrap();
    }
}

#[tokio::test]
async fn converters_and_several_routes_bind_values() {
    let running = start(&TestBroker::memory(), |_| {}).await;
    let reply = get(&running, "/hello/Tim").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "hello Tim"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(get(&running, "/hi/Zo%C3%AB").await.body, "hello Zoë");
    let id = "12345678-1234-5678-1234-567812345678";
    let reply = get(&running, &format!("/kinds/1.5/red/{id}/a/b/c.txt")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"f": 1.5, "colour": "red", "id": id, "rest": "a/b/c.txt"})
    );
    assert_eq!(
        get(&running, &format!("/kinds/1/red/{id}/x")).await.status,
        404,
        "<float:> needs a dot"
    );
    assert_eq!(
        get(&running, &format!("/kinds/1.5/blue/{id}/x"))
            .await
            .status,
        404,
        "<any(..)> lists the words"
    );
    assert_eq!(
        get(&running, "/kinds/1.5/red/not-a-uuid/x").await.status,
        404
    );
    assert_eq!(get(&running, "/both").await.body, "GET ");
    assert_eq!(
        send(&running, "POST", "/both", "posted").await.body,
        "POST posted"
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn responses_take_their_status_and_headers_from_the_return_value() {
    let running = start(&TestBroker::memory(), |_| {}).await;
    let reply = send(&running, "POST", "/created", "").await;
    assert_eq!((reply.status, reply.body.as_str()), (201, "made"));
    let reply = get(&running, "/with-headers").await;
    assert_eq!((reply.status, reply.header("x-spam")), (202, Some("eggs")));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_answered_as_nameko_does_or_as_the_error_says() {
    let running = start(&TestBroker::memory(), |_| {}).await;
    let reply = get(&running, "/buy/spam").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "Error: OutOfStock: no spam left\n")
    );
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let reply = get(&running, "/sell/eggs").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "Error: OutOfStock: no eggs left\n")
    );
    let reply = get(&running, "/teapot").await;
    assert_eq!(reply.status, 418);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap()["error"],
        "TEAPOT"
    );
    let reply = get(&running, "/forbidden").await;
    assert_eq!((reply.status, reply.body.as_str()), (403, "not for you\n"));
    let reply = get(&running, "/explode").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "Error: WorkerPanic: the handler fell over\n")
    );
    assert_eq!(
        get(&running, "/hello/still-serving").await.body,
        "hello still-serving"
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_clear_message() {
    let running = start(&TestBroker::memory(), |_| {}).await;
    let reply = send(&running, "POST", "/orders", r#"{"sku": "spam""#).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .body
            .starts_with("Malformed JSON: EOF while parsing an object"),
        "{}",
        reply.body
    );
    assert_eq!(
        send(&running, "POST", "/orders", r#"{"sku": "spam"}"#)
            .await
            .body,
        r#"ordered "spam""#
    );
    let reply = send(&running, "POST", "/typed-orders", r#"{"sku": 1}"#).await;
    assert!(
        (400..500).contains(&reply.status),
        "{} {}",
        reply.status,
        reply.body
    );
    let reply = send(
        &running,
        "POST",
        "/typed-orders",
        r#"{"sku": "spam", "quantity": 2}"#,
    )
    .await;
    assert_eq!(reply.body, "2 x spam", "{}", reply.status);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let running = start(&TestBroker::memory(), |c| c.http_max_body_bytes = 16).await;
    let reply = send(
        &running,
        "POST",
        "/orders",
        &format!(r#"{{"sku": "{}"}}"#, "x".repeat(100)),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert_eq!(
        send(&running, "POST", "/orders", r#"{"sku": "s"}"#)
            .await
            .status,
        200
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_answered_504_and_the_server_goes_on() {
    let running = start(&TestBroker::memory(), |c| {
        c.http_request_timeout = Duration::from_millis(50)
    })
    .await;
    let reply = get(&running, "/slow").await;
    assert_eq!(reply.status, 504);
    assert_eq!(
        reply.body,
        "The request took too long; it may still take effect\n"
    );
    assert_eq!(get(&running, "/hello/tim").await.body, "hello tim");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn http_workers_count_against_max_workers() {
    let running = start(&TestBroker::memory(), |c| c.max_workers = 1).await;
    let (a, b, c) = tokio::join!(
        get(&running, "/slow"),
        get(&running, "/slow"),
        get(&running, "/slow")
    );
    assert_eq!([a.status, b.status, c.status], [200, 200, 200]);
    assert_eq!(get(&running, "/max-concurrency").await.body, "1");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_lets_a_running_request_finish() {
    let running = start(&TestBroker::memory(), |_| {}).await;
    let address = running.http_address().unwrap();
    let before = *slow_started().lock().unwrap();
    let request = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw
    });
    for _ in 0..500 {
        if *slow_started().lock().unwrap() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await.unwrap();
    let raw = request.await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("slow"), "{raw}");
}

#[tokio::test]
async fn two_services_claiming_one_route_is_a_start_error() {
    let broker = TestBroker::memory();
    let error = ServiceRunner::new(
        Config::default()
            .with_broker(&broker.uri)
            .with_web_server_address("127.0.0.1:0"),
    )
    .with_service::<WebService>()
    .with_service::<EchoService>()
    .with_service::<Rival>()
    .start()
    .await
    .err()
    .expect("refused");
    assert_eq!(
        error.to_string(),
        "HTTP routes: two entrypoints claim GET /multiply/<int:a>/<int:b>: web_service.multiply and rival.multiply"
    );
}

#[tokio::test]
async fn the_router_answers_without_a_socket() {
    use tower::ServiceExt;
    let running = start(&TestBroker::memory(), |_| {}).await;
    let router = running.http_router().expect("a router");
    let request = axum::http::Request::get("/multiply/2/3?third=7")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], br#"{"value":42}"#);
    // HEAD: GET's head, its length included, and no body.
    let head = axum::http::Request::head("/multiply/2/3?third=7")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(head).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "12");
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert!(body.is_empty());
    // A path that a route matches, with a method it does not take: 405, saying which it takes.
    let post = axum::http::Request::post("/multiply/2/3")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    // The whole path must match: no trailing segment, no trailing slash.
    for path in ["/multiply/2/3/4", "/multiply/2/3/", "/multiply/2"] {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Slow and hostile clients.

/// Counts the worker hooks that ran.
#[derive(Clone, Default)]
pub struct Hooks(Arc<(AtomicUsize, AtomicUsize)>);

impl Dependency for Hooks {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Hooks::default())
    }

    async fn worker_result(
        &self,
        _worker: &WorkerContext,
        _result: &nameko::service::WorkerResult<'_>,
    ) -> Result<(), nameko::Error> {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn worker_teardown(&self, _worker: &WorkerContext) {
        self.0.1.fetch_add(1, Ordering::SeqCst);
    }
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

#[derive(Dependencies)]
pub struct Guarded {
    hooks: Hooks,
}

#[service(name = "guarded")]
impl Guarded {
    #[http("GET", "/sleep/<int:millis>")]
    async fn sleep(&self, millis: u64) -> String {
        let _ = HOOKS.set(self.hooks.clone());
        tokio::time::sleep(Duration::from_millis(millis)).await;
        "slept".into()
    }

    #[http("GET", "/block/<int:millis>")]
    fn block(&self, millis: u64) -> String {
        std::thread::sleep(Duration::from_millis(millis));
        "blocked".into()
    }

    #[http("GET", "/name/<name>")]
    async fn name(&self, name: String) -> String {
        name
    }

    #[http("GET", "/files/<path:file>")]
    async fn files(&self, file: String) -> String {
        file
    }

    #[http("GET", "/café/menu")]
    async fn menu(&self) -> String {
        "menu".into()
    }

    #[http("POST", "/upload")]
    async fn upload(&self, request: Request) -> String {
        request.body().len().to_string()
    }
}

async fn start_guarded(configure: impl FnOnce(&mut Config) + Send + 'static) -> TestCluster {
    TestServices::new()
        .with_service::<Guarded>()
        .with_config(configure)
        .start()
        .await
        .expect("services start")
}

#[tokio::test]
async fn a_timed_out_request_runs_its_hooks_and_keeps_its_worker_slot_until_it_ends() {
    let running = start_guarded(|c| {
        c.http_request_timeout = Duration::from_millis(600);
        c.max_workers = 1;
    })
    .await;
    let started = std::time::Instant::now();
    let reply = get(&running, "/sleep/1000").await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_millis(950));
    // The worker goes on in its slot: the next request waits for it.
    let reply = get(&running, "/sleep/0").await;
    assert_eq!(reply.body, "slept");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // And its hooks ran, as the second's did.
    let hooks = HOOKS.get().expect("the handler ran").clone();
    assert_eq!(hooks.0.0.load(Ordering::SeqCst), 2, "worker_result");
    assert_eq!(hooks.0.1.load(Ordering::SeqCst), 2, "worker_teardown");
    // A blocking handler that times out keeps its slot too.
    let started = std::time::Instant::now();
    assert_eq!(get(&running, "/block/1000").await.status, 504);
    assert_eq!(get(&running, "/name/x").await.body, "x");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn route_values_never_take_a_slash_or_climb_out_of_their_directory() {
    let running = start_guarded(|_| {}).await;
    assert_eq!(get(&running, "/name/tim").await.body, "tim");
    assert_eq!(get(&running, "/name/a%20b").await.body, "a b");
    // One segment, whether its slash comes encoded or not.
    assert_eq!(get(&running, "/name/a/b").await.status, 404);
    assert_eq!(get(&running, "/name/a%2Fb").await.status, 404);
    assert_eq!(get(&running, "/name/a%2fb").await.status, 404);
    // A path value never holds `..` or `.` segments, a leading slash or a backslash.
    assert_eq!(get(&running, "/files/a/b.txt").await.body, "a/b.txt");
    assert_eq!(get(&running, "/files/a%20b/c").await.body, "a b/c");
    for bad in [
        "/files/../etc/passwd",
        "/files/a/../../etc/passwd",
        "/files/%2E%2E/etc/passwd",
        "/files/a/%2e%2e%2fb",
        "/files/%2Fetc/passwd",
        "/files//etc/passwd",
        "/files/./a",
        "/files/..%5Cwindows",
    ] {
        assert_eq!(get(&running, bad).await.status, 404, "{bad}");
    }
    // A literal segment with non-ASCII text matches its percent-encoded form.
    assert_eq!(get(&running, "/caf%C3%A9/menu").await.body, "menu");
    running.stop().await.unwrap();
}

/// Opens a connection and sends part of a request's headers, then nothing more.
async fn slowloris(address: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /name/slow HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

/// Whether the server closed `stream` (it reads the end of the stream, or an error).
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or the like before the close.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_and_do_not_hold_the_server() {
    let running = start_guarded(|c| {
        c.http_header_read_timeout = Duration::from_secs(2);
    })
    .await;
    let address = running.http_address().unwrap();
    let mut attackers = Vec::new();
    for _ in 0..300 {
        attackers.push(slowloris(address).await);
    }
    // One that never sends a byte, and one that says nothing after its first request's
    // response: both wait for headers as long.
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut answered = tokio::net::TcpStream::connect(address).await.unwrap();
    answered
        .write_all(b"GET /name/once HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = answered.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let waiting = std::time::Instant::now();
    // One that keeps sending a byte of its headers every 200 ms: never idle, always late.
    let mut trickler = slowloris(address).await;
    let trickled = std::time::Instant::now();
    let trickling = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if trickler.write_all(b"x").await.is_err() {
                return trickled.elapsed();
            }
        }
    });
    // Normal requests are answered at once all the while.
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(get(&running, "/name/ok").await.body, "ok");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Each slow client is disconnected once its headers are late.
    for attacker in &mut attackers {
        assert!(closed_by_server(attacker, Duration::from_secs(5)).await);
    }
    assert!(closed_by_server(&mut silent, Duration::from_secs(5)).await);
    assert!(closed_by_server(&mut answered, Duration::from_secs(5)).await);
    assert!(waiting.elapsed() >= Duration::from_secs(2));
    // Cut off between one and one and a half timeouts after its first byte (its writes fail
    // once the server's close is seen).
    let cut_after = tokio::time::timeout(Duration::from_secs(10), trickling)
        .await
        .expect("the trickling client was not cut off")
        .unwrap();
    assert!(
        cut_after >= Duration::from_secs(2) && cut_after < Duration::from_secs(5),
        "cut off after {cut_after:?}"
    );
    running.stop().await.unwrap();
}

/// A request whose body stops coming: a timeout when its time is up (408, or 504 if the
/// request's own limit comes first), and its connection closed.
#[tokio::test]
async fn a_request_whose_body_stalls_times_out_and_its_connection_closed() {
    let running = start_guarded(|c| {
        c.http_request_timeout = Duration::from_millis(300);
        c.http_idle_timeout = Duration::from_millis(600);
    })
    .await;
    let address = running.http_address().unwrap();
    let mut stalled = tokio::net::TcpStream::connect(address).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 504"),
        "{answer}"
    );
    assert!(closed_by_server(&mut stalled, Duration::from_secs(3)).await);
    // A whole upload is answered, on a connection of its own.
    let mut whole = tokio::net::TcpStream::connect(address).await.unwrap();
    whole
        .write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let n = whole.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("10"), "{answer}");
    running.stop().await.unwrap();
}

/// A request body trickled past its request's time limit: a timeout (408, or 504 if the
/// request's own limit comes first), its read fails,
/// and the worker slot is free again (the connection is not held either).
#[tokio::test]
async fn a_request_body_trickled_past_its_time_limit_gives_its_worker_slot_back() {
    let running = start_guarded(|c| {
        c.http_request_timeout = Duration::from_millis(500);
        c.http_idle_timeout = Duration::from_millis(600);
        c.http_header_read_timeout = Duration::from_secs(2);
        c.max_workers = 1;
    })
    .await;
    let address = running.http_address().unwrap();
    let mut trickler = tokio::net::TcpStream::connect(address).await.unwrap();
    trickler
        .write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n0")
        .await
        .unwrap();
    let (mut reader, mut writer) = trickler.into_split();
    let trickled = std::time::Instant::now();
    let trickling = tokio::spawn(async move {
        // A byte every 200 ms: the connection is never idle.
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickled.elapsed()
    });
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    // The body did not all come within the request's time limit: the method never runs.
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 504"),
        "{answer}"
    );
    if answer.starts_with("HTTP/1.1 408") {
        assert!(
            answer.ends_with("The request body did not arrive in time\n"),
            "{answer}"
        );
    }
    // The only worker slot is free: another request is answered at once.
    let started = std::time::Instant::now();
    assert_eq!(get(&running, "/name/next").await.body, "next");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // And the trickling connection goes.
    let cut_after = tokio::time::timeout(Duration::from_secs(10), trickling)
        .await
        .expect("the trickling connection was not closed")
        .unwrap();
    assert!(
        cut_after < Duration::from_secs(6),
        "closed after {cut_after:?}"
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn idle_connections_are_closed_and_connections_are_limited() {
    let running = start_guarded(|c| {
        c.http_idle_timeout = Duration::from_millis(500);
        c.http_max_connections = 2;
    })
    .await;
    let address = running.http_address().unwrap();
    // A keep-alive connection that asked once, then says nothing.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /name/once HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut idle, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(450));
    // Two connections held open (a long request each): a third waits for a free one.
    let busy = |millis: u64| {
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request =
                format!("GET /sleep/{millis} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
        })
    };
    let (a, b) = (busy(1500), busy(1500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&running, "/name/third").await.body, "third");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the third connection was served before a slot was free"
    );
    a.await.unwrap();
    b.await.unwrap();
    running.stop().await.unwrap();
}
