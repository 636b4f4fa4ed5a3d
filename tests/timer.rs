//! Timers on tokio's paused clock: the schedule, eager start, overruns, failures and stop.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nameko::prelude::*;
use tokio::time::Instant;

/// When a timer run started, and when it finished.
type Run = (Instant, Option<Instant>);

/// The runs of each service's timer.
fn runs() -> &'static Mutex<HashMap<&'static str, Vec<Run>>> {
    static RUNS: OnceLock<Mutex<HashMap<&'static str, Vec<Run>>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn started(service: &'static str) -> usize {
    let mut runs = runs().lock().unwrap();
    let list = runs.entry(service).or_default();
    list.push((Instant::now(), None));
    list.len()
}

fn finished(service: &'static str) {
    if let Some(last) = runs()
        .lock()
        .unwrap()
        .get_mut(service)
        .and_then(|l| l.last_mut())
    {
        last.1 = Some(Instant::now());
    }
}

/// Start times of `service`'s runs, in seconds after `origin`, rounded to milliseconds.
fn starts(service: &'static str, origin: Instant) -> Vec<f64> {
    let runs = runs().lock().unwrap();
    runs.get(service)
        .map(|l| {
            l.iter()
                .map(|(s, _)| ((*s - origin).as_secs_f64() * 1000.0).round() / 1000.0)
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Dependencies)]
pub struct Steady;
#[service(name = "steady")]
impl Steady {
    #[timer(interval = 1)]
    async fn tick(&self) {
        started("steady");
    }
}

#[derive(Dependencies)]
pub struct Eager;
#[service(name = "eager")]
impl Eager {
    #[timer(interval = "500ms", eager = true)]
    async fn tick(&self) {
        started("eager");
    }
}

#[derive(Dependencies)]
pub struct Slow;
#[service(name = "slow")]
impl Slow {
    #[timer(interval = 1)]
    async fn tick(&self) {
        started("slow");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        finished("slow");
    }
}

#[derive(Dependencies)]
pub struct Failing;
#[service(name = "failing")]
impl Failing {
    #[timer(interval = 1)]
    async fn tick(&self) -> Result<(), String> {
        match started("failing") {
            1 => Err("the first run fails".into()),
            2 => panic!("the second run panics"),
            _ => Ok(()),
        }
    }
}

#[derive(Dependencies)]
pub struct Hourly;
#[service(name = "hourly")]
impl Hourly {
    #[timer(interval = 3600)]
    fn tick(&self) {
        started("hourly");
    }
}

async fn run_for<S: nameko::Service>(seconds: f64) -> Instant {
    let origin = Instant::now();
    let running = nameko::testing::TestServices::new()
        .with_service::<S>()
        .start()
        .await
        .expect("starts");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    running.stop().await.expect("stops");
    origin
}

#[tokio::test(start_paused = true)]
async fn runs_are_anchored_to_the_start() {
    let origin = run_for::<Steady>(3.5).await;
    assert_eq!(starts("steady", origin), [1.0, 2.0, 3.0]);
}

#[tokio::test(start_paused = true)]
async fn an_eager_timer_runs_at_start() {
    let origin = run_for::<Eager>(1.2).await;
    assert_eq!(starts("eager", origin), [0.0, 0.5, 1.0]);
}

#[tokio::test(start_paused = true)]
async fn an_overrun_starts_the_next_run_at_once_and_runs_never_overlap() {
    let origin = run_for::<Slow>(7.0).await;
    assert_eq!(starts("slow", origin), [1.0, 3.5, 6.0]);
    let runs = runs().lock().unwrap();
    for pair in runs["slow"].windows(2) {
        let (previous_end, next_start) = (pair[0].1.expect("finished"), pair[1].0);
        assert!(next_start >= previous_end, "runs overlap");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_panicking_run_is_logged_and_the_timer_goes_on() {
    let origin = run_for::<Failing>(4.5).await;
    assert_eq!(starts("failing", origin), [1.0, 2.0, 3.0, 4.0]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_interrupts_the_wait() {
    let origin = Instant::now();
    run_for::<Hourly>(1.0).await;
    assert!(
        Instant::now() - origin < Duration::from_secs(2),
        "the stop did not wait for the hour"
    );
    assert_eq!(starts("hourly", origin), Vec::<f64>::new());
}
