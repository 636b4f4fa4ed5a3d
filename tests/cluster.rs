//! The cluster suite: service instances, callers and event dispatchers on the three-node
//! RabbitMQ cluster of `tests/cluster.sh`, while nodes are killed (`kill -9` of the Erlang VM)
//! or restarted in turn. Each scenario reports what the callers saw, as the fault suite does:
//! calls sent, answered, failed with a clear error, lost (no answer and no error before the
//! call's timeout, or a wrong answer) and duplicated executions (each instance logs the `n` of
//! every call it runs).
//!
//! Scenarios (three instances of `cluster_greeter`, connected to c1, c2 and c3, the one on c1
//! started first so that the queue's leader is on c1; 3,000 calls, 50 in flight):
//! - `quorum-kill-leader`: `QUEUE_TYPE=quorum`, the node holding the queue's leader is killed
//!   mid-way; nothing may be lost;
//! - `quorum-kill-client-node`: likewise, killing the node the caller is connected to: calls
//!   in flight end with `ReplyLost` (their reply queue went with the node), none is lost;
//! - `classic-kill-leader`: the first scenario with classic queues (what Python Nameko
//!   declares): its losses are reported, not a failure, to show what quorum queues buy;
//! - `quorum-rolling-restart`: c1, c2 and c3 are stopped and started again in turn under
//!   load: nothing lost;
//! - `quorum-events`: a service_pool event handler on a quorum queue, its node killed while a
//!   dispatcher on another node dispatches: every event dispatched is handled;
//! - `greeter-example`: the README's greeter example, run with the three addresses and
//!   `QUEUE_TYPE=quorum`, keeps answering with no call lost when its node is killed.
//!
//! Every scenario starts again the nodes it stopped. `tests/run.sh` brings the cluster up
//! (`tests/cluster.sh up`), sets `NAMEKO_TEST_CLUSTER_AMQP`, `NAMEKO_TEST_CLUSTER_API` and
//! `NAMEKO_TEST_CLUSTER_CTL` (`tests/cluster.sh env`) and takes it down after the suite.
//! Figures in `RELIABILITY.md`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, NODES};
use common::load::{self, Failure, Instance, Load, Report, Scenario, duplicated_executions};
use nameko::ClusterRpcClient;
use nameko::events::StandaloneEventDispatcher;
use nameko::prelude::*;

/// The service the load goes to.
#[derive(Dependencies)]
pub struct ClusterGreeter;

#[service(name = "cluster_greeter")]
impl ClusterGreeter {
    /// Greets `n` after `millis` milliseconds; logs the call, to count duplicated executions.
    #[rpc]
    async fn greet(&self, n: u64, millis: u64) -> String {
        tracing::info!("executed n={n}");
        tokio::time::sleep(Duration::from_millis(millis)).await;
        format!("Hello, {n}!")
    }
}

/// Handles `cluster_source`'s `tick` events, one instance of the service per event.
#[derive(Dependencies)]
pub struct ClusterListener;

#[service(name = "cluster_listener")]
impl ClusterListener {
    #[event_handler("cluster_source", "tick", handler_type = "service_pool")]
    async fn tick(&self, n: u64) {
        // Counted as an execution, as a call is.
        tracing::info!("executed n={n}");
    }
}

/// A virtual host of its own on the cluster, or `None` (skip) when there is none.
fn cluster() -> Option<Cluster> {
    common::cluster_for_test()
}

/// How many calls a scenario makes, and how many are in flight at once.
const CALLS: u64 = 3_000;
const IN_FLIGHT: usize = 50;
/// How long one call of the load takes to run.
const WORK_MILLIS: u64 = 2;

