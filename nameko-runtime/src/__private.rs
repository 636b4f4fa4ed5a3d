//! Items the generated code refers to. Not a public API: names may change at any time.

// A rejected HTTP request is answered at once: the response is the natural error type.
#![allow(clippy::result_large_err)]

use serde::Serialize;
use serde::de::DeserializeOwned;

// What expansions name.
pub use crate::Error;
pub use crate::context::WorkerContext;
pub use crate::error::select::{ViaDisplay, ViaToRemoteError, Wrap};
pub use crate::events::{EventHandler, HandlerType};
pub use crate::http::Http;
pub use crate::messaging::Consume;
pub use crate::rpc::args::{BoundArgs, Param};
pub use crate::rpc::{Dummy, Rpc};
pub use crate::runner::ServiceRegistration;
pub use crate::service::{
    BoundEntrypoint, Dependencies, Dependency, DependencyContext, MethodInfo, Service,
    ServiceClient, WorkerResult,
};
pub use crate::timer::{Once, Timer};
pub use crate::websocket::WsRpc;
pub use inventory;
pub use std::time::Duration;

use crate::events::EventError;
use crate::protocol::{RemoteError, RequestBody};
use crate::service::Entrypoint;
use crate::{RpcError, ServiceProxy};
use std::sync::Arc;

/// Runs a synchronous method on the blocking pool, inside the current worker's context.
pub async fn run_blocking<R, F>(f: F) -> Result<R, RemoteError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let context = crate::WorkerContext::current();
    let task = tokio::task::spawn_blocking(move || match context {
        Some(context) => context.sync_scope(f),
        None => f(),
    });
    match task.await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => Err(crate::service::worker::panic_error(e.into_panic().as_ref())),
        Err(e) => Err(RemoteError::nameko_rs("WorkerCancelled", e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Types on the wire.
//
// Each trait below has two implementations: the one every serde type uses (`Json`), and one no
// type can use (`Unreachable`, bounded by `Impossible`, which nothing implements). With two
// candidates, the compiler reports a type that is not JSON as one error, the trait's own
// message at the user's type, rather than one error for each serde trait it lacks. Expansions
// name each type as `<Type as Trait<_>>`, spanned at the user's type at every use, so that one
// error is shown once.

/// The implementations for serde types.
pub struct Json;

/// The implementations no type can use (see above).
pub struct Unreachable;

/// Implemented by no type.
pub trait Impossible {}

/// A type that can be an argument of an RPC method: it crosses the wire both ways (the server
/// reads it, the generated client sends it).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of an RPC method",
    label = "this type must implement `serde::Serialize` and `serde::Deserialize` (owned)",
    note = "RPC arguments arrive as JSON: derive `Serialize` and `Deserialize`, and use owned types (`String`, not `&str`)"
)]
pub trait RpcArgument<Via>: Sized {
    /// Reads parameter `index` of a bound call; a value of the wrong type is an
    /// `IncorrectSignature`.
    fn decode_argument(args: &mut BoundArgs, index: usize) -> Result<Self, RemoteError>;
    /// Encodes one argument of a typed client's call.
    fn encode_argument(&self) -> Result<RawArgument, RpcError>;
}

impl<T: Serialize + DeserializeOwned> RpcArgument<Json> for T {
    fn decode_argument(args: &mut BoundArgs, index: usize) -> Result<Self, RemoteError> {
        args.take(index)
    }

    fn encode_argument(&self) -> Result<RawArgument, RpcError> {
        serde_json::value::to_raw_value(self)
            .map_err(|e| RpcError::Serialization(format!("arguments: {e}")))
    }
}

impl<T: Impossible> RpcArgument<Unreachable> for T {
    fn decode_argument(_: &mut BoundArgs, _: usize) -> Result<Self, RemoteError> {
        unreachable!("no type implements `Impossible`")
    }

    fn encode_argument(&self) -> Result<RawArgument, RpcError> {
        unreachable!("no type implements `Impossible`")
    }
}

