//! The load and report harness of the fault suites (`tests/faults.rs` on one broker,
//! `tests/cluster.rs` on a three-node cluster): service instances as child processes of the
//! test binary, callers that keep calling, and what the callers saw.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one scenario saw.
#[derive(Default)]
pub struct Report {
    pub scenario: String,
    pub sent: usize,
    pub answered: usize,
    pub failed: usize,
    pub lost: usize,
    /// From the fault (for a broker restart: from the broker being back) until a call sent
    /// after the fault was answered.
    pub recovery: Option<Duration>,
    pub slowest: Duration,
    /// Whether calls must be answered again after the fault (`recovery` set).
    pub must_recover: bool,
    /// Load calls run more than once, when the scenario counted them.
    pub duplicated: Option<usize>,
    /// Whether a duplicated execution fails the scenario.
    pub no_duplicates: bool,
    /// Whether lost calls are what the scenario shows (reported, not a failure): classic
    /// queues losing a node.
    pub losses_expected: bool,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} s | {} |",
            self.scenario,
            self.sent,
            self.answered,
            self.failed,
            self.lost,
            self.duplicated.map_or("-".to_owned(), |d| d.to_string()),
            self.recovery
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.slowest.as_secs_f64(),
            self.notes.join("; "),
        )
    }
}

/// One call's outcome, as the client saw it.
pub struct Outcome {
    pub started: Instant,
    pub ended: Instant,
    pub result: Result<(), Failure>,
}

pub enum Failure {
    /// The caller was told what went wrong.
    Clear(String),
    /// No answer, no error until the timeout, or a wrong answer.
    Lost(String),
}

/// Calls from `tasks` tasks, back to back, until `stop` is set, a set number of calls is
/// made, or the load is dropped (when a scenario runs out of time).
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
    /// How many calls have ended.
    pub ended: Arc<AtomicU64>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Load {
    /// `call(n)` from `tasks` tasks, each `n` once (from [`LOAD_BASE`] up).
    pub fn start_with<F>(tasks: usize, call: impl Fn(u64) -> F + Clone + Send + 'static) -> Load
    where
        F: std::future::Future<Output = Result<(), Failure>> + Send,
    {
        Self::start_counted(tasks, u64::MAX, call)
    }

    /// `call(n)` for `total` values of `n` (from [`LOAD_BASE`] up), with `tasks` calls in
    /// flight.
    pub fn start_counted<F>(
        tasks: usize,
        total: u64,
        call: impl Fn(u64) -> F + Clone + Send + 'static,
    ) -> Load
    where
        F: std::future::Future<Output = Result<(), Failure>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(LOAD_BASE));
        let ended = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|_| {
                let (call, stop, next, ended) =
                    (call.clone(), stop.clone(), next.clone(), ended.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n - LOAD_BASE >= total {
                            break;
                        }
                        let started = Instant::now();
                        let result = call(n).await;
                        if result.is_err() {
                            // Do not spin while the cluster is down.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        outcomes.push(Outcome {
                            started,
                            ended: Instant::now(),
                            result,
                        });
                        ended.fetch_add(1, Ordering::SeqCst);
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, tasks, ended }
    }

    /// Waits until `count` calls have ended, or every task has (a counted load done).
    pub async fn wait_for(&self, count: u64) {
        while self.ended.load(Ordering::SeqCst) < count
            && !self.tasks.iter().all(|t| t.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every task has ended (a counted load made all its calls).
    pub async fn wait_done(&self) {
        self.wait_for(u64::MAX).await;
    }

    /// Stops the load and reports on it, with `fault` the instant the fault began.
    pub async fn finish(mut self, scenario: &str, fault: Option<Instant>) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for task in std::mem::take(&mut self.tasks) {
            outcomes.extend(task.await.expect("a load task"));
        }
        report(scenario, &outcomes, fault)
    }
}

pub fn report(scenario: &str, outcomes: &[Outcome], fault: Option<Instant>) -> Report {
    let mut report = Report {
        scenario: scenario.to_owned(),
        sent: outcomes.len(),
        ..Report::default()
    };
    for outcome in outcomes {
        report.slowest = report.slowest.max(outcome.ended - outcome.started);
        match &outcome.result {
            Ok(()) => report.answered += 1,
            Err(Failure::Clear(e)) => {
                report.failed += 1;
                if !report.errors.contains(e) && report.errors.len() < 5 {
                    report.errors.push(e.clone());
                }
            }
            Err(Failure::Lost(e)) => {
                report.lost += 1;
                if report.lost <= 20 {
                    report.errors.push(format!("LOST: {e}"));
                }
            }
        }
    }
    report.recovery = fault.and_then(|fault| {
        outcomes
            .iter()
            .filter(|o| o.started >= fault && o.result.is_ok())
            .map(|o| o.ended - fault)
            .min()
    });
    report
}

/// A service instance: this binary, running `services` on the broker at a URI until killed.
pub struct Instance {
    pub child: Child,
}

