//! Items the generated code refers to. Not a public API: names may change at any time.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::error::select::{ViaDisplay, ViaToRemoteError, Wrap};
pub use crate::events::{EventError, HandlerType};
pub use crate::protocol::{RemoteError, RequestBody};
pub use crate::rpc::args::{BoundArgs, Param};
pub use crate::service::{
    Dependencies, Dependency, DependencyContext, Entrypoint, EventEntrypoint, RpcFuture, Service,
    ServiceClient, ServiceRegistration,
};
pub use crate::{ClusterRpcClient, Error, RpcError, ServiceProxy};
pub use inventory;
pub use std::sync::Arc;
pub use std::time::Duration;

/// Encodes a method's result; a value JSON cannot hold gives Nameko's
/// `UnserializableValueError`.
pub fn encode_result<T: RpcResult>(value: &T) -> Result<Vec<u8>, RemoteError> {
    serde_json::to_vec(value).map_err(|e| {
        RemoteError::nameko(
            "UnserializableValueError",
            format!("Unserializable value: `{e}`"),
        )
        .with_args(Vec::new())
    })
}

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
        Err(e) if e.is_panic() => Err(crate::service::container::panic_error(
            e.into_panic().as_ref(),
        )),
        Err(e) => Err(RemoteError::new("WorkerCancelled", e.to_string())
            .with_path("nameko_rs.WorkerCancelled")),
    }
}

/// A type that can be an argument of an RPC method: it crosses the wire both ways (the server
/// reads it, the generated client sends it).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of an RPC method",
    label = "this type must implement `serde::Serialize` and `serde::Deserialize` (owned)",
    note = "RPC arguments arrive as JSON: derive `Serialize` and `Deserialize`, and use owned types (`String`, not `&str`)"
)]
pub trait RpcArgument: Serialize + DeserializeOwned {}
impl<T: Serialize + DeserializeOwned> RpcArgument for T {}

/// A type that can be the payload of an event handler.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the payload of an event handler",
    label = "this type must implement `serde::Deserialize` (owned)",
    note = "event payloads arrive as JSON: derive `Deserialize` for it, and use owned types"
)]
pub trait EventPayload: DeserializeOwned {}
impl<T: DeserializeOwned> EventPayload for T {}

/// Decodes an event's payload into the handler's parameter type.
pub fn decode_payload<T: EventPayload>(body: &[u8]) -> Result<T, EventError> {
    serde_json::from_slice(body).map_err(|e| EventError::Payload(e.to_string()))
}

/// A type that can be the result of an RPC method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of an RPC method",
    label = "this type must implement `serde::Serialize` and `serde::Deserialize`",
    note = "RPC results travel as JSON: derive `Serialize` and `Deserialize` for it"
)]
pub trait RpcResult: Serialize + DeserializeOwned {}
impl<T: Serialize + DeserializeOwned> RpcResult for T {}

/// One argument of a typed client's call, already encoded.
pub type RawArgument = Box<serde_json::value::RawValue>;

/// Encodes one argument of a typed client's call.
pub fn encode_argument<T: RpcArgument>(value: &T) -> Result<RawArgument, RpcError> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| RpcError::Serialization(format!("arguments: {e}")))
}

/// A typed client's call.
pub async fn call<R: RpcResult>(
    proxy: &ServiceProxy,
    method: &str,
    args: &[RawArgument],
) -> Result<R, RpcError> {
    proxy.call(method, args).await
}

/// Builds one field of a service struct.
pub async fn build_dependency<T: Dependency>(
    cx: &DependencyContext,
    field: &'static str,
) -> Result<T, Error> {
    T::build(cx, field).await.map_err(|e| match e {
        Error::Dependency { .. } => e,
        other => Error::Dependency {
            service: cx.service_name().to_owned(),
            dependency: field.to_owned(),
            reason: other.to_string(),
        },
    })
}