/// A type that can be the result of an RPC method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of an RPC method",
    label = "this type must implement `serde::Serialize` and `serde::Deserialize`",
    note = "RPC results travel as JSON: derive `Serialize` and `Deserialize` for it"
)]
pub trait RpcResult<Via>: Sized {
    /// Encodes a method's result; a value JSON cannot hold gives Nameko's
    /// `UnserializableValueError`.
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError>;
    /// Reads a reply as this result, or the error it carries.
    fn decode_result(reply: &[u8]) -> Result<Self, RpcError>;
}

impl<T: Serialize + DeserializeOwned> RpcResult<Json> for T {
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError> {
        <T as JsonResult<Json>>::encode_result(self)
    }

    fn decode_result(reply: &[u8]) -> Result<Self, RpcError> {
        crate::rpc::client::decode_reply(reply)
    }
}

impl<T: Impossible> RpcResult<Unreachable> for T {
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError> {
        unreachable!("no type implements `Impossible`")
    }

    fn decode_result(_: &[u8]) -> Result<Self, RpcError> {
        unreachable!("no type implements `Impossible`")
    }
}

/// A type that can be the result of a method no generated client calls (`#[ws_rpc]`,
/// `#[dummy]`, `#[entrypoint(...)]`): it only goes out, so it need not deserialise.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of this method",
    label = "this type must implement `serde::Serialize`",
    note = "the result is sent as JSON: derive `Serialize` for it"
)]
pub trait JsonResult<Via>: Sized {
    /// Encodes the method's result; a value JSON cannot hold gives Nameko's
    /// `UnserializableValueError`.
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError>;
}

impl<T: Serialize> JsonResult<Json> for T {
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError> {
        serde_json::to_vec(self).map_err(|e| {
            RemoteError::nameko(
                "UnserializableValueError",
                format!("Unserializable value: `{e}`"),
            )
            .with_args(Vec::new())
        })
    }
}

impl<T: Impossible> JsonResult<Unreachable> for T {
    fn encode_result(&self) -> Result<Vec<u8>, RemoteError> {
        unreachable!("no type implements `Impossible`")
    }
}

/// A type that can be the payload of an event handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the payload of an event handler",
    label = "this type must implement `serde::Deserialize` (owned)",
    note = "event payloads arrive as JSON: derive `Deserialize` for it, and use owned types"
)]
pub trait EventPayload<Via>: Sized {
    /// Decodes an event's payload into the handler's parameter type.
    fn decode_payload(body: &[u8]) -> Result<Self, EventError>;
}

impl<T: DeserializeOwned> EventPayload<Json> for T {
    fn decode_payload(body: &[u8]) -> Result<Self, EventError> {
        serde_json::from_slice(body)
            .map_err(|e| EventError::Payload(crate::protocol::shorten(e.to_string())))
    }
}

impl<T: Impossible> EventPayload<Unreachable> for T {
    fn decode_payload(_: &[u8]) -> Result<Self, EventError> {
        unreachable!("no type implements `Impossible`")
    }
}

/// A type that can be the body of a message a `#[consume]` method takes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the body of a `#[consume]` method's message",
    label = "this type must implement `serde::Deserialize` (owned)",
    note = "messages are JSON: derive `Deserialize` for it, and use owned types"
)]
pub trait MessageBody<Via>: Sized {
    /// Decodes a message's body into the method's parameter type.
    fn decode_body(body: &[u8]) -> Result<Self, EventError>;
}

impl<T: DeserializeOwned> MessageBody<Json> for T {
    fn decode_body(body: &[u8]) -> Result<Self, EventError> {
        <T as EventPayload<Json>>::decode_payload(body)
    }
}

impl<T: Impossible> MessageBody<Unreachable> for T {
    fn decode_body(_: &[u8]) -> Result<Self, EventError> {
        unreachable!("no type implements `Impossible`")
    }
}

