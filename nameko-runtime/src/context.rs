//! The worker context: who is running, on whose behalf, with which context data.
//!
//! Every entrypoint firing runs as a worker with a [`WorkerContext`]. Inside the worker it is
//! reachable with [`WorkerContext::current`], and clients use it to forward the call id stack
//! and the context data on every outgoing call, so users never pass it by hand.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use crate::protocol::{self, CALL_ID_STACK_KEY, Headers};

/// Context data: the `nameko.*` headers of the message that started a worker, without prefix.
pub type ContextData = BTreeMap<String, Value>;

/// Context data as a message brings it: the data, and the callers' call id stack read apart
/// from it (straight into the vector the worker keeps).
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    data: ContextData,
    parent_stack: Option<Parents>,
}

impl Incoming {
    /// From a message's headers: every `nameko.*` header but the call id stack as context data
    /// (without prefix), and the call id stack as the parent stack.
    pub(crate) fn from_headers(headers: &Headers) -> Incoming {
        let mut incoming = Incoming::default();
        for (key, value) in headers {
            if key == protocol::CALL_ID_STACK_HEADER {
                incoming.parent_stack = Some(match headers.shared(key) {
                    // A standalone client's stack, the same for all its calls: not copied.
                    Some(shared) if shared.is_array() => Parents::Shared(shared.clone()),
                    _ => Parents::Ids(parent_stack(value)),
                });
            } else {
                match key.strip_prefix(protocol::HEADER_PREFIX) {
                    // `nameko.<key>` wins over a header named `<key>`, whichever comes first.
                    Some(key) => {
                        incoming.data.insert(key.to_owned(), value.clone());
                    }
                    None => {
                        incoming
                            .data
                            .entry(key.to_owned())
                            .or_insert_with(|| value.clone());
                    }
                }
            }
        }
        incoming
    }
}

impl From<ContextData> for Incoming {
    fn from(data: ContextData) -> Incoming {
        Incoming {
            data,
            parent_stack: None,
        }
    }
}

/// The callers' call ids, oldest first, as a message brings them.
#[derive(Debug, Clone)]
enum Parents {
    Ids(Vec<String>),
    /// A `call_id_stack` list that other messages share (a standalone client's); its strings
    /// are the ids.
    Shared(Arc<Value>),
}

impl Parents {
    /// The last `keep` ids.
    fn last(&self, keep: usize) -> Vec<&str> {
        let mut ids: Vec<&str> = match self {
            Parents::Ids(ids) => ids.iter().map(String::as_str).collect(),
            Parents::Shared(stack) => stack
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect(),
        };
        ids.drain(..ids.len().saturating_sub(keep));
        ids
    }
}

/// The call ids of a `call_id_stack` value.
fn parent_stack(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => {
            let mut stack = Vec::with_capacity(items.len());
            stack.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            stack
        }
        Value::String(single) => vec![single.clone()],
        other => {
            let value = crate::protocol::shorten(other.to_string());
            tracing::warn!(%value, "ignoring a call_id_stack header that is not a list");
            Vec::new()
        }
    }
}

tokio::task_local! {
    /// The worker running the current task; `None` where code runs for no worker on a
    /// worker's task (a request's first poll on its caller's task).
    static CURRENT: Option<Arc<WorkerContext>>;
}

/// Runs `f` as part of no worker, on whatever task runs it (`WorkerContext::current` is `None`).
pub(crate) fn outside_workers<R>(f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(None, f)
}

/// The context of one worker: one firing of one entrypoint.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    service_name: Cow<'static, str>,
    entrypoint: Cow<'static, str>,
    /// The callers' call ids, oldest first (up to `parent_calls_tracked`, as they came).
    parents: Parents,
    /// How many of the callers' ids the stack keeps.
    parent_calls_tracked: usize,
    /// The callers' call ids that are kept, then this worker's own (never empty): made when
    /// first asked for (by a call the worker makes, a log line that shows it), as most workers
    /// never ask.
    call_id_stack: OnceLock<Vec<String>>,
    data: ContextData,
    locals: Locals,
}

type Local = (TypeId, &'static str, Arc<dyn Any + Send + Sync>);

/// Values dependencies keep for one worker (see [`WorkerContext::insert_local`]).
#[derive(Default)]
struct Locals(Mutex<Vec<Local>>);

impl Locals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Local>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clone for Locals {
    fn clone(&self) -> Self {
        Locals(Mutex::new(self.lock().clone()))
    }
}

impl std::fmt::Debug for Locals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.lock().iter().map(|(_, key, _)| key))
            .finish()
    }
}

