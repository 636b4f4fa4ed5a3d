//! Errors: what a caller sees ([`RpcError`]), what starting services can fail with ([`Error`]),
//! and how a service's own error type becomes an error reply ([`ToRemoteError`]).

use std::fmt::Display;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::RemoteError;
use crate::transport::TransportError;

/// The outcome of a failed RPC call, as the caller sees it.
///
/// The variants Python Nameko re-creates as its own exceptions (`MethodNotFound`,
/// `MalformedRequest`, `IncorrectSignature`) have their own variants; any other error raised by
/// the callee, Python or Rust, arrives as [`RpcError::Remote`] with its error object intact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The service has no RPC method of that name.
    #[error("MethodNotFound: {0}")]
    MethodNotFound(String),
    /// The request could not be read.
    #[error("MalformedRequest: {0}")]
    MalformedRequest(String),
    /// The arguments do not fit the method's signature.
    #[error("IncorrectSignature: {0}")]
    IncorrectSignature(String),
    /// No service of that name is listening (nothing is bound to its routing key).
    #[error("Unknown service `{0}`")]
    UnknownService(String),
    /// No reply arrived within the timeout.
    #[error("RpcTimeout: no reply within {0:?}")]
    Timeout(Duration),
    /// The callee failed; the error object says how.
    #[error("RemoteError: {0}")]
    Remote(RemoteError),
    /// The arguments could not be serialised, or the result could not be read as the expected type.
    #[error("serialization error: {0}")]
    Serialization(String),
    /// The broker connection failed or the client is closed.
    #[error("transport error: {0}")]
    Transport(#[from] TransportError),
    /// The reply queue (named here) was lost with the broker node that held it, while the call
    /// was in flight: the client reconnected to another node of the cluster, on a new reply
    /// queue. The request may have run; its reply cannot arrive.
    #[error(
        "ReplyLost: the reply queue `{0}` was lost with the broker node that held it; the call may have run"
    )]
    ReplyLost(String),
}

impl RpcError {
    /// Turns a received error object into the error Python Nameko would raise for it.
    pub fn from_remote(error: RemoteError) -> RpcError {
        if error.is_nameko("MethodNotFound") {
            RpcError::MethodNotFound(error.first_arg())
        } else if error.is_nameko("MalformedRequest") {
            RpcError::MalformedRequest(error.first_arg())
        } else if error.is_nameko("IncorrectSignature") {
            RpcError::IncorrectSignature(error.first_arg())
        } else {
            RpcError::Remote(error)
        }
    }

    /// The remote error object, when the callee failed with one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            RpcError::Remote(error) => Some(error),
            _ => None,
        }
    }
}

/// Errors from setting up, starting or running services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two services with the same name were registered in one runner.
    #[error("service `{0}` is registered twice; service names must be unique")]
    DuplicateService(String),
    /// A service named on the command line is not registered in this binary.
    #[error("no service named `{name}` is registered (registered: {registered})")]
    NoSuchService {
        /// The requested name.
        name: String,
        /// The registered names, comma-separated.
        registered: String,
    },
    /// A dependency of a service could not be built.
    #[error("service `{service}`: dependency `{dependency}` could not be set up: {reason}")]
    Dependency {
        /// The service.
        service: String,
        /// The struct field.
        dependency: String,
        /// Why.
        reason: String,
    },
    /// The broker could not be reached or refused a declaration.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// The connection to the broker was lost while the services ran (the `run` command
    /// reconnects and starts them again).
    #[error("the connection to the broker was lost: {0}")]
    ConnectionLost(String),
    /// A service container failed while running.
    #[error("service `{service}` failed: {reason}")]
    ServiceFailed {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// A queue's consumer stopped and could not be replaced (the service fails with it).
    #[error("the consumer of {queue} stopped: {reason}")]
    ConsumerFailed {
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// A test replaced a dependency the service does not have.
    #[error("service `{service}`: no dependency named {names} to replace")]
    NoSuchDependency {
        /// The service.
        service: String,
        /// The names given, comma-separated.
        names: String,
    },
    /// A test restricted a service to an entrypoint it does not have.
    #[error("service `{service}`: no entrypoint named `{entrypoint}` (it has {entrypoints})")]
    NoSuchEntrypoint {
        /// The service.
        service: String,
        /// The name given.
        entrypoint: String,
        /// The service's entrypoints, comma-separated.
        entrypoints: String,
    },
    /// A test hooked an entrypoint that no running service has, or one that cannot be hooked.
    #[error(
        "no entrypoint `{entrypoint}` to hook on a running service `{service}` (HTTP entrypoints cannot be hooked)"
    )]
    NoHook {
        /// The service named.
        service: String,
        /// The entrypoint named.
        entrypoint: String,
    },
    /// Dependencies or entrypoints were given for a service the runner does not run.
    #[error(
        "dependencies or entrypoints of `{0}` were given, but it is not one of the services to run"
    )]
    NotRunning(String),
    /// The HTTP server could not listen on `WEB_SERVER_ADDRESS`.
    #[error("cannot listen on {address} (WEB_SERVER_ADDRESS): {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Two routes claim the same path and method, or a route's method is not one HTTP has.
    #[error("HTTP routes: {0}")]
    Routes(String),
    /// A worker failed outside its method: a dependency refused it (in `worker_setup`) or its
    /// success (in `worker_result`), or it panicked ([`testing::run_as_worker`](crate::testing::run_as_worker)).
    #[error("{}: {}", .0.exc_type, .0.value)]
    Worker(RemoteError),
    /// A dependency's `worker_setup` panicked.
    #[error("worker_setup panicked: {0}")]
    WorkerSetupPanicked(String),
    /// The RabbitMQ management API (used by the testing tools) failed or answered unexpectedly.
    #[error("RabbitMQ management API: {0}")]
    ManagementApi(String),
    /// Any other failure, from a dependency or an entrypoint of the application's own.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// An error of the application's own (a dependency that could not connect, an entrypoint
    /// whose schedule does not parse): `Error::other("the disk is gone")`.
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Other(error.into())
    }
}

