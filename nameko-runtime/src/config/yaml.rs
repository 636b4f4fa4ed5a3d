//! Reading Nameko's YAML configuration: `${VAR}` and `${VAR:default}` substituted into parsed
//! scalar values (never into the file's text), `!env_var` and `!raw_env_var`, as Nameko 2.14's
//! loader does.

use super::*;

/// Replaces `${VAR}` and `${VAR:default}` in `text` with the environment's values (`lookup`);
/// defaults may hold further `${...}` and balanced braces. An unset variable without a default
/// becomes the empty string, as in Nameko. The values themselves are not substituted again.
///
/// This is the substitution [`Config::from_yaml`] applies to one scalar value of the file, after
/// the YAML is parsed (never to the file's text); it knows nothing of YAML itself.
pub fn substitute_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Find the closing brace that balances this `${`.
        let mut depth = 1usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return Err(Error::Config(format!(
                "unclosed `${{` in `{}`",
                &rest[start..].lines().next().unwrap_or("")
            )));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::Config(format!(
                "`${{{inner}}}`: `{name}` is not an environment variable name"
            )));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(&substitute_env(default, lookup)?),
            (None, None) => {}
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether Nameko's implicit resolver (`.*\$\{.*\}.*`, matched at the start, `.` stopping at
/// line breaks) reads a plain scalar as `!env_var`: its first line holds `${` and then `}`.
pub(super) fn has_implicit_env_var(value: &str) -> bool {
    let first_line = value.split('\n').next().unwrap_or_default();
    first_line
        .find("${")
        .is_some_and(|start| first_line[start + 2..].contains('}'))
}

/// Whether the scalar node starting at byte `index` of `text` is plain (neither quoted nor a
/// block scalar) and without a tag (such as `!!str`), past its anchor: what Nameko's implicit
/// resolver sees.
pub(super) fn is_plain_at(text: &str, index: usize) -> bool {
    let mut rest = text.get(index..).unwrap_or_default();
    loop {
        if rest.starts_with('!') {
            // A standard tag (ours are not read here): explicit, so not resolved.
            return false;
        } else if rest.starts_with('&') {
            rest = rest.trim_start_matches(|c: char| !c.is_whitespace());
        } else if rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, next)| next);
        } else if rest.starts_with(char::is_whitespace) {
            rest = rest.trim_start();
        } else {
            return !rest.starts_with(['"', '\'', '|', '>']);
        }
    }
}

/// Reads YAML text into a JSON value, substituting the environment into scalars as Nameko's
/// loader does (see [`Config::from_yaml`]).
///
/// Whether a scalar was plain or quoted is not part of what serde_norway hands over, only where
/// its node starts (in an error's location). So the text is deserialized in passes: a pass stops
/// at the first untagged `${...}` scalar whose style is not known yet, the style is read from the
/// text at the place the error names, and the next pass goes one scalar further. A file without
/// `${...}` takes one pass.
pub(super) struct EnvLoader<'a> {
    text: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Whether each untagged string scalar holding `${...}`, in the document's order (aliases
    /// included), is plain.
    plain: Vec<bool>,
    /// How many of those scalars the current pass has met.
    met: Cell<usize>,
    /// Set when the current pass stopped at a scalar whose style is not in `plain` yet.
    stopped: Cell<bool>,
    /// What made the current pass fail, when it is not the YAML's syntax.
    failure: RefCell<Option<String>>,
}

impl<'a> EnvLoader<'a> {
    pub(super) fn new(text: &'a str, lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        EnvLoader {
            text,
            lookup,
            plain: Vec::new(),
            met: Cell::new(0),
            stopped: Cell::new(false),
            failure: RefCell::new(None),
        }
    }
}

impl EnvLoader<'_> {
    pub(super) fn load(mut self) -> Result<Value, Error> {
        loop {
            self.met.set(0);
            self.stopped.set(false);
            let result =
                LoadNode(&self).deserialize(serde_norway::Deserializer::from_str(self.text));
            match result {
                Ok(value) => return Ok(value),
                Err(e) if self.stopped.get() => {
                    // Unknown, the scalar is taken for plain, the usual case.
                    let plain = e
                        .location()
                        .is_none_or(|at| is_plain_at(self.text, at.index()));
                    self.plain.push(plain);
                }
                Err(e) => {
                    return Err(Error::Config(match self.failure.take() {
                        Some(message) => match e.location() {
                            Some(at) => {
                                format!("{message} (line {}, column {})", at.line(), at.column())
                            }
                            None => message,
                        },
                        None => format!("the configuration is not valid YAML: {e}"),
                    }));
                }
            }
        }
    }

    /// Stops the pass with `message`.
    fn fail<E: serde::de::Error>(&self, message: String) -> E {
        let error = E::custom(&message);
        self.failure.borrow_mut().get_or_insert(message);
        error
    }

    /// An untagged string scalar: substituted and read as YAML when plain and holding `${...}`.
    fn untagged<E: serde::de::Error>(&self, value: &str) -> Result<Value, E> {
        if !has_implicit_env_var(value) {
            return Ok(Value::String(value.to_owned()));
        }
        let index = self.met.get();
        self.met.set(index + 1);
        match self.plain.get(index) {
            Some(true) => self.env_var(value, false),
            Some(false) => Ok(Value::String(value.to_owned())),
            None => {
                self.stopped.set(true);
                Err(E::custom("the style of this scalar is needed"))
            }
        }
    }

    /// `!env_var` (`raw` false) or `!raw_env_var` applied to `value`.
    fn env_var<E: serde::de::Error>(&self, value: &str, raw: bool) -> Result<Value, E> {
        let substituted = match substitute_env(value, self.lookup) {
            Ok(substituted) => substituted,
            Err(Error::Config(message)) => return Err(self.fail(message)),
            Err(other) => return Err(self.fail(other.to_string())),
        };
        if raw {
            return Ok(Value::String(substituted));
        }
        // As Nameko's `yaml.safe_load` of the result, except that what is no YAML value (a text
        // of several lines such as `x\nKEY: 1`, a tag) stays the string it is.
        Ok(serde_norway::from_str(&substituted).unwrap_or(Value::String(substituted)))
    }
}

/// The deserialization of one node of the file by an [`EnvLoader`].
#[derive(Clone, Copy)]
pub(super) struct LoadNode<'l, 'a>(&'l EnvLoader<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for LoadNode<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for LoadNode<'_, '_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json: no JSON number for infinities and NaN.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.untagged(v)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(self)? {
            let key = match key {
                Value::String(key) => key,
                Value::Array(_) | Value::Object(_) => {
                    return Err(self.0.fail(format!("a key must be a scalar, not `{key}`")));
                }
                scalar => scalar.to_string(),
            };
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        let (tag, content) = data.variant::<String>()?;
        let raw = match tag.as_str() {
            "env_var" => false,
            "raw_env_var" => true,
            other => {
                return Err(self.0.fail(format!(
                    "the tag `!{other}` is not supported (known: !env_var, !raw_env_var)"
                )));
            }
        };
        let value = content
            .newtype_variant::<String>()
            .map_err(|_| self.0.fail(format!("`!{tag}` applies to a scalar only")))?;
        self.0.env_var(&value, raw)
    }
}

pub(super) fn take<T: DeserializeOwned>(
    map: &mut serde_json::Map<String, Value>,
    key: &str,
    expected: &str,
) -> Result<Option<T>, Error> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|_| Error::Config(format!("`{key}` must be {expected}, not `{value}`"))),
    }
}
