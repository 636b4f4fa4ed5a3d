//! The fault suite: each scenario injects one fault into a small cluster on a real RabbitMQ
//! while a client keeps calling, and reports what the client saw: calls sent, answered, failed
//! with a clear error, lost (no answer and no error before the call's timeout, or a wrong
//! answer; must be 0) and the time until a call sent after the fault was answered.
//!
//! Scenarios (service instances are separate processes: this binary run as `faults run ...`):
//! - `broker-restart`: the RabbitMQ app stops and starts again under two service instances;
//! - `kill-9`: one of three instances is killed with SIGKILL mid-load;
//! - `fuzz`: 10,000 malformed or fuzzed requests at an instance while it serves good calls;
//! - `nested-burst`: bursts of nested calls A → B → A, with `max_workers` 1 and 10;
//! - `queued`: 10,000 requests queued at one instance, whose memory prefetch keeps bounded;
//! - `large-headers`: calls with 60 KB of context data (answered) and 200 KB (refused before
//!   they are sent) among the load; the instance never loses its connection;
//! - `gateway-close`: the broker closes every connection under an HTTP gateway (which consumes
//!   nothing), the instance it calls and a timer-only instance that dispatches events, while
//!   clients keep sending HTTP requests: the gateway answers and the timer dispatches again;
//! - `memory-alarm`: RabbitMQ's memory alarm blocks publishers for 4 s under load;
//! - `stop-prefetched`: one of two instances (one worker, ten prefetched requests each) is
//!   stopped under load: its prefetched requests go to the other at once.
//!
//! Every scenario also counts duplicated executions: each instance logs the `n` of every load
//! call it runs, and an `n` run twice is a duplicate (at-least-once delivery allows them after
//! a crash; a scenario without one must have none).
//!
//! `tests/run.sh --test faults` runs it (figures in `RELIABILITY.md`). It needs the RabbitMQ
//! of `tests/run.sh`; `broker-restart` also needs `NAMEKO_TEST_RABBITMQCTL` (set by `tests/run.sh`
//! when it manages a local broker), as it restarts the whole broker. Scenarios run one at a
//! time; an argument runs only the scenarios whose names contain it.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestBroker;
use common::fuzz::Fuzz;
use common::load::{
    self, Failure, Instance, LOAD_BASE, Load, Outcome, Report, Scenario, duplicated_executions,
    logged, report,
};
use futures_util::StreamExt;
use nameko::prelude::*;
use nameko::{ClusterRpcClient, ServiceRunner};

/// The service the load goes to.
#[derive(Dependencies)]
pub struct FaultWorker;

#[service(name = "fault_worker")]
impl FaultWorker {
    /// Takes `millis` milliseconds to double `n`. A load call (`millis > 0`) is logged, to count
    /// duplicated executions.
    #[rpc]
    async fn work(&self, n: u64, millis: u64) -> u64 {
        if millis > 0 {
            tracing::info!("executed n={n}");
        }
        tokio::time::sleep(Duration::from_millis(millis)).await;
        n * 2
    }
}

/// Dispatches `tick` (the time, in milliseconds since the epoch) every 100 ms, and has no other
/// entrypoint: nothing it does would notice a lost connection by itself.
#[derive(Dependencies)]
pub struct FaultTicker {
    dispatch: EventDispatcher,
}

#[service(name = "fault_ticker")]
impl FaultTicker {
    #[timer(interval = "100ms")]
    async fn tick(&self) -> Result<(), DispatchError> {
        self.dispatch.dispatch("tick", &unix_millis()).await
    }
}

/// Now, in milliseconds since the epoch.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An HTTP gateway in front of `fault_worker`: it consumes nothing from the broker.
#[derive(Dependencies)]
pub struct FaultGateway {
    fault_worker: FaultWorkerClient,
}

#[service(name = "fault_gateway")]
impl FaultGateway {
    /// `fault_worker.work(n, 5)`, as text; 503 when it cannot be reached.
    #[http("GET", "/work/<int:n>")]
    async fn work(&self, n: u64) -> Result<String, nameko::http::HttpError> {
        self.fault_worker
            .work(n, 5)
            .await
            .map(|v| v.to_string())
            .map_err(|e| {
                nameko::http::HttpError::new(
                    nameko::http::StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                )
            })
    }
}

/// The outer end of a nested call: `outer` calls `nest_b.middle`, which calls `nest_a.inner`.
#[derive(Dependencies)]
pub struct NestA {
    nest_b: NestBClient,
}

