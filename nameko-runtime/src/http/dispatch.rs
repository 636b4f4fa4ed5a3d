//! The one HTTP service for every service's routes: matching a path against each route's
//! segments and converters, werkzeug's order, 404 and 405, HEAD, the body and time limits.

use super::*;

/// A route of one service's entrypoint, ready to be served.
pub(crate) struct Route {
    pub(crate) service: &'static str,
    pub(crate) entrypoint: &'static str,
    pub(crate) methods: &'static [&'static str],
    pub(crate) route: &'static str,
    pub(crate) segments: &'static [Segment],
    pub(crate) handler: Arc<dyn Fn(HttpCall) -> HttpFuture + Send + Sync>,
}

/// Matches the whole of `uri`'s path against `segments`: the same number of segments (a
/// `<path:...>` parameter takes the rest), static ones equal, each value accepted by its
/// converter. Returns the parameters' values (decoded when read), or `None`.
pub(super) fn path_values(segments: &[Segment], uri: &Uri) -> Option<PathValues> {
    let path = uri.path();
    let mut spans = [(0, 0); MAX_ROUTE_PARAMS];
    let mut len = 0;
    // What is left of the path, or `None` once its last segment is taken. (A path that does
    // not start with `/`, as a CONNECT request's, matches nothing.)
    let mut remaining = Some(path.strip_prefix('/')?);
    for segment in segments {
        let current = remaining?;
        let (part, tail) = match segment {
            Segment::Param(Converter::Path) => (current, None),
            _ => match current.split_once('/') {
                Some((part, tail)) => (part, Some(tail)),
                None => (current, None),
            },
        };
        remaining = tail;
        match segment {
            Segment::Static(text) => {
                // Decoded first: a literal `café` matches `caf%C3%A9`.
                if part != *text && percent_decode(part) != *text {
                    return None;
                }
            }
            Segment::Param(converter) => {
                let value = percent_decode(part);
                let safe = match converter {
                    // Never a way out of the directory it names: no `..` or `.` segment, no
                    // leading `/`, no empty segment (`a//b`).
                    Converter::Path => {
                        !value.starts_with('/')
                            && !value.split('/').any(|s| matches!(s, "" | "." | ".."))
                            && !value.contains('\\')
                    }
                    // One segment, whether its `/` came encoded or not.
                    _ => !value.contains('/'),
                };
                if !safe || !converter.accepts(&value) || len == MAX_ROUTE_PARAMS {
                    return None;
                }
                let start = part.as_ptr() as usize - path.as_ptr() as usize;
                spans[len] = (
                    u16::try_from(start).ok()?,
                    u16::try_from(start + part.len()).ok()?,
                );
                len += 1;
            }
        }
    }
    // Nothing may be left over: `/multiply/6/7/8` and `/multiply/6/7/` are not `/multiply/6/7`.
    match (segments.is_empty(), remaining) {
        (true, Some("")) | (false, None) => Some(PathValues {
            uri: uri.clone(),
            spans,
            len,
        }),
        _ => None,
    }
}

/// How specific a route is, to try it before the routes it overlaps: at the first segment where
/// two routes differ, static text wins over a typed value, which wins over a string, which wins
/// over a path (werkzeug's order).
pub(super) fn specificity(segments: &[Segment]) -> Vec<u8> {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Static(_) => 0,
            Segment::Param(Converter::Any(_)) => 1,
            Segment::Param(Converter::Int | Converter::Float | Converter::Uuid) => 2,
            Segment::Param(Converter::String) => 3,
            Segment::Param(Converter::Path) => 4,
        })
        .collect()
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "Not Found\n".into())
}

/// A HEAD response: the GET response's head, its `content-length` included, and no body.
fn without_body(response: Response) -> Response {
    use axum::body::HttpBody;
    let (mut parts, body) = response.into_parts();
    if !parts
        .headers
        .contains_key(axum::http::header::CONTENT_LENGTH)
        && let Some(length) = body.size_hint().exact()
    {
        parts
            .headers
            .insert(axum::http::header::CONTENT_LENGTH, length.into());
    }
    Response::from_parts(parts, Body::empty())
}

