//! Distributed traces (the `opentelemetry` feature): one HTTP request to a Rust gateway, which
//! calls a Rust service, which calls a Python nameko service, which calls a Rust service,
//! which dispatches an event a Rust service handles; every span in the SDK's in-memory
//! exporter, in one trace, each with the right parent.
//!
//! And a service binary run by `nameko::main` with `OTEL_EXPORTER_OTLP_ENDPOINT` sends its
//! spans over OTLP/HTTP, the last ones when it stops.
//!
//! `cargo build --features opentelemetry --example gateway` and
//! `cargo test --features opentelemetry --test traces` (tests/run.sh runs both).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{PythonServices, Running, TestBroker, example, log_lines, python, wait_for_service};
use nameko::http::{HttpError, StatusCode};
use nameko::prelude::*;
use nameko::testing::TestServices;
use nameko::trace::opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use nameko::trace::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

/// The test's own trace, as a client that sent the request would have it.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN_ID: &str = "b7ad6b7169203331";

/// The HTTP front: calls `trace_entry` over RPC.
#[derive(Dependencies)]
pub struct TraceGateway {
    rpc: ClusterRpcClient,
}

#[service(name = "trace_gateway")]
impl TraceGateway {
    #[http("GET", "/hello/<name>")]
    async fn hello(&self, name: String) -> Result<Json<Value>, HttpError> {
        let greeting: String = self
            .rpc
            .service("trace_entry")
            .call("enter", [name])
            .await
            .map_err(|e| HttpError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        Ok(Json(json!({ "greeting": greeting })))
    }
}

/// Calls the Python service `trace_relay`, which calls `trace_finish` back.
#[derive(Dependencies)]
pub struct TraceEntry {
    rpc: ClusterRpcClient,
}

#[service(name = "trace_entry")]
impl TraceEntry {
    #[rpc]
    async fn enter(&self, name: String) -> Result<String, RpcError> {
        self.rpc.service("trace_relay").call("relay", [name]).await
    }
}

/// Called from Python; dispatches `finished`.
#[derive(Dependencies)]
pub struct TraceFinish {
    dispatch: EventDispatcher,
}

#[service(name = "trace_finish")]
impl TraceFinish {
    #[rpc]
    async fn finish(&self, name: String) -> Result<String, DispatchError> {
        self.dispatch.dispatch("finished", &name).await?;
        Ok(format!("Hello {name}!"))
    }
}

/// Handles `trace_finish`'s event.
#[derive(Dependencies)]
pub struct TraceAudit;

#[service(name = "trace_audit")]
impl TraceAudit {
    #[event_handler("trace_finish", "finished")]
    async fn on_finished(&self, name: String) {
        tracing::info!(%name, "finished");
    }
}

/// A GET with a `traceparent` header over a real socket: status and body.
fn get(address: std::net::SocketAddr, path: &str, traceparent: &str) -> (u16, String) {
    common::http_get(address, path, &[("traceparent", traceparent)]).expect("a response")
}

/// The finished spans, once `wanted` of them are in (or what there is after 20 s).
fn spans(exporter: &InMemorySpanExporter, wanted: usize) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = exporter.get_finished_spans().expect("the exporter's spans");
        if spans.len() >= wanted || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_crosses_http_rust_python_rust_and_an_event() {
    let (Some(broker), Some(python)) = (TestBroker::amqp(), python()) else {
        return;
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(nameko::trace::layer(&provider)),
    )
    .expect("the only subscriber of this test binary");

    let _python = PythonServices::start(&python, &broker, &["TraceRelay"]);
    let running = TestServices::on(broker.into_inner())
        .with_service::<TraceGateway>()
        .with_service::<TraceEntry>()
        .with_service::<TraceFinish>()
        .with_service::<TraceAudit>()
        .start()
        .await
        .expect("services start");
    let client = running.rpc_client().await.expect("a client");
    wait_for_service(&client, "trace_relay", "ping", json!([])).await;
    exporter.reset();

    let address = running.http_address().expect("an HTTP server");
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let (status, body) =
        tokio::task::spawn_blocking(move || get(address, "/hello/Tim", &traceparent))
            .await
            .expect("the request");
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).ok()),
        (200, Some(json!({"greeting": "Hello Tim!"}))),
        "{body}"
    );

    // Gateway worker, its call, entry worker, its call (answered by Python, which forwards the
    // trace context on its own call), finish worker, its dispatch, audit worker.
    let spans = spans(&exporter, 7);
    let span = |name: &str, kind: SpanKind| -> &SpanData {
        spans
            .iter()
            .find(|s| s.name == name && s.span_kind == kind)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} span `{name}` among {:?}",
                    spans
                        .iter()
                        .map(|s| (&s.name, &s.span_kind))
                        .collect::<Vec<_>>()
                )
            })
    };
    let gateway = span("trace_gateway.hello", SpanKind::Server);
    let call_entry = span("trace_entry.enter", SpanKind::Client);
    let entry = span("trace_entry.enter", SpanKind::Server);
    let call_relay = span("trace_relay.relay", SpanKind::Client);
    let finish = span("trace_finish.finish", SpanKind::Server);
    let dispatch = span("trace_finish.finished dispatch", SpanKind::Producer);
    let audit = span("trace_audit.on_finished", SpanKind::Consumer);
    assert_eq!(spans.len(), 7, "{spans:#?}");

    let trace_id = TraceId::from_hex(TRACE_ID).expect("a trace id");
    for s in [
        gateway, call_entry, entry, call_relay, finish, dispatch, audit,
    ] {
        assert_eq!(
            s.span_context.trace_id(),
            trace_id,
            "{} is in another trace",
            s.name
        );
        assert_eq!(s.status, Status::Unset, "{} failed", s.name);
    }
    let parent = |child: &SpanData, parent: &SpanData| {
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{}'s parent is not {}",
            child.name,
            parent.name
        );
    };
    assert_eq!(
        gateway.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN_ID).expect("a span id"),
        "the gateway's parent is the request's traceparent"
    );
    assert!(gateway.parent_span_is_remote);
    parent(call_entry, gateway);
    parent(entry, call_entry);
    parent(call_relay, entry);
    // Python's hop shows no span of its own: it forwarded the context data unchanged.
    parent(finish, call_relay);
    parent(dispatch, finish);
    parent(audit, dispatch);
    running.stop().await.expect("a clean stop");
}