/// Three instances of `cluster_greeter` with `QUEUE_TYPE=queue_type`, on c1 (started first: it
/// declares the queue, whose leader is then on c1), c2 and c3.
async fn instances(cluster: &Cluster, queue_type: &str, log: &str) -> Vec<Instance> {
    let define = format!("QUEUE_TYPE={queue_type}");
    let start = |node: usize| {
        Instance::start_with(
            &cluster.uri_from(node),
            &["cluster_greeter"],
            &["--define", &define],
            &format!("{log}-{}", NODES[node]),
        )
    };
    let mut instances = vec![start(0)];
    cluster.wait_for_consumers("rpc-cluster_greeter", 1).await;
    instances.push(start(1));
    instances.push(start(2));
    cluster.wait_for_consumers("rpc-cluster_greeter", 3).await;
    instances
}

/// A client connected to `node` first, whose calls time out after `timeout`.
async fn client(cluster: &Cluster, node: usize, timeout: Duration) -> ClusterRpcClient {
    ClusterRpcClient::connect(&cluster.uri_from(node))
        .await
        .expect("a client")
        .with_timeout(timeout)
}

/// `cluster_greeter.greet(n)` for `CALLS` values of `n`, `IN_FLIGHT` at once.
fn load(client: &ClusterRpcClient) -> Load {
    let proxy = client.service("cluster_greeter");
    Load::start_counted(IN_FLIGHT, CALLS, move |n| {
        let proxy = proxy.clone();
        async move {
            match proxy.call::<_, String>("greet", (n, WORK_MILLIS)).await {
                Ok(v) if v == format!("Hello, {n}!") => Ok(()),
                Ok(v) => Err(Failure::Lost(format!("wrong answer {v:?} for {n}"))),
                Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                Err(e) => Err(Failure::Clear(e.to_string())),
            }
        }
    })
}

fn logs(log: &str) -> Vec<String> {
    NODES.iter().map(|n| format!("{log}-{n}")).collect()
}

fn duplicates(log: &str) -> usize {
    let logs = logs(log);
    duplicated_executions(&logs.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Kills a node under the load of 3,000 calls: the queue's leader, or the node the client is
/// connected to (c2).
async fn kill_under_load(queue_type: &'static str, victim: Victim) -> Option<Report> {
    let cluster = cluster()?;
    let log = format!("{queue_type}-{}", victim.name());
    let _instances = instances(&cluster, queue_type, &log).await;
    let leader = cluster
        .leader("rpc-cluster_greeter")
        .expect("the queue's leader");
    let client_node = 1;
    // Classic queues lose what the dead node held: shorter timeouts keep the scenario short.
    let timeout = Duration::from_secs(if queue_type == "classic" { 10 } else { 30 });
    let client = client(&cluster, client_node, timeout).await;
    let load = load(&client);
    load.wait_for(CALLS / 3).await;
    let killed = match victim {
        Victim::Leader => leader,
        Victim::ClientNode => client_node,
    };
    let fault = Instant::now();
    cluster.ctl("kill", killed).await;
    load.wait_done().await;
    let scenario = format!(
        "{queue_type} queue, 3 instances, kill -9 of {} ({})",
        NODES[killed],
        match victim {
            Victim::Leader => "the queue's leader",
            Victim::ClientNode => "the client's node",
        }
    );
    let mut report = load.finish(&scenario, Some(fault)).await;
    report.must_recover = queue_type == "quorum";
    report.losses_expected = queue_type == "classic";
    report.duplicated = Some(duplicates(&log));
    let restarted = cluster.ctl("start", killed).await;
    report.notes.push(format!(
        "leader on {}, client on {}; {} started again in {:.1} s after the load",
        NODES[leader],
        NODES[client_node],
        NODES[killed],
        restarted.as_secs_f64()
    ));
    if report.losses_expected {
        report.notes.push(format!(
            "{} calls lost: what classic queues (Python Nameko's) lose with their node",
            report.lost
        ));
    }
    Some(report)
}

#[derive(Clone, Copy)]
enum Victim {
    Leader,
    ClientNode,
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Leader => "kill-leader",
            Victim::ClientNode => "kill-client-node",
        }
    }
}