#[service(name = "nest_a")]
impl NestA {
    #[rpc]
    async fn outer(&self, n: u64) -> Result<u64, RpcError> {
        self.nest_b.middle(n).await
    }

    #[rpc]
    async fn inner(&self, n: u64) -> u64 {
        n + 1
    }
}

/// The middle of a nested call.
#[derive(Dependencies)]
pub struct NestB {
    nest_a: NestAClient,
}

#[service(name = "nest_b")]
impl NestB {
    #[rpc]
    async fn middle(&self, n: u64) -> Result<u64, RpcError> {
        self.nest_a.inner(n).await
    }
}

impl Load {
    /// `fault_worker.work(n, millis)` over RPC.
    fn start(client: &ClusterRpcClient, tasks: usize, millis: u64) -> Load {
        let proxy = client.service("fault_worker");
        Self::start_with(tasks, move |n| {
            let proxy = proxy.clone();
            async move {
                match proxy.call::<_, u64>("work", (n, millis)).await {
                    Ok(v) if v == n * 2 => Ok(()),
                    Ok(v) => Err(Failure::Lost(format!("wrong answer {v} for {n}"))),
                    Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                    Err(e) => Err(Failure::Clear(e.to_string())),
                }
            }
        })
    }
}

async fn client(broker: &TestBroker, timeout: Duration) -> ClusterRpcClient {
    ClusterRpcClient::connect(&broker.uri)
        .await
        .expect("a client")
        .with_timeout(timeout)
}

/// Waits until `count` instances of `fault_worker` consume its queue.
async fn wait_for_instances(broker: &TestBroker, client: &ClusterRpcClient, count: usize) {
    common::wait_for_service(client, "fault_worker", "work", serde_json::json!([0, 0])).await;
    let queue = "rpc-fault_worker";
    for _ in 0..200 {
        if broker.inner().consumers(queue).unwrap_or(0) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} instances of fault_worker did not come up");
}

fn rabbitmqctl(args: &[&str]) {
    let ctl = std::env::var("NAMEKO_TEST_RABBITMQCTL").expect("NAMEKO_TEST_RABBITMQCTL");
    let status = Command::new(ctl)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// (a) The broker stops and starts again while a client calls two instances.
async fn broker_restart() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    if std::env::var_os("NAMEKO_TEST_RABBITMQCTL").is_none() {
        // tests/run.sh sets it when it runs the broker itself; a broker of someone else's is
        // not restarted. CI always runs its own.
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "NAMEKO_TEST_RABBITMQCTL is not set, and CI=true forbids skipping: run tests/run.sh"
            );
        }
        eprintln!(
            "SKIPPED broker-restart: NAMEKO_TEST_RABBITMQCTL is not set (a broker this run does not manage)"
        );
        return None;
    }
    let _instances = [
        Instance::start(&broker.uri, &["fault_worker"], "broker-restart-1"),
        Instance::start(&broker.uri, &["fault_worker"], "broker-restart-2"),
    ];
    let client = client(&broker, Duration::from_secs(30)).await;
    wait_for_instances(&broker, &client, 2).await;
    let load = Load::start(&client, 8, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = Instant::now();
    let (down, up) = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        let down = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
        (down, Instant::now())
    })
    .await
    .unwrap();
    assert!(
        wait_until_answered_since(&client, up).await,
        "no call was answered within 60 s of the broker's return"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Calls sent while the broker was down are answered once it is back: the time to recover
    // runs from the broker being up again to the first of them answered.
    let mut report = load
        .finish("broker restart (2 instances)", Some(down))
        .await;
    report.recovery = report.recovery.map(|r| r.saturating_sub(up - down));
    report.must_recover = true;
    report.duplicated = Some(duplicated_executions(&[
        "broker-restart-1",
        "broker-restart-2",
    ]));
    report.notes.push(format!(
        "the broker took {:.1} s to stop, was down {:.1} s",
        (down - stopping).as_secs_f64(),
        (up - down).as_secs_f64()
    ));
    // Later test binaries need the management API back.
    common::wait_for_management_api().await;
    Some(report)
}

