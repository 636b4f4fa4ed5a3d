//! Everything Python Nameko 2.x puts on the wire, in one place.
//!
//! Exchange, queue and header names, the request and reply envelopes and the error object are
//! defined here and nowhere else; the rest of the runtime refers to these items. Interop tests pin
//! them against the real Python nameko.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Default name of the topic exchange that carries RPC requests and replies (`rpc_exchange`).
pub const DEFAULT_RPC_EXCHANGE: &str = "nameko-rpc";
/// Prefix of every context-data header (`nameko.call_id_stack`, `nameko.auth_token`, ...).
pub const HEADER_PREFIX: &str = "nameko.";
/// Context key of the call id stack.
pub const CALL_ID_STACK_KEY: &str = "call_id_stack";
/// The header of [`CALL_ID_STACK_KEY`]: `nameko.call_id_stack`.
pub(crate) const CALL_ID_STACK_HEADER: &str = "nameko.call_id_stack";
/// The RPC method every nameko-rs service answers with its description (service discovery,
/// `nameko describe`): not Nameko's, and a Python service answers `MethodNotFound`, so that
/// asking costs it nothing. A method of a service cannot take the name.
pub const DESCRIBE_METHOD: &str = "__nameko_describe__";
/// Content type of every message Nameko's default serializer produces.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Whether a message with this content type holds JSON, as Nameko (kombu) reads it: no content
/// type, or `application/json` with or without parameters (`; charset=utf-8`), in any case.
pub fn is_json(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        // What every Nameko client sends, told at once.
        Some(CONTENT_TYPE_JSON) => true,
        Some(content_type) => content_type
            .split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(CONTENT_TYPE_JSON)),
    }
}
/// Content encoding of every message Nameko's default serializer produces.
pub const CONTENT_ENCODING_UTF8: &str = "utf-8";
/// AMQP delivery mode of every Nameko publish (persistent).
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// Lifetime of an unused reply queue (`x-expires`), in milliseconds.
pub const REPLY_QUEUE_EXPIRES_MS: u32 = 300_000;
/// Name Nameko 2 gives the owner of a standalone proxy's reply queue and call ids.
pub const STANDALONE_PROXY_NAME: &str = "standalone_rpc_proxy";

/// Name of the queue on which a service receives its RPC requests: `rpc-<service>`.
pub fn rpc_queue_name(service: &str) -> String {
    format!("rpc-{service}")
}

/// Binding key of a service's RPC queue on the RPC exchange: `<service>.*`.
pub fn rpc_binding_key(service: &str) -> String {
    format!("{service}.*")
}

/// Routing key of a request to `service.method`.
pub fn rpc_routing_key(service: &str, method: &str) -> String {
    let mut key = String::with_capacity(service.len() + 1 + method.len());
    key.push_str(service);
    key.push('.');
    key.push_str(method);
    key
}

/// Name of a reply queue: `rpc.reply-<owner>-<uuid>`; its binding key (and every request's
/// `reply_to`) is the bare uuid.
pub fn reply_queue_name(owner: &str, uuid: &str) -> String {
    format!("rpc.reply-{owner}-{uuid}")
}

/// The topic exchange of a service's events: `<service>.events`.
pub fn event_exchange_name(source: &str) -> String {
    format!("{source}.events")
}

/// The queue of an event handler, named as Nameko names it for each handler type:
/// `evt-<source>-<type>--<service>.<method>` (service pool), `evt-<source>-<type>` (singleton),
/// `evt-<source>-<type>--<service>.<method>-<identifier>` (broadcast).
pub fn event_queue_name(
    source: &str,
    event_type: &str,
    handler_type: HandlerType,
    service: &str,
    method: &str,
    broadcast_identifier: &str,
) -> String {
    match handler_type {
        HandlerType::ServicePool => format!("evt-{source}-{event_type}--{service}.{method}"),
        HandlerType::Singleton => format!("evt-{source}-{event_type}"),
        HandlerType::Broadcast => {
            format!("evt-{source}-{event_type}--{service}.{method}-{broadcast_identifier}")
        }
    }
}

