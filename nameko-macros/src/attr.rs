//! The strict `key = "value"` grammar shared by every attribute: unknown keys list the
//! expected ones, a repeated key is an error at its second occurrence, values must be strings.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, MetaNameValue, Token};

use crate::ctxt::Ctxt;

/// A parsed `key = "value", ...` list.
pub(crate) struct KeyValues {
    entries: Vec<(syn::Path, LitStr)>,
}

impl KeyValues {
    /// Parses `tokens`, accepting only `allowed` keys.
    pub(crate) fn parse(tokens: TokenStream, allowed: &[&str], cx: &mut Ctxt) -> KeyValues {
        let mut entries: Vec<(syn::Path, LitStr)> = Vec::new();
        let parsed = match Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(tokens) {
            Ok(parsed) => parsed,
            Err(e) => {
                let expected = allowed
                    .iter()
                    .map(|k| format!("`{k} = \"...\"`"))
                    .collect::<Vec<_>>();
                cx.push(syn::Error::new(
                    e.span(),
                    format!("{e}; expected {}", expected.join(", ")),
                ));
                return KeyValues { entries };
            }
        };
        for meta in parsed {
            let key = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            if !allowed.contains(&key.as_str()) {
                let expected = allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>();
                cx.error(
                    &meta.path,
                    format!("unknown key; expected one of {}", expected.join(", ")),
                );
                continue;
            }
            if entries.iter().any(|(p, _)| p.is_ident(&key)) {
                cx.error(&meta.path, format!("duplicate key `{key}`"));
                continue;
            }
            match &meta.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => entries.push((meta.path, s.clone())),
                other => cx.error(
                    other,
                    format!("`{key}` takes a string literal: `{key} = \"...\"`"),
                ),
            }
        }
        KeyValues { entries }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&LitStr> {
        self.entries
            .iter()
            .find(|(p, _)| p.is_ident(key))
            .map(|(_, v)| v)
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
