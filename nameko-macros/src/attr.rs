//! The strict grammar shared by every attribute: a fixed number of positional string literals,
//! then `key = value` pairs. Unknown keys list the expected ones, a repeated key is an error at
//! its second occurrence, and a value of the wrong kind says which kind the key takes.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprAssign, ExprLit, Lit, LitBool, LitStr, Token};

use crate::ctxt::Ctxt;

/// A parsed attribute argument list.
pub(crate) struct AttrArgs {
    pub(crate) positional: Vec<LitStr>,
    named: Vec<(syn::Ident, Expr)>,
    /// Whether a key was not one of the allowed (reported): a key then missing may be that one
    /// misspelt, and is not reported again.
    misspelt: bool,
}

impl AttrArgs {
    /// Parses `tokens`: exactly `positional.len()` string literals (described by `usage` when
    /// missing), then keys from `allowed`.
    pub(crate) fn parse(
        tokens: TokenStream,
        positional: &[&str],
        allowed: &[&str],
        usage: &str,
        cx: &mut Ctxt,
    ) -> AttrArgs {
        let mut args = AttrArgs {
            positional: Vec::new(),
            named: Vec::new(),
            misspelt: false,
        };
        let exprs = match Punctuated::<Expr, Token![,]>::parse_terminated.parse2(tokens.clone()) {
            Ok(exprs) => exprs,
            Err(e) => {
                cx.push(syn::Error::new(e.span(), format!("{e}; expected {usage}")));
                return args;
            }
        };
        for expr in exprs {
            match ungroup(expr) {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) if args.named.is_empty() => {
                    if args.positional.len() == positional.len() {
                        cx.error(&s, format!("unexpected argument; expected {usage}"));
                    } else {
                        args.positional.push(s);
                    }
                }
                Expr::Assign(ExprAssign { left, right, .. }) => {
                    let Expr::Path(path) = &*left else {
                        cx.error(&left, format!("expected a key; expected {usage}"));
                        continue;
                    };
                    let Some(key) = path.path.get_ident().cloned() else {
                        cx.error(&left, format!("expected a key; expected {usage}"));
                        continue;
                    };
                    if !allowed.contains(&key.to_string().as_str()) {
                        let expected: Vec<String> =
                            allowed.iter().map(|k| format!("`{k}`")).collect();
                        let hint = closest(&key.to_string(), allowed)
                            .map(|k| format!(" (did you mean `{k}`?)"))
                            .unwrap_or_default();
                        cx.error(
                            &key,
                            format!("unknown key; expected one of {}{hint}", expected.join(", ")),
                        );
                        args.misspelt = true;
                        continue;
                    }
                    if args.named.iter().any(|(k, _)| *k == key) {
                        cx.error(&key, format!("duplicate key `{key}`"));
                        continue;
                    }
                    args.named.push((key, ungroup(*right)));
                }
                other => cx.error(&other, format!("unexpected argument; expected {usage}")),
            }
        }
        if args.positional.len() < positional.len() {
            let missing = positional[args.positional.len()..].join(", ");
            let message = format!("missing {missing}; expected {usage}");
            // The whole of the arguments, from their first token to their last (not one joined
            // span, which only some compilers make).
            cx.push(if tokens.is_empty() {
                syn::Error::new(Span::call_site(), message)
            } else {
                syn::Error::new_spanned(&tokens, message)
            });
        }
        args
    }

    /// Whether `key` is missing and should be reported: not when an unknown key was given,
    /// which is likely `key` misspelt (and already reported).
    pub(crate) fn report_missing(&self, key: &str) -> bool {
        !self.has(key) && !self.misspelt
    }

    /// The string value of `key`, if given; another kind of value is an error.
    pub(crate) fn string(&self, key: &str, cx: &mut Ctxt) -> Option<LitStr> {
        let (_, value) = self.named.iter().find(|(k, _)| k == key)?;
        match value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s.clone()),
            other => {
                cx.error(
                    other,
                    format!("`{key}` takes a string literal: `{key} = \"...\"`"),
                );
                None
            }
        }
    }

    /// The boolean value of `key`, if given; another kind of value is an error.
    pub(crate) fn boolean(&self, key: &str, cx: &mut Ctxt) -> Option<LitBool> {
        let (_, value) = self.named.iter().find(|(k, _)| k == key)?;
        match value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => Some(b.clone()),
            other => {
                cx.error(other, format!("`{key}` takes `true` or `false`"));
                None
            }
        }
    }
}