/// A call id: `<service>.<method>.<uuid4>`.
pub fn new_call_id(service: &str, method: &str) -> String {
    let id = uuid::Uuid::new_v4();
    let mut call_id = String::with_capacity(service.len() + method.len() + 38);
    call_id.push_str(service);
    call_id.push('.');
    call_id.push_str(method);
    call_id.push('.');
    call_id.push_str(
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    call_id
}

/// Who receives an event (Nameko's `handler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerType {
    /// Each listening service gets every event once, shared among its instances (the default).
    ServicePool,
    /// One handler in the whole cluster gets each event.
    Singleton,
    /// Every instance of every listening service gets every event.
    Broadcast,
}

impl fmt::Display for HandlerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandlerType::ServicePool => "service_pool",
            HandlerType::Singleton => "singleton",
            HandlerType::Broadcast => "broadcast",
        })
    }
}

pub mod headers;
pub use headers::{HeaderName, Headers};

/// The body of an RPC request: `{"args": [...], "kwargs": {...}}`, the input of every method
/// whose entrypoint calls it with JSON arguments.
///
/// Build one with [`new`](Self::new), [`arg`](Self::arg) and [`kwarg`](Self::kwarg), or read
/// one with [`parse`](Self::parse). Arguments stay raw JSON until they are bound to a method's
/// parameters, so each one is parsed once, straight into its Rust type. A request the RPC
/// entrypoint receives that opens as clients send them (`{"args": [`) is not even read before
/// then: laid out as clients send it, with one positional argument per parameter, it is read
/// in a single pass as the parameters are bound, and anything else is read again to bind it or
/// say what is wrong with it (`MalformedRequest`, `IncorrectSignature`).
#[derive(Debug, Default)]
pub struct RequestBody {
    pub(crate) repr: BodyRepr,
}

/// What a [`RequestBody`] holds.
#[derive(Debug)]
pub(crate) enum BodyRepr {
    /// A request as it came (UTF-8, opening with `{"args": [`), read when it is bound; `args_at`
    /// is where its first argument starts.
    Unread { text: String, args_at: usize },
    /// Arguments read or given one by one.
    Read {
        args: Vec<Box<RawValue>>,
        kwargs: HashMap<String, Box<RawValue>>,
    },
}

impl Default for BodyRepr {
    fn default() -> Self {
        BodyRepr::Read {
            args: Vec::new(),
            kwargs: HashMap::new(),
        }
    }
}

/// Why a request body could not be read; each becomes a `MalformedRequest` reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedRequest {
    /// The body is not JSON at all.
    #[error("Request body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("Request body must be a JSON object with `args` and `kwargs`")]
    NotAnObject,
    /// Nameko's own message for an object that lacks one of the two keys.
    #[error("Message missing `args` or `kwargs`")]
    MissingArgsOrKwargs,
    /// `args` is not a list or `kwargs` not an object.
    #[error("`args` must be a list and `kwargs` an object")]
    WrongShape,
    /// A content type other than JSON.
    #[error("Unsupported content type `{0}`: only application/json is accepted")]
    ContentType(String),
}

impl From<MalformedRequest> for RemoteError {
    /// Nameko's `MalformedRequest`, its message cut to a loggable length.
    fn from(error: MalformedRequest) -> RemoteError {
        RemoteError::nameko("MalformedRequest", shorten(error.to_string()))
    }
}

impl RequestBody {
    /// No arguments: what a method without parameters is called with.
    pub fn new() -> Self {
        RequestBody::default()
    }

