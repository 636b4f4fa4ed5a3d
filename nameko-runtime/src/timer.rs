//! The schedule entrypoints, on the public entrypoint API: `#[timer]` (Nameko's `timer`) and
//! `#[once]` (Nameko's testing entrypoint `once`).

use std::time::Duration;

use crate::context::ContextData;
use crate::error::Error;
use crate::protocol::{RemoteError, RequestBody};
use crate::service::{Entrypoint, EntrypointContext, Started};

/// `#[timer(interval = 1)]`: runs the method every `interval`, one run at a time.
///
/// As in Nameko the schedule is anchored to the start: the n-th run is due at
/// `start + n * interval` (n from 0 if eager, else 1), and a run that overruns makes the next
/// one start at once, so none is skipped. A failing run is logged and the timer goes on; a
/// stop interrupts the wait.
#[derive(Debug, Clone, Copy)]
pub struct Timer {
    interval: Duration,
    eager: bool,
}

impl Timer {
    /// Every `interval`, the first run one interval after the start.
    pub const fn new(interval: Duration) -> Self {
        Timer {
            interval,
            eager: false,
        }
    }

    /// With `eager`, the first run is at start.
    pub const fn eager(mut self, eager: bool) -> Self {
        self.eager = eager;
        self
    }
}

impl Entrypoint for Timer {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        let eager = if self.eager { " (eager)" } else { "" };
        format!("timer {method} every {:?}{eager}", self.interval)
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        Ok(Started::running(async move {
            let start = tokio::time::Instant::now();
            let mut n: u32 = if self.eager { 0 } else { 1 };
            loop {
                let due = start + self.interval * n;
                tokio::select! {
                    biased;
                    _ = cx.stopped() => return Ok(()),
                    _ = tokio::time::sleep_until(due) => {}
                }
                if !run_once(&cx).await {
                    return Ok(());
                }
                n = n.saturating_add(1);
            }
        }))
    }
}

/// Runs one worker of a schedule and waits for it: `false` once the service stops.
async fn run_once<E>(cx: &EntrypointContext<E>) -> bool
where
    E: Entrypoint<Input = RequestBody>,
{
    let Some(slot) = cx.worker_slot().await else {
        return false;
    };
    // The outcome was logged if it failed; a schedule answers no one.
    cx.run_worker(slot, RequestBody::new(), ContextData::new(), None)
        .await
        .is_some()
}

/// `#[once]`: runs the method once, when the service starts. Useful in tests, and for
/// start-up work that needs the service's dependencies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Once;

impl Entrypoint for Once {
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        format!("once {method}")
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        Ok(Started::running(async move {
            run_once(&cx).await;
            Ok(())
        }))
    }
}