/// What answers a request for `/ws` (the websocket server): given the request's head, the
/// response that upgrades it, or refuses to.
pub(crate) trait Upgrade: Send + Sync {
    fn upgrade(self: Arc<Self>, parts: axum::http::request::Parts) -> BoxFuture<'static, Response>;
}

/// Where websockets connect, as in Nameko.
pub(crate) const WEBSOCKET_PATH: &str = "/ws";

/// The HTTP server's service: every service's routes, matched by their own segments.
#[derive(Clone)]
pub(crate) struct Dispatch(Arc<Table>);

struct Table {
    /// Most specific first.
    routes: Vec<Route>,
    /// What serves `/ws`, if a service has websocket methods.
    websocket: Option<Arc<dyn Upgrade>>,
    max_body: usize,
    request_timeout: std::time::Duration,
    /// What `/health/ready` reports (`/metrics` and `/health/*` answer where no route does).
    health: crate::health::Health,
}

/// Builds the dispatcher of the routes of every service; two entrypoints claiming the same route
/// and method is an error.
pub(crate) fn router(
    mut routes: Vec<Route>,
    websocket: Option<Arc<dyn Upgrade>>,
    config: &Config,
    health: crate::health::Health,
) -> Result<Dispatch, Error> {
    for (i, route) in routes.iter().enumerate() {
        for other in &routes[..i] {
            if other.segments != route.segments {
                continue;
            }
            if let Some(method) = route.methods.iter().find(|m| other.methods.contains(m)) {
                return Err(Error::Routes(format!(
                    "two entrypoints claim {method} {}: {}.{} and {}.{}",
                    route.route, other.service, other.entrypoint, route.service, route.entrypoint
                )));
            }
        }
        if let Some(method) = route.methods.iter().find(|m| !METHODS.contains(m)) {
            return Err(Error::Routes(format!("unsupported HTTP method {method}")));
        }
    }
    // Stable: among equally specific routes, the order of declaration.
    routes.sort_by_cached_key(|route| specificity(route.segments));
    Ok(Dispatch(Arc::new(Table {
        routes,
        websocket,
        max_body: config.http_max_body_bytes,
        request_timeout: config.http_request_timeout,
        health,
    })))
}

impl Dispatch {
    /// An axum router around this dispatcher (for requests without a socket).
    pub(crate) fn into_router(self) -> axum::Router {
        axum::Router::new().fallback_service(self)
    }

    /// Answers a request, and counts it (`nameko_http_requests_total`). The route is chosen
    /// before the future is made, and the future holds only what the wait needs: hyper writes
    /// it whole for every request. (Nor does it hold the dispatcher: no reference count per
    /// request.)
    pub(super) fn handle(
        &self,
        request: axum::extract::Request,
    ) -> impl Future<Output = Response> + Send + use<> {
        let method = METHODS
            .iter()
            .copied()
            .find(|m| *m == request.method().as_str())
            .unwrap_or("OTHER");
        let deadline = tokio::time::Instant::now() + self.0.request_timeout;
        let answer = self.answer(request);
        async move {
            let (response, route) = match answer {
                Answer::Now(response, route) => (response, route),
                Answer::Upgrade(upgrade) => (upgrade.await, WEBSOCKET_PATH),
                Answer::Worker { call, head, route } => (
                    worker_response(call, head, route, deadline).await,
                    route.route,
                ),
            };
            crate::metrics::http_request(method, route, response.status().as_u16());
            response
        }
    }

