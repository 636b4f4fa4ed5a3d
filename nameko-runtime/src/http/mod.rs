//! HTTP entrypoints: `#[http("GET", "/multiply/<int:first>/<int:second>")]` on axum.
//!
//! Routes use Nameko's (werkzeug's) syntax; the macro checks them at compile time and hands
//! the runtime their segments. One server per process serves the routes of every service in
//! it, on `WEB_SERVER_ADDRESS`. Each request is a worker like any other: it takes one of its
//! service's `max_workers` slots and runs inside a [`WorkerContext`](crate::WorkerContext).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::FromRequest;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::Error;
use crate::protocol::RemoteError;

pub use axum::Json;
pub use axum::http::StatusCode;
pub(crate) use route::HttpRoutes;
pub use route::Http;

mod route;

/// One segment of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Static(&'static str),
    /// A value, checked by its converter.
    Param(Converter),
}

/// Werkzeug's converters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// `<name>` or `<string:name>`: any text without a slash.
    String,
    /// `<int:name>`: digits.
    Int,
    /// `<float:name>`: digits, a dot, digits.
    Float,
    /// `<path:name>`: the rest of the path, slashes included (last segment only).
    Path,
    /// `<uuid:name>`: a UUID.
    Uuid,
    /// `<any(a,b):name>`: one of the listed words.
    Any(&'static [&'static str]),
}

impl Converter {
    fn accepts(&self, value: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match self {
            Converter::String => !value.is_empty(),
            Converter::Path => !value.is_empty(),
            Converter::Int => digits(value),
            Converter::Float => value
                .split_once('.')
                .is_some_and(|(a, b)| digits(a) && digits(b)),
            Converter::Uuid => uuid::Uuid::parse_str(value).is_ok(),
            Converter::Any(words) => words.contains(&value),
        }
    }
}

/// The request a handler is called with, taken apart.
pub struct HttpCall {
    /// Method, URI, headers.
    pub parts: Parts,
    /// The body.
    pub body: Body,
    /// The route's parameters, in route order, checked by their converters.
    pub path: PathValues,
}

/// The most parameters a route may have.
pub const MAX_ROUTE_PARAMS: usize = 16;

/// The values of a route's parameters in a request's path: where they are in the path, decoded
/// when read. Cloning one shares the path's bytes.
#[derive(Clone, Debug)]
pub struct PathValues {
    uri: Uri,
    spans: [(u32, u32); MAX_ROUTE_PARAMS],
    len: usize,
}

impl PathValues {
    /// The value of parameter `index` (in route order), percent-decoded.
    pub fn get(&self, index: usize) -> Option<Cow<'_, str>> {
        let (start, end) = *self.spans[..self.len].get(index)?;
        let raw = self.uri.path().get(start as usize..end as usize)?;
        Some(percent_decode(raw))
    }

    /// How many parameters there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the route has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in route order.
    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, str>> {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

/// The future an HTTP handler returns.
pub type HttpFuture = BoxFuture<'static, Response>;

/// An error answered with a status and a plain-text message.
///
/// Return it from a handler (`Result<T, HttpError>`) to choose the status; [`Request::json`] and
/// [`Request::form`] fail with one (400) for a body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The status.
    pub status: StatusCode,
    /// The message (the response body).
    pub message: String,
}

