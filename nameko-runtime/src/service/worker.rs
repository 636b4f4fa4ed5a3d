//! The one path of every worker: its context and span, the dependencies' worker hooks around
//! the method, panics caught, entrypoint waiters told; and how a failure is logged.

use std::borrow::{Borrow, Cow};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::arguments::LoggedArguments;
use super::container::Shared;
use super::io::sealed::Output;
use super::{Dependencies, WorkerResult};
use crate::context::WorkerContext;
use crate::error::Error;
use crate::protocol::RemoteError;

pin_project_lite::pin_project! {
    /// A future a kill drops: its output, or `None` once `kill` is cancelled. The future is
    /// polled first, so one done at its first poll never registers with the kill switch, and
    /// the wait for the kill is made (boxed) only when the future first waits: most workers on
    /// the embedded broker never do, and the future spawned for each is moved and copied whole.
    /// Written out rather than `tokio::select!` in an `async` block, which would hold the
    /// future's state twice (captured, then moved into the select).
    pub(crate) struct Killable<F, T> {
        #[pin]
        future: F,
        kill: T,
        waiting: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    }
}

impl<F, T: Borrow<CancellationToken>> Killable<F, T> {
    /// `future`, dropped when `kill` is cancelled.
    pub(crate) fn new(future: F, kill: T) -> Self {
        Killable {
            future,
            kill,
            waiting: None,
        }
    }
}

impl<F: Future, T: Borrow<CancellationToken>> Future for Killable<F, T> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let kill: &CancellationToken = (*this.kill).borrow();
        this.waiting
            .get_or_insert_with(|| Box::pin(kill.clone().cancelled_owned()))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    }
}

/// The error object for a panic, with the panic's message.
pub(crate) fn panic_error(payload: &(dyn std::any::Any + Send)) -> RemoteError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    RemoteError::nameko_rs("WorkerPanic", message)
}

/// The error object for a dependency's refusal of a worker.
fn dependency_error(error: Error) -> RemoteError {
    RemoteError::nameko_rs("DependencyError", error.to_string())
}

/// Logs a failed worker: a warning when its error is one the entrypoint expects, an error
/// otherwise; with its arguments when it has any, redacted, and the error's text scrubbed of
/// the redacted values.
pub(crate) fn log_failure(
    context: &WorkerContext,
    error: &RemoteError,
    expected: &[&str],
    arguments: impl FnOnce() -> Option<LoggedArguments>,
) {
    let (service, entrypoint, call_id) = (
        context.service_name(),
        context.entrypoint(),
        context.call_id(),
    );
    let arguments = arguments();
    let text = match &arguments {
        Some(arguments) => arguments.scrub(&error.value),
        None => error.value.clone(),
    };
    let error_type = error.exc_type.as_str();
    let arguments = arguments.map(|a| a.shown.to_string()).unwrap_or_default();
    if expected.contains(&error_type) {
        tracing::warn!(service, entrypoint, call_id, error_type, error = %text, arguments, "worker failed (expected)");
    } else if error_type == "WorkerPanic" {
        tracing::error!(service, entrypoint, call_id, panic = %text, arguments, "worker panicked");
    } else {
        tracing::error!(service, entrypoint, call_id, error_type, error = %text, arguments, "worker failed");
    }
}