    /// What answers the request: a response at once (no route, or not its method, or too
    /// large a body), the websocket server, or a worker of the route it matches.
    fn answer(&self, request: axum::extract::Request) -> Answer {
        let (parts, body) = request.into_parts();
        if let Some(websocket) = &self.0.websocket
            && parts.uri.path() == WEBSOCKET_PATH
        {
            return Answer::Upgrade(websocket.clone().upgrade(parts));
        }
        let head = parts.method == Method::HEAD;
        let method = parts.method.as_str();
        let mut allowed: Vec<&'static str> = Vec::new();
        // The route to call: the first (most specific) that takes the method, GET rules taking
        // HEAD too (werkzeug's rule).
        let mut chosen: Option<(&Route, PathValues)> = None;
        for route in &self.0.routes {
            let Some(path) = path_values(route.segments, &parts.uri) else {
                continue;
            };
            if route.methods.contains(&method) || (head && route.methods.contains(&"GET")) {
                chosen = Some((route, path));
                break;
            }
            allowed.extend(route.methods.iter().copied());
        }
        if let Some((route, path)) = chosen {
            let Some(body) = limit_body(body, self.0.max_body, self.0.request_timeout) else {
                let response = plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large\n".into(),
                );
                return Answer::Now(response, route.route);
            };
            return Answer::Worker {
                call: (route.handler)(HttpCall { parts, body, path }),
                head,
                route: RouteName {
                    service: route.service,
                    entrypoint: route.entrypoint,
                    route: route.route,
                },
            };
        }
        if allowed.is_empty() {
            let response =
                crate::health::operations_response(&self.0.health, &parts.method, parts.uri.path())
                    .map_or_else(not_found, |response| {
                        if head {
                            without_body(response)
                        } else {
                            response
                        }
                    });
            return Answer::Now(response, "");
        }
        if allowed.contains(&"GET") {
            allowed.push("HEAD");
        }
        allowed.sort_unstable();
        allowed.dedup();
        let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
        if let Ok(value) = axum::http::HeaderValue::from_str(&allowed.join(",")) {
            response
                .headers_mut()
                .insert(axum::http::header::ALLOW, value);
        }
        Answer::Now(response, "")
    }
}

/// What answers a request (see [`Dispatch::answer`]).
enum Answer {
    /// A response, and the route that gave it (empty if none did).
    Now(Response, &'static str),
    /// The websocket server's response to an upgrade.
    Upgrade(BoxFuture<'static, Response>),
    /// A worker's response, to a HEAD request or not.
    Worker {
        call: HttpFuture,
        head: bool,
        route: RouteName,
    },
}

/// The names a route's request is logged and counted by.
#[derive(Clone, Copy)]
struct RouteName {
    service: &'static str,
    entrypoint: &'static str,
    route: &'static str,
}

/// The worker's response, if it comes before `deadline` (the request's time limit): 504 if it
/// does not, 503 if there is no worker (the service is stopping, or was killed).
async fn worker_response(
    mut call: HttpFuture,
    head: bool,
    route: RouteName,
    deadline: tokio::time::Instant,
) -> Response {
    // A handler done at its first poll needs no timer.
    let response = match futures_util::poll!(&mut call) {
        std::task::Poll::Ready(response) => response,
        std::task::Poll::Pending => tokio::select! {
            biased;
            response = &mut call => response,
            () = tokio::time::sleep_until(deadline) => {
                // The worker goes on to its end (in its worker slot, its dependencies'
                // hooks run): cancelled midway it would leave them unrun, and blocking
                // work uncounted. 504, not 408: the request may yet take effect, and a
                // client must not be invited to send it again.
                let RouteName { service, entrypoint, .. } = route;
                tokio::spawn(async move {
                    let status = call.await.map(|response| response.status());
                    tracing::warn!(service, entrypoint, ?status, "an HTTP worker finished after its request timed out");
                });
                Some(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The request took too long; it may still take effect\n".into(),
                ))
            }
        },
    };
    let response = response.unwrap_or_else(|| StatusCode::SERVICE_UNAVAILABLE.into_response());
    if head {
        without_body(response)
    } else {
        response
    }
}

impl tower_service::Service<axum::extract::Request> for Dispatch {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Map<
        BoxFuture<'static, Response>,
        fn(Response) -> Result<Response, std::convert::Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        use futures_util::FutureExt;
        let handled: BoxFuture<'static, Response> = Box::pin(self.handle(request));
        handled.map(Ok)
    }
}

/// The body, limited to `max` bytes: refused at once (`None`) when it says it is longer; read
/// through a limit when its length is not known, and failing if it is not all there within
/// `timeout` (the request's time limit) of the first wait for it; as it is when it is empty
/// (no cost for a GET).
fn limit_body(body: Body, max: usize, timeout: std::time::Duration) -> Option<Body> {
    use axum::body::HttpBody;
    let hint = body.size_hint();
    match hint.exact() {
        Some(0) => Some(body),
        Some(n) if n > max as u64 => None,
        _ if hint.lower() > max as u64 => None,
        _ => Some(Body::new(super::server::Deadline::new(
            http_body_util::Limited::new(body, max),
            timeout,
        ))),
    }
}
