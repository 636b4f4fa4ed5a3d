//! What a method's worker is given ([`WorkerInput`]) and gives back ([`WorkerOutput`]): the
//! shapes the macro knows how to generate a method's side for. Sealed; each entrypoint module
//! implements them for its own types (`RequestBody` here, the event body in
//! `events::handler`, the HTTP request and response in `http::route`).

use serde_json::Value;

use super::WorkerResult;
use super::arguments::LoggedArguments;
use super::entrypoint::MethodInfo;
use crate::protocol::{RemoteError, RequestBody};

pub(crate) mod sealed {
    use super::*;

    /// What kind of thing fires a worker with this input, for its span's kind
    /// ([`crate::trace::WorkerKind`]).
    #[derive(Clone, Copy, Debug)]
    pub enum InputKind {
        /// A call with JSON arguments.
        Call,
        /// An HTTP request.
        Request,
        /// An event or message from a queue.
        Message,
    }

    impl From<InputKind> for crate::trace::WorkerKind {
        fn from(kind: InputKind) -> Self {
            match kind {
                InputKind::Call => crate::trace::WorkerKind::Call,
                InputKind::Request => crate::trace::WorkerKind::Request,
                InputKind::Message => crate::trace::WorkerKind::Message,
            }
        }
    }

    /// What [`WorkerInput`](super::WorkerInput) needs of its types; not for other crates.
    pub trait Input: Send + Sized + 'static {
        /// Whether tests can fire an entrypoint with this input from JSON arguments.
        const HOOKABLE: bool = true;
        /// What fires workers with this input, for their spans.
        const KIND: InputKind = InputKind::Call;
        /// What is kept of the input, before the method takes it, to show its arguments
        /// if the worker fails.
        type Kept: Send + 'static;
        fn keep(&self) -> Self::Kept;
        /// The arguments a failure's log line shows, sensitive ones redacted.
        fn arguments(
            kept: Self::Kept,
            payload: Option<&[u8]>,
            method: &MethodInfo,
        ) -> Option<LoggedArguments>;
        /// The input from a hook's arguments, and its payload as JSON.
        fn from_hook(args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError>;
    }

    /// What [`WorkerOutput`](super::WorkerOutput) needs of its types; not for other crates.
    pub trait Output: Send + Sized + 'static {
        /// What the worker came to, for the dependencies' `worker_result` and the waiters.
        fn result(&self) -> WorkerResult<'_>;
        /// The outcome of the same worker, failed with `error` (a dependency's
        /// `worker_result` refused a success).
        fn fail(self, error: RemoteError) -> Self;
        /// The outcome of a worker that failed outside its method (a panic, a refusal).
        fn from_error(error: RemoteError) -> Self;
        /// The error to log, if the worker failed in a way the worker path logs (an event
        /// that does not decode is logged by its entrypoint, which drops it).
        fn failure(&self) -> Option<&RemoteError>;
        /// The outcome as a hook returns it.
        fn into_hook(self) -> Result<Value, RemoteError>;
    }
}

/// A type a method can be given by its entrypoint: [`RequestBody`] (JSON arguments: every
/// `#[entrypoint(...)]`, `#[rpc]`, `#[timer]`), `EventBody` (`#[event_handler]`), `HttpCall`
/// (`#[http]`). Sealed: the macro generates the method's side of each.
pub trait WorkerInput: sealed::Input {}
impl<T: sealed::Input> WorkerInput for T {}

/// A type a worker gives its entrypoint: `Result<Vec<u8>, RemoteError>` (the method's value
/// as JSON, or its error), the event handler's outcome, the HTTP response. Sealed, as
/// [`WorkerInput`].
pub trait WorkerOutput: sealed::Output {}
impl<T: sealed::Output> WorkerOutput for T {}

impl sealed::Input for RequestBody {
    type Kept = ();
    fn keep(&self) {}
    fn arguments(
        _kept: (),
        payload: Option<&[u8]>,
        method: &MethodInfo,
    ) -> Option<LoggedArguments> {
        payload.map(|payload| {
            super::arguments::rpc_arguments(payload, method.params(), method.sensitive_arguments())
        })
    }
    fn from_hook(args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError> {
        let body = match args {
            Value::Array(args) => serde_json::json!({"args": args, "kwargs": {}}),
            Value::Object(kwargs) => serde_json::json!({"args": [], "kwargs": kwargs}),
            Value::Null => serde_json::json!({"args": [], "kwargs": {}}),
            one => serde_json::json!({"args": [one], "kwargs": {}}),
        };
        let payload = body.to_string().into_bytes();
        let body = RequestBody::parse(&payload)
            .map_err(|e| RemoteError::nameko("MalformedRequest", e.to_string()))?;
        Ok((body, Some(payload)))
    }
}

impl sealed::Output for Result<Vec<u8>, RemoteError> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ok(json) => WorkerResult::Value(json),
            Err(error) => WorkerResult::Failed(std::borrow::Cow::Borrowed(error)),
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Err(error)
    }
    fn from_error(error: RemoteError) -> Self {
        Err(error)
    }
    fn failure(&self) -> Option<&RemoteError> {
        self.as_ref().err()
    }
    fn into_hook(self) -> Result<Value, RemoteError> {
        let json = self?;
        serde_json::from_slice(&json)
            .map_err(|e| RemoteError::nameko("UnserializableValueError", e.to_string()))
    }
}
