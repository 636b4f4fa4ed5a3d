//! What a route is to the code the macro generates: its segments and converters, and the request
//! taken apart for the handler ([`HttpCall`], with the route's values). Reached through
//! `__private` only: the macro's glue, not public API.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::Uri;
use axum::http::request::Parts;

use super::percent_decode;

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
    pub(crate) fn accepts(&self, value: &str) -> bool {
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

// `MAX_ROUTE_PARAMS` and `METHODS`, as the macro checks routes against them.
nameko_macros::__http_constants!();

/// The values of a route's parameters in a request's path: where they are in the path, decoded
/// when read. Cloning one shares the path's bytes.
#[derive(Clone, Debug)]
pub struct PathValues {
    pub(crate) uri: Uri,
    /// Byte offsets in the path: `u16`, as the `http` crate refuses a URI longer than 65,534
    /// bytes (a path whose offsets did not fit would match no route). Small, as the request's
    /// worker future holds this twice.
    pub(crate) spans: [(u16, u16); MAX_ROUTE_PARAMS],
    pub(crate) len: usize,
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

/// The future of a route's worker: its response, or `None` when no worker ran (the service is
/// stopping, or was killed).
pub type HttpFuture = futures_util::future::BoxFuture<'static, Option<axum::response::Response>>;