impl HttpError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for HttpError {}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        plain(self.status, format!("{}\n", self.message))
    }
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [("content-type", "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The response for an error object, as Nameko answers: `Error: <exc_type>: <value>`, 400 when
/// the error is expected (or one of Nameko's `BadRequest` errors), 500 otherwise.
pub fn error_response(error: &RemoteError, expected: &[&str]) -> Response {
    let bad_request = ["MalformedRequest", "MethodNotFound", "IncorrectSignature"];
    let status = if expected.contains(&error.exc_type.as_str())
        || bad_request.contains(&error.exc_type.as_str())
    {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let mut response = plain(
        status,
        format!("Error: {}: {}\n", error.exc_type, error.value),
    );
    // Where the container finds what the worker came to.
    response.extensions_mut().insert(error.clone());
    response
}

/// An HTTP request, with werkzeug-style accessors.
///
/// Take it as a handler parameter (`request: Request`), after the route's parameters.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    args: Args,
    body: Bytes,
}

/// Query arguments (werkzeug's `request.args`), decoded when asked for.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// The request's URI: cloning it shares its bytes, so reading the query costs nothing
    /// until an argument is asked for.
    uri: Uri,
}

impl Args {
    fn pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        query_pairs(self.uri.query().unwrap_or(""))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.pairs().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Every value of `name`.
    pub fn get_all(&self, name: &str) -> Vec<Cow<'_, str>> {
        self.pairs()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// All arguments as a map (the last value of each name).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// The `name=value` pairs of a query or a URL-encoded form, decoded.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
}

/// Decodes a form value: `+` is a space, then percent escapes.
fn form_decode(s: &str) -> Cow<'_, str> {
    if s.contains('+') {
        Cow::Owned(percent_decode(&s.replace('+', " ")).into_owned())
    } else {
        percent_decode(s)
    }
}

/// Percent-decodes `s` (invalid escapes are kept as they are); borrows when there are none.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl Request {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query arguments: `request.args().get("third")`.
    pub fn args(&self) -> &Args {
        &self.args
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body)
            .map_err(|e| HttpError::bad_request(format!("The body is not UTF-8 text: {e}")))
    }

    /// The body parsed as JSON; a 400 with the parser's message if it does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::bad_request(format!("Malformed JSON: {e}")))
    }

    /// The body parsed as a URL-encoded form into a map.
    pub fn form(&self) -> Result<BTreeMap<String, String>, HttpError> {
        let text = self.text()?;
        Ok(query_pairs(text)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect())
    }
}

impl<S: Send + Sync> FromRequest<S> for Request {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .map(|s| s.to_string().contains("length limit"))
                .unwrap_or(false)
                || e.to_string().contains("length limit");
            if too_large {
                plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large\n".into(),
                )
            } else {
                plain(
                    StatusCode::BAD_REQUEST,
                    format!("The request body could not be read: {e}\n"),
                )
            }
        })?;
        Ok(Request {
            args: Args {
                uri: parts.uri.clone(),
            },
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}

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
fn path_values(segments: &[Segment], uri: &Uri) -> Option<PathValues> {
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
                    u32::try_from(start).ok()?,
                    u32::try_from(start + part.len()).ok()?,
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
fn specificity(segments: &[Segment]) -> Vec<u8> {
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

/// The HTTP server's service: every service's routes, matched by their own segments.
#[derive(Clone)]
pub(crate) struct Dispatch(Arc<Table>);

struct Table {
    /// Most specific first.
    routes: Vec<Route>,
    max_body: usize,
    request_timeout: std::time::Duration,
}

/// Builds the dispatcher of the routes of every service; two entrypoints claiming the same route
/// and method is an error.
pub(crate) fn router(mut routes: Vec<Route>, config: &Config) -> Result<Dispatch, Error> {
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
        max_body: config.http_max_body_bytes,
        request_timeout: config.http_request_timeout,
    })))
}

