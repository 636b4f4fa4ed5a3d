//! `#[timer(interval = 1)]`: a method run on a schedule; `#[once]`: a method run once, when
//! the service starts.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, LitBool};

use crate::attr::{EntrypointOptions, Grammar};
use crate::ctxt::Ctxt;
use crate::method::{Method, is_attr};

const TIMER: Grammar = Grammar {
    positional: &[],
    keys: &["interval", "eager"],
    usage: "`#[timer(interval = 1)]` (seconds, or a duration such as `\"500ms\"`), \
        optionally with `eager = true`, `expected_exceptions = \"ErrorType,...\"`",
};
const ONCE: Grammar = Grammar {
    positional: &[],
    keys: &[],
    usage: "`#[once]`, optionally with `expected_exceptions = \"ErrorType,...\"`",
};

/// One `#[timer]` or `#[once]` attribute on a method.
pub(crate) struct Timer {
    interval_nanos: u64,
    eager: bool,
    once: bool,
    options: EntrypointOptions,
}

impl Timer {
    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<Timer> {
        let once = is_attr(attr, "once");
        let grammar = if once { &ONCE } else { &TIMER };
        let args = grammar.read(attr, cx);
        let options = args.options(&[], &method.ident, cx);
        if !method.params.is_empty() {
            let what = if once { "an `#[once]`" } else { "a timer" };
            cx.error(
                &method.ident,
                format!("{what} method takes no arguments besides `&self`"),
            );
        }
        if once {
            return Some(Timer {
                interval_nanos: 0,
                eager: true,
                once,
                options,
            });
        }
        let eager = args
            .boolean("eager", cx)
            .as_ref()
            .is_some_and(LitBool::value);
        let interval_nanos = args.duration("interval", cx);
        // Absent (a value that is not a duration was reported by `duration`).
        if args.report_missing("interval") {
            cx.error(
                attr,
                format!("missing the interval; expected {}", TIMER.usage),
            );
        }
        Some(Timer {
            interval_nanos: interval_nanos?,
            eager,
            once,
            options,
        })
    }

    /// `Entrypoint::Timer(TimerEntrypoint { ... })` (or `Entrypoint::Once`).
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let name = method.name.clone();
        let (nanos, eager) = (self.interval_nanos, self.eager);
        let expected = &self.options.expected;
        let entrypoint = if self.once {
            quote!(#p::Once)
        } else {
            quote!(#p::Timer::new(#p::Duration::from_nanos(#nanos)).eager(#eager))
        };
        // The method's value, if any, is not kept: a schedule answers no one.
        let outcome = method.map_outcome(
            &p,
            method.call(&p),
            |_, value| quote!({ let _ = #value; <() as #p::RpcResult<_>>::encode_result(&()) }),
        );
        quote! {
            #p::BoundEntrypoint::<Self>::new(
                #entrypoint,
                #p::MethodInfo::new(#name, &[], &[#(#expected),*], &[]),
                |this, _arguments| async move { #outcome },
            )
        }
    }
}
