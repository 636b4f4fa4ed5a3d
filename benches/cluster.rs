//! Scale-out on the three-node RabbitMQ cluster of `tests/cluster.sh`: RPC calls per second
//! with 1, 2 and 3 service instances, on the caller's node or on others, with classic and with
//! quorum queues, all in one run. The baseline, measured in the same run, is one instance on
//! the caller's node with a classic queue: the single-broker setup, on the cluster.
//!
//! ```text
//! tests/cluster.sh up && eval "$(tests/cluster.sh env)"
//! cargo bench --bench cluster -- [--seconds 5] [--in-flight 100]
//! tests/cluster.sh down
//! ```
//!
//! Instances are processes of this binary (`cluster run --broker ... cluster_bench`); the
//! callers are in this process: `--in-flight` calls at once, from one client per node the
//! configuration names. Each configuration gets a virtual host of its own. The CPU the nodes,
//! the instances and the callers used in the window (from `/proc`) shows where the time goes. Without the
//! cluster's variables the benchmark says so and measures nothing.

#[path = "../tests/common/cluster.rs"]
mod cluster;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cluster::{Cluster, NODES};
use nameko::ClusterRpcClient;
use nameko::prelude::*;

/// The method under load: returns its argument.
#[derive(Dependencies)]
pub struct ClusterBench;

#[service(name = "cluster_bench")]
impl ClusterBench {
    #[rpc]
    async fn echo(&self, n: u64) -> u64 {
        n
    }
}

#[derive(Parser)]
struct Args {
    /// How long each configuration is measured.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 100)]
    in_flight: usize,
    /// Only configurations whose label contains this.
    #[arg(long)]
    only: Option<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One configuration: the queue type, the node of each instance, the nodes of the callers.
struct Setup {
    queue_type: &'static str,
    instances: &'static [usize],
    callers: &'static [usize],
}

impl Setup {
    fn label(&self) -> String {
        let on = |nodes: &[usize]| {
            nodes
                .iter()
                .map(|&n| NODES[n])
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{}, {} instance{} on {}; callers on {}",
            self.queue_type,
            self.instances.len(),
            if self.instances.len() == 1 { "" } else { "s" },
            on(self.instances),
            on(self.callers)
        )
    }
}

const SETUPS: &[Setup] = &[
    // The baseline: one node does everything.
    Setup {
        queue_type: "classic",
        instances: &[0],
        callers: &[0],
    },
    Setup {
        queue_type: "classic",
        instances: &[1],
        callers: &[0],
    },
    Setup {
        queue_type: "classic",
        instances: &[0, 0],
        callers: &[0],
    },
    Setup {
        queue_type: "classic",
        instances: &[0, 1],
        callers: &[0],
    },
    Setup {
        queue_type: "classic",
        instances: &[0, 1, 2],
        callers: &[0],
    },
    Setup {
        queue_type: "classic",
        instances: &[0, 1, 2],
        callers: &[0, 1, 2],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[1],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0, 0],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0, 1],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0, 0, 0],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0, 1, 2],
        callers: &[0],
    },
    Setup {
        queue_type: "quorum",
        instances: &[0, 1, 2],
        callers: &[0, 1, 2],
    },
];

/// A service instance: this binary running `cluster_bench`; killed on drop.
struct Instance(Child);

