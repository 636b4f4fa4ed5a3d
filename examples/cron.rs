//! An entrypoint of the application's own: `Cron` runs a method on a cron schedule. It is
//! written here, in the example, on nameko's public entrypoint API only, the way `#[timer]`
//! is written inside nameko; README's "Writing your own entrypoint" walks through it.
//!
//! ```text
//! cargo run --example cron -- run
//! ```
//!
//! `report_service` then prints a report every two seconds, and answers
//! `nameko call report_service.reports` with how many it made.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use nameko::prelude::*;
use nameko::service::{Entrypoint, EntrypointContext, Started};

/// Fires its method on a cron schedule: `Cron::new("0 */5 * * * *")`, in the `cron` crate's
/// syntax (seconds, minutes, hours, day of month, month, day of week, optional year; UTC).
///
/// The method is called with one keyword argument, `scheduled`: the time the run was due, in
/// RFC 3339. A run that overruns the next due time skips it, as cron does; a stop interrupts
/// the wait, and the run in progress finishes.
pub struct Cron {
    expression: &'static str,
}

impl Cron {
    /// On the schedule `expression`; an invalid one fails the service's start.
    pub const fn new(expression: &'static str) -> Self {
        Cron { expression }
    }
}

impl Entrypoint for Cron {
    // The method is called with JSON arguments, bound to its parameters as an RPC call's,
    // and gives its result as JSON: what `#[entrypoint(...)]` asks of an entrypoint.
    type Input = RequestBody;
    type Output = Result<Vec<u8>, RemoteError>;

    fn describe(&self, method: &str) -> String {
        format!("cron {method} \"{}\"", self.expression)
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        // Checked when the service starts: a mistake stops it before it runs.
        let schedule = cron::Schedule::from_str(self.expression).map_err(|e| {
            Error::other(format!(
                "{}.{}: invalid cron expression `{}`: {e}",
                cx.service_name(),
                cx.method().name(),
                self.expression
            ))
        })?;
        Ok(Started::running(async move {
            // The next due time after now: runs missed while one overran are skipped.
            while let Some(due) = schedule.after(&Utc::now()).next() {
                let wait = (due - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = cx.stopped() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                // One of the service's worker slots (`max_workers`); `None`: it is stopping.
                let Some(slot) = cx.worker_slot().await else {
                    break;
                };
                let arguments = RequestBody::new().kwarg("scheduled", due.to_rfc3339());
                // The worker path does the rest: context, dependencies' hooks, a caught
                // panic, the failure logged. A schedule has no one to answer.
                let _ = cx
                    .run_worker(slot, arguments, ContextData::new(), None)
                    .await;
            }
            Ok(())
        }))
    }
}

/// Makes a report on a schedule.
#[derive(Dependencies)]
pub struct ReportService {
    made: Reports,
}

/// How many reports the service made (a dependency of its own, so that the count is kept for
/// the service's life).
#[derive(Default)]
pub struct Reports(AtomicU64);

impl Dependency for Reports {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, Error> {
        Ok(Reports::default())
    }
}

#[service(name = "report_service")]
impl ReportService {
    /// Makes a report, every two seconds.
    #[entrypoint(Cron::new("*/2 * * * * *"))]
    async fn report(&self, scheduled: String) -> u64 {
        let number = self.made.0.fetch_add(1, Ordering::Relaxed) + 1;
        println!("report {number}, due at {scheduled}");
        number
    }

    /// How many reports were made.
    #[rpc]
    async fn reports(&self) -> u64 {
        self.made.0.load(Ordering::Relaxed)
    }
}

#[allow(dead_code)] // The tests include this file as a module and have their own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
