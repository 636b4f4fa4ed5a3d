//! Whether the services of a process are ready, for orchestrators: what `/health/ready`
//! answers (and `/health/live`, which only says the process answers).
//!
//! Ready means: connected to the broker, every queue declared and consumed, every entrypoint
//! started. Not ready while starting, after the broker connection was lost (until the services
//! run again on a new one), and from the moment a stop begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// The state a process's services are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// Connecting and starting (the first time).
    Starting,
    /// Running: connected, queues declared and consumed, entrypoints started.
    Ready,
    /// The broker connection was lost; reconnecting.
    Reconnecting,
    /// Stopping (or stopped).
    Stopping,
}

impl Readiness {
    /// The state's name, as `/health/ready` shows it: `starting`, `ready`, `reconnecting`,
    /// `stopping`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Ready => "ready",
            Readiness::Reconnecting => "reconnecting",
            Readiness::Stopping => "stopping",
        }
    }

    fn from_u8(value: u8) -> Readiness {
        match value {
            1 => Readiness::Ready,
            2 => Readiness::Reconnecting,
            3 => Readiness::Stopping,
            _ => Readiness::Starting,
        }
    }
}

/// The readiness of the services of a runner, shared by whoever reports it (clone it freely).
///
/// A [`ServiceRunner`](crate::ServiceRunner) keeps one up to date; `nameko::main` gives the
/// same one to each runner it starts again after a lost connection, so that its state goes on.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    /// A new health, `Starting`.
    pub fn new() -> Health {
        Health::default()
    }

    /// The current state.
    pub fn readiness(&self) -> Readiness {
        Readiness::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Whether the services are ready.
    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    pub(crate) fn set(&self, readiness: Readiness) {
        self.0.store(readiness as u8, Ordering::Release);
    }

    /// What `/health/ready` answers: 200 and `{"status": "ready"}` when ready, 503 and the
    /// state otherwise.
    pub(crate) fn ready_response(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let readiness = self.readiness();
        let status = if readiness == Readiness::Ready {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            axum::Json(serde_json::json!({ "status": readiness.as_str() })),
        )
            .into_response()
    }
}

/// The paths the operations endpoints answer on.
pub(crate) const LIVE_PATH: &str = "/health/live";
pub(crate) const READY_PATH: &str = "/health/ready";
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Answers `/metrics`, `/health/live` and `/health/ready` (`GET` and `HEAD`), or `None` for
/// any other request.
pub(crate) fn operations_response(
    health: &Health,
    method: &axum::http::Method,
    path: &str,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return None;
    }
    match path {
        LIVE_PATH => Some(axum::Json(serde_json::json!({ "status": "live" })).into_response()),
        READY_PATH => Some(health.ready_response()),
        METRICS_PATH => Some(
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::metrics::CONTENT_TYPE,
                )],
                crate::metrics::render(),
            )
                .into_response(),
        ),
        _ => None,
    }
}

/// A router serving only the operations endpoints (what `METRICS_ADDRESS` listens with).
pub(crate) fn operations_router(health: Health) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| {
        let health = health.clone();
        async move {
            use axum::response::IntoResponse;
            operations_response(&health, request.method(), request.uri().path())
                .unwrap_or_else(|| axum::http::StatusCode::NOT_FOUND.into_response())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_round_trips() {
        let health = Health::new();
        assert_eq!(health.readiness(), Readiness::Starting);
        for state in [
            Readiness::Ready,
            Readiness::Reconnecting,
            Readiness::Stopping,
            Readiness::Starting,
        ] {
            health.set(state);
            assert_eq!(health.clone().readiness(), state);
        }
    }
}