    /// The same arguments and `value` as the next positional argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        if let BodyRepr::Read { args, .. } = &mut self.read_now().repr {
            args.push(raw_value(&value.into()));
        }
        self
    }

    /// The same arguments and `value` as the keyword argument `name`.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        if let BodyRepr::Read { kwargs, .. } = &mut self.read_now().repr {
            kwargs.insert(name.into(), raw_value(&value.into()));
        }
        self
    }

    /// Reads a request body, telling apart each way it can be malformed.
    pub fn parse(body: &[u8]) -> Result<RequestBody, MalformedRequest> {
        let text =
            std::str::from_utf8(body).map_err(|e| MalformedRequest::NotJson(e.to_string()))?;
        let (args, kwargs) = read_request(text)?;
        Ok(RequestBody::from_parts(args, kwargs))
    }

    /// A request as it came off the wire. One that opens as clients send them (`{"args": [`)
    /// is left unread until it is bound to a method's parameters, which reads it in one pass
    /// (and refuses it then if it turns out malformed); any other is read now, telling apart
    /// each way it can be malformed, as [`parse`](Self::parse) does.
    pub(crate) fn unread(body: &[u8]) -> Result<RequestBody, MalformedRequest> {
        let text =
            std::str::from_utf8(body).map_err(|e| MalformedRequest::NotJson(e.to_string()))?;
        if let Some(args_at) = layout::args_start(text) {
            return Ok(RequestBody {
                repr: BodyRepr::Unread {
                    text: text.to_owned(),
                    args_at,
                },
            });
        }
        let (args, kwargs) = read_request(text)?;
        Ok(RequestBody::from_parts(args, kwargs))
    }

    /// A request of these arguments.
    pub(crate) fn from_parts(
        args: Vec<Box<RawValue>>,
        kwargs: HashMap<String, Box<RawValue>>,
    ) -> RequestBody {
        RequestBody {
            repr: BodyRepr::Read { args, kwargs },
        }
    }

    /// The arguments read, for adding to: a malformed unread request has none (only the RPC
    /// entrypoint makes unread ones, and hands them straight to the method).
    fn read_now(&mut self) -> &mut Self {
        if let BodyRepr::Unread { text, .. } = &self.repr {
            let (args, kwargs) = read_request(text).unwrap_or_default();
            self.repr = BodyRepr::Read { args, kwargs };
        }
        self
    }
}

/// A request's positional and keyword arguments, each as raw JSON.
pub(crate) type Arguments = (Vec<Box<RawValue>>, HashMap<String, Box<RawValue>>);

/// The arguments of a request body (UTF-8 already), telling apart each way it can be malformed.
pub(crate) fn read_request(text: &str) -> Result<Arguments, MalformedRequest> {
    #[derive(Deserialize)]
    struct Loose<'a> {
        #[serde(borrow)]
        args: Option<&'a RawValue>,
        #[serde(borrow)]
        kwargs: Option<&'a RawValue>,
    }
    if !text.trim_start().starts_with('{') {
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(MalformedRequest::NotAnObject),
            Err(e) => Err(MalformedRequest::NotJson(e.to_string())),
        };
    }
    // A well-formed request in one pass; any other is read again below, to say what is
    // wrong with it.
    #[derive(Deserialize)]
    struct Strict {
        args: Vec<Box<RawValue>>,
        kwargs: HashMap<String, Box<RawValue>>,
    }
    if let Ok(Strict { args, kwargs }) = serde_json::from_str(text) {
        return Ok((args, kwargs));
    }
    let loose: Loose<'_> = match serde_json::from_str(text) {
        Ok(loose) => loose,
        Err(e) if e.is_data() => return Err(MalformedRequest::NotAnObject),
        Err(e) => return Err(MalformedRequest::NotJson(e.to_string())),
    };
    let (Some(args), Some(kwargs)) = (loose.args, loose.kwargs) else {
        return Err(MalformedRequest::MissingArgsOrKwargs);
    };
    Ok((
        serde_json::from_str(args.get()).map_err(|_| MalformedRequest::WrongShape)?,
        serde_json::from_str(kwargs.get()).map_err(|_| MalformedRequest::WrongShape)?,
    ))
}

