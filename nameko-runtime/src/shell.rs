//! The language of `nameko shell`: `service.method(args, key=value)` and
//! `dispatch("service", "event_type", payload)`, with JSON values and Python's spellings
//! (`True`, `False`, `None`, single-quoted strings).

use serde_json::{Map, Value};

/// One line of the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `service.method(args, key=value)`.
    Call {
        /// The service.
        service: String,
        /// The method.
        method: String,
        /// Positional arguments.
        args: Vec<Value>,
        /// Keyword arguments.
        kwargs: Map<String, Value>,
    },
    /// `dispatch("service", "event_type", payload)`.
    Dispatch {
        /// The source service.
        service: String,
        /// The event type.
        event_type: String,
        /// The payload.
        payload: Value,
    },
}

/// Why a line does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at column {column})")]
pub struct ParseError {
    message: String,
    column: usize,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            message: message.into(),
            column: self.pos + 1,
        })
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            self.error(format!("expected `{c}`"))
        }
    }

    fn identifier(&mut self) -> Option<&'a str> {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|(i, c)| !(c.is_alphanumeric() || *c == '_' || (*c == '-' && *i > 0)))
            .map_or(rest.len(), |(i, _)| i);
        if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        self.pos += len;
        Some(&rest[..len])
    }

    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'u')) => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) => out.push(c),
                            None => return self.error("bad \\u escape"),
                        }
                    }
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        self.pos = start;
        self.error("unclosed string")
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        self.skip_spaces();
        match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => self.string(q).map(Value::String),
            Some('[') | Some('(') => {
                let close = if self.rest().starts_with('[') {
                    ']'
                } else {
                    ')'
                };
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat(close) {
                    loop {
                        items.push(self.value()?);
                        if self.eat(close) {
                            break;
                        }
                        self.expect(',')?;
                        if self.eat(close) {
                            break;
                        }
                    }
                }
                Ok(Value::Array(items))
            }
            Some('{') => {
                self.pos += 1;
                let mut map = Map::new();
                if !self.eat('}') {
                    loop {
                        let key = match self.value()? {
                            Value::String(key) => key,
                            other => other.to_string(),
                        };
                        self.expect(':')?;
                        map.insert(key, self.value()?);
                        if self.eat('}') {
                            break;
                        }
                        self.expect(',')?;
                        if self.eat('}') {
                            break;
                        }
                    }
                }
                Ok(Value::Object(map))
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let rest = self.rest();
                let len = rest
                    .find(|c: char| {
                        !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                    })
                    .unwrap_or(rest.len());
                match serde_json::from_str::<Value>(&rest[..len]) {
                    Ok(number) => {
                        self.pos += len;
                        Ok(number)
                    }
                    Err(_) => self.error(format!("`{}` is not a number", &rest[..len])),
                }
            }
            _ => match self.identifier() {
                Some("true" | "True") => Ok(Value::Bool(true)),
                Some("false" | "False") => Ok(Value::Bool(false)),
                Some("null" | "None") => Ok(Value::Null),
                Some(other) => self.error(format!("`{other}` is not a value (strings are quoted)")),
                None => self.error("expected a value"),
            },
        }
    }
}

/// Parses one shell line.
pub fn parse_line(text: &str) -> Result<Line, ParseError> {
    let mut p = Parser { text, pos: 0 };
    let Some(first) = p.identifier() else {
        return p.error("expected `service.method(...)` or `dispatch(...)`");
    };
    let method = if p.eat('.') {
        match p.identifier() {
            Some(method) => Some(method.to_owned()),
            None => return p.error("expected a method name after `.`"),
        }
    } else {
        None
    };
    p.expect('(')?;
    let mut args = Vec::new();
    let mut kwargs = Map::new();
    if !p.eat(')') {
        loop {
            let save = p.pos;
            let keyword = match p.identifier() {
                Some(name) if p.eat('=') => Some(name.to_owned()),
                _ => {
                    p.pos = save;
                    None
                }
            };
            let value = p.value()?;
            match keyword {
                Some(name) => {
                    kwargs.insert(name, value);
                }
                None if !kwargs.is_empty() => {
                    return p.error("a positional argument after a keyword argument");
                }
                None => args.push(value),
            }
            if p.eat(')') {
                break;
            }
            p.expect(',')?;
            if p.eat(')') {
                break;
            }
        }
    }
    p.skip_spaces();
    if !p.rest().is_empty() {
        return p.error("unexpected text after `)`");
    }
    match method {
        Some(method) => Ok(Line::Call {
            service: first.to_owned(),
            method,
            args,
            kwargs,
        }),
        None if first == "dispatch" => match (args.as_slice(), kwargs.is_empty()) {
            ([Value::String(service), Value::String(event_type), payload], true) => {
                Ok(Line::Dispatch {
                    service: service.clone(),
                    event_type: event_type.clone(),
                    payload: payload.clone(),
                })
            }
            _ => p.error("dispatch takes (\"service\", \"event_type\", payload)"),
        },
        None => p.error(format!(
            "`{first}(...)`: write `service.method(...)` or `dispatch(...)`"
        )),
    }
}