/// c1, c2 and c3 are stopped and started again in turn under load.
async fn rolling_restart() -> Option<Report> {
    let cluster = cluster()?;
    let log = "quorum-rolling";
    let _instances = instances(&cluster, "quorum", log).await;
    let client = client(&cluster, 1, Duration::from_secs(30)).await;
    let proxy = client.service("cluster_greeter");
    // Unbounded: the load runs for the whole restart.
    let load = Load::start_with(IN_FLIGHT, move |n| {
        let proxy = proxy.clone();
        async move {
            match proxy.call::<_, String>("greet", (n, WORK_MILLIS)).await {
                Ok(v) if v == format!("Hello, {n}!") => Ok(()),
                Ok(v) => Err(Failure::Lost(format!("wrong answer {v:?} for {n}"))),
                Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                Err(e) => Err(Failure::Clear(e.to_string())),
            }
        }
    });
    load.wait_for(500).await;
    let fault = Instant::now();
    let mut steps = Vec::new();
    for (node, name) in NODES.iter().enumerate() {
        let stopped = cluster.ctl("stop", node).await;
        let started = cluster.ctl("start", node).await;
        steps.push(format!(
            "{name} stopped in {:.1} s, started in {:.1} s",
            stopped.as_secs_f64(),
            started.as_secs_f64()
        ));
        // The cluster settles before the next node goes.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let during = load.ended.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut report = load
        .finish(
            "quorum queue, rolling restart of c1, c2, c3 under load",
            Some(fault),
        )
        .await;
    report.must_recover = true;
    report.duplicated = Some(duplicates(log));
    report.notes.push(steps.join("; "));
    report.notes.push(format!(
        "{during} calls ended before the last node was back"
    ));
    Some(report)
}

/// A service_pool handler on a quorum queue, connected to c1 (the queue's leader), while a
/// dispatcher on c2 dispatches and c1 is killed: every event dispatched is handled.
async fn events() -> Option<Report> {
    let cluster = cluster()?;
    let log = "quorum-events";
    let _listener = Instance::start_with(
        &cluster.uri_from(0),
        &["cluster_listener"],
        &["--define", "QUEUE_TYPE=quorum"],
        &format!("{log}-c1"),
    );
    let queue = "evt-cluster_source-tick--cluster_listener.tick";
    cluster.wait_for_consumers(queue, 1).await;
    let leader = cluster.leader(queue).expect("the queue's leader");
    let dispatcher = StandaloneEventDispatcher::connect(&cluster.uri_from(1))
        .await
        .expect("a dispatcher");
    let total = CALLS;
    let mut dispatched = Vec::new();
    let mut failed = Vec::new();
    let mut kill = None;
    let started = Instant::now();
    for n in load::LOAD_BASE..load::LOAD_BASE + total {
        if n == load::LOAD_BASE + total / 3 {
            let ctl = cluster.ctl.clone();
            kill = Some(tokio::task::spawn_blocking(move || {
                Command::new(ctl)
                    .args(["kill", NODES[leader]])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }));
        }
        match dispatcher.dispatch("cluster_source", "tick", &n).await {
            Ok(()) => dispatched.push(n),
            Err(e) => {
                if failed.len() < 5 {
                    println!("    dispatch failed: {e}");
                }
                failed.push(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        kill.expect("the kill")
            .await
            .expect("tests/cluster.sh kill"),
        "tests/cluster.sh kill failed"
    );
    let dispatching = started.elapsed();
    // Every dispatched event is handled, by the instance once it reconnected.
    let handled = |log: &str| -> std::collections::HashSet<u64> {
        std::fs::read_to_string(load::log_path(log))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split("executed n=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let log_name = format!("{log}-c1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = handled(&log_name);
    while dispatched.iter().any(|n| !seen.contains(n)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seen = handled(&log_name);
    }
    let missing: Vec<u64> = dispatched
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    let restarted = cluster.ctl("start", leader).await;
    let mut report = Report {
        scenario: format!(
            "events: service_pool handler on a quorum queue, kill -9 of its node {}",
            NODES[leader]
        ),
        sent: total as usize,
        answered: dispatched.len() - missing.len(),
        failed: failed.len(),
        lost: missing.len(),
        duplicated: Some(duplicated_executions(&[log_name.as_str()])),
        ..Report::default()
    };
    for n in missing.iter().take(20) {
        report
            .errors
            .push(format!("LOST: event {n} was dispatched but never handled"));
    }
    report.notes.push(format!(
        "answered = dispatched and handled; failed = dispatches that returned an error; {} events dispatched in {:.1} s; {} started again in {:.1} s",
        dispatched.len(),
        dispatching.as_secs_f64(),
        NODES[leader],
        restarted.as_secs_f64()
    ));
    Some(report)
}

/// The README's greeter example with the three addresses and `QUEUE_TYPE=quorum`: its node is
/// killed while a client calls it.
async fn greeter_example() -> Option<Report> {
    let cluster = cluster()?;
    let example = common::example("greeter");
    assert!(example.exists(), "{} is not built", example.display());
    let log = load::log_path("greeter-example");
    std::fs::create_dir_all(load::log_dir()).expect("the log directory");
    let mut greeter = common::Running(
        Command::new(&example)
            .args(["run", "--broker", &cluster.uri_from(0)])
            .args(["--define", "QUEUE_TYPE=quorum"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("start the greeter example"),
    );
    cluster.wait_for_consumers("rpc-greeter_service", 1).await;
    let client = client(&cluster, 2, Duration::from_secs(30)).await;
    let proxy = client.service("greeter_service");
    let load = Load::start_counted(IN_FLIGHT, CALLS, move |n| {
        let proxy = proxy.clone();
        async move {
            match proxy.call::<_, String>("greet", (n.to_string(),)).await {
                Ok(v) if v.contains(&n.to_string()) => Ok(()),
                Ok(v) => Err(Failure::Lost(format!("wrong answer {v:?} for {n}"))),
                Err(RpcError::Timeout(t)) => Err(Failure::Lost(format!("no answer in {t:?}"))),
                Err(e) => Err(Failure::Clear(e.to_string())),
            }
        }
    });
    load.wait_for(CALLS / 3).await;
    let fault = Instant::now();
    cluster.ctl("kill", 0).await;
    load.wait_done().await;
    let mut report = load
        .finish(
            "the greeter example (3 addresses, QUEUE_TYPE=quorum), kill -9 of its node c1",
            Some(fault),
        )
        .await;
    report.must_recover = true;
    let restarted = cluster.ctl("start", 0).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let reconnected = text
        .lines()
        .filter(|l| l.contains("127.0.0.1:5682") || l.contains("127.0.0.1:5683"))
        .count();
    report.notes.push(format!(
        "{}; c1 started again in {:.1} s",
        if reconnected > 0 {
            "the example reconnected to another node"
        } else {
            "the example's log names no other node"
        },
        restarted.as_secs_f64()
    ));
    assert!(
        matches!(greeter.0.try_wait(), Ok(None)),
        "the greeter example exited"
    );
    drop(greeter);
    Some(report)
}

fn main() -> std::process::ExitCode {
    if load::is_instance() {
        // A service instance: `cluster run --broker URI SERVICE...`.
        return nameko::main();
    }
    let scenarios: [(&str, Scenario); 6] = [
        ("quorum-kill-leader", || {
            Box::pin(kill_under_load("quorum", Victim::Leader))
        }),
        ("quorum-kill-client-node", || {
            Box::pin(kill_under_load("quorum", Victim::ClientNode))
        }),
        ("classic-kill-leader", || {
            Box::pin(kill_under_load("classic", Victim::Leader))
        }),
        ("quorum-rolling-restart", || Box::pin(rolling_restart())),
        ("quorum-events", || Box::pin(events())),
        ("greeter-example", || Box::pin(greeter_example())),
    ];
    load::run_scenarios(&scenarios, Duration::from_secs(300))
}
