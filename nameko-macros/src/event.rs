//! `#[event_handler("source_service", "event_type", ...)]`: an event entrypoint.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, LitBool, LitStr};

use crate::attr::{EntrypointOptions, Grammar, check_wire_name};
use crate::ctxt::Ctxt;
use crate::method::Method;

const GRAMMAR: Grammar = Grammar {
    positional: &["the source service", "the event type"],
    keys: &["handler_type", "reliable_delivery", "requeue_on_error"],
    usage: "`#[event_handler(\"source_service\", \"event_type\")]`, optionally with \
        `handler_type = \"service_pool\" | \"singleton\" | \"broadcast\"`, `reliable_delivery = bool`, \
        `requeue_on_error = bool`, `expected_exceptions = \"ErrorType,...\"`, \
        `sensitive_arguments = \"payload.password,...\"`",
};

/// One `#[event_handler]` attribute on a method.
pub(crate) struct EventHandler {
    source: LitStr,
    event_type: LitStr,
    handler_type: TokenStream,
    reliable_delivery: bool,
    requeue_on_error: bool,
    options: EntrypointOptions,
}

impl EventHandler {
    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<EventHandler> {
        let args = GRAMMAR.read(attr, cx);
        let handler_type = match args.string("handler_type", cx) {
            None => quote!(ServicePool),
            Some(lit) => match lit.value().as_str() {
                "service_pool" => quote!(ServicePool),
                "singleton" => quote!(Singleton),
                "broadcast" => quote!(Broadcast),
                _ => {
                    cx.error(&lit, "unknown handler type; expected \"service_pool\", \"singleton\" or \"broadcast\"");
                    quote!(ServicePool)
                }
            },
        };
        let flag = |key: &str, default: bool, cx: &mut Ctxt| {
            args.boolean(key, cx)
                .as_ref()
                .map_or(default, LitBool::value)
        };
        let reliable_delivery = flag("reliable_delivery", true, cx);
        let requeue_on_error = flag("requeue_on_error", false, cx);
        if method.params.len() != 1 {
            cx.error(
                &method.ident,
                "an event handler takes the event's payload as its only argument: `fn handle(&self, payload: T)`",
            );
        }
        let params: Vec<String> = method.params.iter().map(|p| p.name.clone()).collect();
        let options = args.options(&params, &method.ident, cx);
        let [source, event_type] = <[LitStr; 2]>::try_from(args.positional.clone()).ok()?;
        check_wire_name(&source, "source service name", cx);
        if event_type.value().is_empty() {
            cx.error(&event_type, "the event type cannot be empty");
        }
        Some(EventHandler {
            source,
            event_type,
            handler_type,
            reliable_delivery,
            requeue_on_error,
            options,
        })
    }

    /// `Entrypoint::Event(EventEntrypoint { ... })`: decodes the payload, calls the method,
    /// maps its error.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let name = method.name.clone();
        let EventHandler {
            source,
            event_type,
            handler_type,
            reliable_delivery,
            requeue_on_error,
            options,
        } = self;
        let param = method
            .params
            .first()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let decode = method.params.first().map(|param| {
            let (ident, ty) = (&param.ident, &param.ty);
            let decode = crate::via_trait(ty, quote!(#p::EventPayload<_>), "decode_payload");
            quote!(let #ident = #decode(&body.0)?;)
        });
        let outcome = method.map_outcome(
            &p,
            method.call(&p),
            |_, value| quote!({ let _ = #value; ::std::result::Result::Ok(()) }),
        );
        let (expected, sensitive) = (&options.expected, &options.sensitive);
        quote! {
            #p::BoundEntrypoint::<Self>::new(
                #p::EventHandler::new(#source, #event_type)
                    .handler_type(#p::HandlerType::#handler_type)
                    .reliable_delivery(#reliable_delivery)
                    .requeue_on_error(#requeue_on_error),
                #p::MethodInfo::new(#name, &[#param], &[#(#expected),*], &[#(#sensitive),*]),
                |this, body| {
                    ::std::boxed::Box::pin(async move {
                        #decode
                        #outcome
                    })
                },
            )
        }
    }
}
