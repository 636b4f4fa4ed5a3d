//! Entrypoint hooks and waiters: firing an entrypoint of a running service directly, and
//! waiting for one of its workers to finish (Nameko's `entrypoint_hook` and
//! `entrypoint_waiter`). [`crate::testing`] re-exports them for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::context::{ContextData, WorkerContext};
use crate::protocol::RemoteError;

/// Fires an entrypoint directly: arguments as JSON, context data.
pub(crate) type Hook =
    Arc<dyn Fn(Value, ContextData) -> BoxFuture<'static, Result<Value, RemoteError>> + Send + Sync>;

/// How long hooks and waiters wait by default, as in Nameko.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker that finished: what an [`EntrypointWaiter`] returns.
#[derive(Debug, Clone)]
pub struct FinishedWorker {
    context: Arc<WorkerContext>,
    payload: Option<Value>,
    result: Result<Value, RemoteError>,
}

impl FinishedWorker {
    pub(crate) fn new(
        context: Arc<WorkerContext>,
        payload: Option<Value>,
        result: Result<Value, RemoteError>,
    ) -> Self {
        FinishedWorker {
            context,
            payload,
            result,
        }
    }

    /// The worker's context: service, entrypoint, call id, context data.
    pub fn context(&self) -> &WorkerContext {
        &self.context
    }

    /// What fired the worker, as JSON: an event handler's event payload; an RPC method's
    /// request, `{"args": [...], "kwargs": {...}}` (from a hook too). `None` for timers and HTTP
    /// requests.
    pub fn payload(&self) -> Option<&Value> {
        self.payload.as_ref()
    }

    /// What the method returned (`null` for event handlers, timers, HTTP endpoints), or its
    /// error.
    pub fn result(&self) -> Result<&Value, &RemoteError> {
        self.result.as_ref()
    }

    /// The result, owned.
    pub fn into_result(self) -> Result<Value, RemoteError> {
        self.result
    }
}

/// Fires one entrypoint of a running service directly (Nameko's `entrypoint_hook`): no broker,
/// no queue, but a real worker (a worker slot, a context, the dependencies' hooks).
///
/// Made by [`RunningServices::entrypoint_hook`](crate::RunningServices::entrypoint_hook).
#[derive(Clone)]
pub struct EntrypointHook {
    service: String,
    entrypoint: String,
    hook: Hook,
    context_data: ContextData,
    timeout: Duration,
}

impl std::fmt::Debug for EntrypointHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrypointHook")
            .field("service", &self.service)
            .field("entrypoint", &self.entrypoint)
            .field("context_data", &self.context_data)
            .finish_non_exhaustive()
    }
}

impl EntrypointHook {
    pub(crate) fn new(service: &str, entrypoint: &str, hook: Hook) -> Self {
        EntrypointHook {
            service: service.to_owned(),
            entrypoint: entrypoint.to_owned(),
            hook,
            context_data: ContextData::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The worker runs with this context data (`auth_token`, `language`, any key), as if its
    /// message had carried it in `nameko.*` headers.
    pub fn with_context_data(mut self, data: ContextData) -> Self {
        self.context_data = data;
        self
    }

    /// How long [`call`](Self::call) waits for the worker (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fires the entrypoint and returns what the method returned, as JSON, or its error.
    ///
    /// `args` are the method's arguments: a JSON array binds by position, an object by name,
    /// `()` means none, any other value is the only argument. An event handler takes its
    /// payload; a timer takes none.
    pub async fn call<A: Serialize>(&self, args: A) -> Result<Value, RemoteError> {
        let args = serde_json::to_value(args)
            .map_err(|e| RemoteError::nameko_rs("ArgumentError", e.to_string()))?;
        let args = match args {
            Value::Array(items) if items.is_empty() => Value::Null,
            other => other,
        };
        let call = (self.hook)(args, self.context_data.clone());
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::nameko_rs(
                "Timeout",
                format!(
                    "Timeout on {}.{} after {:?}",
                    self.service, self.entrypoint, self.timeout
                ),
            )),
        }
    }
}

/// Why an [`EntrypointWaiter`] stopped waiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No matching worker finished in time.
    #[error("Timeout on {service}.{entrypoint} after {after:?}")]
    Timeout {
        /// The service waited on.
        service: String,
        /// The entrypoint waited on.
        entrypoint: String,
        /// How long it waited.
        after: Duration,
    },
    /// The services stopped.
    #[error("the services stopped while waiting for {service}.{entrypoint}")]
    Stopped {
        /// The service waited on.
        service: String,
        /// The entrypoint waited on.
        entrypoint: String,
    },
    /// None of the running services has this entrypoint: nothing could ever finish.
    #[error("no running service `{service}` has an entrypoint `{entrypoint}` to wait for")]
    NoSuchEntrypoint {
        /// The service named.
        service: String,
        /// The entrypoint named.
        entrypoint: String,
    },
}

type Filter = Box<dyn Fn(&FinishedWorker) -> bool + Send + Sync>;

/// Counts a waiter as listening, for as long as it lives: workers are announced only while
/// one listens.
struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits until a worker of one entrypoint has finished, dependencies torn down (Nameko's
/// `entrypoint_waiter`): for event handlers, timers, anything the test does not call itself.
///
/// Made by [`RunningServices::entrypoint_waiter`](crate::RunningServices::entrypoint_waiter); it listens from the moment it is made.
pub struct EntrypointWaiter {
    service: String,
    entrypoint: String,
    /// Whether the running services have this entrypoint.
    known: bool,
    receiver: broadcast::Receiver<FinishedWorker>,
    listening: Listening,
    timeout: Duration,
    filter: Option<Filter>,
}

impl std::fmt::Debug for EntrypointWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntrypointWaiter")
            .field("service", &self.service)
            .field("entrypoint", &self.entrypoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EntrypointWaiter {
    pub(crate) fn new(
        service: &str,
        entrypoint: &str,
        known: bool,
        receiver: broadcast::Receiver<FinishedWorker>,
        waiters: Arc<AtomicUsize>,
    ) -> Self {
        waiters.fetch_add(1, Ordering::Relaxed);
        EntrypointWaiter {
            service: service.to_owned(),
            entrypoint: entrypoint.to_owned(),
            known,
            receiver,
            listening: Listening(waiters),
            timeout: DEFAULT_TIMEOUT,
            filter: None,
        }
    }

    /// How long [`wait`](Self::wait) waits (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits only for a worker `filter` accepts (Nameko's `callback`), e.g. one whose payload
    /// or result is the one the test is about.
    pub fn with_filter(
        mut self,
        filter: impl Fn(&FinishedWorker) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Box::new(filter));
        self
    }

    /// Waits for the next matching worker to finish and returns it (its result may be an
    /// error: the worker finished, failing).
    pub async fn wait(mut self) -> Result<FinishedWorker, WaitError> {
        if !self.known {
            return Err(WaitError::NoSuchEntrypoint {
                service: self.service,
                entrypoint: self.entrypoint,
            });
        }
        let _listening = &self.listening;
        let (service, entrypoint) = (self.service.clone(), self.entrypoint.clone());
        let wait = async {
            loop {
                match self.receiver.recv().await {
                    Ok(worker)
                        if worker.context.service_name() == service
                            && worker.context.entrypoint() == entrypoint
                            && self.filter.as_ref().is_none_or(|f| f(&worker)) =>
                    {
                        return Ok(worker);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(WaitError::Stopped {
                            service: service.clone(),
                            entrypoint: entrypoint.clone(),
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(WaitError::Timeout {
                service: self.service,
                entrypoint: self.entrypoint,
                after: self.timeout,
            }),
        }
    }
}