/// An entrypoint of the user's own (`#[entrypoint(...)]`): one whose method is called with
/// JSON arguments and gives its result as JSON.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in `#[entrypoint(...)]`",
    label = "this must be an entrypoint whose methods take JSON arguments",
    note = "`#[entrypoint(...)]` takes a value whose type implements `nameko::service::Entrypoint` with `type Input = RequestBody` and `type Output = Result<Vec<u8>, RemoteError>`"
)]
pub trait ArgumentsEntrypoint<S, Via>: Sized {
    /// Binds the entrypoint to its method.
    fn bind<H, F>(self, method: MethodInfo, handler: H) -> BoundEntrypoint<S>
    where
        H: Fn(Arc<S>, RequestBody) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'static;
}

impl<S: Service, E> ArgumentsEntrypoint<S, Json> for E
where
    E: Entrypoint<Input = RequestBody, Output = Result<Vec<u8>, RemoteError>>,
{
    fn bind<H, F>(self, method: MethodInfo, handler: H) -> BoundEntrypoint<S>
    where
        H: Fn(Arc<S>, RequestBody) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'static,
    {
        BoundEntrypoint::new(self, method, handler)
    }
}

impl<S: Service, E: Impossible> ArgumentsEntrypoint<S, Unreachable> for E {
    fn bind<H, F>(self, _: MethodInfo, _: H) -> BoundEntrypoint<S>
    where
        H: Fn(Arc<S>, RequestBody) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'static,
    {
        unreachable!("no type implements `Impossible`")
    }
}

/// Binds an `#[entrypoint(...)]` to its method.
pub fn bind_entrypoint<S: Service, Via, E: ArgumentsEntrypoint<S, Via>, H, F>(
    entrypoint: E,
    method: MethodInfo,
    handler: H,
) -> BoundEntrypoint<S>
where
    H: Fn(Arc<S>, RequestBody) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, RemoteError>> + Send + 'static,
{
    entrypoint.bind(method, handler)
}

/// One argument of a typed client's call, already encoded.
pub type RawArgument = Box<serde_json::value::RawValue>;

/// A typed client's call; `decode` reads the reply (`<R as RpcResult<_>>::decode_result`).
pub fn call<'a, R>(
    proxy: &'a ServiceProxy,
    method: &'a str,
    args: &'a [RawArgument],
    decode: fn(&[u8]) -> Result<R, RpcError>,
) -> impl Future<Output = Result<R, RpcError>> + Send + use<'a, R> {
    proxy.call_decoded(method, args, decode)
}

/// Builds one field of a service struct: its replacement if a test gave one, else `build()`
/// (`<Type as Dependency>::build`).
pub async fn build_dependency<T: 'static, F>(
    cx: &DependencyContext,
    field: &'static str,
    build: impl FnOnce() -> F,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    if let Some(value) = cx.take_replacement(field) {
        return value
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| Error::Dependency {
                service: cx.service_name().to_owned(),
                dependency: field.to_owned(),
                reason: format!(
                    "the replacement given for it is not a `{}`",
                    std::any::type_name::<T>()
                ),
            });
    }
    build().await.map_err(|e| match e {
        Error::Dependency { .. } => e,
        other => Error::Dependency {
            service: cx.service_name().to_owned(),
            dependency: field.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    crate::service::worker::panic_error(panic).value
}

/// Runs one dependency's hook; a panic is logged and the others still run.
pub async fn guard(field: &'static str, hook: &'static str, future: impl Future<Output = ()>) {
    use futures_util::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!(dependency = field, hook, panic = %panic_message(panic.as_ref()), "a dependency's hook panicked");
    }
}

/// Runs one dependency's `kill`; a panic is logged and the others are still killed.
pub fn guard_kill(field: &'static str, kill: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(kill)) {
        tracing::error!(dependency = field, hook = "kill", panic = %panic_message(panic.as_ref()), "a dependency's hook panicked");
    }
}