impl WorkerContext {
    /// The context of a worker of `service.entrypoint` started by a message with these headers.
    ///
    /// The incoming `call_id_stack` becomes the parent stack; the worker's own stack is the parent
    /// stack plus its new call id, keeping the last `parent_calls_tracked + 1` entries.
    pub fn new(
        service_name: &str,
        entrypoint: &str,
        headers: &Headers,
        parent_calls_tracked: usize,
    ) -> Self {
        Self::build(
            Cow::Owned(service_name.to_owned()),
            Cow::Owned(entrypoint.to_owned()),
            Incoming::from_headers(headers),
            parent_calls_tracked,
        )
    }

    /// The context of a worker of `service.entrypoint` with this context data (as decoded from
    /// `nameko.*` headers, `call_id_stack` included if there is a caller).
    pub fn with_data(
        service_name: &str,
        entrypoint: &str,
        data: ContextData,
        parent_calls_tracked: usize,
    ) -> Self {
        Self::build(
            Cow::Owned(service_name.to_owned()),
            Cow::Owned(entrypoint.to_owned()),
            data.into(),
            parent_calls_tracked,
        )
    }

    /// [`with_data`](Self::with_data) for an entrypoint of a running service, whose names live
    /// as long as the program.
    pub(crate) fn for_entrypoint(
        service_name: &'static str,
        entrypoint: &'static str,
        incoming: Incoming,
        parent_calls_tracked: usize,
    ) -> Self {
        Self::build(
            Cow::Borrowed(service_name),
            Cow::Borrowed(entrypoint),
            incoming,
            parent_calls_tracked,
        )
    }

    fn build(
        service_name: Cow<'static, str>,
        entrypoint: Cow<'static, str>,
        incoming: Incoming,
        parent_calls_tracked: usize,
    ) -> Self {
        let Incoming {
            mut data,
            parent_stack: parent,
        } = incoming;
        let parent = match parent {
            Some(parent) => parent,
            None => Parents::Ids(
                data.remove(CALL_ID_STACK_KEY)
                    .map(|value| parent_stack(&value))
                    .unwrap_or_default(),
            ),
        };
        WorkerContext {
            service_name,
            entrypoint,
            parents: parent,
            parent_calls_tracked,
            call_id_stack: OnceLock::new(),
            data,
            locals: Locals::default(),
        }
    }

    /// The context of the worker running the current task, if any.
    pub fn current() -> Option<Arc<WorkerContext>> {
        CURRENT.try_with(Option::clone).ok().flatten()
    }

    /// Runs `future` as part of the worker with this context (what the runtime does for every
    /// worker; useful for tasks a worker spawns that should keep its context).
    pub fn scope<F: Future>(self: Arc<Self>, future: F) -> impl Future<Output = F::Output> {
        // Not an `async fn`: that would keep a second copy of `future` in its state.
        CURRENT.scope(Some(self), future)
    }

    /// Runs `f` synchronously as part of the worker with this context.
    pub fn sync_scope<R>(self: Arc<Self>, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(Some(self), f)
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The entrypoint's (method's) name.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// This worker's call id: `<service>.<method>.<uuid>`.
    pub fn call_id(&self) -> &str {
        self.call_id_stack().last().map_or("", String::as_str)
    }

    /// The call ids of the callers, oldest first, ending with this worker's own; the last
    /// `parent_calls_tracked` callers' only (Nameko's `PARENT_CALLS_TRACKED`).
    pub fn call_id_stack(&self) -> &[String] {
        self.call_id_stack.get_or_init(|| {
            let parents = self.parents.last(self.parent_calls_tracked);
            let mut stack = Vec::with_capacity(parents.len() + 1);
            stack.extend(parents.into_iter().map(str::to_owned));
            stack.push(protocol::new_call_id(&self.service_name, &self.entrypoint));
            stack
        })
    }

    /// The call id of the first call in the chain, if this worker was called by another.
    pub fn origin_call_id(&self) -> Option<&str> {
        let stack = self.call_id_stack();
        (stack.len() > 1).then(|| stack[0].as_str())
    }

    /// The call id of the direct caller, if any.
    pub fn immediate_parent_call_id(&self) -> Option<&str> {
        let stack = self.call_id_stack();
        let n = stack.len();
        (n > 1).then(|| stack[n - 2].as_str())
    }