impl AttrArgs {
    /// Whether `key` was given (whatever its value).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.named.iter().any(|(k, _)| k == key)
    }

    /// The value of `key` as written, if given: an expression of the user's.
    pub(crate) fn expr(&self, key: &str) -> Option<&Expr> {
        self.named.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The duration value of `key`, in nanoseconds: seconds as a number (`1`, `0.5`) or a string
    /// with a unit (`"500ms"`, `"2s"`, `"1m"`, `"1h"`); it must be positive.
    pub(crate) fn duration(&self, key: &str, cx: &mut Ctxt) -> Option<u64> {
        let (_, value) = self.named.iter().find(|(k, _)| k == key)?;
        let message = format!(
            "`{key}` takes seconds (`{key} = 1`, `{key} = 0.5`) or a duration (`{key} = \"500ms\"`)"
        );
        let seconds = match value {
            Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            }) => i.base10_parse::<f64>().ok(),
            Expr::Lit(ExprLit {
                lit: Lit::Float(f), ..
            }) => f.base10_parse::<f64>().ok(),
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => parse_duration(&s.value()),
            _ => None,
        };
        match seconds {
            Some(seconds) if seconds > 0.0 && seconds.is_finite() => {
                Some((seconds * 1e9).round() as u64)
            }
            Some(_) => {
                cx.error(value, format!("`{key}` must be more than zero"));
                None
            }
            None => {
                cx.error(value, message);
                None
            }
        }
    }
}

/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` in seconds.
fn parse_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(number * scale)
}

/// The allowed key `key` is likely a misspelling of: at most two edits away.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Removes the invisible groups `macro_rules!` puts around fragments such as `$name:literal`.
fn ungroup(expr: Expr) -> Expr {
    match expr {
        Expr::Group(group) => ungroup(*group.expr),
        other => other,
    }
}

/// Checks a name used on the wire in routing keys: non-empty, no `.`, `*`, `#` or whitespace.
pub(crate) fn check_wire_name(lit: &LitStr, what: &str, cx: &mut Ctxt) {
    let value = lit.value();
    if value.is_empty() {
        cx.error(lit, format!("the {what} cannot be empty"));
    } else if value
        .chars()
        .any(|c| matches!(c, '.' | '*' | '#') || c.is_whitespace())
    {
        cx.error(
            lit,
            format!(
                "the {what} is part of AMQP routing keys and cannot contain '.', '*', '#' or spaces"
            ),
        );
    }
}

/// The keys every entrypoint takes, as in Nameko.
const OPTION_KEYS: [&str; 2] = ["expected_exceptions", "sensitive_arguments"];

/// The tokens inside `#[attr(...)]`, empty for `#[attr]`.
pub(crate) fn attr_tokens(attr: &syn::Attribute, usage: &str, cx: &mut Ctxt) -> TokenStream {
    match &attr.meta {
        syn::Meta::Path(_) => TokenStream::new(),
        syn::Meta::List(list) => list.tokens.clone(),
        syn::Meta::NameValue(nv) => {
            cx.error(nv, format!("expected {usage}"));
            TokenStream::new()
        }
    }
}

/// The grammar of one entrypoint attribute: what it takes besides the options every entrypoint
/// takes ([`OPTION_KEYS`]), and the usage its errors show. Every entrypoint attribute is read
/// by [`Grammar::read`], then its options by [`AttrArgs::options`].
pub(crate) struct Grammar {
    /// Its positional string arguments, in order, as errors name them.
    pub(crate) positional: &'static [&'static str],
    /// Its own keys.
    pub(crate) keys: &'static [&'static str],
    /// How to write it.
    pub(crate) usage: &'static str,
}

impl Grammar {
    /// Reads `#[attr(...)]`.
    pub(crate) fn read(&self, attr: &syn::Attribute, cx: &mut Ctxt) -> AttrArgs {
        let tokens = attr_tokens(attr, self.usage, cx);
        self.read_tokens(tokens, cx)
    }

    /// Reads the tokens of an attribute's arguments.
    pub(crate) fn read_tokens(&self, tokens: TokenStream, cx: &mut Ctxt) -> AttrArgs {
        let keys: Vec<&str> = self.keys.iter().chain(&OPTION_KEYS).copied().collect();
        AttrArgs::parse(tokens, self.positional, &keys, self.usage, cx)
    }
}

