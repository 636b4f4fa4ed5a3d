//! RPC calls per second and latency: a nameko-rs `#[rpc]` method against a raw lapin
//! request/reply server doing the same work (the floor) and, when its environment is there,
//! Python Nameko 2.14.1; each server process's CPU time per call against the raw lapin
//! server's; the same method on the embedded broker against an in-process floor (the same task
//! hops over tokio channels, `common/floor.rs`); a service process's idle memory and time from
//! start to ready. One client for every RabbitMQ server: nameko-rs's `ClusterRpcClient`.
//!
//! ```text
//! cargo bench --bench rpc -- [--broker amqp://guest:guest@localhost:5672]
//!     [--rabbit-api http://guest:guest@localhost:15672] [--python target/interop-venv/bin/python]
//!     [--sequential 2000] [--concurrent 10000] [--in-flight 50] [--rounds 3]
//! ```
//!
//! Each run gets a RabbitMQ virtual host of its own (through the management API) and deletes it.
//! Every server echoes its one argument back, with the same guarantees: persistent messages,
//! replies published with publisher confirms, each request acknowledged after its reply is
//! confirmed, prefetch 10.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/floor.rs"]
mod floor;
#[path = "common/traces.rs"]
mod traces;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use nameko::prelude::*;
use nameko::testing::TestBroker;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Clone)]
struct Args {
    /// The RabbitMQ to measure on.
    #[arg(
        long,
        env = "NAMEKO_BENCH_AMQP_URI",
        default_value = "amqp://guest:guest@localhost:5672"
    )]
    broker: String,
    /// Its management API (a virtual host is made for the run).
    #[arg(
        long,
        env = "NAMEKO_BENCH_RABBIT_API",
        default_value = "http://guest:guest@localhost:15672"
    )]
    rabbit_api: String,
    /// A Python with nameko 2.14.1 (`tests/run.sh` makes `target/interop-venv`); without it,
    /// Python Nameko is left out.
    #[arg(long, env = "NAMEKO_TEST_PYTHON")]
    python: Option<String>,
    /// Sequential calls per round.
    #[arg(long, default_value_t = 2000)]
    sequential: usize,
    /// Calls per round with `in_flight` at once.
    #[arg(long, default_value_t = 10_000)]
    concurrent: usize,
    /// Calls in flight at once from the one client.
    #[arg(long, default_value_t = 50)]
    in_flight: usize,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure the embedded broker only (no RabbitMQ needed; for profiling it).
    #[arg(long)]
    embedded_only: bool,
    /// Only nameko-rs's client against the raw lapin server (for profiling the client).
    #[arg(long)]
    client_only: bool,
    /// Only the service processes' CPU time per call on RabbitMQ, nameko-rs's against the raw
    /// lapin server's (for profiling the service).
    #[arg(long)]
    cpu_only: bool,
    /// With `--embedded-only`: on tokio's current-thread runtime (a one-thread monolith).
    #[arg(long)]
    current_thread: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Child mode: run the service on this broker, print `READY`, wait to be killed.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// Child mode: run the raw lapin server on this broker, print `READY`, wait to be killed.
    #[arg(long, hide = true)]
    serve_raw: Option<String>,
    /// Child mode: the raw lapin server built as nameko-rs's transport is ([`RawDesign::Matched`]).
    #[arg(long, hide = true)]
    serve_raw_matched: Option<String>,
}

/// The service measured: echoes its argument.
#[derive(Dependencies)]
pub struct RpcBench;

#[service(name = "rpc_bench")]
impl RpcBench {
    #[rpc]
    async fn echo(&self, value: Value) -> Value {
        value
    }
}

const PREFETCH: u16 = 10;

/// How a raw lapin server is built.
#[derive(Clone, Copy, PartialEq)]
enum RawDesign {
    /// The floor, as lapin's documentation shows it (`raw_bench`): replies on a second channel
    /// of the consuming connection, each acknowledgement through the delivery's `Acker`,
    /// awaited.
    Plain,
    /// As nameko-rs's transport does it (`raw_bench_matched`): replies on a connection of their
    /// own, acknowledgements handed to the consuming channel and not awaited. What is left
    /// between nameko-rs and this one is the framework.
    Matched,
}

impl RawDesign {
    fn service(self) -> &'static str {
        match self {
            RawDesign::Plain => "raw_bench",
            RawDesign::Matched => "raw_bench_matched",
        }
    }
}