/// Where this binary's instances write their logs: `target/<profile>/<binary>`
/// (`target/debug/faults`, `target/debug/cluster`).
pub fn log_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("this binary");
    let stem = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("instances");
    // Cargo names a test binary `<name>-<hash>`.
    let name = stem.rsplit_once('-').map_or(stem, |(name, _)| name);
    super::target_dir().join(name)
}

/// The log file of the instance named `log`.
pub fn log_path(log: &str) -> std::path::PathBuf {
    log_dir().join(format!("{log}.log"))
}

/// The first `n` of load calls: the executions of smaller ones (warm-ups, fuzzed requests that
/// happen to be good calls) are not counted.
pub const LOAD_BASE: u64 = 1_000_000_000;

/// How many load calls the instances logged as `logs` ran more than once.
pub fn duplicated_executions(logs: &[&str]) -> usize {
    let mut seen = std::collections::HashMap::<u64, usize>::new();
    for log in logs {
        let text = std::fs::read_to_string(log_path(log)).unwrap_or_default();
        for n in text
            .lines()
            .filter_map(|line| line.split("executed n=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .filter(|&n: &u64| n >= LOAD_BASE)
        {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen.values().filter(|&&count| count > 1).count()
}

/// Whether the instance logged as `log` said `text`.
pub fn logged(log: &str, text: &str) -> bool {
    std::fs::read_to_string(log_path(log)).is_ok_and(|t| t.contains(text))
}

impl Instance {
    pub fn start(broker_uri: &str, services: &[&str], log: &str) -> Instance {
        Self::start_with(broker_uri, services, &[], log)
    }

    /// With extra `run` options (`--define KEY=VALUE`, `--web-server-address`).
    pub fn start_with(
        broker_uri: &str,
        services: &[&str],
        options: &[&str],
        log: &str,
    ) -> Instance {
        std::fs::create_dir_all(log_dir()).expect("target/<profile>/<binary>");
        let log = std::fs::File::create(log_path(log)).expect("a log file");
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .arg("run")
            .args(["--broker", broker_uri])
            .args(options)
            .args(services)
            .env(INSTANCE_VAR, "1")
            // The same number of runtime threads on every machine, so that the figures (and
            // the memory bound) do not depend on how many cores CI has.
            .env("TOKIO_WORKER_THREADS", "2")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a service instance");
        Instance { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits for the graceful stop.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        self.child.wait().expect("wait for the instance")
    }

    /// SIGKILL: no reply, no acknowledgement, no goodbye to the broker.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// The resident memory of the process, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the environment of an [`Instance`]: the binary runs as `nameko run` (its `main`
/// checks [`is_instance`] first).
const INSTANCE_VAR: &str = "NAMEKO_FAULTS_INSTANCE";

/// Whether this process is an [`Instance`] rather than the suite.
pub fn is_instance() -> bool {
    std::env::var_os(INSTANCE_VAR).is_some()
}

/// A scenario: `None` when it was skipped.
pub type Scenario = fn() -> futures_util::future::BoxFuture<'static, Option<Report>>;

/// Runs the scenarios the command line selects (all, or those whose names contain an
/// argument), one at a time, each within `limit`; prints what each saw, a table of the
/// figures, and the closing line cargo's own harness prints (which `tests/run.sh` adds up).
pub fn run_scenarios(scenarios: &[(&str, Scenario)], limit: Duration) -> std::process::ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected =
        |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    let mut rows = Vec::new();
    for &(name, scenario) in scenarios {
        if !selected(name) {
            continue;
        }
        println!("scenario {name} ...");
        let started = Instant::now();
        let outcome =
            runtime.block_on(async { tokio::spawn(tokio::time::timeout(limit, scenario())).await });
        match outcome {
            Ok(Ok(Some(report))) => {
                for error in &report.errors {
                    println!("    {error}");
                }
                let recovered = !report.must_recover || report.recovery.is_some();
                let duplicated = report.no_duplicates && report.duplicated.unwrap_or(0) > 0;
                let lost = report.lost > 0 && !report.losses_expected;
                println!(
                    "scenario {name}: {} in {:.1} s",
                    match (lost, recovered, duplicated) {
                        (false, true, false) => "ok",
                        (false, false, _) =>
                            "FAILED: calls were never answered again after the fault",
                        (false, true, true) => "FAILED: calls ran twice",
                        (true, ..) => "FAILED: calls were lost",
                    },
                    started.elapsed().as_secs_f64()
                );
                rows.push(report.row());
                if !lost && recovered && !duplicated {
                    passed += 1
                } else {
                    failed += 1
                }
            }
            Ok(Ok(None)) => println!("scenario {name}: skipped"),
            Ok(Err(_)) => {
                println!(
                    "scenario {name}: FAILED: still running after {:.0} s",
                    limit.as_secs_f64()
                );
                failed += 1;
            }
            Err(panic) => {
                println!("scenario {name}: FAILED: {panic}");
                failed += 1;
            }
        }
    }
    println!();
    println!(
        "| scenario | calls sent | answered | failed with a clear error | lost | duplicated executions | answered again after | slowest call | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "test result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    // A scenario that ran out of time may have left blocking work behind: do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
