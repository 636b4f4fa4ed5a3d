//! What a running service offers its extensions ([`ServiceContext`]): its configuration and
//! broker, its stop and kill, its worker slots, tasks a stop waits for, consuming a queue, and
//! the extensions its entrypoints share ([`SharedExtension`]).

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consume::{DeliveryHandler, QueueDeclaration};
use super::container::Shared;
use super::entrypoint::Started;
use crate::config::Config;
use crate::error::Error;
use crate::transport::SharedTransport;

/// One of the service's `max_workers` worker slots, held by a worker from before it starts
/// until its entrypoint has answered.
#[derive(Debug)]
pub struct WorkerSlot {
    _permit: OwnedSemaphorePermit,
}

/// What a running service offers its extensions: its name, configuration and broker, its
/// stop and kill, its worker slots, tasks that a stop waits for, shared extensions.
///
/// Cloning it is cheap.
#[derive(Clone)]
pub struct ServiceContext {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    service: &'static str,
    shared: Shared,
    workers: Arc<Semaphore>,
    tracker: TaskTracker,
    /// The service's shared extensions, in the order they were made.
    extensions: Mutex<Vec<SharedEntry>>,
    /// Every entrypoint of the service, as `list` shows it (set once they are all bound).
    entrypoint_lines: std::sync::OnceLock<Vec<String>>,
}

struct SharedEntry {
    type_id: TypeId,
    value: Arc<dyn Any + Send + Sync>,
    start: StartShared,
}

type StartShared =
    fn(Arc<dyn Any + Send + Sync>, ServiceContext) -> BoxFuture<'static, Result<Started, Error>>;

/// An extension several entrypoints share (Nameko's `SharedExtension`): one per service
/// ([`ServiceContext::service_extension`]), started once every entrypoint of the service has
/// started (so it knows them all), and stopped with the service.
pub trait SharedExtension: Send + Sync + 'static {
    /// Starts the extension (consume a queue the entrypoints registered with, say). The
    /// default starts nothing.
    fn start(
        self: Arc<Self>,
        cx: ServiceContext,
    ) -> impl Future<Output = Result<Started, Error>> + Send {
        let _ = cx;
        async { Ok(Started::idle()) }
    }
}

fn start_shared<T: SharedExtension>(
    value: Arc<dyn Any + Send + Sync>,
    cx: ServiceContext,
) -> BoxFuture<'static, Result<Started, Error>> {
    match value.downcast::<T>() {
        Ok(value) => Box::pin(value.start(cx)),
        Err(_) => Box::pin(async { Ok(Started::idle()) }),
    }
}

impl ServiceContext {
    pub(crate) fn new(service: &'static str, shared: Shared) -> Self {
        let max_workers = shared.config.max_workers.max(1);
        let workers = Arc::new(Semaphore::new(max_workers));
        crate::metrics::watch_worker_slots(service, &workers, max_workers);
        ServiceContext {
            inner: Arc::new(ServiceInner {
                service,
                shared,
                workers,
                tracker: TaskTracker::new(),
                extensions: Mutex::new(Vec::new()),
                entrypoint_lines: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Every entrypoint of the service, as `list` shows it (empty until they are all bound).
    pub(crate) fn entrypoint_lines(&self) -> &[String] {
        self.inner.entrypoint_lines.get().map_or(&[], Vec::as_slice)
    }

    pub(crate) fn set_entrypoint_lines(&self, lines: Vec<String>) {
        let _ = self.inner.entrypoint_lines.set(lines);
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(super) fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.inner.shared.stop
    }

    pub(crate) fn kill_token(&self) -> &CancellationToken {
        &self.inner.shared.kill
    }

    /// The service's name.
    pub fn service_name(&self) -> &'static str {
        self.inner.service
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// The broker.
    pub fn transport(&self) -> &SharedTransport {
        &self.inner.shared.transport
    }

    /// Resolves when the service is asked to stop: stop taking new work (workers running
    /// finish, and the stop waits for them).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.shared.stop.clone().cancelled_owned()
    }

    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        self.inner.shared.stop.is_cancelled()
    }

    /// Resolves when the service is killed: running workers are abandoned (their messages are
    /// neither answered nor acknowledged).
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.shared.kill.clone().cancelled_owned()
    }

    /// Waits for one of the service's `max_workers` worker slots, shared by all its
    /// entrypoints: `None` once the service stops.
    pub async fn worker_slot(&self) -> Option<WorkerSlot> {
        // A free slot at once (the usual case), without waiting on the stop.
        if let Ok(permit) = self.inner.workers.clone().try_acquire_owned() {
            return Some(WorkerSlot { _permit: permit });
        }
        let stop = &self.inner.shared.stop;
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            permit = self.inner.workers.clone().acquire_owned() => {
                permit.ok().map(|permit| WorkerSlot { _permit: permit })
            }
        }
    }

