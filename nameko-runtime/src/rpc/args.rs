//! Binding a request's `args` and `kwargs` to a method's parameters, as Python does, with
//! Python's messages for each way it can fail (`IncorrectSignature`).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::protocol::{BodyRepr, RemoteError, RequestBody, layout};

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
    state: State,
}

#[derive(Debug)]
enum State {
    /// A request as it came, its positional arguments read in order straight from its text,
    /// while it is laid out as Nameko and nameko-rs clients send it: `{"args": [...],
    /// "kwargs": {}}` with one argument for each parameter. `at` is where argument `next`
    /// starts.
    Reading {
        text: String,
        at: usize,
        next: usize,
    },
    /// Each parameter's value, if it was given.
    Bound(Vec<Option<Box<RawValue>>>),
    /// A request read in one pass, every parameter taken (its text dropped: the method may
    /// run for long).
    Read,
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
        match body.repr {
            BodyRepr::Unread { text, args_at } => {
                let state = if !params.is_empty() {
                    State::Reading {
                        text,
                        at: args_at,
                        next: 0,
                    }
                } else if layout::is_tail(&text, args_at) {
                    State::Read
                } else {
                    return BoundArgs::bind_text(method, params, &text);
                };
                Ok(BoundArgs {
                    method,
                    params,
                    state,
                })
            }
            BodyRepr::Read { args, kwargs } => BoundArgs::bind_read(method, params, args, kwargs),
        }
    }

    /// Binds a request read whole: `MalformedRequest` if it is not a request at all.
    fn bind_text(
        method: &'static str,
        params: &'static [Param],
        text: &str,
    ) -> Result<BoundArgs, RemoteError> {
        // (A malformed request is the worker's failure, logged as such.)
        let (args, kwargs) = crate::protocol::read_request(text)?;
        BoundArgs::bind_read(method, params, args, kwargs)
    }

    fn bind_read(
        method: &'static str,
        params: &'static [Param],
        args: Vec<Box<RawValue>>,
        kwargs: HashMap<String, Box<RawValue>>,
    ) -> Result<BoundArgs, RemoteError> {
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
            state: State::Bound(slots),
        })
    }

    /// Reads parameter `index` as a `T`; a value of the wrong type is an `IncorrectSignature`.
    ///
    /// The parameters are read in order. While the request is laid out as clients send it,
    /// each value is parsed where it stands in the request; at the first thing that is not
    /// (a missing or extra argument, keyword arguments, a value of the wrong type, anything
    /// malformed) the whole request is read and bound again, which says what is wrong with it
    /// in Python's words, or binds it if nothing is.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, RemoteError> {
        if let State::Reading { text, at, next } = &mut self.state {
            let last = index + 1 == self.params.len();
            if *next == index
                && let Some((value, end)) = layout::read_arg::<T>(text, *at, last)
            {
                if last {
                    self.state = State::Read;
                } else {
                    *at = end;
                    *next += 1;
                }
                return Ok(value);
            }
            let text = std::mem::take(text);
            self.state = BoundArgs::bind_text(self.method, self.params, &text)?.state;
        }
        let raw = match &mut self.state {
            State::Bound(slots) => slots.get_mut(index).and_then(Option::take),
            // Taken already, or not a parameter: as a slot taken before.
            State::Read | State::Reading { .. } => None,
        };
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

    /// What a method `fuzzed(a: i64, b: Option<String>, c: Option<Vec<Value>>)` is called
    /// with, or the error its caller is sent, binding as the generated code does.
    type Called = (i64, Option<String>, Option<Vec<serde_json::Value>>);

    fn bind_all(body: RequestBody) -> Result<Called, RemoteError> {
        bind_noting(body, &mut 0)
    }

    /// As [`bind_all`], counting in `one_pass` a request read in one pass to the end.
    fn bind_noting(body: RequestBody, one_pass: &mut usize) -> Result<Called, RemoteError> {
        let mut args = BoundArgs::bind("fuzzed", &FUZZED, body)?;
        let called = (args.take(0)?, args.take(1)?, args.take(2)?);
        if matches!(args.state, State::Read) {
            *one_pass += 1;
        }
        Ok(called)
    }

    /// What `bytes(s: CString)` is called with: a type serde reads from a byte string, which
    /// serde_json does not check for control characters.
    fn bind_bytes(body: RequestBody) -> Result<std::ffi::CString, RemoteError> {
        static BYTES: [Param; 1] = [Param {
            name: "s",
            optional: false,
        }];
        BoundArgs::bind("bytes", &BYTES, body)?.take(0)
    }

    static FUZZED: [Param; 3] = [
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

    /// The request decoder and the argument binder, fed 50,000 fuzzed bodies: each is a
    /// request or a clear error, never a panic (a panic would fail this test), and a request
    /// read in one pass as it is bound (as the RPC entrypoint reads them) comes to the same
    /// values or the same error as one read whole first. Deterministic, and bounded to well
    /// under a second.
    #[test]
    fn decoding_and_binding_survive_fuzzed_bodies() {
        let seeds: [&[u8]; 10] = [
            b"{\"args\": [\"a\tb\"], \"kwargs\": {}}",
            br#"{"args": ["a\u0001b\ud800"], "kwargs": {}}"#,
            br#"{"args": [1, "two", [3.5, "x"]], "kwargs": {}}"#,
            b"{\"args\":[-7,null,[]],\"kwargs\":{}}",
            br#" { "args" : [ 2 , "\u00e9" , [ {"y": 1} ] ] , "kwargs" : { } } "#,
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
        let (mut requests, mut errors, mut one_pass) = (0, 0, 0);
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
            // Read whole first, and as the RPC entrypoint reads it: the same values, or the
            // same error.
            let read = RequestBody::parse(&body)
                .map_err(RemoteError::from)
                .and_then(bind_all);
            let streamed = RequestBody::unread(&body)
                .map_err(RemoteError::from)
                .and_then(|unread| bind_noting(unread, &mut one_pass));
            assert_eq!(read, streamed, "{:?}", String::from_utf8_lossy(&body));
            let read_bytes = RequestBody::parse(&body)
                .map_err(RemoteError::from)
                .and_then(bind_bytes);
            let streamed = RequestBody::unread(&body)
                .map_err(RemoteError::from)
                .and_then(bind_bytes);
            assert_eq!(read_bytes, streamed, "{:?}", String::from_utf8_lossy(&body));
            match read {
                Ok(_) => requests += 1,
                Err(e) => {
                    errors += 1;
                    assert!(
                        e.exc_type == "IncorrectSignature" || e.exc_type == "MalformedRequest",
                        "{e:?}"
                    );
                    assert!(!e.value.is_empty());
                }
            }
            let _ = crate::protocol::ReplyBody::parse(&body);
        }
        // The fuzzing reaches both sides, and the one-pass reading to its end.
        eprintln!("{requests} bound, {errors} refused, {one_pass} read in one pass");
        assert!(
            requests > 200 && errors > 10_000 && one_pass > 100,
            "{requests} bound, {errors} refused, {one_pass} read in one pass"
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
    fn a_request_laid_out_as_clients_send_it_is_read_as_it_is_bound() {
        let body = RequestBody::unread(br#"{"args": [1, "two", [3]], "kwargs": {}}"#).unwrap();
        let mut args = BoundArgs::bind("fuzzed", &FUZZED, body).unwrap();
        assert_eq!(args.take::<i64>(0).unwrap(), 1);
        assert!(matches!(args.state, State::Reading { next: 1, .. }));
        assert_eq!(
            args.take::<Option<String>>(1).unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(
            args.take::<Option<Vec<serde_json::Value>>>(2).unwrap(),
            Some(vec![serde_json::json!(3)])
        );
        assert!(matches!(args.state, State::Read));
    }

    #[test]
    fn an_unread_request_says_what_is_wrong_with_it() {
        let unread = |body: &str| bind_all(RequestBody::unread(body.as_bytes()).unwrap());
        let error = unread(r#"{"args": [1, "two", [3], 4], "kwargs": {}}"#).unwrap_err();
        assert_eq!(
            error.value,
            "fuzzed() takes 4 positional arguments but 5 were given"
        );
        let error = unread(r#"{"args": ["one"], "kwargs": {}}"#).unwrap_err();
        assert_eq!(error.exc_type, "IncorrectSignature");
        assert!(
            error
                .value
                .starts_with("fuzzed() argument 'a': invalid type: string"),
            "{}",
            error.value
        );
        let error = unread(r#"{"args": [1, "two", [3]]}"#).unwrap_err();
        assert_eq!(error.exc_type, "MalformedRequest");
        assert_eq!(error.value, "Message missing `args` or `kwargs`");
        let error = unread(r#"{"args": [1, "two", [3]], "kwargs": {}"#).unwrap_err();
        assert_eq!(error.exc_type, "MalformedRequest");
        assert!(error.value.starts_with("Request body is not valid JSON"));
        assert_eq!(
            unread(r#"{"args": [1], "kwargs": {"c": ["x"]}}"#).unwrap(),
            (1, None, Some(vec![serde_json::json!("x")]))
        );
    }

    #[test]
    fn what_the_request_read_whole_would_refuse_is_not_read_in_one_pass() {
        // A raw tab in a string, which a byte-string type would take.
        let body = RequestBody::unread(b"{\"args\": [\"a\tb\"], \"kwargs\": {}}").unwrap();
        let error = bind_bytes(body).unwrap_err();
        assert_eq!(error.exc_type, "MalformedRequest");
        assert!(error.value.contains("control character"), "{}", error.value);
        // A type that reads nothing, where there is no argument at all.
        #[derive(Debug)]
        struct Nothing;
        impl<'de> serde::Deserialize<'de> for Nothing {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                Ok(Nothing)
            }
        }
        static ONE: [Param; 1] = [Param {
            name: "n",
            optional: false,
        }];
        let body = RequestBody::unread(br#"{"args": [], "kwargs": {}}"#).unwrap();
        let error = BoundArgs::bind("nothing", &ONE, body)
            .and_then(|mut args| args.take::<Nothing>(0))
            .unwrap_err();
        assert_eq!(
            error.value,
            "nothing() missing 1 required positional argument: 'n'"
        );
    }

    #[test]
    fn a_body_that_does_not_open_as_clients_send_it_is_read_at_once() {
        assert!(matches!(
            RequestBody::unread(br#"{"args": [1], "kwargs": {}}"#)
                .unwrap()
                .repr,
            BodyRepr::Unread { .. }
        ));
        assert!(matches!(
            RequestBody::unread(br#"{"kwargs": {}, "args": [1]}"#)
                .unwrap()
                .repr,
            BodyRepr::Read { .. }
        ));
        assert_eq!(
            RequestBody::unread(b"{nope").unwrap_err().to_string(),
            "Request body is not valid JSON: key must be a string at line 1 column 2"
        );
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