/// The floor: a raw lapin server speaking Nameko's protocol for `raw_bench.echo`. One consumer
/// with prefetch 10; each request is handled in a task of its own: parse the JSON envelope,
/// publish `{"result": args[0], "error": null}` to `reply_to` (persistent, confirmed), then ack.
/// `publishing` is the connection replies go out on (`connection` itself for the floor).
async fn raw_server(
    connection: Arc<Connection>,
    publishing: Arc<Connection>,
    design: RawDesign,
) -> anyhow::Result<()> {
    let name = design.service();
    let queue = format!("rpc-{name}");
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            "nameko-rpc".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            "nameko-rpc".into(),
            format!("{name}.*").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let publisher = publishing.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The matched server acknowledges on the channel itself.
    let channel = Arc::new(channel);
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let publisher = publisher.clone();
            let channel = (design == RawDesign::Matched).then(|| channel.clone());
            tokio::spawn(async move {
                let request: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
                let reply = json!({"result": request["args"][0], "error": null});
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_content_encoding("utf-8".into())
                    .with_delivery_mode(2)
                    .with_priority(0)
                    .with_correlation_id(
                        delivery
                            .properties
                            .correlation_id()
                            .clone()
                            .unwrap_or_default(),
                    );
                let reply_to = delivery
                    .properties
                    .reply_to()
                    .as_ref()
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default();
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                let confirmed = async {
                    publisher
                        .basic_publish(
                            "nameko-rpc".into(),
                            reply_to.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            properties,
                        )
                        .await?
                        .await
                };
                if confirmed.await.is_ok() {
                    match channel {
                        None => {
                            let _ = delivery.ack(BasicAckOptions::default()).await;
                        }
                        Some(channel) => {
                            // Queued on the channel at the first poll.
                            let _ = channel
                                .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                                .now_or_never();
                        }
                    }
                }
            });
        }
    });
    Ok(())
}

/// A raw lapin client for `raw_bench.echo`: one channel publishing with confirms (as Nameko's
/// client does), one reply queue declared as Nameko declares its own (durable, `x-expires`),
/// whose replies are acknowledged (as Nameko's reply listener does), replies matched by
/// correlation id; `calls` calls with `in_flight` at once. Returns calls per second.
async fn raw_client(uri: &str, calls: usize, in_flight: usize) -> anyhow::Result<f64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::sync::oneshot;
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let reply_queue = format!("rpc.reply-raw-client-{}", uuid::Uuid::new_v4().simple());
    // Declared as Nameko declares its reply queues: durable, expiring after 5 minutes unused.
    let mut expires = FieldTable::default();
    expires.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongInt(300_000),
    );
    channel
        .queue_declare(
            reply_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            expires,
        )
        .await?;
    channel
        .queue_bind(
            reply_queue.as_str().into(),
            "nameko-rpc".into(),
            reply_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
    let mut consumer = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "raw-client".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let replies = pending.clone();
    let listener = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default();
            let waiter = replies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            let lapin::message::Delivery { data, acker, .. } = delivery;
            if let Some(waiter) = waiter {
                let _ = waiter.send(data);
            }
            // Nameko's reply listener acknowledges every reply, as nameko-rs's client does
            // (off the reply path, on a task of its own).
            tokio::spawn(async move { acker.ack(BasicAckOptions::default()).await });
        }
    });
    let body = serde_json::to_vec(&json!({"args": [payload()], "kwargs": {}}))?;
    let call = |channel: lapin::Channel, body: Vec<u8>| {
        let (pending, reply_queue) = (pending.clone(), reply_queue.clone());
        async move {
            let id = uuid::Uuid::new_v4().to_string();
            let (tx, rx) = oneshot::channel();
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), tx);
            // The header every Nameko caller sends: its call id stack.
            let mut headers = FieldTable::default();
            headers.insert(
                "nameko.call_id_stack".into(),
                lapin::types::AMQPValue::FieldArray(
                    vec![lapin::types::AMQPValue::LongString(
                        format!("standalone_rpc_proxy.call.{id}").into(),
                    )]
                    .into(),
                ),
            );
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(2)
                .with_priority(0)
                .with_correlation_id(id.as_str().into())
                .with_reply_to(reply_queue.as_str().into())
                .with_headers(headers);
            channel
                .basic_publish(
                    "nameko-rpc".into(),
                    "raw_bench.echo".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?
                .await?;
            let reply = rx.await?;
            let reply: Value = serde_json::from_slice(&reply)?;
            anyhow::ensure!(reply["result"] == payload(), "wrong answer: {reply}");
            anyhow::Ok(())
        }
    };
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..calls)
        .map(|_| call(channel.clone(), body.clone()))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e);
    }
    listener.abort();
    connection.close(200, "OK".into()).await?;
    Ok(rate)
}

/// What one server measured.
#[derive(Default, Clone, Copy)]
struct Figures {
    /// Allocations per call (measured on the embedded broker only).
    allocations: f64,
    sequential: f64,
    p50_ms: f64,
    p99_ms: f64,
    concurrent: f64,
    /// Against the other server of a pair (`measure_pair`), the median over the rounds of this
    /// one's rate over the other's in the same round: sequential, and in flight. Rounds run
    /// back to back, so each ratio is of two runs under the same load of the machine.
    paired: Option<(f64, f64)>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One round's figures.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    concurrent: Vec<f64>,
}

impl Rounds {
    fn figures(self) -> Figures {
        Figures {
            allocations: 0.0,
            sequential: median(self.rates),
            p50_ms: median(self.p50s),
            p99_ms: median(self.p99s),
            concurrent: median(self.concurrent),
            paired: None,
        }
    }
}

