//! The HTTP entrypoint (`#[http]`), on the public entrypoint API: each route registers with the
//! process's one HTTP server ([`HttpRoutes`], a process extension), and each request it
//! matches runs one worker of the method in a fresh worker context (empty context data, as in
//! Nameko), taking one of its service's worker slots.

use std::sync::{Arc, Mutex};

use axum::response::Response;
use serde_json::Value;

use super::{HttpCall, PathValues, Route, Segment, error_response};
use crate::error::Error;
use crate::protocol::RemoteError;
use crate::service::arguments::{LoggedArguments, named_arguments};
use crate::service::io::sealed;
use crate::service::{Entrypoint, EntrypointContext, MethodInfo, Started, WorkerResult};

/// `#[http("GET", "/multiply/<int:first>/<int:second>")]`: one route of a method.
#[derive(Debug, Clone, Copy)]
pub struct Http {
    methods: &'static [&'static str],
    route: &'static str,
    segments: &'static [Segment],
}

impl Http {
    /// The route `route`, parsed and checked by the macro into `segments`, answering
    /// `methods` (`GET` also answers `HEAD`).
    #[doc(hidden)]
    pub const fn new(
        methods: &'static [&'static str],
        route: &'static str,
        segments: &'static [Segment],
    ) -> Self {
        Http {
            methods,
            route,
            segments,
        }
    }
}

/// The routes of every service of the process, collected as the services start; the runner
/// serves them on `WEB_SERVER_ADDRESS` once all have started.
#[derive(Default)]
pub(crate) struct HttpRoutes {
    routes: Mutex<Vec<Route>>,
}

impl HttpRoutes {
    /// The routes collected so far.
    pub(crate) fn take(&self) -> Vec<Route> {
        std::mem::take(&mut *self.routes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Entrypoint for Http {
    type Input = HttpCall;
    type Output = Response;

    fn describe(&self, method: &str) -> String {
        format!("http {method} {} {}", self.methods.join(","), self.route)
    }

    async fn start(self, cx: EntrypointContext<Self>) -> Result<Started, Error> {
        let route = Route {
            service: cx.service_name(),
            entrypoint: cx.method().name(),
            methods: self.methods,
            route: self.route,
            segments: self.segments,
            // Two boxed futures per request, the method's and the one that waits for the
            // slot and runs the worker, tracked for the stop
            // (`None`, a stopping or killed service, is answered 503 by the dispatcher).
            handler: Arc::new({
                let cx = cx.clone();
                move |call: HttpCall| {
                    // An incoming `traceparent` header: the worker's parent span, forwarded
                    // on its calls.
                    let data = crate::trace::context_from_http(&call.parts.headers);
                    cx.spawn_worker(call, data)
                }
            }),
        };
        let routes = cx.process_extension(HttpRoutes::default);
        routes
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(route);
        Ok(Started::idle())
    }
}

impl sealed::Input for HttpCall {
    const HOOKABLE: bool = false;
    const KIND: sealed::InputKind = sealed::InputKind::Request;
    type Kept = PathValues;
    fn keep(&self) -> PathValues {
        self.path.clone()
    }
    fn arguments(
        path: PathValues,
        _payload: Option<&[u8]>,
        method: &MethodInfo,
    ) -> Option<LoggedArguments> {
        Some(named_arguments(
            method.params().iter().copied(),
            path.iter(),
            method.sensitive_arguments(),
        ))
    }
    fn from_hook(_args: Value) -> Result<(Self, Option<Vec<u8>>), RemoteError> {
        Err(RemoteError::new(
            "NotHookable",
            "HTTP entrypoints are not hooked: send them requests",
        ))
    }
}

impl sealed::Output for Response {
    fn result(&self) -> WorkerResult<'_> {
        match self.extensions().get::<RemoteError>() {
            Some(error) => WorkerResult::Failed(std::borrow::Cow::Borrowed(error)),
            None => WorkerResult::Done,
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        error_response(&error, &[])
    }
    fn from_error(error: RemoteError) -> Self {
        error_response(&error, &[])
    }
    fn failure(&self) -> Option<&RemoteError> {
        self.extensions().get::<RemoteError>()
    }
    fn into_hook(self) -> Result<Value, RemoteError> {
        match self.extensions().get::<RemoteError>() {
            Some(error) => Err(error.clone()),
            None => Ok(Value::Null),
        }
    }
}
