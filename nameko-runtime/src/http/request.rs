//! [`Request`]: an HTTP request with werkzeug's accessors, and the query and form decoding.

use super::*;

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
    pub(super) uri: Uri,
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

    fn from_request(
        request: axum::extract::Request,
        _state: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        // Taken apart before the future is made: an `async fn` would hold the request and then
        // its parts, and the handler's future holds this one.
        let (parts, body) = request.into_parts();
        async move {
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .map_err(body_error)?;
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
}

/// The response to a body that could not be read: too large, too slow, or broken off.
fn body_error(e: axum::Error) -> Response {
    let too_large = std::error::Error::source(&e)
        .map(|s| s.to_string().contains("length limit"))
        .unwrap_or(false)
        || e.to_string().contains("length limit");
    let timed_out = std::iter::successors(std::error::Error::source(&e), |s| s.source())
        .any(|s| s.is::<super::server::BodyTimedOut>());
    if too_large {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large\n".into(),
        )
    } else if timed_out {
        plain(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time\n".into(),
        )
    } else {
        plain(
            StatusCode::BAD_REQUEST,
            format!("The request body could not be read: {e}\n"),
        )
    }
}