/// The median over the rounds of `a`'s rates over `b`'s, sequential and in flight.
fn paired(a: &Rounds, b: &Rounds) -> (f64, f64) {
    let ratios = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(a, b)| a / b).collect());
    (
        ratios(&a.rates, &b.rates),
        ratios(&a.concurrent, &b.concurrent),
    )
}

/// What a round calls: nameko-rs's client (a service's proxy) or the in-process floor.
trait Echo: Sync {
    fn echo(&self, payload: &Value) -> impl Future<Output = anyhow::Result<Value>> + Send;
}

impl Echo for ServiceProxy {
    async fn echo(&self, payload: &Value) -> anyhow::Result<Value> {
        Ok(self.call("echo", [payload]).await?)
    }
}

impl Echo for floor::Floor {
    async fn echo(&self, payload: &Value) -> anyhow::Result<Value> {
        floor::Floor::echo(self, payload).await
    }
}

fn payload() -> Value {
    json!({"n": 1, "text": "hello"})
}

async fn warm_up(proxy: &impl Echo) -> anyhow::Result<()> {
    let payload = payload();
    for _ in 0..50 {
        proxy.echo(&payload).await?;
    }
    Ok(())
}

/// One round: sequential calls (rate and latency percentiles), then calls with `in_flight` at
/// once.
async fn round(
    proxy: &impl Echo,
    in_flight: usize,
    sequential: usize,
    concurrent: usize,
    into: &mut Rounds,
) -> anyhow::Result<()> {
    let payload = payload();
    let mut latencies = Vec::with_capacity(sequential);
    let start = Instant::now();
    for _ in 0..sequential {
        let t = Instant::now();
        let echoed = proxy.echo(&payload).await?;
        latencies.push(t.elapsed());
        anyhow::ensure!(echoed == payload, "wrong answer: {echoed}");
    }
    into.rates
        .push(sequential as f64 / start.elapsed().as_secs_f64());
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    into.p50s.push(at(0.50).as_secs_f64() * 1e3);
    into.p99s.push(at(0.99).as_secs_f64() * 1e3);

    let start = Instant::now();
    let answers: Vec<anyhow::Result<Value>> = futures_util::stream::iter(0..concurrent)
        .map(|_| proxy.echo(&payload))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let failed = answers.iter().filter(|a| a.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} calls failed");
    into.concurrent
        .push(concurrent as f64 / elapsed.as_secs_f64());
    Ok(())
}

/// `rounds` rounds against one server.
async fn measure(
    proxy: &impl Echo,
    args: &Args,
    sequential: usize,
    concurrent: usize,
) -> anyhow::Result<Figures> {
    warm_up(proxy).await?;
    let mut rounds = Rounds::default();
    for _ in 0..args.rounds {
        round(proxy, args.in_flight, sequential, concurrent, &mut rounds).await?;
    }
    Ok(rounds.figures())
}

/// Rounds against two servers, alternating which goes first (the broker's state drifts).
async fn measure_pair(
    a: &impl Echo,
    b: &impl Echo,
    args: &Args,
    sequential: usize,
    concurrent: usize,
) -> anyhow::Result<(Figures, Figures)> {
    warm_up(a).await?;
    warm_up(b).await?;
    let (mut ra, mut rb) = (Rounds::default(), Rounds::default());
    for i in 0..args.rounds {
        let (s, c, n) = (sequential, concurrent, args.in_flight);
        if i % 2 == 0 {
            round(a, n, s, c, &mut ra).await?;
            round(b, n, s, c, &mut rb).await?;
        } else {
            round(b, n, s, c, &mut rb).await?;
            round(a, n, s, c, &mut ra).await?;
        }
    }
    let (ab, ba) = (paired(&ra, &rb), paired(&rb, &ra));
    let (mut fa, mut fb) = (ra.figures(), rb.figures());
    (fa.paired, fb.paired) = (Some(ab), Some(ba));
    Ok((fa, fb))
}

/// CPU time and context switches per call of this process's threads, by thread name, over
/// `calls` sequential calls.
async fn threads_per_call(proxy: &impl Echo, calls: usize) -> anyhow::Result<String> {
    let (payload, pid) = (payload(), std::process::id());
    let before = threads(pid);
    for _ in 0..calls {
        proxy.echo(&payload).await?;
    }
    let mut spent = ThreadsSpent::default();
    spent.add(&before, &threads(pid), calls);
    Ok(spent.per_call())
}

/// Allocations per call on the embedded broker, client, broker and service together, over
/// 10,000 sequential calls.
async fn allocations_per_call(proxy: &ServiceProxy) -> anyhow::Result<f64> {
    let payload = payload();
    let n = 10_000;
    let started = counting_alloc::start();
    for _ in 0..n {
        let _: Value = proxy.call("echo", [&payload]).await?;
    }
    let counted = counting_alloc::stop(started);
    Ok(counted as f64 / n as f64)
}

