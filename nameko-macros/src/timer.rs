//! `#[timer(interval = 1)]`: a method run on a schedule.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, LitBool};

use crate::attr::AttrArgs;
use crate::ctxt::Ctxt;
use crate::method::{Method, attr_tokens};

const USAGE: &str = "`#[timer(interval = 1)]` (seconds, or a duration such as `\"500ms\"`), \
    optionally with `eager = true`";

/// One `#[timer]` attribute on a method.
pub(crate) struct Timer {
    interval_nanos: u64,
    eager: bool,
}

impl Timer {
    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<Timer> {
        let tokens = attr_tokens(attr, USAGE, cx);
        let args = AttrArgs::parse(tokens.clone(), &[], &["interval", "eager"], USAGE, cx);
        let eager = args
            .boolean("eager", cx)
            .as_ref()
            .is_some_and(LitBool::value);
        if !method.params.is_empty() {
            cx.error(
                &method.ident,
                "a timer method takes no arguments besides `&self`",
            );
        }
        let interval_nanos = args.duration("interval", cx);
        if interval_nanos.is_none() && !tokens.to_string().contains("interval") {
            cx.error(attr, format!("missing the interval; expected {USAGE}"));
        }
        Some(Timer {
            interval_nanos: interval_nanos?,
            eager,
        })
    }

    /// `Entrypoint::Timer(TimerEntrypoint { ... })`.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let name = method.ident.to_string();
        let (nanos, eager) = (self.interval_nanos, self.eager);
        let outcome = method.map_outcome(
            &p,
            method.call(&p),
            |_, value| quote!({ let _ = #value; ::std::result::Result::Ok(()) }),
        );
        quote! {
            #p::Entrypoint::Timer(#p::TimerEntrypoint {
                name: #name,
                interval: #p::Duration::from_nanos(#nanos),
                eager: #eager,
                handler: |this| ::std::boxed::Box::pin(async move { #outcome }),
            })
        }
    }
}
