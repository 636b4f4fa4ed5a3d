//! `#[event_handler("source_service", "event_type", ...)]`, an event entrypoint, and
//! `#[consume(queue = ...)]`, a queue's: both take one JSON message as the method's argument.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, Expr, LitBool, LitStr};

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

const CONSUME: Grammar = Grammar {
    positional: &[],
    keys: &["queue", "requeue_on_error"],
    usage: "`#[consume(queue = my_queue())]` (an expression of type `nameko::messaging::Queue`), \
        optionally with `requeue_on_error = bool`, `expected_exceptions = \"ErrorType,...\"`, \
        `sensitive_arguments = \"body.password,...\"`",
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

/// One `#[consume]` attribute on a method.
pub(crate) struct Consume {
    /// The user's expression for the queue.
    queue: Expr,
    requeue_on_error: bool,
    options: EntrypointOptions,
}

impl Consume {
    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<Consume> {
        let args = CONSUME.read(attr, cx);
        let requeue_on_error = args
            .boolean("requeue_on_error", cx)
            .as_ref()
            .is_some_and(LitBool::value);
        one_message_argument(
            method,
            "a `#[consume]` method takes the message's body as its only argument: `fn take(&self, body: T)`",
            cx,
        );
        let params: Vec<String> = method.params.iter().map(|p| p.name.clone()).collect();
        let options = args.options(&params, &method.ident, cx);
        if args.report_missing("queue") {
            cx.error(
                attr,
                format!("missing the queue; expected {}", CONSUME.usage),
            );
        }
        let queue = args.expr("queue")?.clone();
        Some(Consume {
            queue,
            requeue_on_error,
            options,
        })
    }

    /// `Consume::new(queue)...`, bound to the method: decodes the body, calls the method,
    /// maps its error. (An expression that is not a `Queue` is a type error at it.)
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let (queue, requeue_on_error) = (&self.queue, self.requeue_on_error);
        let entrypoint = quote!(#p::Consume::new(#queue).requeue_on_error(#requeue_on_error));
        message_entrypoint(
            method,
            &p,
            entrypoint,
            &self.options,
            "MessageBody",
            "decode_body",
        )
    }
}

/// Reports a method that does not take exactly one argument, the message.
fn one_message_argument(method: &Method, message: &str, cx: &mut Ctxt) {
    if method.params.len() != 1 {
        cx.error(&method.ident, message);
    }
}

/// The bound entrypoint of a method that takes one JSON message: decodes it into the method's
/// parameter type (through `<T as #payload_trait<_>>::#decode`), calls the method, maps its error.
fn message_entrypoint(
    method: &Method,
    p: &TokenStream,
    entrypoint: TokenStream,
    options: &EntrypointOptions,
    payload_trait: &str,
    decode: &str,
) -> TokenStream {
    let name = method.name.clone();
    let param = method
        .params
        .first()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let payload_trait = syn::Ident::new(payload_trait, proc_macro2::Span::call_site());
    let decode = method.params.first().map(|param| {
        let (ident, ty) = (&param.ident, &param.ty);
        let decode = crate::via_trait(ty, quote!(#p::#payload_trait<_>), decode);
        quote!(let #ident = #decode(&body.0)?;)
    });
    let outcome = method.map_outcome(
        p,
        method.call(p),
        |_, value| quote!({ let _ = #value; ::std::result::Result::Ok(()) }),
    );
    let (expected, sensitive) = (&options.expected, &options.sensitive);
    quote! {
        #p::BoundEntrypoint::<Self>::new(
            #entrypoint,
            #p::MethodInfo::new(#name, &[#param], &[#(#expected),*], &[#(#sensitive),*]),
            |this, body| {
                async move {
                    #decode
                    #outcome
                }
            },
        )
    }
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
        one_message_argument(
            method,
            "an event handler takes the event's payload as its only argument: `fn handle(&self, payload: T)`",
            cx,
        );
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

    /// `EventHandler::new(...)...`, bound to the method: decodes the payload, calls the
    /// method, maps its error.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let EventHandler {
            source,
            event_type,
            handler_type,
            reliable_delivery,
            requeue_on_error,
            options,
        } = self;
        let entrypoint = quote! {
            #p::EventHandler::new(#source, #event_type)
                .handler_type(#p::HandlerType::#handler_type)
                .reliable_delivery(#reliable_delivery)
                .requeue_on_error(#requeue_on_error)
        };
        message_entrypoint(
            method,
            &p,
            entrypoint,
            options,
            "EventPayload",
            "decode_payload",
        )
    }
}