/// Runs one dependency's fallible worker hook; a panic is its error.
pub async fn guard_result(
    field: &'static str,
    hook: &'static str,
    future: impl Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let reason = format!("{hook} panicked: {}", panic_message(panic.as_ref()));
            tracing::error!(dependency = field, hook, %reason, "a dependency's hook panicked");
            Err(Error::Dependency {
                service: crate::WorkerContext::current()
                    .map(|w| w.service_name().to_owned())
                    .unwrap_or_default(),
                dependency: field.to_owned(),
                reason,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

pub use crate::http::call::{Converter, HttpCall, Segment};
// Named by the errors of an HTTP method whose result is not a response (rustc would name the
// trait by axum-core's private path otherwise).
pub use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::FutureExt as _;
use std::future::Future;

/// The response for a panic in a synchronous handler (logged by the container, which finds
/// the error object in the response).
pub fn panic_response(panic: RemoteError) -> Response {
    crate::http::error_response(&panic, &[])
}

/// A route parameter as the handler's parameter type; a value that does not convert is a 404,
/// as in Nameko.
pub fn path_param<T: std::str::FromStr>(
    path: &crate::http::call::PathValues,
    index: usize,
) -> Result<T, Response> {
    path.get(index)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| (axum::http::StatusCode::NOT_FOUND, "Not Found\n").into_response())
}

/// An extractor that reads only the request's head.
pub async fn extract_parts<T>(parts: &mut axum::http::request::Parts) -> Result<T, Response>
where
    T: axum::extract::FromRequestParts<()>,
{
    T::from_request_parts(parts, &())
        .await
        .map_err(IntoResponse::into_response)
}

/// The last extractor, which may read the body. A `map` rather than an `async fn`, which would
/// hold the request's parts twice: the handler's future holds this one.
pub fn extract_last<T, M>(
    parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> impl Future<Output = Result<T, Response>> + Send
where
    T: axum::extract::FromRequest<(), M>,
{
    T::from_request(axum::extract::Request::from_parts(parts, body), &())
        .map(|extracted| extracted.map_err(IntoResponse::into_response))
}

/// A value a handler may return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of an HTTP method",
    label = "this type must implement `axum::response::IntoResponse`",
    note = "return a `String`, `(StatusCode, body)`, `(StatusCode, headers, body)`, `Json<T>`, or anything implementing `IntoResponse`"
)]
pub trait HttpResult: IntoResponse {}
impl<T: IntoResponse> HttpResult for T {}

/// The response for a handler's value.
pub fn http_response<T: HttpResult>(value: T) -> Response {
    value.into_response()
}

/// An error returned by an HTTP handler, mapped at the user's call site: its own
/// `IntoResponse` first, else its error object (`ToRemoteError`, else `Display`) as Nameko's
/// `Error: <exc_type>: <value>` with 400 if expected and 500 otherwise.
pub struct HttpErr<E>(pub std::cell::Cell<Option<E>>);

impl<E> HttpErr<E> {
    pub fn new(error: E) -> Self {
        HttpErr(std::cell::Cell::new(Some(error)))
    }
    fn take(&self) -> E {
        self.0.take().expect("an HTTP error is mapped once")
    }
}

pub trait ViaIntoResponse {
    fn __http_error(self, expected: &[&str]) -> Response;
}
impl<E: IntoResponse> ViaIntoResponse for &&&HttpErr<E> {
    fn __http_error(self, _expected: &[&str]) -> Response {
        let mut response = self.take().into_response();
        // The method failed, whatever its response says: dependencies see it as an error.
        let exc_type = std::any::type_name::<E>()
            .rsplit("::")
            .next()
            .unwrap_or("Error");
        let error = RemoteError::new(exc_type, format!("answered {}", response.status()));
        response.extensions_mut().insert(error);
        response
    }
}

pub trait ViaRemoteHttp {
    fn __http_error(self, expected: &[&str]) -> Response;
}
impl<E: crate::ToRemoteError> ViaRemoteHttp for &&HttpErr<E> {
    fn __http_error(self, expected: &[&str]) -> Response {
        crate::http::error_response(&self.take().to_remote_error(), expected)
    }
}

pub trait ViaDisplayHttp {
    fn __http_error(self, expected: &[&str]) -> Response;
}
impl<E: std::fmt::Display> ViaDisplayHttp for &HttpErr<E> {
    fn __http_error(self, expected: &[&str]) -> Response {
        crate::http::error_response(
            &crate::error::remote_error_from_display(&self.take()),
            expected,
        )
    }
}
