//! Binding a request's `args` and `kwargs` to a method's parameters, as Python does, with
//! Python's messages for each way it can fail (`IncorrectSignature`).

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::protocol::{RemoteError, RequestBody};

/// One parameter of an RPC method, as the macro describes it.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The parameter's name (also its keyword).
    pub name: &'static str,
    /// Whether it may be left out (an `Option<T>` parameter; absent means `None`).
    pub optional: bool,
}

/// Arguments bound to parameters, ready to be read one by one in order.
#[derive(Debug)]
pub struct BoundArgs {
    method: &'static str,
    params: &'static [Param],
    slots: Vec<Option<Box<RawValue>>>,
}

fn incorrect_signature(message: String) -> RemoteError {
    RemoteError::nameko("IncorrectSignature", message)
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
        [] => String::new(),
    }
}

impl BoundArgs {
    /// Binds `body` to `params` the way Python binds a call to `method(self, ...)`.
    pub fn bind(
        method: &'static str,
        params: &'static [Param],
        body: RequestBody,
    ) -> Result<BoundArgs, RemoteError> {
        let RequestBody { args, kwargs } = body;
        if args.len() > params.len() {
            let takes = params.len() + 1;
            let plural = if takes == 1 { "" } else { "s" };
            return Err(incorrect_signature(format!(
                "{method}() takes {takes} positional argument{plural} but {} were given",
                args.len() + 1
            )));
        }
        let mut slots: Vec<Option<Box<RawValue>>> = args.into_iter().map(Some).collect();
        slots.resize_with(params.len(), || None);
        let mut kwargs: Vec<_> = kwargs.into_iter().collect();
        kwargs.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in kwargs {
            let Some(index) = params.iter().position(|p| p.name == key) else {
                return Err(incorrect_signature(crate::protocol::shorten(format!(
                    "{method}() got an unexpected keyword argument '{key}'"
                ))));
            };
            if slots[index].is_some() {
                return Err(incorrect_signature(crate::protocol::shorten(format!(
                    "{method}() got multiple values for argument '{key}'"
                ))));
            }
            slots[index] = Some(value);
        }
        let missing: Vec<&str> = params
            .iter()
            .zip(&slots)
            .filter(|(p, slot)| !p.optional && slot.is_none())
            .map(|(p, _)| p.name)
            .collect();
        if !missing.is_empty() {
            let plural = if missing.len() == 1 { "" } else { "s" };
            return Err(incorrect_signature(format!(
                "{method}() missing {} required positional argument{plural}: {}",
                missing.len(),
                quoted_list(&missing)
            )));
        }
        Ok(BoundArgs {
            method,
            params,
            slots,
        })
    }