/// Waits (up to 60 s) until a call sent after `since` is answered; says whether one was.
async fn wait_until_answered_since(client: &ClusterRpcClient, since: Instant) -> bool {
    let proxy = client
        .service("fault_worker")
        .with_timeout(Duration::from_secs(5));
    while since.elapsed() < Duration::from_secs(60) {
        if proxy.call::<_, u64>("work", (1, 0)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// (b) One of three instances is killed with SIGKILL under load.
async fn kill_9() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let mut instances = [
        Instance::start(&broker.uri, &["fault_worker"], "kill-9-1"),
        Instance::start(&broker.uri, &["fault_worker"], "kill-9-2"),
        Instance::start(&broker.uri, &["fault_worker"], "kill-9-3"),
    ];
    let client = client(&broker, Duration::from_secs(30)).await;
    wait_for_instances(&broker, &client, 3).await;
    // 24 callers and 20 ms per call: each instance always has requests in hand.
    let load = Load::start(&client, 24, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = Instant::now();
    instances[0].kill_9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut report = load.finish("kill -9 (1 of 3 instances)", Some(fault)).await;
    report.must_recover = true;
    report.duplicated = Some(duplicated_executions(&["kill-9-1", "kill-9-2", "kill-9-3"]));
    assert!(instances[1].running() && instances[2].running());
    report
        .notes
        .push("the other two instances answered the killed one's requests".into());
    Some(report)
}

/// (c) 10,000 fuzzed requests at an instance while it serves good calls.
async fn fuzz() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let mut instance = Instance::start(&broker.uri, &["fault_worker"], "fuzz");
    let client = client(&broker, Duration::from_secs(30)).await;
    wait_for_instances(&broker, &client, 1).await;
    let t = broker.connect().await;
    let (reply_key, mut replies) = common::reply_queue(&t).await;
    let replied = Arc::new(AtomicUsize::new(0));
    let (counter, bad) = (replied.clone(), Arc::new(AtomicUsize::new(0)));
    let bad_replies = bad.clone();
    let drain = tokio::spawn(async move {
        while let Some(Ok(reply)) = replies.next().await {
            let body: Result<serde_json::Value, _> = serde_json::from_slice(&reply.body);
            let nameko_reply =
                body.is_ok_and(|b| b.get("result").is_some() && b.get("error").is_some());
            if !nameko_reply {
                bad_replies.fetch_add(1, Ordering::SeqCst);
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = reply.ack().await;
        }
    });
    let load = Load::start(&client, 4, 1);
    let mut fuzz = Fuzz(0x2545_F491_4F6C_DD1D);
    let mut expected = 0;
    let publishing = Instant::now();
    for _ in 0..10_000 {
        let (message, replies) = fuzz.request("fault_worker", &["work"], &reply_key);
        expected += usize::from(replies);
        t.publish(message).await.expect("publish a fuzzed request");
    }
    let published_in = publishing.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replied.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut report = load.finish("10,000 fuzzed requests", None).await;
    report.duplicated = Some(duplicated_executions(&["fuzz"]));
    report.no_duplicates = true;
    drain.abort();
    let got = replied.load(Ordering::SeqCst);
    report.notes.push(format!(
        "fuzzed requests published in {:.1} s; {got} of the {expected} that named a reply queue \
         got a Nameko error reply ({} not); the instance is {}",
        published_in.as_secs_f64(),
        bad.load(Ordering::SeqCst),
        if instance.running() {
            "still running"
        } else {
            "GONE"
        },
    ));
    assert!(instance.running(), "the fuzzed instance exited");
    assert_eq!(
        got, expected,
        "every fuzzed request with a reply queue gets a reply"
    );
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "every reply is a Nameko reply"
    );
    Some(report)
}

/// (d) Bursts of nested calls A → B → A, with `max_workers` 1 (each outer call holds A's only
/// worker while its inner call waits for it: the inner call times out, and the outer call
/// fails with that error) and 10 (every call completes).
async fn nested_burst(max_workers: usize) -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let config = nameko::Config::default()
        .with_broker(&broker.uri)
        .with_max_workers(max_workers)
        .with_rpc_timeout(Duration::from_secs(1));
    let running = ServiceRunner::new(config)
        .with_service::<NestA>()
        .with_service::<NestB>()
        .start()
        .await
        .expect("nest_a and nest_b start");
    let client = client(&broker, Duration::from_secs(60)).await;
    let proxy = client.service("nest_a");
    let started = Instant::now();
    let calls: Vec<_> = (0..8u64)
        .map(|n| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match proxy.call::<_, u64>("outer", (n,)).await {
                    Ok(v) if v == n + 1 => Ok(()),
                    Ok(v) => Err(Failure::Lost(format!("wrong answer {v} for {n}"))),
                    Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                    Err(e) => Err(Failure::Clear(e.to_string())),
                };
                Outcome {
                    started,
                    ended: Instant::now(),
                    result,
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let burst = started.elapsed();
    // No lasting deadlock: the service answers at once afterwards.
    let after: u64 = proxy
        .with_timeout(Duration::from_secs(5))
        .call("inner", (41,))
        .await
        .expect("nest_a answers after the burst");
    assert_eq!(after, 42);
    running.stop().await.expect("a clean stop");
    let mut report = report(
        &format!("nested burst A → B → A, max_workers={max_workers}"),
        &outcomes,
        None,
    );
    report.notes.push(format!(
        "8 concurrent calls, inner timeout 1 s; burst over in {:.1} s; A answers at once after",
        burst.as_secs_f64()
    ));
    Some(report)
}

/// 10,000 requests queued at one instance: prefetch keeps its memory bounded.
async fn queued() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let instance = Instance::start(&broker.uri, &["fault_worker"], "queued");
    let client = client(&broker, Duration::from_secs(120)).await;
    wait_for_instances(&broker, &client, 1).await;
    let proxy = client.service("fault_worker");
    // A warm-up of 100 calls at once, so that the baseline is a working instance's memory (its
    // threads' allocator arenas in use), not a freshly started one's.
    let warm_up: Vec<_> = (1_000_000..1_000_100u64)
        .map(|n| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.call::<_, u64>("work", (n, 1)).await })
        })
        .collect();
    for call in warm_up {
        call.await.unwrap().expect("a warm-up call");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = instance.rss_kib();
    let started = Instant::now();
    // A JoinSet: if the scenario runs out of time, its calls are aborted with it.
    let mut calls = tokio::task::JoinSet::new();
    for n in LOAD_BASE..LOAD_BASE + 10_000 {
        let proxy = proxy.clone();
        calls.spawn(async move {
            let started = Instant::now();
            let result = match proxy.call::<_, u64>("work", (n, 1)).await {
                Ok(v) if v == n * 2 => Ok(()),
                Ok(v) => Err(Failure::Lost(format!("wrong answer {v} for {n}"))),
                Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                Err(e) => Err(Failure::Clear(e.to_string())),
            };
            Outcome {
                started,
                ended: Instant::now(),
                result,
            }
        });
    }
    let mut peak = idle;
    let mut outcomes = Vec::new();
    let mut sampled = Instant::now();
    while let Some(outcome) = calls.join_next().await {
        outcomes.push(outcome.expect("a call task"));
        if sampled.elapsed() >= Duration::from_millis(20) {
            peak = peak.max(instance.rss_kib());
            sampled = Instant::now();
        }
    }
    let mut report = report("10,000 requests queued at 1 instance", &outcomes, None);
    report.duplicated = Some(duplicated_executions(&["queued"]));
    report.no_duplicates = true;
    report.notes.push(format!(
        "all in {:.1} s; instance memory {:.1} MB after a warm-up, {:.1} MB at most while they queued",
        started.elapsed().as_secs_f64(),
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    ));
    // Prefetch (10) bounds what the instance holds: its memory must not grow with the queue.
    assert!(
        peak < idle + 16 * 1024,
        "memory grew from {idle} KiB to {peak} KiB with 10,000 requests queued"
    );
    Some(report)
}