/// How a service's error type becomes the error object of an error reply.
///
/// Errors that do not implement this trait are sent using their `Display` text, with the type's
/// name as `exc_type`. Implement it to choose the `exc_type` a Python caller sees:
///
/// ```
/// use nameko::{RemoteError, ToRemoteError};
///
/// #[derive(Debug)]
/// struct OutOfStock { sku: String, wanted: u32 }
///
/// impl ToRemoteError for OutOfStock {
///     fn to_remote_error(&self) -> RemoteError {
///         RemoteError::new("OutOfStock", format!("{} (wanted {})", self.sku, self.wanted))
///             .with_path("shop.OutOfStock")
///             .with_args(vec![self.sku.clone().into(), self.wanted.to_string().into()])
///     }
/// }
/// ```
pub trait ToRemoteError {
    /// The error object sent to the caller.
    fn to_remote_error(&self) -> RemoteError;
}

impl ToRemoteError for RemoteError {
    fn to_remote_error(&self) -> RemoteError {
        self.clone()
    }
}

impl ToRemoteError for RpcError {
    /// Re-raises what Python Nameko would re-raise: its own exceptions keep their type, anything
    /// else from a downstream call becomes a `RemoteError`.
    fn to_remote_error(&self) -> RemoteError {
        match self {
            RpcError::MethodNotFound(m) => RemoteError::nameko("MethodNotFound", m.clone()),
            RpcError::MalformedRequest(m) => RemoteError::nameko("MalformedRequest", m.clone()),
            RpcError::IncorrectSignature(m) => RemoteError::nameko("IncorrectSignature", m.clone()),
            RpcError::UnknownService(s) => {
                RemoteError::nameko("UnknownService", format!("Unknown service `{s}`"))
                    .with_args(vec![Value::String(s.clone())])
            }
            RpcError::Timeout(d) => {
                RemoteError::nameko("RpcTimeout", format!("{}", d.as_secs_f64()))
            }
            RpcError::Remote(e) => {
                RemoteError::nameko("RemoteError", e.to_string()).with_args(vec![
                    Value::String(e.exc_type.clone()),
                    Value::String(e.value.clone()),
                ])
            }
            other => RemoteError::nameko_rs("RpcError", other.to_string()),
        }
    }
}

/// The error object for any `Display` error: `exc_type` is the type's name, `exc_path` its Rust
/// path with dots, the message is the only argument.
pub(crate) fn remote_error_from_display<E: Display + ?Sized>(error: &E) -> RemoteError {
    let path = std::any::type_name::<E>();
    let path = path.split('<').next().unwrap_or(path);
    let exc_type = path.rsplit("::").next().unwrap_or(path);
    RemoteError::new(exc_type, error.to_string()).with_path(path.replace("::", "."))
}

/// Chooses, at the user's call site, [`ToRemoteError`] when the error type implements it and
/// `Display` otherwise (autoref specialisation; used by generated code only).
pub(crate) mod select {
    use super::*;

    /// An error, borrowed, to choose its conversion by method resolution.
    pub struct Wrap<'a, E: ?Sized>(pub &'a E);

    /// The conversion of an error implementing [`ToRemoteError`].
    pub trait ViaToRemoteError {
        /// The error object.
        fn __to_remote_error(&self) -> RemoteError;
    }
    impl<E: ToRemoteError + ?Sized> ViaToRemoteError for Wrap<'_, E> {
        fn __to_remote_error(&self) -> RemoteError {
            self.0.to_remote_error()
        }
    }

    /// The conversion of any other error, by its `Display`.
    pub trait ViaDisplay {
        /// The error object.
        fn __to_remote_error(&self) -> RemoteError;
    }
    impl<E: Display + ?Sized> ViaDisplay for &Wrap<'_, E> {
        fn __to_remote_error(&self) -> RemoteError {
            remote_error_from_display(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::select::*;
    use super::*;

    #[derive(Debug)]
    struct Plain;
    impl Display for Plain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("plain failure")
        }
    }

    #[test]
    fn display_errors_use_their_type_name() {
        let e = (&Wrap(&Plain)).__to_remote_error();
        assert_eq!(e.exc_type, "Plain");
        assert!(e.exc_path.ends_with(".Plain"), "{}", e.exc_path);
        assert_eq!(e.value, "plain failure");
        assert_eq!(e.exc_args, vec![Value::from("plain failure")]);
    }

    #[test]
    #[allow(clippy::needless_borrow)] // The borrow is what selects the implementation.
    fn to_remote_error_wins_over_display() {
        let e = (&Wrap(&RpcError::MethodNotFound("x".into()))).__to_remote_error();
        assert_eq!(e.exc_path, "nameko.exceptions.MethodNotFound");
        assert_eq!(e.exc_args, vec![Value::from("x")]);
    }

    #[test]
    fn registered_nameko_errors_are_recreated() {
        let e = RpcError::from_remote(RemoteError::nameko("IncorrectSignature", "bad".into()));
        assert!(matches!(e, RpcError::IncorrectSignature(m) if m == "bad"));
        let e = RpcError::from_remote(
            RemoteError::new("ValueError", "boom").with_path("builtins.ValueError"),
        );
        assert_eq!(e.remote().unwrap().exc_type, "ValueError");
        assert_eq!(e.to_string(), "RemoteError: ValueError boom");
    }
}