/// Runs one worker: inside its context (and its `worker` span when `debug` is on), the
/// dependencies' `worker_setup`, the method, their `worker_result` and `worker_teardown`; then
/// tells the entrypoint waiters. A panic of the method or of `worker_setup` becomes the error
/// object of the panic (the derived `Dependencies` also guards each dependency's other hooks);
/// a refused `worker_setup` becomes the worker's error and the method does not run.
///
/// `method` is the method's call, not started yet; `shared` is where the waiters listen (none
/// outside a runner).
pub(crate) fn run_worker<'a, S, T, F>(
    service: &'a S,
    shared: Option<&'a Shared>,
    context: Arc<WorkerContext>,
    kind: crate::trace::WorkerKind,
    payload: Option<&'a [u8]>,
    method: F,
) -> impl Future<Output = T> + Send + 'a
where
    S: Dependencies,
    T: Output,
    F: Future<Output = T> + Send + 'a,
{
    use tracing::Instrument;
    // At `debug`: a span per worker costs more than a simple worker; `nameko::main`'s log
    // format shows the worker of each line from its context instead (`log::WorkerFormat`).
    // With traces on, the span is the worker's in its trace.
    let span = crate::trace::worker_span(&context, kind);
    // Three steps chained, each holding only what it needs: the method's state (the largest
    // part of every worker's future, and paid at every message) is held once, moved from the
    // chain's first step to its second. An `async` block would hold it twice, captured and
    // awaited: a block's captures never share their space with what it awaits later.
    let worker = context.clone();
    let setup = async move {
        let refused = AssertUnwindSafe(service.worker_setup(&worker))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(Error::WorkerSetupPanicked(
                    panic_error(panic.as_ref()).value,
                ))
            })
            .err()
            .map(dependency_error);
        (worker, refused)
    };
    let lifecycle = setup.then(move |(worker, refused)| match refused {
        // Rare, so boxed: its state does not enlarge every worker's future. The method's
        // future, never started, is dropped here, before the refusal's hooks run.
        Some(error) => Either::Left(Box::pin(refuse(service, worker, shared, payload, error))),
        None => Either::Right(
            AssertUnwindSafe(method)
                .catch_unwind()
                .then(move |outcome| {
                    let outcome =
                        outcome.unwrap_or_else(|panic| T::from_error(panic_error(panic.as_ref())));
                    finish(service, worker, shared, payload, outcome)
                }),
        ),
    });
    // One future whether or not the span is enabled (entering a disabled span is a check of
    // an `Option`): two branches would each hold a copy of the lifecycle's state.
    context.scope(lifecycle).instrument(span)
}

/// The end of a worker whose method ran: the dependencies' `worker_result` (which may turn a
/// success into a failure) and `worker_teardown`, then the waiters told.
#[allow(clippy::manual_async_fn)] // An `async fn` would hold its arguments twice.
fn finish<'a, S: Dependencies, T: Output>(
    service: &'a S,
    worker: Arc<WorkerContext>,
    shared: Option<&'a Shared>,
    payload: Option<&'a [u8]>,
    mut outcome: T,
) -> impl Future<Output = T> + Send + 'a {
    async move {
        let refusal = service
            .worker_result(&worker, &outcome.result())
            .await
            .err();
        if let Some(error) = refusal {
            if outcome.result().is_ok() {
                // A dependency could not stand by the worker's success (a commit failed): the
                // caller hears of the failure instead.
                outcome = outcome.fail(dependency_error(error));
            } else {
                tracing::warn!(%error, "a dependency's worker_result failed for a failed worker");
            }
        }
        service.worker_teardown(&worker).await;
        if let WorkerResult::Failed(error) = outcome.result() {
            crate::trace::worker_finished(Some(&error));
        }
        if let Some(shared) = shared {
            shared.worker_finished(&worker, payload, &outcome.result());
        }
        outcome
    }
}

/// A worker refused by a dependency's `worker_setup`: the dependencies set up before the
/// refusal see it and clean up, the waiters hear of it, the method does not run.
async fn refuse<S: Dependencies, T: Output>(
    service: &S,
    worker: Arc<WorkerContext>,
    shared: Option<&Shared>,
    payload: Option<&[u8]>,
    error: RemoteError,
) -> T {
    let refused = WorkerResult::Failed(Cow::Borrowed(&error));
    let _ = service.worker_result(&worker, &refused).await;
    service.worker_teardown(&worker).await;
    crate::trace::worker_finished(Some(&error));
    if let Some(shared) = shared {
        shared.worker_finished(&worker, payload, &refused);
    }
    drop(refused);
    T::from_error(error)
}

#[cfg(test)]
mod tests {
    use super::Killable;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_killable_future_done_at_once_wins_over_a_kill_and_a_waiting_one_loses() {
        let kill = CancellationToken::new();
        kill.cancel();
        // Done at its first poll: its output, even with the kill switch already thrown.
        assert_eq!(Killable::new(async { 7 }, &kill).await, Some(7));
        // Waiting: dropped by the kill.
        let waiting = std::future::pending::<u32>();
        assert_eq!(Killable::new(waiting, &kill).await, None);
        // Not killed: it runs to its end.
        let alive = CancellationToken::new();
        let later = async {
            tokio::task::yield_now().await;
            8
        };
        assert_eq!(Killable::new(later, alive).await, Some(8));
    }
}