/// The methods a route may name.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl Dispatch {
    /// An axum router around this dispatcher (for requests without a socket).
    pub(crate) fn into_router(self) -> axum::Router {
        axum::Router::new().fallback_service(self)
    }

    async fn handle(self, request: axum::extract::Request) -> Response {
        let started = tokio::time::Instant::now();
        let (parts, body) = request.into_parts();
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
            let Some(body) = limit_body(body, self.0.max_body) else {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large\n".into(),
                );
            };
            let mut call = (route.handler)(HttpCall { parts, body, path });
            // A handler done at its first poll needs no timer.
            let response = match futures_util::poll!(&mut call) {
                std::task::Poll::Ready(response) => response,
                std::task::Poll::Pending => tokio::select! {
                    biased;
                    response = &mut call => response,
                    () = tokio::time::sleep_until(started + self.0.request_timeout) => {
                        // The worker goes on to its end (in its worker slot, its dependencies'
                        // hooks run): cancelled midway it would leave them unrun, and blocking
                        // work uncounted. 504, not 408: the request may yet take effect, and a
                        // client must not be invited to send it again.
                        let (service, entrypoint) = (route.service, route.entrypoint);
                        tokio::spawn(async move {
                            let response = call.await;
                            tracing::warn!(service, entrypoint, status = %response.status(), "an HTTP worker finished after its request timed out");
                        });
                        plain(
                            StatusCode::GATEWAY_TIMEOUT,
                            "The request took too long; it may still take effect\n".into(),
                        )
                    }
                },
            };
            return if head {
                without_body(response)
            } else {
                response
            };
        }
        if allowed.is_empty() {
            return not_found();
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
        let handled: BoxFuture<'static, Response> = Box::pin(self.clone().handle(request));
        handled.map(Ok)
    }
}

/// What the HTTP server allows its clients: from [`Config`]'s `http_*` settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: std::time::Duration,
    pub(crate) idle_timeout: std::time::Duration,
    pub(crate) max_connections: usize,
}

impl Limits {
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            header_read_timeout: config.http_header_read_timeout,
            idle_timeout: config.http_idle_timeout,
            max_connections: config.http_max_connections.max(1),
        }
    }
}