/// The embedded broker: service and client in one process; and the in-process floor, measured
/// in the same rounds, alternating.
async fn embedded(args: &Args) -> anyhow::Result<(Figures, Figures)> {
    let uri = format!("memory://bench-{}", uuid::Uuid::new_v4().simple());
    let running = ServiceRunner::new(Config::default().with_broker(&uri))
        .with_service::<RpcBench>()
        .start()
        .await?;
    let client = ClusterRpcClient::connect(&uri).await?;
    // The caller is a task of the runtime, as in a service or an HTTP handler calling another
    // service in the same process (not the thread blocked in `block_on`).
    let (proxy, measured) = (client.service("rpc_bench"), args.clone());
    let (mut figures, floor) = tokio::spawn(async move {
        // Many short rounds, each right after the other side's: the ratio is the median of
        // the rounds', and a burst of load elsewhere on the machine moves few of them.
        let (sequential, concurrent) = (measured.sequential * 2, measured.concurrent * 2);
        let mut measured = measured;
        measured.rounds *= 5;
        let floor = floor::Floor::start();
        let figures = measure_pair(&proxy, &floor, &measured, sequential, concurrent).await?;
        // Where sequential calls go across the runtime's threads: a call that wakes a parked
        // worker pays for it in context switches.
        eprintln!(
            "embedded, per sequential call: {}",
            threads_per_call(&proxy, sequential).await?
        );
        eprintln!(
            "floor, per sequential call: {}",
            threads_per_call(&floor, sequential).await?
        );
        anyhow::Ok(figures)
    })
    .await??;
    figures.allocations = allocations_per_call(&client.service("rpc_bench")).await?;
    eprintln!(
        "embedded: {:.0} sequential, {:.0} in flight; floor: {:.0} sequential, {:.0} in flight",
        figures.sequential, figures.concurrent, floor.sequential, floor.concurrent
    );
    running.stop().await?;
    Ok((figures, floor))
}

fn runtime_name(args: &Args) -> &'static str {
    if args.current_thread {
        "current-thread runtime"
    } else {
        "multi-threaded runtime"
    }
}

/// The embedded-broker figures of this benchmark run again as a child process
/// (`--embedded-only`), on the current-thread runtime or not, with `allocator` (`system` or
/// `mimalloc`).
async fn embedded_child(
    args: &Args,
    current_thread: bool,
    allocator: &str,
) -> anyhow::Result<(Figures, Figures)> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .arg("--embedded-only")
        .args(["--sequential", &args.sequential.to_string()])
        .args(["--concurrent", &args.concurrent.to_string()])
        .args(["--in-flight", &args.in_flight.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .env("NAMEKO_BENCH_ALLOCATOR", allocator)
        .stderr(Stdio::inherit());
    if current_thread {
        command.arg("--current-thread");
    }
    let output = command.output().await?;
    anyhow::ensure!(
        output.status.success(),
        "the embedded-broker run ({allocator}) failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figures = stdout
        .lines()
        .find_map(|line| line.strip_prefix("FIGURES "))
        .ok_or_else(|| anyhow::anyhow!("no figures from the embedded-broker run:\n{stdout}"))?;
    let numbers: Vec<f64> = figures
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [
        paired_sequential,
        paired_concurrent,
        sequential,
        p50_ms,
        p99_ms,
        concurrent,
        allocations,
        floor_sequential,
        floor_p50_ms,
        floor_p99_ms,
        floor_concurrent,
    ] = numbers[..]
    else {
        anyhow::bail!("unexpected figures: {figures}");
    };
    Ok((
        Figures {
            allocations,
            sequential,
            p50_ms,
            p99_ms,
            concurrent,
            paired: Some((paired_sequential, paired_concurrent)),
        },
        Figures {
            allocations: 0.0,
            sequential: floor_sequential,
            p50_ms: floor_p50_ms,
            p99_ms: floor_p99_ms,
            concurrent: floor_concurrent,
            paired: None,
        },
    ))
}

/// The child mode: one service process, as `nameko::main` would run it.
async fn serve(uri: &str) -> anyhow::Result<()> {
    let running = ServiceRunner::new(Config::default().with_broker(uri))
        .with_service::<RpcBench>()
        .start()
        .await?;
    println!("READY");
    running.run_until_signal().await?;
    Ok(())
}

/// Resident memory of a process, in MB: all of it (`VmRSS`), and its own (`RssAnon`: heap and
/// stacks, without the pages of its executable and libraries, which the page cache shares).
#[derive(Clone, Copy)]
struct Rss {
    total: f64,
    anonymous: f64,
}

fn rss_mb(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anonymous: field("RssAnon:")?,
    })
}

const NO_RSS: Rss = Rss {
    total: f64::NAN,
    anonymous: f64::NAN,
};

/// Starts this binary as a server process on `uri` (`mode`: `--serve`, nameko-rs's service,
/// or `--serve-raw`, the raw lapin server), ready to answer.
async fn server_process(mode: &str, uri: &str) -> anyhow::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([mode, uri])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "READY" => break,
            Ok(Ok(Some(_))) => continue,
            other => anyhow::bail!("the server process did not get ready: {other:?}"),
        }
    }
    Ok(child)
}