/// A stand-in OpenTelemetry collector: answers every HTTP request 200 and hands over each
/// request's path and body.
fn collector() -> (
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<(String, Vec<u8>)>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = listener.local_addr().expect("its address");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut raw = Vec::new();
            let mut buf = [0u8; 16384];
            // The head, then as much body as it announces.
            let (head, body_start) = loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                raw.extend_from_slice(&buf[..n]);
                if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8_lossy(&raw[..at]).to_string(), at + 4);
                }
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while raw.len() < body_start + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((path, raw[body_start..].to_vec()));
        }
    });
    (address, rx)
}

#[test]
fn nameko_main_exports_spans_over_otlp_from_the_environment() {
    let (collector, posts) = collector();
    let mut child = std::process::Command::new(example("gateway"));
    child
        .args([
            "run",
            "--broker",
            "memory://",
            "--web-server-address",
            "127.0.0.1:0",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut gateway = Running(child.spawn().expect("start examples/gateway"));
    let mut log = log_lines(gateway.0.stderr.take().expect("its stderr"));
    let address: std::net::SocketAddr = log
        .by_ref()
        .find_map(|line| {
            line.contains("HTTP server listening").then(|| {
                line.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })?
        })
        .expect("the gateway's address in its log");
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01");
    assert_eq!(
        get(address, "/multiply/6/7", &traceparent),
        (200, r#"{"value":42}"#.to_owned())
    );
    // The batch is sent at the latest when the process stops.
    assert!(gateway.terminate().success());
    let (path, body) = posts.recv_timeout(Duration::from_secs(10)).expect(
        "spans sent to the collector (was examples/gateway built with --features opentelemetry?)",
    );
    assert_eq!(path, "/v1/traces");
    // OTLP protobuf: strings and ids as they are.
    let has = |bytes: &[u8]| body.windows(bytes.len()).any(|w| w == bytes);
    assert!(has(b"gateway.multiply"), "no worker span in {body:?}");
    assert!(
        has(b"service.name") && has(b"gateway"),
        "no service name in {body:?}"
    );
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert!(has(&trace_id), "the request's trace id is not in {body:?}");
}