/// A connection's socket, counting the bytes that cross it (to tell an idle connection).
struct Counted {
    stream: tokio::net::TcpStream,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes
                .fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.stream).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(written)) = &polled {
            self.bytes
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        if let std::task::Poll::Ready(Ok(written)) = &polled {
            self.bytes
                .fetch_add(*written as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `dispatch` on `listener` until `stop`, then lets the requests in progress finish.
///
/// HTTP/1.1 through hyper, with what a server facing the Internet needs and `axum::serve`
/// does not set: at most `max_connections` connections at once (more wait in the listen
/// backlog), a client that takes longer than `header_read_timeout` to send a request's
/// headers is disconnected (slowloris), and so is a connection idle for `idle_timeout` (no
/// request in progress, no byte either way).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    dispatch: Dispatch,
    limits: Limits,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // Dropped with this future (a kill aborts it): the connections go with it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, a connection reset before it was accepted: go on.
                    tracing::warn!(%error, "could not accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let bytes = Arc::new(AtomicU64::new(0));
        let in_progress = Arc::new(AtomicUsize::new(0));
        let io = hyper_util::rt::TokioIo::new(Counted {
            stream,
            bytes: bytes.clone(),
        });
        let service = {
            let (dispatch, in_progress) = (dispatch.clone(), in_progress.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                /// Counts a request in progress for as long as its future lives.
                struct InProgress(Arc<AtomicUsize>);
                impl Drop for InProgress {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                in_progress.fetch_add(1, Ordering::Relaxed);
                let counted = InProgress(in_progress.clone());
                let handled = dispatch.clone().handle(request.map(Body::new));
                async move {
                    let response = handled.await;
                    drop(counted);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let (builder, stop) = (builder.clone(), stop.clone());
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            let mut closing = false;
            // Idle when neither a byte nor a request moved between two looks, half the idle
            // timeout apart: closed after between one and one and a half idle timeouts.
            let look = idle_timeout / 2;
            let mut seen = u64::MAX;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut connection => break,
                    _ = stop.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tokio::time::sleep(look), if !closing => {
                        let now = bytes.load(Ordering::Relaxed);
                        if now == seen && in_progress.load(Ordering::Relaxed) == 0 {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        seen = now;
                    }
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The body, limited to `max` bytes: refused at once (`None`) when it says it is longer; read
/// through a limit when its length is not known; as it is when it is empty (no cost for a GET).
fn limit_body(body: Body, max: usize) -> Option<Body> {
    use axum::body::HttpBody;
    let hint = body.size_hint();
    match hint.exact() {
        Some(0) => Some(body),
        Some(n) if n > max as u64 => None,
        _ if hint.lower() > max as u64 => None,
        _ => Some(Body::new(http_body_util::Limited::new(body, max))),
    }
}

/// Parses Nameko's `[host:]port` address.
pub(crate) fn parse_address(address: &str) -> Result<SocketAddr, Error> {
    let full = if address.contains(':') {
        address.to_owned()
    } else {
        format!("0.0.0.0:{address}")
    };
    full.parse().map_err(|_| {
        Error::Config(format!(
            "WEB_SERVER_ADDRESS `{address}` is not of the form [host:]port"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTIPLY: &[Segment] = &[
        Segment::Static("multiply"),
        Segment::Param(Converter::Int),
        Segment::Param(Converter::Int),
    ];

    #[test]
    fn converters_accept_what_werkzeug_accepts() {
        assert!(Converter::Int.accepts("42"));
        assert!(!Converter::Int.accepts("-4"));
        assert!(!Converter::Int.accepts("abc"));
        assert!(Converter::Float.accepts("1.5"));
        assert!(!Converter::Float.accepts("1"));
        assert!(Converter::Uuid.accepts("12345678-1234-5678-1234-567812345678"));
        assert!(!Converter::Uuid.accepts("nope"));
        assert!(Converter::Any(&["a", "b"]).accepts("b"));
        assert!(!Converter::Any(&["a", "b"]).accepts("c"));
    }

    #[test]
    fn path_values_are_matched_decoded_and_checked() {
        let values = |segments: &[Segment], path: &str| {
            path_values(segments, &path.parse().unwrap())
                .map(|v| v.iter().map(Cow::into_owned).collect::<Vec<String>>())
        };
        assert_eq!(
            values(MULTIPLY, "/multiply/6/7"),
            Some(vec!["6".into(), "7".into()])
        );
        assert_eq!(values(MULTIPLY, "/multiply/6/x"), None);
        let files = &[Segment::Static("files"), Segment::Param(Converter::Path)];
        assert_eq!(
            values(files, "/files/a/b%20c.txt"),
            Some(vec!["a/b c.txt".into()])
        );
        // The whole path, and nothing more.
        assert_eq!(values(MULTIPLY, "/multiply/6/7/"), None);
        assert_eq!(values(MULTIPLY, "/multiply/6/7/8"), None);
        assert_eq!(values(MULTIPLY, "/multiply/6"), None);
        assert_eq!(values(MULTIPLY, "/divide/6/7"), None);
        assert_eq!(values(files, "/files/"), None);
        assert_eq!(values(&[], "/"), Some(vec![]));
        assert_eq!(values(&[], "/x"), None);
        // Static text, then typed values, then strings, then paths.
        let string = &[Segment::Static("files"), Segment::Param(Converter::String)];
        let fixed = &[Segment::Static("files"), Segment::Static("index")];
        let mut order: [&[Segment]; 3] = [files, string, fixed];
        order.sort_by_key(|segments| specificity(segments));
        assert_eq!(order, [&fixed[..], string, files]);
    }

    #[test]
    fn query_arguments_decode() {
        let args = Args {
            uri: "/m?third=2&name=Zo%C3%AB+B&x&third=3".parse().unwrap(),
        };
        assert_eq!(args.get("third").as_deref(), Some("2"));
        assert_eq!(args.get_all("third"), ["2", "3"]);
        assert_eq!(args.get("name").as_deref(), Some("Zoë B"));
        assert_eq!(args.get("x").as_deref(), Some(""));
        assert_eq!(args.get("missing"), None);
        assert!(
            matches!(args.get("third"), Some(Cow::Borrowed(_))),
            "no copy without escapes"
        );
    }

    #[test]
    fn addresses_parse_like_nameko() {
        assert_eq!(parse_address("8000").unwrap().to_string(), "0.0.0.0:8000");
        assert_eq!(
            parse_address("127.0.0.1:0").unwrap().to_string(),
            "127.0.0.1:0"
        );
        assert!(parse_address("localhost:x").is_err());
    }
}