/// What the shell completes: services and their methods (from service discovery).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completions {
    /// Method names by service (none for a service that does not describe itself).
    pub services: std::collections::BTreeMap<String, Vec<String>>,
}

impl Completions {
    /// The completions of the word that ends at `pos` in `line`: where the word starts, and
    /// what may replace it (`greeter_service.` for `gre`, `greeter_service.greet(` for
    /// `greeter_service.g`, `dispatch(` for `dis`).
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = line.get(..pos).unwrap_or(line);
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |at| at + 1);
        let word = &before[start..];
        let candidates = match word.split_once('.') {
            Some((service, method)) => self
                .services
                .get(service)
                .into_iter()
                .flatten()
                .filter(|name| name.starts_with(method))
                .map(|name| format!("{service}.{name}("))
                .collect(),
            None => {
                let mut names: Vec<String> = self
                    .services
                    .keys()
                    .filter(|name| name.starts_with(word))
                    .map(|name| format!("{name}."))
                    .collect();
                if "dispatch".starts_with(word) {
                    names.push("dispatch(".to_owned());
                }
                names
            }
        };
        (start, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(service: &str, method: &str, args: Value, kwargs: Value) -> Line {
        let (Value::Array(args), Value::Object(kwargs)) = (args, kwargs) else {
            unreachable!()
        };
        Line::Call {
            service: service.into(),
            method: method.into(),
            args,
            kwargs,
        }
    }

    #[test]
    fn calls_parse_with_positional_and_keyword_arguments() {
        assert_eq!(
            parse_line(r#"greeter_service.greet("Tim")"#),
            Ok(call("greeter_service", "greet", json!(["Tim"]), json!({})))
        );
        assert_eq!(
            parse_line(r#"greeter_service.greet(name="Tim")"#),
            Ok(call(
                "greeter_service",
                "greet",
                json!([]),
                json!({"name": "Tim"})
            ))
        );
        assert_eq!(
            parse_line("svc.m(1, -2.5, 'x', [True, None], {'a': (1, 2)}, flag=False)"),
            Ok(call(
                "svc",
                "m",
                json!([1, -2.5, "x", [true, null], {"a": [1, 2]}]),
                json!({"flag": false})
            ))
        );
        assert_eq!(
            parse_line("svc.m()"),
            Ok(call("svc", "m", json!([]), json!({})))
        );
        assert_eq!(
            parse_line(r#"svc.m("\u00e9\n")"#),
            Ok(call("svc", "m", json!(["é\n"]), json!({})))
        );
    }

    #[test]
    fn dispatch_parses() {
        assert_eq!(
            parse_line(r#"dispatch("svc", "event_type", {"a": 1})"#),
            Ok(Line::Dispatch {
                service: "svc".into(),
                event_type: "event_type".into(),
                payload: json!({"a": 1})
            })
        );
        assert!(parse_line(r#"dispatch("svc")"#).is_err());
    }

    #[test]
    fn mistakes_say_where() {
        let message = |line: &str| parse_line(line).unwrap_err().to_string();
        assert_eq!(
            message("svc.m(Tim)"),
            "`Tim` is not a value (strings are quoted) (at column 10)"
        );
        assert_eq!(
            message("svc.m(a=1, 2)"),
            "a positional argument after a keyword argument (at column 13)"
        );
        assert_eq!(message("svc.m(\"open"), "unclosed string (at column 7)");
        assert_eq!(
            message("greet(1)"),
            "`greet(...)`: write `service.method(...)` or `dispatch(...)` (at column 9)"
        );
        assert_eq!(
            message("svc.m(1) extra"),
            "unexpected text after `)` (at column 10)"
        );
    }

    #[test]
    fn completions_follow_the_word_before_the_cursor() {
        let completions = Completions {
            services: [
                (
                    "greeter_service".to_owned(),
                    vec!["greet".to_owned(), "shout".to_owned()],
                ),
                ("python_service".to_owned(), vec![]),
            ]
            .into(),
        };
        assert_eq!(
            completions.complete("gre", 3),
            (0, vec!["greeter_service.".to_owned()])
        );
        assert_eq!(
            completions.complete("x = greeter_service.g", 21),
            (4, vec!["greeter_service.greet(".to_owned()])
        );
        assert_eq!(
            completions.complete("greeter_service.", 16).1,
            ["greeter_service.greet(", "greeter_service.shout("]
        );
        assert_eq!(
            completions.complete("dis", 3),
            (0, vec!["dispatch(".to_owned()])
        );
        assert_eq!(completions.complete("nowhere.x", 9).1, Vec::<String>::new());
        assert_eq!(
            completions.complete("", 0).1,
            ["greeter_service.", "python_service.", "dispatch("]
        );
    }
}