/// A JSON value as raw JSON (a `Value` always serialises).
fn raw_value(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Why arguments could not be made into a request body.
#[derive(Debug, thiserror::Error)]
pub enum ArgumentsError {
    /// An argument failed to serialise.
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
    /// Positional arguments must serialise to a JSON array.
    #[error("positional arguments must be a tuple, an array, a Vec or `()`, not {0}")]
    NotAList(String),
    /// Keyword arguments must serialise to a JSON object.
    #[error("keyword arguments must be a map, a struct or `()`, not {0}")]
    NotAnObject(String),
}

/// Serialises a request body from positional arguments (anything that serialises to a JSON array;
/// `()` for none) and keyword arguments (anything that serialises to a JSON object; `()` for
/// none).
pub fn encode_request<A: Serialize + ?Sized, K: Serialize + ?Sized>(
    args: &A,
    kwargs: &K,
) -> Result<Vec<u8>, ArgumentsError> {
    // Written straight into the body: one buffer, no copy of either part.
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"args\": ");
    let start = body.len();
    serde_json::to_writer(&mut body, args)?;
    match &body[start..] {
        b"null" => {
            body.truncate(start);
            body.extend_from_slice(b"[]");
        }
        list if list.starts_with(b"[") => {}
        other => return Err(ArgumentsError::NotAList(lossy_prefix(other))),
    }
    body.extend_from_slice(b", \"kwargs\": ");
    let start = body.len();
    serde_json::to_writer(&mut body, kwargs)?;
    match &body[start..] {
        b"null" => {
            body.truncate(start);
            body.extend_from_slice(b"{}");
        }
        map if map.starts_with(b"{") => {}
        other => return Err(ArgumentsError::NotAnObject(lossy_prefix(other))),
    }
    body.push(b'}');
    Ok(body)
}

/// The first 40 characters of serialised JSON, for an error message.
fn lossy_prefix(json: &[u8]) -> String {
    String::from_utf8_lossy(json).chars().take(40).collect()
}

/// The error object of a failed call, as Nameko serialises an exception:
/// `{"exc_type", "exc_path", "exc_args", "value"}`.
///
/// It is both what a Rust service sends for a failed call and what a Rust client receives from
/// any callee, Python or Rust (inside [`RpcError::Remote`](crate::RpcError::Remote)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The exception's class name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's dotted path, e.g. `builtins.ValueError`.
    #[serde(default)]
    pub exc_path: String,
    /// The exception's arguments, made JSON-safe.
    #[serde(default)]
    pub exc_args: Vec<Value>,
    /// The exception's message (`str(exc)`).
    #[serde(default)]
    pub value: String,
}

impl RemoteError {
    /// An error object of type `exc_type` with message `value`, whose only argument is `value`.
    pub fn new(exc_type: impl Into<String>, value: impl Into<String>) -> Self {
        let exc_type = exc_type.into();
        let value = value.into();
        RemoteError {
            exc_path: exc_type.clone(),
            exc_args: vec![Value::String(value.clone())],
            exc_type,
            value,
        }
    }

    /// An error of nameko-rs's own (`WorkerPanic`, `DependencyError`, ...): its path is
    /// `nameko_rs.<exc_type>`.
    pub fn nameko_rs(exc_type: &str, value: impl Into<String>) -> Self {
        RemoteError::new(exc_type, value).with_path(format!("nameko_rs.{exc_type}"))
    }

    /// Whether this is Nameko's own exception `exc_type` (`nameko.exceptions.<exc_type>`).
    pub fn is_nameko(&self, exc_type: &str) -> bool {
        self.exc_path
            .strip_prefix("nameko.exceptions.")
            .is_some_and(|rest| rest == exc_type)
    }

    /// Sets the dotted path (Python's `module.Class`).
    pub fn with_path(mut self, exc_path: impl Into<String>) -> Self {
        self.exc_path = exc_path.into();
        self
    }

    /// Sets the arguments.
    pub fn with_args(mut self, exc_args: Vec<Value>) -> Self {
        self.exc_args = exc_args;
        self
    }

    pub(crate) fn nameko(exc_type: &str, message: String) -> Self {
        RemoteError::new(exc_type, message).with_path(format!("nameko.exceptions.{exc_type}"))
    }

    /// The first argument as a string, else the message: how Python re-creates a registered
    /// exception from `exc_args`.
    pub(crate) fn first_arg(&self) -> String {
        match self.exc_args.first() {
            Some(Value::String(s)) => s.clone(),
            _ => self.value.clone(),
        }
    }
}

impl fmt::Display for RemoteError {
    /// Formats as Nameko's `RemoteError` does: `<exc_type> <value>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.exc_type, self.value)
    }
}

impl std::error::Error for RemoteError {}

