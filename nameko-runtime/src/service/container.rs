//! One running service: its start (dependencies, then entrypoints, then the extensions they
//! share), its life (the loops its entrypoints started, watched at once), and its stop (the
//! workers finish within `stop_timeout`, then the dependencies stop).
//!
//! What fires the workers is not here: each entrypoint starts itself on the public
//! [`Entrypoint`](super::Entrypoint) API (`rpc::server`, `events::handler`, `http::route`,
//! `timer`), and every worker takes the path in [`super::worker`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::entrypoint::Started;
use super::extension::ServiceContext;
use super::hooks::{FinishedWorker, Hook};
use super::{DependencyContext, Replacements, Service, WorkerResult};
use crate::config::Config;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::transport::SharedTransport;

/// What every container of a runner shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) transport: SharedTransport,
    pub(crate) stop: CancellationToken,
    pub(crate) kill: CancellationToken,
    /// Every hookable entrypoint's hook, by service and entrypoint.
    pub(crate) hooks: Arc<Mutex<HashMap<(&'static str, &'static str), Hook>>>,
    /// Where finished workers are announced to entrypoint waiters.
    pub(crate) finished: broadcast::Sender<FinishedWorker>,
    /// How many entrypoint waiters listen (the sender's own count takes a lock).
    pub(crate) waiters: Arc<AtomicUsize>,
    /// The process's shared values ([`ServiceContext::process_extension`]), by type.
    pub(crate) extensions: ProcessExtensions,
}

/// A process extension, by its type.
type Extension = (TypeId, Arc<dyn Any + Send + Sync>);

/// The values the services of one process share, one of each type (clone it freely: clones
/// share them).
#[derive(Clone, Default)]
pub(crate) struct ProcessExtensions(Arc<Mutex<Vec<Extension>>>);

impl ProcessExtensions {
    /// The value of type `T`, made by `make` if there is none yet.
    pub(crate) fn get_or_make<T: Send + Sync + 'static>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut extensions = lock(&self.0);
        if let Some(found) = Self::find::<T>(&extensions) {
            return found;
        }
        let value = Arc::new(make());
        extensions.push((TypeId::of::<T>(), value.clone()));
        value
    }

    /// The value of type `T`, if one was made.
    pub(crate) fn existing<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        Self::find::<T>(&lock(&self.0))
    }

    fn find<T: Send + Sync + 'static>(extensions: &[Extension]) -> Option<Arc<T>> {
        extensions
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, value)| value.clone().downcast::<T>().ok())
    }
}

impl Shared {
    pub(crate) fn new(config: Config, transport: SharedTransport, stop: CancellationToken) -> Self {
        Shared {
            config,
            transport,
            stop,
            kill: CancellationToken::new(),
            hooks: Arc::default(),
            finished: broadcast::channel(1024).0,
            waiters: Arc::default(),
            extensions: ProcessExtensions::default(),
        }
    }

    /// Announces a finished worker, if an entrypoint waiter listens.
    pub(crate) fn worker_finished(
        &self,
        context: &Arc<WorkerContext>,
        payload: Option<&[u8]>,
        result: &WorkerResult<'_>,
    ) {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        let result = match result {
            WorkerResult::Value(json) => {
                Ok(serde_json::from_slice(json).unwrap_or(serde_json::Value::Null))
            }
            WorkerResult::Done => Ok(serde_json::Value::Null),
            WorkerResult::Failed(error) => Err(error.clone().into_owned()),
        };
        let payload = payload.and_then(|json| serde_json::from_slice(json).ok());
        let _ = self
            .finished
            .send(FinishedWorker::new(context.clone(), payload, result));
    }

    /// The process's shared value of type `T`, made by `make` if there is none yet.
    pub(crate) fn process_extension<T: Send + Sync + 'static>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        self.extensions.get_or_make(make)
    }

    /// The process's shared value of type `T`, if one was made.
    pub(crate) fn existing_extension<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.extensions.existing()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A started service. Stop it through the runner's [`StopHandle`](crate::StopHandle).
pub(crate) struct ServiceContainer {
    pub(crate) name: &'static str,
    /// The names of all its entrypoints, restricted or not.
    pub(crate) entrypoints: Vec<&'static str>,
    pub(crate) task: JoinHandle<Result<(), Error>>,
}

/// What a started service may be given besides its configuration (by tests, mostly).
#[derive(Default)]
pub(crate) struct ServiceOptions {
    /// Values for fields, used instead of building them.
    pub(crate) replacements: Replacements,
    /// When set, only these entrypoints fire (the others can still be hooked).
    pub(crate) restrict: Option<Vec<String>>,
}

/// Starts the container of service `S`: builds and starts its dependencies, then its
/// entrypoints.
pub(crate) fn start<S: Service>(
    shared: Shared,
    options: ServiceOptions,
) -> BoxFuture<'static, Result<ServiceContainer, Error>> {
    Box::pin(async move {
        let cx = DependencyContext::new(
            S::NAME,
            shared.config.clone(),
            shared.transport.clone(),
            options.replacements,
            shared.extensions.clone(),
        );
        let service = Arc::new(S::build(&cx).await?);
        cx.check_replacements_taken()?;
        if let Some(restrict) = &options.restrict {
            let names: Vec<_> = S::entrypoints().iter().map(|e| e.name()).collect();
            if let Some(unknown) = restrict.iter().find(|r| !names.contains(&r.as_str())) {
                return Err(Error::NoSuchEntrypoint {
                    service: S::NAME.to_owned(),
                    entrypoint: unknown.clone(),
                    entrypoints: names.join(", "),
                });
            }
        }
        service.start().await?;
        match listen(service.clone(), options.restrict, &shared).await {
            Ok(container) => Ok(container),
            Err(error) => {
                // Started dependencies are stopped again.
                service.stop().await;
                Err(error)
            }
        }
    })
}