    /// One of the worker slots if one is free now (no waiting).
    pub(crate) fn try_worker_slot(&self) -> Option<WorkerSlot> {
        let permit = self.inner.workers.clone().try_acquire_owned().ok()?;
        Some(WorkerSlot { _permit: permit })
    }

    /// Runs `task` on tokio as part of the service: a stop waits for it (as for the
    /// workers, up to `stop_timeout`), a kill drops it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.tracker.spawn(self.killable(task));
    }

    /// [`spawn`](Self::spawn) on `runtime`, from code that may run outside it (an embedded
    /// broker's inline consumer runs on the publisher's task).
    pub(crate) fn spawn_on(
        &self,
        runtime: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.inner.tracker.spawn_on(self.killable(task), runtime);
    }

    /// `task` as [`spawn`](Self::spawn) runs it (tracked, killable), boxed, to poll before it
    /// is spawned.
    pub(crate) fn prepare(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> std::pin::Pin<Box<impl Future<Output = ()> + Send + 'static>> {
        Box::pin(self.inner.tracker.track_future(self.killable(task)))
    }

    fn killable(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        // The task first: one done at its first poll (most are, on the embedded broker) never
        // waits on the kill switch; a kill drops the others at their next wait.
        super::worker::Killable::new(task, self.inner.shared.kill.clone()).map(drop)
    }

    /// `future`, tracked as part of the service: a stop waits for it (as for the workers, up
    /// to `stop_timeout`). For work the caller awaits itself, such as answering a request;
    /// [`spawn`](Self::spawn) runs it as a task instead.
    pub fn track<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        self.inner.tracker.track_future(future)
    }

    /// Resolves once the service is stopping and every worker and spawned task has finished
    /// (or was killed): when a consumer can be closed without losing an acknowledgement.
    pub async fn workers_finished(&self) {
        self.inner.shared.stop.cancelled().await;
        self.inner.tracker.wait().await;
    }

    /// Consumes `queue` for as long as the service runs, handing each delivery, with a worker
    /// slot, to `handler`: what the RPC and event entrypoints do. `declaration` declares the
    /// queue and its bindings; it runs now, and again if the broker cancels the consumer (its
    /// queue deleted, a node lost), after which the queue is consumed again. A message
    /// redelivered more than `MAX_REDELIVERIES` times goes to
    /// [`DeliveryHandler::give_up`]. At the stop, messages received but not started go back
    /// to the queue at once, and the consumer is closed once the workers have finished.
    pub async fn consume<H: DeliveryHandler>(
        &self,
        declaration: QueueDeclaration,
        handler: Arc<H>,
    ) -> Result<Started, Error> {
        super::consume::start(self.clone(), Arc::new(declaration), handler).await
    }

    /// The service's shared extension of type `T`, made by `make` if no entrypoint of the
    /// service asked for one yet. It is [started](SharedExtension::start) once every
    /// entrypoint of the service has started.
    pub fn service_extension<T: SharedExtension>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut extensions = lock(&self.inner.extensions);
        if let Some(found) = extensions
            .iter()
            .find(|e| e.type_id == TypeId::of::<T>())
            .and_then(|e| e.value.clone().downcast::<T>().ok())
        {
            return found;
        }
        let value = Arc::new(make());
        extensions.push(SharedEntry {
            type_id: TypeId::of::<T>(),
            value: value.clone(),
            start: start_shared::<T>,
        });
        value
    }

    /// The process's shared value of type `T` (one for every service the runner runs), made
    /// by `make` if none was yet: a connection, a registry, a server that several services
    /// use. It has no lifecycle of its own; start what it holds on first use.
    pub fn process_extension<T: Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        self.inner.shared.process_extension(make)
    }

    /// Starts the service's shared extensions not started yet, each once, in the order they
    /// were made.
    pub(crate) async fn start_extensions(&self) -> Result<Vec<Started>, Error> {
        let mut started = Vec::new();
        let mut next = 0;
        loop {
            let entry = {
                let extensions = lock(&self.inner.extensions);
                match extensions.get(next) {
                    Some(entry) => (entry.value.clone(), entry.start),
                    None => break,
                }
            };
            next += 1;
            started.push((entry.1)(entry.0, self.clone()).await?);
        }
        Ok(started)
    }
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