/// Serialises a reply whose result is the given raw JSON.
pub fn encode_reply_result(result_json: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(result_json.len() + 28);
    body.extend_from_slice(b"{\"result\": ");
    body.extend_from_slice(result_json);
    body.extend_from_slice(b", \"error\": null}");
    body
}

/// [`encode_reply_result`] in the result's own buffer: no copy where it has room for the
/// envelope (as a result `serde_json::to_vec` wrote usually has).
pub(crate) fn wrap_reply_result(mut result: Vec<u8>) -> Vec<u8> {
    const HEAD: &[u8] = b"{\"result\": ";
    const TAIL: &[u8] = b", \"error\": null}";
    let len = result.len();
    result.reserve(HEAD.len() + TAIL.len());
    result.extend_from_slice(HEAD);
    result.copy_within(0..len, HEAD.len());
    result[..HEAD.len()].copy_from_slice(HEAD);
    result.extend_from_slice(TAIL);
    result
}

/// Serialises a reply carrying an error object.
pub fn encode_reply_error(error: &RemoteError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a> {
        result: (),
        error: &'a RemoteError,
    }
    // A struct of strings and JSON values always serialises.
    serde_json::to_vec(&Reply { result: (), error }).unwrap_or_else(|_| {
        br#"{"result": null, "error": {"exc_type": "Exception", "exc_path": "builtins.Exception", "exc_args": [], "value": ""}}"#.to_vec()
    })
}

/// A reply body, read: the result stays raw JSON until the caller names its type.
#[derive(Debug, Deserialize)]
pub struct ReplyBody {
    /// The result (JSON `null` when the call failed).
    pub result: Option<Box<RawValue>>,
    /// The error object, if the call failed.
    #[serde(default)]
    pub error: Option<RemoteError>,
}

impl ReplyBody {
    /// Reads a reply body.
    pub fn parse(body: &[u8]) -> serde_json::Result<ReplyBody> {
        serde_json::from_slice(body)
    }
}

/// The longest error text that goes into a reply or a log line whole.
const MAX_ERROR_TEXT: usize = 512;