    /// Reads parameter `index` as a `T`; a value of the wrong type is an `IncorrectSignature`.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, RemoteError> {
        let raw = self.slots.get_mut(index).and_then(Option::take);
        let text = raw.as_ref().map_or("null", |r| r.get());
        serde_json::from_str(text).map_err(|e| {
            let name = self.params.get(index).map_or("?", |p| p.name);
            incorrect_signature(crate::protocol::shorten(format!(
                "{}() argument '{name}': {e}",
                self.method
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_unknown_keyword_name_is_cut_in_the_error() {
        const PARAMS: &[Param] = &[Param {
            name: "name",
            optional: false,
        }];
        let key = "k".repeat(100_000);
        let body =
            RequestBody::parse(format!(r#"{{"args": [], "kwargs": {{"{key}": 1}}}}"#).as_bytes())
                .unwrap();
        let error = BoundArgs::bind("greet", PARAMS, body).err().unwrap();
        assert!(error.value.len() <= 600, "{}", error.value.len());
        assert!(
            error
                .value
                .starts_with("greet() got an unexpected keyword argument 'kkk")
        );
    }

    /// The request decoder and the argument binder, fed 50,000 fuzzed bodies: each is a
    /// request or a clear error, never a panic (a panic would fail this test). Deterministic,
    /// and bounded to well under a second.
    #[test]
    fn decoding_and_binding_survive_fuzzed_bodies() {
        static PARAMS: [Param; 3] = [
            Param {
                name: "a",
                optional: false,
            },
            Param {
                name: "b",
                optional: true,
            },
            Param {
                name: "c",
                optional: true,
            },
        ];
        let seeds: [&[u8]; 5] = [
            br#"{"args": [1, "two"], "kwargs": {"c": [3.5, null]}}"#,
            br#"{"args": [], "kwargs": {"a": {"x": [1, {"y": "\u00e9\ud83d\ude00"}]}}}"#,
            br#"{"args": [18446744073709551616, -1e400, "\ud800"], "kwargs": {}}"#,
            br#"{"kwargs": {"a": 1}, "args": [true], "extra": 1}"#,
            br#"{"args": [1], "kwargs": {"a": 2}}"#,
        ];
        let structural = b"{}[]\",:0-e.\\ \t";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let (mut requests, mut errors) = (0, 0);
        for round in 0..50_000u64 {
            let mut body = seeds[(next() % seeds.len() as u64) as usize].to_vec();
            for _ in 0..=next() % 4 {
                let at = (next() % (body.len() as u64 + 1)) as usize;
                match next() % 6 {
                    0 if !body.is_empty() => {
                        let last = body.len() - 1;
                        body[at.min(last)] ^= 1 << (next() % 8);
                    }
                    1 => body.truncate(at),
                    2 => body.insert(at, structural[(next() % structural.len() as u64) as usize]),
                    3 => body.insert(at, next() as u8),
                    4 if round % 1000 == 0 => {
                        let deep = "[".repeat(100_000);
                        body.splice(at..at, deep.bytes());
                    }
                    _ => body.extend_from_slice(&body.clone()[..at.min(body.len())]),
                }
            }
            match RequestBody::parse(&body) {
                Ok(request) => match BoundArgs::bind("fuzzed", &PARAMS, request) {
                    Ok(mut bound) => {
                        requests += 1;
                        let _ = bound.take::<i64>(0);
                        let _ = bound.take::<Option<String>>(1);
                        let _ = bound.take::<Option<Vec<serde_json::Value>>>(2);
                    }
                    Err(e) => {
                        errors += 1;
                        assert_eq!(e.exc_type, "IncorrectSignature");
                        assert!(!e.value.is_empty());
                    }
                },
                Err(e) => {
                    errors += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
            let _ = crate::protocol::ReplyBody::parse(&body);
        }
        // The fuzzing reaches both sides.
        assert!(
            requests > 200 && errors > 10_000,
            "{requests} bound, {errors} refused"
        );
    }

    const GREET: &[Param] = &[Param {
        name: "name",
        optional: false,
    }];
    const ADD: &[Param] = &[
        Param {
            name: "a",
            optional: false,
        },
        Param {
            name: "b",
            optional: false,
        },
        Param {
            name: "c",
            optional: false,
        },
        Param {
            name: "label",
            optional: true,
        },
    ];

    fn bind(params: &'static [Param], body: &str) -> Result<BoundArgs, String> {
        let body = RequestBody::parse(body.as_bytes()).unwrap();
        BoundArgs::bind(
            if params.len() == 1 { "greet" } else { "add" },
            params,
            body,
        )
        .map_err(|e| e.value)
    }

    #[test]
    fn messages_match_python_for_the_captured_cases() {
        assert_eq!(
            bind(GREET, r#"{"args": ["a", "b"], "kwargs": {}}"#).unwrap_err(),
            "greet() takes 2 positional arguments but 3 were given"
        );
        assert_eq!(
            bind(GREET, r#"{"args": [], "kwargs": {}}"#).unwrap_err(),
            "greet() missing 1 required positional argument: 'name'"
        );
        assert_eq!(
            bind(GREET, r#"{"args": [], "kwargs": {"nom": "x"}}"#).unwrap_err(),
            "greet() got an unexpected keyword argument 'nom'"
        );
        assert_eq!(
            bind(GREET, r#"{"args": ["x"], "kwargs": {"name": "y"}}"#).unwrap_err(),
            "greet() got multiple values for argument 'name'"
        );
        assert_eq!(
            bind(ADD, r#"{"args": [], "kwargs": {}}"#).unwrap_err(),
            "add() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
    }

    #[test]
    fn positional_keyword_and_optional_arguments_bind() {
        let mut bound = bind(ADD, r#"{"args": [1], "kwargs": {"c": 3, "b": 2}}"#).unwrap();
        assert_eq!(bound.take::<i64>(0).unwrap(), 1);
        assert_eq!(bound.take::<i64>(1).unwrap(), 2);
        assert_eq!(bound.take::<i64>(2).unwrap(), 3);
        assert_eq!(bound.take::<Option<String>>(3).unwrap(), None);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_argument() {
        let mut bound = bind(GREET, r#"{"args": [42], "kwargs": {}}"#).unwrap();
        let error = bound.take::<String>(0).unwrap_err();
        assert_eq!(error.exc_type, "IncorrectSignature");
        assert!(
            error
                .value
                .starts_with("greet() argument 'name': invalid type: integer `42`"),
            "{}",
            error.value
        );
    }
}