impl Instance {
    fn start(broker: &str, queue_type: &str) -> Instance {
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .args(["run", "--broker", broker, "--define"])
            .arg(format!("QUEUE_TYPE={queue_type}"))
            .arg("cluster_bench")
            .env("NAMEKO_CLUSTER_BENCH_INSTANCE", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start an instance");
        Instance(child)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CPU time (user and system) `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces), counted from its closing parenthesis:
    // utime and stime are fields 14 and 15 of the line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf only reads a constant.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
}

/// The processes of the three RabbitMQ nodes (their Erlang VMs; reading their environment
/// needs the rights of their user, or root, as `tests/cluster.sh` has).
fn node_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The node's name is in its environment (`RABBITMQ_NODENAME`), not its command.
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let environment = String::from_utf8_lossy(&environment);
            String::from_utf8_lossy(&command).contains("beam")
                && NODES.iter().any(|n| {
                    environment
                        .split('\0')
                        .any(|v| v == format!("RABBITMQ_NODENAME={n}@localhost"))
                })
        })
        .collect()
}

/// What one configuration did in its measured window.
struct Figures {
    calls_per_second: f64,
    /// CPU cores busy, on average: the RabbitMQ nodes, the instances, this process (the callers).
    nodes_cpu: f64,
    instances_cpu: f64,
    callers_cpu: f64,
}

/// Calls per second for one configuration, on a virtual host of its own.
async fn measure(setup: &Setup, args: &Args) -> anyhow::Result<Figures> {
    let cluster = Cluster::from_env().expect("the cluster");
    let queue = "rpc-cluster_bench";
    let mut instances = Vec::new();
    for (i, &node) in setup.instances.iter().enumerate() {
        instances.push(Instance::start(&cluster.uri_from(node), setup.queue_type));
        // The first declares the queue (its leader, or its only copy, is on that node).
        cluster.wait_for_consumers(queue, i + 1).await;
    }
    let mut clients = Vec::new();
    for &node in setup.callers {
        clients.push(
            ClusterRpcClient::connect(&cluster.uri_from(node))
                .await?
                .with_timeout(Duration::from_secs(30)),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.in_flight)
        .map(|i| {
            let proxy = clients[i % clients.len()].service("cluster_bench");
            let (stop, counting, calls, failures) = (
                stop.clone(),
                counting.clone(),
                calls.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let ok = matches!(proxy.call::<_, u64>("echo", (n,)).await, Ok(v) if v == n);
                    if counting.load(Ordering::Relaxed) {
                        if ok {
                            calls.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // A second of warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let nodes = node_pids();
    let cpu = |pids: &[u32]| pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
    let instance_pids: Vec<u32> = instances.iter().map(|i| i.0.id()).collect();
    let own = [std::process::id()];
    let before = (cpu(&nodes), cpu(&instance_pids), cpu(&own));
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let after = (cpu(&nodes), cpu(&instance_pids), cpu(&own));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failed = failures.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} calls failed in `{}`", setup.label());
    drop(instances);
    let seconds = elapsed.as_secs_f64();
    Ok(Figures {
        calls_per_second: calls.load(Ordering::Relaxed) as f64 / seconds,
        nodes_cpu: (after.0 - before.0) / seconds,
        instances_cpu: (after.1 - before.1) / seconds,
        callers_cpu: (after.2 - before.2) / seconds,
    })
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os("NAMEKO_CLUSTER_BENCH_INSTANCE").is_some() {
        return match nameko::main() {
            code if code == std::process::ExitCode::SUCCESS => Ok(()),
            _ => anyhow::bail!("the instance failed"),
        };
    }
    let args = Args::parse();
    let _ = args.bench;
    if Cluster::from_env().is_none() {
        eprintln!(
            "no test cluster: run `tests/cluster.sh up && eval \"$(tests/cluster.sh env)\"` first (nothing measured)"
        );
        return Ok(());
    }
    nameko::cli::init_logging_with(Some("warn,lapin::returned_messages=error".into()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut baseline = None;
    for setup in SETUPS {
        let label = setup.label();
        if args
            .only
            .as_ref()
            .is_some_and(|only| !label.contains(only.as_str()))
        {
            continue;
        }
        let figures = runtime.block_on(measure(setup, &args))?;
        let rate = figures.calls_per_second;
        let base = *baseline.get_or_insert(rate);
        eprintln!("{label}: {rate:.0} calls/s");
        rows.push(format!(
            "| {label} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            rate / base,
            figures.nodes_cpu,
            figures.instances_cpu,
            figures.callers_cpu
        ));
    }
    println!();
    println!(
        "| configuration ({} calls in flight, {} s each) | calls/s | against the first row | CPU cores: RabbitMQ nodes | instances | callers |",
        args.in_flight, args.seconds
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
