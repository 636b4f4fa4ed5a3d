//! Collects every error found while validating, so one expansion reports them all.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// All errors as one, if there were any.
    pub(crate) fn check(self) -> Result<(), syn::Error> {
        let mut errors = self.errors.into_iter();
        let Some(mut first) = errors.next() else {
            return Ok(());
        };
        for e in errors {
            first.combine(e);
        }
        Err(first)
    }
}

/// Emits `item` unchanged next to the errors, so a mistake in the attribute gives one message
/// rather than a cascade of "cannot find" errors where the item is used.
pub(crate) fn with_item(error: syn::Error, item: impl ToTokens) -> TokenStream {
    let mut out = error.to_compile_error();
    item.to_tokens(&mut out);
    out
}