/// Registers the hooks, starts the entrypoints (those not restricted out) and the extensions
/// they share, and spawns the container's life: everything of a start after the dependencies
/// have started.
async fn listen<S: Service>(
    service: Arc<S>,
    restrict: Option<Vec<String>>,
    shared: &Shared,
) -> Result<ServiceContainer, Error> {
    // This container's stop (by the runner, or when one of its loops fails) and kill (by the
    // runner, or when its workers outlive the stop timeout): cancelling them touches no other
    // container.
    let mut shared = shared.clone();
    shared.stop = shared.stop.child_token();
    shared.kill = shared.kill.child_token();
    let cx = ServiceContext::new(S::NAME, shared.clone());
    let mut names = Vec::new();
    let mut loops = Vec::new();
    let fail = |error: Error, cx: &ServiceContext| {
        // Whatever already runs (a consumer) ends.
        cx.stop_token().cancel();
        cx.kill_token().cancel();
        error
    };
    let mut lines = Vec::new();
    for entrypoint in S::entrypoints() {
        let name = entrypoint.name();
        names.push(name);
        lines.push(entrypoint.describe());
        let binding = entrypoint.bind(service.clone(), &cx);
        if let Some(hook) = binding.hook {
            lock(&shared.hooks).insert((S::NAME, name), hook);
        }
        let restricted_out = restrict
            .as_ref()
            .is_some_and(|r| !r.iter().any(|r| r == name));
        if restricted_out {
            continue;
        }
        let started = binding.start.await.map_err(|e| fail(e, &cx))?;
        loops.extend(started.run);
    }
    cx.set_entrypoint_lines(lines);
    let extensions = cx.start_extensions().await.map_err(|e| fail(e, &cx))?;
    loops.extend(
        extensions
            .into_iter()
            .filter_map(|started: Started| started.run),
    );
    tracing::info!(service = S::NAME, entrypoints = ?names, "service started");
    let lifecycle: Arc<dyn Lifecycle> = service;
    let task = tokio::spawn(run(cx, lifecycle, loops));
    Ok(ServiceContainer {
        name: S::NAME,
        entrypoints: names,
        task,
    })
}

/// The service's dependencies, as the (non-generic) end of a container sees them.
trait Lifecycle: Send + Sync + 'static {
    fn stop(&self) -> BoxFuture<'_, ()>;
    fn kill(&self);
}

impl<S: Service> Lifecycle for S {
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(super::Dependencies::stop(self))
    }
    fn kill(&self) {
        super::Dependencies::kill(self)
    }
}

/// A container's life after its start: run until stopped (the first loop to fail stops it),
/// let the running workers and the loops finish (up to the stop timeout, then kill them), stop
/// its dependencies (up to the stop timeout too, then kill them).
async fn run(
    cx: ServiceContext,
    dependencies: Arc<dyn Lifecycle>,
    loops: Vec<BoxFuture<'static, Result<(), Error>>>,
) -> Result<(), Error> {
    let service = cx.service_name();
    let (stop, kill) = (cx.stop_token().clone(), cx.kill_token().clone());
    let stop_timeout = cx.config().stop_timeout;
    // From the stop on, the workers' tracker can be waited for (loops wait for it to close
    // their consumers).
    tokio::spawn({
        let (stop, tracker) = (stop.clone(), cx.tracker().clone());
        async move {
            stop.cancelled().await;
            tracker.close();
        }
    });
    let mut loops: futures_util::stream::FuturesUnordered<_> =
        loops.into_iter().map(tokio::spawn).collect();
    let drained = {
        let (stop, tracker) = (stop.clone(), cx.tracker().clone());
        async move {
            let mut failure = None;
            while let Some(ended) = loops.next().await {
                let error = match ended {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(e) => format!("an entrypoint's loop ended abnormally: {e}"),
                };
                failure.get_or_insert(error);
                stop.cancel();
            }
            // Every loop ended (or there were none: HTTP routes, hooks): run until stopped.
            stop.cancelled().await;
            tracker.wait().await;
            failure
        }
    };
    tokio::pin!(drained);
    let finished = tokio::select! {
        biased;
        failure = &mut drained => Some(failure),
        _ = stop.cancelled() => None,
    };
    let failure = match finished {
        Some(failure) => failure,
        // Stopping: the workers (and timer runs) in progress finish, within the stop timeout.
        None => tokio::select! {
            failure = &mut drained => failure,
            _ = kill.cancelled() => drained.await,
            _ = tokio::time::sleep(stop_timeout) => {
                tracing::warn!(service, "workers still running after the stop timeout; killing them");
                kill.cancel();
                drained.await
            }
        },
    };
    if kill.is_cancelled() {
        dependencies.kill();
    } else {
        tokio::select! {
            _ = dependencies.stop() => {}
            _ = kill.cancelled() => dependencies.kill(),
            _ = tokio::time::sleep(stop_timeout) => {
                tracing::warn!(service, "dependencies still stopping after the stop timeout; killing them");
                dependencies.kill();
            }
        }
    }
    tracing::info!(service, "service stopped");
    match failure {
        Some(reason) => {
            tracing::error!(service, %reason, "service failed");
            Err(Error::ServiceFailed {
                service: service.to_owned(),
                reason,
            })
        }
        None => Ok(()),
    }
}