/// Calls with large context data among the load: 60 KB (more than a 32 KiB frame, less than
/// Nameko's 128 KiB) answered, 200 KB (more than any frame) refused before it is sent.
async fn large_headers() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let _instance = Instance::start(&broker.uri, &["fault_worker"], "large-headers");
    let client = client(&broker, Duration::from_secs(30)).await;
    wait_for_instances(&broker, &client, 1).await;
    let load = Load::start(&client, 8, 5);
    let token = |bytes: usize| {
        std::collections::BTreeMap::from([(
            "auth_token".to_owned(),
            serde_json::json!("x".repeat(bytes)),
        )])
    };
    let (big, huge) = (
        client
            .with_context_data(token(60_000))
            .service("fault_worker"),
        client
            .with_context_data(token(200_000))
            .service("fault_worker"),
    );
    let (mut answered, mut refused) = (0, 0);
    let started = Instant::now();
    for n in 0..200u64 {
        match big.call::<_, u64>("work", (n, 0)).await {
            Ok(v) if v == n * 2 => answered += 1,
            other => panic!("a call with 60 KB of context data: {other:?}"),
        }
        match huge.call::<_, u64>("work", (n, 0)).await {
            Err(RpcError::Transport(nameko::transport::TransportError::HeadersTooLarge {
                ..
            })) => refused += 1,
            other => panic!("a call with 200 KB of context data: {other:?}"),
        }
    }
    let mut report = load
        .finish("large headers (60 KB and 200 KB of context data)", None)
        .await;
    report.duplicated = Some(duplicated_executions(&["large-headers"]));
    report.no_duplicates = true;
    let reconnected = logged("large-headers", "reconnect");
    report.notes.push(format!(
        "{answered} calls with 60 KB answered, {refused} with 200 KB refused before sending (HeadersTooLarge), in {:.1} s; the instance {}",
        started.elapsed().as_secs_f64(),
        if reconnected { "RECONNECTED" } else { "never lost its connection" }
    ));
    assert!(!reconnected, "the instance lost its connection");
    Some(report)
}