/// `text`, cut in the middle when it is longer than 512 bytes: a decoding error quotes the
/// value it choked on, and a 16 MiB argument must not come back in the error reply.
pub(crate) fn shorten(text: String) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let head_end = (0..=384)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let tail_start = (text.len() - 96..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!(
        "{}... ({} bytes cut) ...{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

/// Context data carried by a message: its headers with the `nameko.` prefix removed.
/// Headers without the prefix are kept under their own name, as Nameko does; `nameko.<key>`
/// wins over a header named `<key>`.
pub fn context_from_headers(headers: &Headers) -> BTreeMap<String, Value> {
    let mut data = BTreeMap::new();
    for (key, value) in headers {
        match key.strip_prefix(HEADER_PREFIX) {
            // `nameko.<key>` wins over a header named `<key>`, whichever comes first.
            Some(key) => {
                data.insert(key.to_owned(), value.clone());
            }
            None => {
                data.entry(key.to_owned()).or_insert_with(|| value.clone());
            }
        }
    }
    data
}

/// Headers for context data: each non-null value under `nameko.<key>`.
pub fn headers_from_context(data: &BTreeMap<String, Value>) -> Headers {
    with_context(data, 0)
}

/// Headers for context data, with room for `more` headers besides.
pub(crate) fn with_context(data: &BTreeMap<String, Value>, more: usize) -> Headers {
    let mut entries = Vec::with_capacity(data.len() + more);
    entries.extend(
        data.iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| (format!("{HEADER_PREFIX}{key}").into(), value.clone())),
    );
    // A map's keys differ, and so do they with one prefix.
    Headers::from_unique(entries)
}

/// The layout of a request as clients send it, `{"args": [a, b], "kwargs": {}}` with any JSON
/// whitespace, recognised byte by byte around the arguments; serde_json parses each argument.
pub(crate) mod layout {
    use serde::de::DeserializeOwned;

    /// Where the first argument starts, if the request opens with `{"args": [`.
    pub(crate) fn args_start(text: &str) -> Option<usize> {
        expect(text, 0, &[b"{", b"\"args\"", b":", b"["])
    }

    /// Whether the request ends at `at` with `], "kwargs": {}}` (and whitespace).
    pub(crate) fn is_tail(text: &str, at: usize) -> bool {
        expect(
            text,
            at,
            &[b"]", b",", b"\"kwargs\"", b":", b"{", b"}", b"}"],
        )
        .is_some_and(|end| skip_whitespace(text.as_bytes(), end) == text.len())
    }

    /// The argument starting at `at` as a `T`, and where the next one starts: after its comma,
    /// or, for the `last`, nowhere but the end of a request laid out as clients send it.
    ///
    /// `None` also for what the request read whole would refuse or read otherwise, though `T`
    /// takes it here: a value of no bytes (a `T` that reads nothing), and a control character
    /// in the value's text (which a `T` read from a byte string does not check; it is refused
    /// inside strings and only whitespace outside them, rare either way).
    pub(crate) fn read_arg<T: DeserializeOwned>(
        text: &str,
        at: usize,
        last: bool,
    ) -> Option<(T, usize)> {
        let start = skip_whitespace(text.as_bytes(), at);
        let mut values = serde_json::Deserializer::from_str(text.get(at..)?).into_iter::<T>();
        let value = values.next()?.ok()?;
        let end = at + values.byte_offset();
        let read = text.as_bytes().get(start..end)?;
        // (The smallest byte: a loop the compiler vectorises, where a search would stop at
        // each byte to test it.)
        match read.iter().copied().min() {
            Some(smallest) if smallest >= 0x20 => {}
            _ => return None,
        }
        if last {
            return is_tail(text, end).then_some((value, end));
        }
        let next = expect(text, end, &[b","])?;
        Some((value, next))
    }

    /// Where `tokens` end, if they follow `at` in order with only whitespace around them.
    fn expect(text: &str, mut at: usize, tokens: &[&[u8]]) -> Option<usize> {
        let bytes = text.as_bytes();
        for token in tokens {
            at = skip_whitespace(bytes, at);
            if !bytes.get(at..)?.starts_with(token) {
                return None;
            }
            at += token.len();
        }
        Some(at)
    }

    fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
        while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            at += 1;
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_id_stack_header_is_the_prefixed_key() {
        assert_eq!(
            CALL_ID_STACK_HEADER,
            format!("{HEADER_PREFIX}{CALL_ID_STACK_KEY}")
        );
    }

    #[test]
    fn json_content_types_are_read_as_kombu_writes_them() {
        assert!(is_json(None));
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("Application/JSON;charset=UTF-8")));
        assert!(!is_json(Some("application/x-python-serialize")));
        assert!(!is_json(Some("application/jsonx")));
    }
    use serde_json::json;

    #[test]
    fn long_error_texts_are_cut_in_the_middle() {
        assert_eq!(shorten("short".into()), "short");
        let long = format!(
            "argument 'a': invalid type: string \"{}é\", expected i64",
            "y".repeat(10_000)
        );
        let short = shorten(long.clone());
        assert!(short.len() < 600, "{}", short.len());
        assert!(short.starts_with("argument 'a': invalid type: string \"yyy"));
        assert!(short.ends_with("yé\", expected i64"));
        assert!(short.contains("bytes cut"));
    }

    #[test]
    fn names_match_nameko() {
        assert_eq!(rpc_queue_name("greeter"), "rpc-greeter");
        assert_eq!(rpc_binding_key("greeter"), "greeter.*");
        assert_eq!(rpc_routing_key("greeter", "greet"), "greeter.greet");
        assert_eq!(reply_queue_name("svc", "abc"), "rpc.reply-svc-abc");
        let id = new_call_id("svc", "m");
        assert!(id.starts_with("svc.m.") && id.len() == "svc.m.".len() + 36);
    }

    #[test]
    fn event_names_match_nameko() {
        use crate::protocol::HandlerType::*;
        assert_eq!(event_exchange_name("src"), "src.events");
        assert_eq!(
            event_queue_name("src", "ping", ServicePool, "svc", "on_ping", "x"),
            "evt-src-ping--svc.on_ping"
        );
        assert_eq!(
            event_queue_name("src", "ping", Singleton, "svc", "on_ping", "x"),
            "evt-src-ping"
        );
        assert_eq!(
            event_queue_name("src", "ping", Broadcast, "svc", "on_ping", "abc"),
            "evt-src-ping--svc.on_ping-abc"
        );
    }

    #[test]
    fn request_body_parses_args_and_kwargs() {
        let body = RequestBody::parse(br#"{"args": ["Tim", 1], "kwargs": {"x": [1]}}"#).unwrap();
        let BodyRepr::Read { args, kwargs } = body.repr else {
            panic!("parsed bodies are read");
        };
        assert_eq!(args.len(), 2);
        assert_eq!(args[0].get(), "\"Tim\"");
        assert_eq!(kwargs["x"].get(), "[1]");
    }

    #[test]
    fn malformed_requests_are_told_apart() {
        assert!(matches!(
            RequestBody::parse(b"{nope"),
            Err(MalformedRequest::NotJson(_))
        ));
        assert!(matches!(
            RequestBody::parse(b"\xff\xfe"),
            Err(MalformedRequest::NotJson(_))
        ));
        assert_eq!(
            RequestBody::parse(b"[1, 2]").unwrap_err(),
            MalformedRequest::NotAnObject
        );
        assert_eq!(
            RequestBody::parse(b"\"x\"").unwrap_err(),
            MalformedRequest::NotAnObject
        );
        assert_eq!(
            RequestBody::parse(br#"{"args": ["x"]}"#).unwrap_err(),
            MalformedRequest::MissingArgsOrKwargs
        );
        assert_eq!(
            RequestBody::parse(br#"{"args": {}, "kwargs": {}}"#).unwrap_err(),
            MalformedRequest::WrongShape
        );
        assert_eq!(
            MalformedRequest::MissingArgsOrKwargs.to_string(),
            "Message missing `args` or `kwargs`"
        );
    }

    #[test]
    fn requests_encode_like_nameko() {
        let body = encode_request(&("Tim",), &()).unwrap();
        assert_eq!(body, br#"{"args": ["Tim"], "kwargs": {}}"#);
        let body = encode_request(&(), &json!({"name": "Tim"})).unwrap();
        assert_eq!(body, br#"{"args": [], "kwargs": {"name":"Tim"}}"#);
        assert!(matches!(
            encode_request(&"Tim", &()),
            Err(ArgumentsError::NotAList(_))
        ));
        assert!(matches!(
            encode_request(&(), &[1]),
            Err(ArgumentsError::NotAnObject(_))
        ));
    }

    #[test]
    fn replies_encode_like_nameko() {
        assert_eq!(
            encode_reply_result(br#""Hello Tim!""#),
            br#"{"result": "Hello Tim!", "error": null}"#
        );
        // Written around the result in its own buffer, whatever room the buffer has.
        for result in [&br#""Hello Tim!""#[..], b"", br#"{"n": [1, 2, 3]}"#] {
            let mut roomy = Vec::with_capacity(128);
            roomy.extend_from_slice(result);
            assert_eq!(wrap_reply_result(roomy), encode_reply_result(result));
            assert_eq!(
                wrap_reply_result(result.to_vec()),
                encode_reply_result(result)
            );
        }
        let error = RemoteError::nameko("MethodNotFound", "nope".into());
        let body: Value = serde_json::from_slice(&encode_reply_error(&error)).unwrap();
        assert_eq!(
            body,
            json!({"result": null, "error": {"exc_type": "MethodNotFound",
                "exc_path": "nameko.exceptions.MethodNotFound", "exc_args": ["nope"], "value": "nope"}})
        );
    }

    #[test]
    fn context_headers_round_trip_with_prefix() {
        let headers: Headers = [
            ("nameko.auth_token".to_owned(), json!("tok")),
            ("foreign".to_owned(), json!(1)),
        ]
        .into();
        let data = context_from_headers(&headers);
        assert_eq!(data["auth_token"], json!("tok"));
        assert_eq!(data["foreign"], json!(1));
        let mut with_null = data.clone();
        with_null.insert("user_id".into(), Value::Null);
        let out = headers_from_context(&with_null);
        assert_eq!(out.len(), 2);
        assert_eq!(out["nameko.foreign"], json!(1));
    }
}
