//! A worker's arguments as they are logged: by name, with the entrypoint's
//! `sensitive_arguments` redacted (Nameko's `get_redacted_args`).

use serde_json::{Map, Value};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "********";

/// One step of a path into an argument: `user.tokens[1]` is `user`, `tokens`, `1`.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Parses `a.b[1].c`; `None` for a path that is not of that shape.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        steps.push(Step::Key(key));
        while let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            steps.push(Step::Index(inner[..end].parse().ok()?));
            rest = &inner[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

/// Replaces, in `arguments` (argument name → value), every value a `sensitive` path reaches
/// with [`REDACTED`]. Paths that reach nothing are ignored, as in Nameko.
///
/// ```
/// use nameko::service::arguments::redact;
/// use serde_json::json;
///
/// let mut args = json!({"user": {"name": "tim", "password": "swordfish"}, "pins": [1, 2]});
/// redact(args.as_object_mut().unwrap(), &["user.password", "pins[1]", "missing"]);
/// assert_eq!(args, json!({"user": {"name": "tim", "password": "********"}, "pins": [1, "********"]}));
/// ```
pub fn redact(arguments: &mut Map<String, Value>, sensitive: &[&str]) {
    redact_collecting(arguments, sensitive);
}

/// Redacts like [`redact`], and returns the text of every value redacted (the leaves of what a
/// path reached), to keep them out of error messages too.
fn redact_collecting(arguments: &mut Map<String, Value>, sensitive: &[&str]) -> Vec<String> {
    let mut secrets = Vec::new();
    for path in sensitive {
        let Some(steps) = steps(path) else { continue };
        let Some((Step::Key(first), rest)) = steps.split_first() else {
            continue;
        };
        let mut value = arguments.get_mut(*first);
        for step in rest {
            value = match (step, value) {
                (Step::Key(key), Some(Value::Object(map))) => map.get_mut(*key),
                (Step::Index(i), Some(Value::Array(items))) => items.get_mut(*i),
                _ => None,
            };
        }
        if let Some(value) = value {
            leaves(value, &mut secrets);
            *value = Value::from(REDACTED);
        }
    }
    secrets
}

fn leaves(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(s) => into.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, into)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, into)),
        Value::Null => {}
        other => into.push(other.to_string()),
    }
}

/// A worker's arguments as logged: by name, redacted, with the redacted values kept aside to
/// scrub error messages (which may quote an argument, as serde's do).
#[derive(Debug)]
#[doc(hidden)]
pub struct LoggedArguments {
    pub(crate) shown: Value,
    secrets: Vec<String>,
}

impl LoggedArguments {
    fn new(mut arguments: Map<String, Value>, sensitive: &[&str]) -> Self {
        let secrets = redact_collecting(&mut arguments, sensitive);
        LoggedArguments {
            shown: Value::Object(arguments),
            secrets,
        }
    }

    /// `text` with every redacted value replaced by [`REDACTED`]; withheld altogether when it
    /// contains a value too short to replace safely.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if secret.is_empty() || !text.contains(secret.as_str()) {
                continue;
            }
            if secret.chars().count() < 4 {
                return "(withheld: it may quote a sensitive argument)".to_owned();
            }
            text = text.replace(secret.as_str(), REDACTED);
        }
        text
    }
}

/// What is shown of a body that is not what it should be: its beginning and end, or nothing of
/// it when it may hold a sensitive argument.
fn unreadable(body: &[u8], sensitive: &[&str]) -> Value {
    if sensitive.is_empty() {
        Value::from(crate::protocol::shorten(
            String::from_utf8_lossy(body).into_owned(),
        ))
    } else {
        Value::from(format!("({} bytes, not JSON)", body.len()))
    }
}

