//! What an operator points a dashboard or an orchestrator at: `/metrics` after a known sequence
//! of calls, `/health/live` and `/health/ready` on the web server and on `METRICS_ADDRESS`,
//! readiness across a lost broker connection.

mod common;

use std::time::{Duration, Instant};

use common::{Running, TestBroker, close_all_connections, example, log_lines};
use nameko::health::Readiness;
use nameko::prelude::*;
use nameko::testing::TestServices;
use serde_json::{Value, json};

/// A GET over a real socket: the status and the body.
fn get(address: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    common::http_get(address, path, &[])
}

/// The value of the sample `line` (its name and labels, as written) in a scrape.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

#[derive(Dependencies)]
pub struct Counted {
    dispatch: EventDispatcher,
}

#[service(name = "ops_counted")]
impl Counted {
    #[rpc]
    async fn double(&self, x: i64) -> Result<i64, DispatchError> {
        self.dispatch.dispatch("doubled", &x).await?;
        Ok(2 * x)
    }

    #[rpc(expected_exceptions = "Refused")]
    async fn refuse(&self, why: String) -> Result<(), Refused> {
        Err(Refused(why))
    }

    #[rpc]
    async fn explode(&self) -> i64 {
        panic!("fell over")
    }

    #[rpc]
    async fn slow(&self) -> i64 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        1
    }

    #[http("GET", "/ops/double/<int:x>")]
    async fn double_over_http(&self, x: i64) -> Json<Value> {
        Json(json!({ "value": 2 * x }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_the_services_did_and_health_says_ready() {
    let running = TestServices::new()
        .with_service::<Counted>()
        .with_config(|config| {
            config.max_workers = 7;
        })
        .start()
        .await
        .expect("services start");
    let address = running.http_address().expect("an HTTP server");
    let client = running.rpc_client().await.unwrap();
    let counted = client.service("ops_counted");
    for x in 1..=3 {
        let doubled: i64 = counted.call("double", [x]).await.unwrap();
        assert_eq!(doubled, 2 * x);
    }
    let refused = counted.call::<_, ()>("refuse", ["no"]).await.unwrap_err();
    assert!(refused.to_string().contains("Refused"), "{refused}");
    assert!(counted.call::<_, i64>("explode", ()).await.is_err());
    let timed_out = counted
        .with_timeout(Duration::from_millis(50))
        .call::<_, i64>("slow", ())
        .await
        .unwrap_err();
    assert!(
        matches!(timed_out, nameko::RpcError::Timeout(_)),
        "{timed_out}"
    );
    let unknown = client
        .service("ops_nowhere")
        .call::<_, i64>("double", [1])
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, nameko::RpcError::UnknownService(_)),
        "{unknown}"
    );
    for x in [5, 6] {
        assert_eq!(
            get(address, &format!("/ops/double/{x}")).unwrap(),
            (200, format!(r#"{{"value":{}}}"#, 2 * x))
        );
    }
    assert_eq!(get(address, "/ops/nowhere").unwrap().0, 404);
    // The slow worker ends (it is counted when it does).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, text) = get(address, "/metrics").unwrap();
    assert_eq!(status, 200);
    let expect = |line: &str, value: f64| {
        assert_eq!(sample(&text, line), Some(value), "`{line}` in:\n{text}");
    };
    let labels = |entrypoint: &str| format!(r#"service="ops_counted",entrypoint="{entrypoint}""#);
    expect(
        &format!("nameko_workers_started_total{{{}}}", labels("double")),
        3.0,
    );
    expect(
        &format!(
            r#"nameko_workers_finished_total{{{},outcome="success",error_type=""}}"#,
            labels("double")
        ),
        3.0,
    );
    expect(
        &format!(
            r#"nameko_workers_finished_total{{{},outcome="expected_error",error_type="Refused"}}"#,
            labels("refuse")
        ),
        1.0,
    );
    expect(
        &format!(
            r#"nameko_workers_finished_total{{{},outcome="error",error_type="WorkerPanic"}}"#,
            labels("explode")
        ),
        1.0,
    );
    expect(
        &format!(
            "nameko_worker_duration_seconds_count{{{}}}",
            labels("double_over_http")
        ),
        2.0,
    );
    expect(
        &format!(
            r#"nameko_worker_duration_seconds_bucket{{le="0.25",{}}}"#,
            labels("slow")
        ),
        0.0,
    );
    expect(
        &format!(
            r#"nameko_worker_duration_seconds_bucket{{le="0.5",{}}}"#,
            labels("slow")
        ),
        1.0,
    );
    let calls = |method: &str, outcome: &str| {
        format!(
            r#"nameko_rpc_client_calls_total{{service="ops_counted",method="{method}",outcome="{outcome}"}}"#
        )
    };
    expect(&calls("double", "ok"), 3.0);
    expect(&calls("refuse", "remote_error"), 1.0);
    expect(&calls("explode", "remote_error"), 1.0);
    expect(&calls("slow", "timeout"), 1.0);
    expect(
        r#"nameko_rpc_client_calls_total{service="ops_nowhere",method="double",outcome="unknown_service"}"#,
        1.0,
    );
    expect(
        r#"nameko_events_dispatched_total{source_service="ops_counted",event_type="doubled"}"#,
        3.0,
    );
    expect(
        r#"nameko_http_requests_total{method="GET",route="/ops/double/<int:x>",status="200"}"#,
        2.0,
    );
    expect(r#"nameko_workers_in_use{service="ops_counted"}"#, 0.0);
    expect(r#"nameko_max_workers{service="ops_counted"}"#, 7.0);

    assert_eq!(
        get(address, "/health/live").unwrap(),
        (200, r#"{"status":"live"}"#.to_owned())
    );
    assert_eq!(
        get(address, "/health/ready").unwrap(),
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    assert_eq!(running.health().readiness(), Readiness::Ready);
    let health = running.health().clone();
    running.stop_handle().stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while health.readiness() != Readiness::Stopping {
        assert!(Instant::now() < deadline, "{:?}", health.readiness());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await.unwrap();
}

/// Released by the test: the workers of `ops_held` wait for a permit each.
static RELEASE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[derive(Dependencies)]
pub struct Held;

#[service(name = "ops_held")]
impl Held {
    #[rpc]
    async fn wait(&self) -> u32 {
        RELEASE.acquire().await.expect("open").forget();
        1
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_held_counts_deliveries_until_they_are_settled() {
    let running = TestServices::new()
        .with_service::<Held>()
        .with_config(|config| config.max_workers = 1)
        .start()
        .await
        .expect("services start");
    let client = running.rpc_client().await.unwrap();
    let held = || {
        sample(
            &nameko::metrics::render(),
            r#"nameko_messages_held{service="ops_held",queue="rpc-ops_held"}"#,
        )
    };
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let proxy = client.service("ops_held");
            tokio::spawn(async move { proxy.call::<_, u32>("wait", ()).await })
        })
        .collect();
    // One worker in the only slot, two deliveries waiting for it: the embedded broker hands
    // the service each message as it is routed, so none stays in a client's buffer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held() != Some(3.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held(), Some(3.0));
    RELEASE.add_permits(3);
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 1);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while held() != Some(0.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held(), Some(0.0), "every delivery was settled");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_route_wins_over_the_operations_paths() {
    #[derive(Dependencies)]
    pub struct OwnHealth;

    #[service(name = "ops_own_health")]
    impl OwnHealth {
        #[http("GET", "/health/ready")]
        async fn ready(&self) -> String {
            "mine".into()
        }
    }

    let running = TestServices::new()
        .with_service::<OwnHealth>()
        .start()
        .await
        .expect("services start");
    let address = running.http_address().unwrap();
    assert_eq!(
        get(address, "/health/ready").unwrap(),
        (200, "mine".to_owned())
    );
    assert_eq!(get(address, "/health/live").unwrap().0, 200);
    running.stop().await.unwrap();
}

/// The example's `METRICS_ADDRESS` server, from its log.
fn metrics_address(log: &mut impl Iterator<Item = String>) -> std::net::SocketAddr {
    let mut seen = Vec::new();
    for line in log.by_ref() {
        if line.contains("serving /metrics")
            && let Some(address) = line
                .split("address=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
        {
            return address.parse().expect("an address");
        }
        seen.push(line);
    }
    panic!("no metrics address in the log:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_broker_connection() {
    let Some(broker) = TestBroker::amqp() else {
        return;
    };
    let mut child = std::process::Command::new(example("greeter"))
        .args(["run", "--broker", &broker.uri])
        .args(["--web-server-address", "127.0.0.1:0"])
        .args(["--define", "METRICS_ADDRESS=127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the greeter");
    let mut log = log_lines(child.stderr.take().expect("stderr"));
    let _greeter = Running(child);
    let address = metrics_address(&mut log);
    // Drain the log, so that the service never blocks on a full pipe.
    std::thread::spawn(move || log.for_each(drop));

    let ready = || get(address, "/health/ready").expect("the metrics server answers");
    let wait_for = |status: u16, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let reply = ready();
            if reply.0 == status {
                return reply;
            }
            assert!(Instant::now() < deadline, "still {reply:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    assert_eq!(
        wait_for(200, Duration::from_secs(30)),
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    assert_eq!(get(address, "/health/live").unwrap().0, 200);

    close_all_connections(&broker);
    assert_eq!(
        wait_for(503, Duration::from_secs(10)),
        (503, r#"{"status":"reconnecting"}"#.to_owned()),
        "not ready while reconnecting"
    );
    assert_eq!(
        get(address, "/health/live").unwrap().0,
        200,
        "alive all along"
    );
    wait_for(200, Duration::from_secs(30));

    let client = nameko::ClusterRpcClient::connect(&broker.uri)
        .await
        .unwrap();
    let greeting: String = client
        .service("greeter_service")
        .call("greet", ["Tim"])
        .await
        .unwrap();
    assert_eq!(greeting, "Hello Tim!");
    let (status, text) = get(address, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "nameko_broker_connections_lost_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "nameko_broker_reconnects_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"nameko_workers_finished_total{service="greeter_service",entrypoint="greet",outcome="success",error_type=""}"#
        ),
        Some(1.0),
        "{text}"
    );
}