    /// All context data (without the call id stack).
    pub fn data(&self) -> &ContextData {
        &self.data
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// The `auth_token` context value.
    pub fn auth_token(&self) -> Option<&str> {
        self.text("auth_token")
    }

    /// The `language` context value.
    pub fn language(&self) -> Option<&str> {
        self.text("language")
    }

    /// The `user_id` context value.
    pub fn user_id(&self) -> Option<&str> {
        self.text("user_id")
    }

    /// The `user_agent` context value.
    pub fn user_agent(&self) -> Option<&str> {
        self.text("user_agent")
    }

    /// Keeps `value` for this worker under `key` (with its type), replacing an earlier one: what
    /// a dependency's `worker_setup` does with what it gives the worker (a transaction, a
    /// session), for its methods to find with [`local`](Self::local).
    pub fn insert_local<T: Any + Send + Sync>(&self, key: &'static str, value: T) -> Arc<T> {
        let value = Arc::new(value);
        let mut locals = self.locals.lock();
        locals.retain(|(id, k, _)| !(*id == TypeId::of::<T>() && *k == key));
        locals.push((TypeId::of::<T>(), key, value.clone()));
        value
    }

    /// The value of type `T` kept for this worker under `key`, if any.
    pub fn local<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let locals = self.locals.lock();
        let (_, _, value) = locals
            .iter()
            .find(|(id, k, _)| *id == TypeId::of::<T>() && *k == key)?;
        value.clone().downcast::<T>().ok()
    }

    /// Removes and returns the value of type `T` kept for this worker under `key`.
    pub fn remove_local<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let mut locals = self.locals.lock();
        let index = locals
            .iter()
            .position(|(id, k, _)| *id == TypeId::of::<T>() && *k == key)?;
        locals.swap_remove(index).2.downcast::<T>().ok()
    }

    /// The headers for a message sent by this worker: its context data and its call id stack.
    pub fn outgoing_headers(&self) -> Headers {
        let mut headers = protocol::with_context(&self.data, 1);
        headers.insert(
            protocol::CALL_ID_STACK_HEADER,
            Value::Array(
                self.call_id_stack()
                    .iter()
                    .map(|id| Value::String(id.clone()))
                    .collect(),
            ),
        );
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stack_grows_by_own_call_id_and_is_truncated() {
        let parents: Vec<String> = (0..12).map(|i| format!("p.m.{i}")).collect();
        let headers: Headers = [
            ("nameko.call_id_stack".to_owned(), json!(parents)),
            ("nameko.language".to_owned(), json!("en-gb")),
        ]
        .into();
        let ctx = WorkerContext::new("svc", "greet", &headers, 10);
        assert_eq!(ctx.call_id_stack().len(), 11);
        assert_eq!(
            ctx.call_id_stack().last().map(String::as_str),
            Some(ctx.call_id())
        );
        assert_eq!(ctx.call_id_stack()[0], "p.m.2");
        assert_eq!(ctx.immediate_parent_call_id(), Some("p.m.11"));
        assert_eq!(ctx.language(), Some("en-gb"));
        let out = ctx.outgoing_headers();
        assert_eq!(out["nameko.language"], json!("en-gb"));
        assert_eq!(
            out["nameko.call_id_stack"].as_array().map(Vec::len),
            Some(11)
        );
    }

    #[test]
    fn a_worker_without_callers_has_only_its_own_id() {
        let ctx = WorkerContext::new("svc", "m", &Headers::new(), 10);
        assert_eq!(ctx.call_id_stack(), [ctx.call_id().to_owned()]);
        assert_eq!(ctx.origin_call_id(), None);
    }

    #[test]
    fn a_malformed_stack_header_is_ignored() {
        let headers: Headers = [("nameko.call_id_stack".to_owned(), json!(5))].into();
        let ctx = WorkerContext::new("svc", "m", &headers, 10);
        assert_eq!(ctx.call_id_stack().len(), 1);
    }

    #[test]
    fn the_prefixed_header_wins_whatever_the_order() {
        for headers in [
            Headers::from([("language", json!("fr")), ("nameko.language", json!("en"))]),
            Headers::from([("nameko.language", json!("en")), ("language", json!("fr"))]),
        ] {
            let ctx = WorkerContext::new("svc", "m", &headers, 10);
            assert_eq!(ctx.language(), Some("en"), "{headers:?}");
            assert_eq!(protocol::context_from_headers(&headers)["language"], "en");
        }
    }

    #[test]
    fn a_shared_stack_is_read_as_the_callers_ids() {
        let shared = Arc::new(json!(["a.b.1", 7, "c.d.2"]));
        let mut headers = Headers::new();
        headers.insert_shared("nameko.call_id_stack", shared);
        let ctx = WorkerContext::new("svc", "m", &headers, 1);
        assert_eq!(ctx.call_id_stack()[0], "c.d.2");
        assert_eq!(ctx.call_id_stack().len(), 2);
        assert_eq!(ctx.immediate_parent_call_id(), Some("c.d.2"));
    }
}