/// The arguments of an RPC call by name (positional ones named after `params`, extra ones
/// `args[i]`), redacted.
pub(crate) fn rpc_arguments(body: &[u8], params: &[&str], sensitive: &[&str]) -> LoggedArguments {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        let mut arguments = Map::new();
        arguments.insert("body".to_owned(), unreadable(body, sensitive));
        return LoggedArguments::new(arguments, &[]);
    };
    let mut arguments = Map::new();
    if let Some(Value::Array(args)) = request.remove("args") {
        for (i, value) in args.into_iter().enumerate() {
            let name = params
                .get(i)
                .map_or_else(|| format!("args[{i}]"), |p| (*p).to_owned());
            arguments.insert(name, value);
        }
    }
    if let Some(Value::Object(kwargs)) = request.remove("kwargs") {
        arguments.extend(kwargs);
    }
    LoggedArguments::new(arguments, sensitive)
}

/// An event's payload under its parameter's name, redacted.
pub(crate) fn event_arguments(body: &[u8], param: &str, sensitive: &[&str]) -> LoggedArguments {
    let payload =
        serde_json::from_slice::<Value>(body).unwrap_or_else(|_| unreadable(body, sensitive));
    let mut arguments = Map::new();
    arguments.insert(param.to_owned(), payload);
    LoggedArguments::new(arguments, sensitive)
}

/// An HTTP request's route parameters by name, redacted.
pub(crate) fn named_arguments<'a>(
    names: impl IntoIterator<Item = &'static str>,
    values: impl IntoIterator<Item = std::borrow::Cow<'a, str>>,
    sensitive: &[&str],
) -> LoggedArguments {
    let arguments: Map<String, Value> = names
        .into_iter()
        .zip(values)
        .map(|(name, value)| (name.to_owned(), Value::from(value.into_owned())))
        .collect();
    LoggedArguments::new(arguments, sensitive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse() {
        assert_eq!(
            steps("a.b[1][2].c"),
            Some(vec![
                Step::Key("a"),
                Step::Key("b"),
                Step::Index(1),
                Step::Index(2),
                Step::Key("c")
            ])
        );
        assert_eq!(steps("a[x]"), None);
        assert_eq!(steps(".a"), None);
        assert_eq!(steps("a[1"), None);
    }

    #[test]
    fn rpc_arguments_are_named_and_redacted() {
        let body = br#"{"args": ["tim", "swordfish", 3], "kwargs": {"token": "abc"}}"#;
        let args = rpc_arguments(body, &["user", "password"], &["password", "token"]);
        assert_eq!(
            args.shown,
            json!({"user": "tim", "password": "********", "args[2]": 3, "token": "********"})
        );
        assert_eq!(
            args.scrub(r#"invalid type: string "swordfish", expected u32"#),
            r#"invalid type: string "********", expected u32"#
        );
        assert_eq!(
            args.scrub("token abc at line 1"),
            "(withheld: it may quote a sensitive argument)"
        );
        assert_eq!(args.scrub("nothing secret"), "nothing secret");
    }

    #[test]
    fn a_body_that_is_not_json_is_not_shown_when_it_may_be_sensitive() {
        let args = event_arguments(b"password=swordfish", "form", &["form.password"]);
        assert_eq!(args.shown, json!({"form": "(18 bytes, not JSON)"}));
        let args = event_arguments(b"hello", "text", &[]);
        assert_eq!(args.shown, json!({"text": "hello"}));
        // A huge one is cut: a log line is not the place for all of it.
        let huge = format!("{{\"args\": [\"{}", "x".repeat(100_000));
        let args = rpc_arguments(huge.as_bytes(), &["a"], &[]);
        let shown = args.shown["body"].as_str().unwrap_or_default();
        assert!(shown.len() <= 600, "{}", shown.len());
        assert!(shown.starts_with(r#"{"args": ["xxx"#), "{shown}");
    }

    #[test]
    fn whole_payloads_and_nested_values_are_redacted() {
        let body = br#"{"card": {"number": "4111", "name": "tim"}}"#;
        assert_eq!(
            event_arguments(body, "payment", &["payment.card.number"]).shown,
            json!({"payment": {"card": {"number": "********", "name": "tim"}}})
        );
        assert_eq!(
            event_arguments(body, "payment", &["payment"]).shown,
            json!({"payment": "********"})
        );
    }
}