impl AttrArgs {
    /// The options every entrypoint takes; `params` are the arguments the entrypoint logs
    /// (which `sensitive_arguments` may name), of `method`.
    pub(crate) fn options(
        &self,
        params: &[String],
        method: &syn::Ident,
        cx: &mut Ctxt,
    ) -> EntrypointOptions {
        EntrypointOptions::parse(self, params, method, cx)
    }
}

/// `expected_exceptions = "A,B"` and `sensitive_arguments = "password,user.token"`.
pub(crate) struct EntrypointOptions {
    pub(crate) expected: Vec<String>,
    pub(crate) sensitive: Vec<String>,
}

fn comma_list(lit: &LitStr) -> Vec<String> {
    lit.value()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl EntrypointOptions {
    /// Reads both keys; each sensitive path must start at one of `params` (the arguments the
    /// entrypoint logs), named in `method`.
    fn parse(
        args: &AttrArgs,
        params: &[String],
        method: &syn::Ident,
        cx: &mut Ctxt,
    ) -> EntrypointOptions {
        let expected = args
            .string("expected_exceptions", cx)
            .map(|lit| comma_list(&lit))
            .unwrap_or_default();
        let mut sensitive = Vec::new();
        if let Some(lit) = args.string("sensitive_arguments", cx) {
            for path in comma_list(&lit) {
                let root = path.split(['.', '[']).next().unwrap_or("");
                if params.iter().any(|p| p == root) {
                    sensitive.push(path);
                } else if params.is_empty() {
                    cx.error(&lit, format!("`{method}` has no arguments to redact"));
                } else {
                    cx.error(
                        &lit,
                        format!(
                            "`{root}` is not an argument of `{method}` (its arguments: {})",
                            params.join(", ")
                        ),
                    );
                }
            }
        }
        EntrypointOptions {
            expected,
            sensitive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(tokens: TokenStream, keys: &[&str]) -> (AttrArgs, Vec<String>) {
        let mut cx = Ctxt::default();
        let args = AttrArgs::parse(tokens, &["the thing"], keys, "`#[x(\"thing\")]`", &mut cx);
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        (args, errors)
    }

    #[test]
    fn durations_read_seconds_and_units() {
        assert_eq!(parse_duration("500ms"), Some(0.5));
        assert_eq!(parse_duration("2s"), Some(2.0));
        assert_eq!(parse_duration("1m"), Some(60.0));
        assert_eq!(parse_duration("1.5h"), Some(5400.0));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn the_grammar_takes_positional_strings_then_known_keys_once() {
        let (args, errors) = parse(quote::quote!("a", interval = 2), &["interval"]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.positional.len(), 1);
        assert!(args.has("interval"));
        let (_, errors) = parse(quote::quote!("a", "b"), &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("unexpected argument"), "{errors:?}");
        let (_, errors) = parse(quote::quote!("a", every = 2), &["interval"]);
        assert_eq!(errors, ["unknown key; expected one of `interval`"]);
        let (args, errors) = parse(quote::quote!("a", intervl = 2), &["interval", "eager"]);
        assert_eq!(
            errors,
            ["unknown key; expected one of `interval`, `eager` (did you mean `interval`?)"]
        );
        assert!(
            !args.report_missing("interval"),
            "the misspelt key is not missing too"
        );
        let (_, errors) = parse(
            quote::quote!("a", interval = 1, interval = 2),
            &["interval"],
        );
        assert_eq!(errors, ["duplicate key `interval`"]);
        let (_, errors) = parse(quote::quote!("a", x.y = 1), &["interval"]);
        assert!(errors[0].starts_with("expected a key"), "{errors:?}");
    }

    #[test]
    fn durations_of_keys_are_nanoseconds() {
        let mut cx = Ctxt::default();
        let (args, _) = parse(
            quote::quote!("a", a = 1, b = 0.25, c = "500ms", d = true),
            &["a", "b", "c", "d"],
        );
        assert_eq!(args.duration("a", &mut cx), Some(1_000_000_000));
        assert_eq!(args.duration("b", &mut cx), Some(250_000_000));
        assert_eq!(args.duration("c", &mut cx), Some(500_000_000));
        assert_eq!(args.duration("d", &mut cx), None);
        assert!(cx.check().is_err(), "`d = true` is not a duration");
    }
}