/// Starts this binary as a service process on `uri`: time until it is ready, and its resident
/// memory after a second of idling.
async fn service_process(uri: &str) -> anyhow::Result<(Duration, Rss)> {
    let start = Instant::now();
    let mut child = server_process("--serve", uri).await?;
    let ready = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = child.id().and_then(rss_mb).unwrap_or(NO_RSS);
    child.kill().await?;
    Ok((ready, rss))
}

/// The CPU time (user and system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name (in parentheses): the state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    ticks_per_second().map(|per_second| ticks / per_second)
}

/// The unit of the CPU times in `/proc/<pid>/stat`.
fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then_some(per_second as f64)
}

/// A process's CPU time (user and system, in seconds) and context switches (voluntary and not)
/// so far, by thread name (tokio's workers, lapin's I/O threads, ...): where a server's time
/// goes.
fn threads(pid: u32) -> std::collections::BTreeMap<String, (f64, u64)> {
    let mut by_name = std::collections::BTreeMap::<String, (f64, u64)>::new();
    let (Some(per_second), Ok(tasks)) = (
        ticks_per_second(),
        std::fs::read_dir(format!("/proc/{pid}/task")),
    ) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(path.join("stat")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(')')) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        // Numbered threads of one pool (`tokio-runtime-w`, ...) under one name.
        let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let entry = by_name.entry(name.to_owned()).or_default();
        entry.0 += ticks / per_second;
        entry.1 += switches;
    }
    by_name
}

/// Where a run of sequential calls went, added up over the rounds: CPU time and context
/// switches by thread name.
#[derive(Default)]
struct ThreadsSpent {
    calls: usize,
    by_name: std::collections::BTreeMap<String, (f64, u64)>,
}

impl ThreadsSpent {
    fn add(
        &mut self,
        before: &std::collections::BTreeMap<String, (f64, u64)>,
        after: &std::collections::BTreeMap<String, (f64, u64)>,
        calls: usize,
    ) {
        self.calls += calls;
        for (name, (cpu, switches)) in after {
            let (cpu0, switches0) = before.get(name).copied().unwrap_or_default();
            let spent = self.by_name.entry(name.clone()).or_default();
            spent.0 += cpu - cpu0;
            spent.1 += switches.saturating_sub(switches0);
        }
    }

    /// Per call, for each thread name that did anything: "name: µs, switches".
    fn per_call(&self) -> String {
        let calls = self.calls.max(1) as f64;
        let (mut cpu_all, mut switches_all) = (0.0, 0);
        let mut parts: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, (cpu, switches))| *cpu > 0.0 || *switches > 0)
            .map(|(name, (cpu, switches))| {
                cpu_all += cpu;
                switches_all += switches;
                format!(
                    "{name} {:.1} µs, {:.2} switches",
                    cpu / calls * 1e6,
                    *switches as f64 / calls
                )
            })
            .collect();
        parts.push(format!(
            "all {:.1} µs, {:.2} switches",
            cpu_all / calls * 1e6,
            switches_all as f64 / calls
        ));
        parts.join("; ")
    }
}

/// A server process's CPU time per call, in microseconds: sequential calls, and calls with
/// `in_flight` at once.
#[derive(Default, Clone, Copy)]
struct Cpu {
    sequential_us: f64,
    concurrent_us: f64,
}

/// CPU per call of nameko-rs's service process, of the raw lapin server's and of the raw lapin
/// server built as nameko-rs's transport is, each in a process of its own, over the same calls
/// from one client: rounds turning which goes first.
async fn cpu_per_call(
    args: &Args,
    uri: &str,
    client: &ClusterRpcClient,
) -> anyhow::Result<[Cpu; 3]> {
    let processes = [
        server_process("--serve", uri).await?,
        server_process("--serve-raw", uri).await?,
        server_process("--serve-raw-matched", uri).await?,
    ];
    let names = [
        "rpc_bench",
        RawDesign::Plain.service(),
        RawDesign::Matched.service(),
    ];
    let servers: Vec<_> = names
        .iter()
        .zip(&processes)
        .map(|(name, process)| (client.service(*name), process.id()))
        .collect();
    let payload = payload();
    let (sequential, concurrent) = (args.sequential * 2, args.concurrent);
    let mut measured: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    let mut spent: [ThreadsSpent; 3] = Default::default();
    for (proxy, _) in &servers {
        warm_up(proxy).await?;
    }
    // Each server first in turn; over six rounds, each after each of the others as often.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
        [2, 1, 0],
        [1, 0, 2],
    ];
    for round in 0..args.rounds {
        for i in ORDERS[round % ORDERS.len()] {
            let (proxy, pid) = &servers[i];
            let pid = pid.ok_or_else(|| anyhow::anyhow!("a server process without a pid"))?;
            let cpu = || cpu_seconds(pid).ok_or_else(|| anyhow::anyhow!("no CPU time of {pid}"));
            let before = cpu()?;
            let threads_before = threads(pid);
            for _ in 0..sequential {
                proxy.echo(&payload).await?;
            }
            let between = cpu()?;
            spent[i].add(&threads_before, &threads(pid), sequential);
            let answers: Vec<anyhow::Result<Value>> = futures_util::stream::iter(0..concurrent)
                .map(|_| proxy.echo(&payload))
                .buffer_unordered(args.in_flight)
                .collect()
                .await;
            let after = cpu()?;
            anyhow::ensure!(answers.iter().all(Result::is_ok), "calls failed");
            measured[i]
                .0
                .push((between - before) / sequential as f64 * 1e6);
            measured[i]
                .1
                .push((after - between) / concurrent as f64 * 1e6);
        }
    }
    for (name, spent) in ["nameko-rs", "raw lapin", "raw lapin (matched)"]
        .iter()
        .zip(&spent)
    {
        eprintln!("{name} server, per sequential call: {}", spent.per_call());
    }
    drop(processes);
    Ok(measured.map(|(sequential, concurrent)| Cpu {
        sequential_us: median(sequential),
        concurrent_us: median(concurrent),
    }))
}

