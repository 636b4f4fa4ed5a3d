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
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::error::Error;
use crate::protocol::RemoteError;

pub use axum::Json;
pub use axum::http::StatusCode;
pub(crate) use dispatch::{Dispatch, Route, Upgrade, router};
pub(crate) use request::percent_decode;
pub use request::{Args, Request};
pub use route::Http;
pub(crate) use route::HttpRoutes;
pub(crate) use server::{Limits, parse_address, serve};

pub(crate) use call::{
    Converter, HttpCall, HttpFuture, MAX_ROUTE_PARAMS, METHODS, PathValues, Segment,
};

pub(crate) mod call;
mod dispatch;
mod request;
mod route;
mod server;

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

#[cfg(test)]
mod tests {
    use super::dispatch::{path_values, specificity};
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