/// One HTTP request over a connection of its own: the status and body, or why there is none.
async fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer in 30 s".to_owned())?
}

/// The broker closes every connection of an HTTP gateway and the instance it calls, under load.
async fn gateway_close() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let address = format!("127.0.0.1:{port}");
    // Where the ticker's events go: a queue of the test's, bound before the ticker starts.
    let ticks_queue = "fault-ticks";
    let watcher = broker.connect().await;
    watcher
        .declare_exchange(&nameko::transport::ExchangeSpec::durable_topic(
            "fault_ticker.events",
        ))
        .await
        .expect("the ticker's exchange");
    watcher
        .declare_queue(&nameko::transport::QueueSpec::durable(ticks_queue))
        .await
        .expect("a queue for the ticks");
    watcher
        .bind_queue(ticks_queue, "fault_ticker.events", "tick")
        .await
        .expect("bind the ticks");
    let _instances = [
        Instance::start(&broker.uri, &["fault_worker"], "gateway-close-worker"),
        Instance::start_with(
            &broker.uri,
            &["fault_gateway"],
            &["--web-server-address", &address],
            "gateway-close-gateway",
        ),
        Instance::start(&broker.uri, &["fault_ticker"], "gateway-close-ticker"),
    ];
    let client = client(&broker, Duration::from_secs(30)).await;
    wait_for_instances(&broker, &client, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&address, "/work/1").await != Ok((200, "2".into())) {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start_with(8, move |n| {
        let address = address.clone();
        async move {
            match http_get(&address, &format!("/work/{n}")).await {
                Ok((200, body)) if body == (n * 2).to_string() => Ok(()),
                Ok((200, body)) => Err(Failure::Lost(format!("wrong answer {body} for {n}"))),
                Ok((status, body)) => Err(Failure::Clear(format!("{status} {}", body.trim()))),
                Err(e) if e.starts_with("no answer") => Err(Failure::Lost(e)),
                Err(e) => Err(Failure::Clear(e)),
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = Instant::now();
    let vhost = broker.inner().vhost().expect("a virtual host").to_owned();
    tokio::task::spawn_blocking(move || {
        rabbitmqctl(&["close_all_connections", "-p", &vhost, "fault suite"])
    })
    .await
    .unwrap();
    let closed_at = unix_millis();
    // The watcher's connection was closed too: a new one, on the same queue, until a tick
    // dispatched after the close arrives.
    let watcher = broker.connect().await;
    let mut ticks = watcher
        .consume(ticks_queue, 0)
        .await
        .expect("consume the ticks");
    let ticked_again = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(tick)) = ticks.next().await {
            let at: u64 = serde_json::from_slice(&tick.body).unwrap_or(0);
            let _ = tick.ack().await;
            if at > closed_at {
                return Some(at - closed_at);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut report = load
        .finish(
            "broker closes every connection under an HTTP gateway",
            Some(fault),
        )
        .await;
    report.must_recover = true;
    report.duplicated = Some(duplicated_executions(&["gateway-close-worker"]));
    report.notes.push(format!(
        "HTTP requests, each on a connection of its own; the gateway, the worker and a timer-only instance reconnect: {}",
        match ticked_again {
            Some(ms) => format!("the timer dispatched again {:.2} s after the close", ms as f64 / 1000.0),
            None => "the timer did NOT dispatch again within 10 s".to_owned(),
        }
    ));
    assert!(
        ticked_again.is_some(),
        "the timer-only instance did not dispatch again"
    );
    Some(report)
}

/// Lifts RabbitMQ's memory alarm when dropped.
struct MemoryAlarm;

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

/// RabbitMQ's memory alarm blocks publishers for 4 s under load.
async fn memory_alarm() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    if std::env::var_os("NAMEKO_TEST_RABBITMQCTL").is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "NAMEKO_TEST_RABBITMQCTL is not set, and CI=true forbids skipping: run tests/run.sh"
            );
        }
        eprintln!("SKIPPED memory-alarm: NAMEKO_TEST_RABBITMQCTL is not set");
        return None;
    }
    let _instance = Instance::start(&broker.uri, &["fault_worker"], "memory-alarm");
    let mut config = nameko::Config::default().with_broker(&broker.uri);
    config.publish_timeout = Duration::from_secs(2);
    let client = ClusterRpcClient::connect_with(&config)
        .await
        .expect("a client")
        .with_timeout(Duration::from_secs(30));
    wait_for_instances(&broker, &client, 1).await;
    let load = Load::start(&client, 8, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raised = Instant::now();
    let alarm = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        MemoryAlarm
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::spawn_blocking(move || drop(alarm))
        .await
        .unwrap();
    let lifted = Instant::now();
    assert!(
        wait_until_answered_since(&client, lifted).await,
        "no call was answered within 60 s of the alarm's end"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut report = load
        .finish("memory alarm for 4 s (publishers blocked)", Some(lifted))
        .await;
    report.must_recover = true;
    report.duplicated = Some(duplicated_executions(&["memory-alarm"]));
    report.notes.push(format!(
        "alarm raised for {:.1} s; consumers and acknowledgements went on, replies waited for their confirms (the callers' PUBLISH_CONFIRM_TIMEOUT is 2 s, the instance's 10 s)",
        (lifted - raised).as_secs_f64()
    ));
    Some(report)
}

/// One of two instances (one worker, ten prefetched requests each) stops under load.
async fn stop_prefetched() -> Option<Report> {
    let broker = TestBroker::amqp()?;
    let options = ["--define", "max_workers=1", "--define", "PREFETCH_COUNT=10"];
    let mut a = Instance::start_with(
        &broker.uri,
        &["fault_worker"],
        &options,
        "stop-prefetched-a",
    );
    let _b = Instance::start_with(
        &broker.uri,
        &["fault_worker"],
        &options,
        "stop-prefetched-b",
    );
    let client = client(&broker, Duration::from_secs(60)).await;
    wait_for_instances(&broker, &client, 2).await;
    // 12 callers of 300 ms calls: each instance runs one and holds the others prefetched.
    let load = Load::start(&client, 12, 300);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fault = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        let status = a.terminate();
        (status, Instant::now())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut report = load
        .finish(
            "stop 1 of 2 instances holding prefetched requests",
            Some(fault),
        )
        .await;
    report.must_recover = true;
    report.duplicated = Some(duplicated_executions(&[
        "stop-prefetched-a",
        "stop-prefetched-b",
    ]));
    report.no_duplicates = true;
    report.notes.push(format!(
        "the stopping instance exited {} in {:.1} s; {}",
        if stopped.0.success() {
            "cleanly"
        } else {
            "WITH AN ERROR"
        },
        (stopped.1 - fault).as_secs_f64(),
        if logged("stop-prefetched-a", "returned prefetched messages") {
            "it returned its prefetched requests at once"
        } else {
            "it had no prefetched request to return"
        }
    ));
    assert!(stopped.0.success());
    Some(report)
}

fn main() -> std::process::ExitCode {
    if load::is_instance() {
        // A service instance: `faults run --broker URI SERVICE...`.
        return nameko::main();
    }
    let scenarios: [(&str, Scenario); 10] = [
        ("broker-restart", || Box::pin(broker_restart())),
        ("kill-9", || Box::pin(kill_9())),
        ("fuzz", || Box::pin(fuzz())),
        ("nested-burst-1", || Box::pin(nested_burst(1))),
        ("nested-burst-10", || Box::pin(nested_burst(10))),
        ("queued", || Box::pin(queued())),
        ("large-headers", || Box::pin(large_headers())),
        ("gateway-close", || Box::pin(gateway_close())),
        ("memory-alarm", || Box::pin(memory_alarm())),
        ("stop-prefetched", || Box::pin(stop_prefetched())),
    ];
    load::run_scenarios(&scenarios, Duration::from_secs(240))
}