/// The child modes `--serve-raw` and `--serve-raw-matched`: a raw lapin server, until killed.
async fn serve_raw(uri: &str, design: RawDesign) -> anyhow::Result<()> {
    let connection = Arc::new(Connection::connect(uri, ConnectionProperties::default()).await?);
    let publishing = match design {
        RawDesign::Plain => connection.clone(),
        RawDesign::Matched => {
            Arc::new(Connection::connect(uri, ConnectionProperties::default()).await?)
        }
    };
    raw_server(connection, publishing, design).await?;
    println!("READY");
    std::future::pending::<()>().await;
    Ok(())
}

/// Python Nameko's `python_service` (from `tests/interop/py_services.py`), run with
/// `nameko run`: the process, and its start-to-ready time (its first answer).
async fn python_service(
    python: &str,
    uri: &str,
    client: &ClusterRpcClient,
) -> anyhow::Result<(tokio::process::Child, Duration)> {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let config = std::env::temp_dir().join(format!("nameko-bench-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!("AMQP_URI: '{}'\n", uri.replacen("amqp://", "pyamqp://", 1)),
    )?;
    // Absolute: the process runs in the interop folder.
    let nameko = std::path::absolute(python)?.with_file_name("nameko");
    let start = Instant::now();
    let child = tokio::process::Command::new(nameko)
        .args(["run", "py_services:PythonService", "--config"])
        .arg(&config)
        .current_dir(&interop)
        .env("PYTHONPATH", &interop)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let proxy = client
        .service("python_service")
        .with_timeout(Duration::from_secs(1));
    loop {
        match proxy.call::<_, Value>("echo", [1]).await {
            Ok(_) => break,
            Err(_) if start.elapsed() < Duration::from_secs(60) => continue,
            Err(e) => anyhow::bail!("Python nameko did not answer: {e}"),
        }
    }
    Ok((child, start.elapsed()))
}

fn row(name: &str, ours: &Figures, other: Option<(&str, &Figures)>) {
    let ratio = |a: f64, b: f64| format!("{:.2}", a / b);
    let (sequential_ratio, concurrent_ratio) = match (ours.paired, other) {
        (Some((sequential, concurrent)), _) => {
            (format!("{sequential:.2}"), format!("{concurrent:.2}"))
        }
        (None, Some((_, base))) => (
            ratio(ours.sequential, base.sequential),
            ratio(ours.concurrent, base.concurrent),
        ),
        (None, None) => (String::new(), String::new()),
    };
    let ms = |v: f64| {
        if v < 0.1 {
            format!("{v:.3}")
        } else {
            format!("{v:.2}")
        }
    };
    match other {
        Some((label, base)) => {
            println!(
                "| {name}, sequential calls/s (p50 / p99 ms) | {:.0} ({} / {}) | {label}: {:.0} ({} / {}) | {} |",
                ours.sequential,
                ms(ours.p50_ms),
                ms(ours.p99_ms),
                base.sequential,
                ms(base.p50_ms),
                ms(base.p99_ms),
                sequential_ratio
            );
            println!(
                "| {name}, calls/s with the calls in flight | {:.0} | {label}: {:.0} | {} |",
                ours.concurrent, base.concurrent, concurrent_ratio
            );
        }
        None => {
            println!(
                "| {name}, sequential calls/s (p50 / p99 ms) | {:.0} ({:.3} / {:.3}) | — | — |",
                ours.sequential, ours.p50_ms, ours.p99_ms
            );
            println!(
                "| {name}, calls/s with the calls in flight | {:.0} | — | — |",
                ours.concurrent
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = args.bench;
    if args.embedded_only && args.current_thread {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(bench(&args));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            match (&args.serve, &args.serve_raw, &args.serve_raw_matched) {
                (Some(uri), _, _) => serve(uri).await,
                (_, Some(uri), _) => serve_raw(uri, RawDesign::Plain).await,
                (_, _, Some(uri)) => serve_raw(uri, RawDesign::Matched).await,
                _ => bench(&args).await,
            }
        })
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    traces::init_logging("warn,lapin::returned_messages=error");
    eprintln!("traces: {}", traces::mode());
    if args.embedded_only {
        let (embedded, floor) = embedded(args).await?;
        println!(
            "| embedded broker ({}, {}) | {:.0} sequential calls/s (p50 {:.3} ms), {:.2} of the floor | {:.0} calls/s with {} in flight, {:.2} of the floor | {:.1} allocations per call |",
            runtime_name(args),
            counting_alloc::name(),
            embedded.sequential,
            embedded.p50_ms,
            embedded.paired.map_or(0.0, |p| p.0),
            embedded.concurrent,
            args.in_flight,
            embedded.paired.map_or(0.0, |p| p.1),
            embedded.allocations
        );
        // For a parent run (`embedded_child`).
        println!(
            "FIGURES {} {} {} {} {} {} {} {} {} {} {}",
            embedded.paired.map_or(0.0, |p| p.0),
            embedded.paired.map_or(0.0, |p| p.1),
            embedded.sequential,
            embedded.p50_ms,
            embedded.p99_ms,
            embedded.concurrent,
            embedded.allocations,
            floor.sequential,
            floor.p50_ms,
            floor.p99_ms,
            floor.concurrent
        );
        return Ok(());
    }
    let broker = TestBroker::rabbitmq(&args.broker, &args.rabbit_api)?;
    let uri = broker.uri().to_owned();
    if args.client_only {
        let connection =
            Arc::new(Connection::connect(&uri, ConnectionProperties::default()).await?);
        raw_server(connection.clone(), connection, RawDesign::Plain).await?;
        let client = ClusterRpcClient::connect(&uri).await?;
        let figures = measure(&client.service("raw_bench"), args, 100, args.concurrent).await?;
        println!(
            "nameko-rs client, raw lapin server: {:.0} calls/s in flight",
            figures.concurrent
        );
        return Ok(());
    }
    if args.cpu_only {
        let client = ClusterRpcClient::connect(&uri).await?;
        let [ours, raw, matched] = cpu_per_call(args, &uri, &client).await?;
        for (name, base) in [("raw lapin", raw), ("raw lapin (matched)", matched)] {
            println!(
                "service CPU per call, sequential / {} in flight: nameko-rs {:.1} / {:.1} µs, {name} {:.1} / {:.1} µs: {:.2} / {:.2}",
                args.in_flight,
                ours.sequential_us,
                ours.concurrent_us,
                base.sequential_us,
                base.concurrent_us,
                ours.sequential_us / base.sequential_us,
                ours.concurrent_us / base.concurrent_us
            );
        }
        return Ok(());
    }
    eprintln!(
        "on {} ({} rounds)",
        nameko::transport::mask_password(&uri),
        args.rounds
    );

    // The floor and nameko-rs, each on its own connection, measured by one client.
    let raw_connection =
        Arc::new(Connection::connect(&uri, ConnectionProperties::default()).await?);
    raw_server(
        raw_connection.clone(),
        raw_connection.clone(),
        RawDesign::Plain,
    )
    .await?;
    let running = ServiceRunner::new(Config::default().with_broker(&uri))
        .with_service::<RpcBench>()
        .start()
        .await?;
    let client = ClusterRpcClient::connect(&uri).await?;
    let (raw, ours) = measure_pair(
        &client.service("raw_bench"),
        &client.service("rpc_bench"),
        args,
        args.sequential,
        args.concurrent,
    )
    .await?;
    eprintln!(
        "raw lapin: {:.0} sequential, {:.0} in flight",
        raw.sequential, raw.concurrent
    );
    eprintln!(
        "nameko-rs: {:.0} sequential, {:.0} in flight",
        ours.sequential, ours.concurrent
    );
    // The same raw server, called by a raw lapin client instead: is nameko-rs's client the
    // bottleneck?
    let mut raw_client_rates = Vec::new();
    for _ in 0..args.rounds {
        raw_client_rates.push(raw_client(&uri, args.concurrent, args.in_flight).await?);
    }
    let raw_client_rate = median(raw_client_rates);
    eprintln!("raw lapin client: {raw_client_rate:.0} in flight");
    running.stop().await?;
    raw_connection.close(200, "OK".into()).await?;

    // What each server process spends per call.
    let [ours_cpu, raw_cpu, matched_cpu] = cpu_per_call(args, &uri, &client).await?;
    eprintln!(
        "CPU per call: nameko-rs {:.1} / {:.1} µs, raw lapin {:.1} / {:.1} µs, matched {:.1} / {:.1} µs",
        ours_cpu.sequential_us,
        ours_cpu.concurrent_us,
        raw_cpu.sequential_us,
        raw_cpu.concurrent_us,
        matched_cpu.sequential_us,
        matched_cpu.concurrent_us
    );

    // Python Nameko, when there.
    let mut python = None;
    if let Some(py) = &args.python {
        let (mut child, ready) = python_service(py, &uri, &client).await?;
        let rss = child.id().and_then(rss_mb).unwrap_or(NO_RSS);
        // Python is slower: fewer calls keep the run short.
        let figures = measure(
            &client.service("python_service"),
            args,
            args.sequential / 4,
            args.concurrent / 5,
        )
        .await?;
        eprintln!(
            "Python nameko: {:.0} sequential, {:.0} in flight",
            figures.sequential, figures.concurrent
        );
        child.kill().await?;
        python = Some((figures, ready, rss));
    }

    // The embedded broker three ways: tokio's multi-threaded runtime (here), the same with
    // mimalloc, and the current-thread runtime (each in a process of its own: the allocator is
    // chosen when a process starts).
    let (embedded, floor) = embedded(args).await?;
    let (embedded_mimalloc, floor_mimalloc) = embedded_child(args, false, "mimalloc").await?;
    let (embedded_current_thread, floor_current_thread) =
        embedded_child(args, true, "system").await?;

    // A service process: start to ready, idle memory.
    let (ready, rss) = service_process(&uri).await?;
    drop(client);
    drop(broker);

    println!(
        "\nRPC: `echo` of a small JSON object, one nameko-rs client, {} in flight for the second figure, medians of {} rounds\n",
        args.in_flight, args.rounds
    );
    println!("| measurement | nameko-rs | baseline | ratio |");
    println!("|---|---:|---:|---:|");
    row("RabbitMQ", &ours, Some(("raw lapin", &raw)));
    println!(
        "| RabbitMQ, raw lapin server, calls/s with the calls in flight from nameko-rs's client | {:.0} | from a raw lapin client: {raw_client_rate:.0} | {:.2} |",
        raw.concurrent,
        raw.concurrent / raw_client_rate
    );
    println!(
        "| RabbitMQ, service process CPU per call, sequential (µs, lower is better) | {:.1} | raw lapin server: {:.1} | {:.2} |",
        ours_cpu.sequential_us,
        raw_cpu.sequential_us,
        ours_cpu.sequential_us / raw_cpu.sequential_us
    );
    println!(
        "| RabbitMQ, service process CPU per call, {} in flight (µs, lower is better) | {:.1} | raw lapin server: {:.1} | {:.2} |",
        args.in_flight,
        ours_cpu.concurrent_us,
        raw_cpu.concurrent_us,
        ours_cpu.concurrent_us / raw_cpu.concurrent_us
    );
    println!(
        "| RabbitMQ, service process CPU per call, sequential / {} in flight (µs), against raw lapin built as nameko-rs's transport is (replies on a connection of their own, acknowledgements not awaited) | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} |",
        args.in_flight,
        ours_cpu.sequential_us,
        ours_cpu.concurrent_us,
        matched_cpu.sequential_us,
        matched_cpu.concurrent_us,
        ours_cpu.sequential_us / matched_cpu.sequential_us,
        ours_cpu.concurrent_us / matched_cpu.concurrent_us
    );
    if let Some((figures, _, _)) = &python {
        // (Python was measured on its own: a ratio of medians.)
        let unpaired = Figures {
            paired: None,
            ..ours
        };
        row(
            "RabbitMQ",
            &unpaired,
            Some(("Python Nameko 2.14.1", figures)),
        );
    }
    let in_process = "in-process floor";
    row(
        "embedded broker (multi-threaded runtime, glibc malloc)",
        &embedded,
        Some((in_process, &floor)),
    );
    row(
        "embedded broker (multi-threaded runtime, mimalloc)",
        &embedded_mimalloc,
        Some((in_process, &floor_mimalloc)),
    );
    row(
        "embedded broker (current-thread runtime, glibc malloc)",
        &embedded_current_thread,
        Some((in_process, &floor_current_thread)),
    );
    println!(
        "| embedded broker, allocations per call (client, broker and service) | {:.1} | — | — |",
        embedded.allocations
    );
    match &python {
        Some((_, py_ready, py_rss)) => {
            println!(
                "| service process, start to ready (ms) | {:.0} | Python Nameko: {:.0} | {:.2} |",
                ready.as_secs_f64() * 1e3,
                py_ready.as_secs_f64() * 1e3,
                ready.as_secs_f64() / py_ready.as_secs_f64()
            );
            println!(
                "| service process, idle resident memory (MB) | {:.1} | Python Nameko: {:.1} | {:.2} |",
                rss.total,
                py_rss.total,
                rss.total / py_rss.total
            );
            println!(
                "| service process, idle memory of its own (RssAnon, MB) | {:.1} | Python Nameko: {:.1} | {:.2} |",
                rss.anonymous,
                py_rss.anonymous,
                rss.anonymous / py_rss.anonymous
            );
        }
        None => {
            println!(
                "| service process, start to ready (ms) | {:.0} | — | — |",
                ready.as_secs_f64() * 1e3
            );
            println!(
                "| service process, idle resident memory (MB) | {:.1} | — | — |",
                rss.total
            );
            println!(
                "| service process, idle memory of its own (RssAnon, MB) | {:.1} | — | — |",
                rss.anonymous
            );
        }
    }
    println!(
        "\nEvents and HTTP: `cargo bench --bench events`, `cargo bench --bench http` (or all three: `cargo bench`)."
    );
    Ok(())
}
