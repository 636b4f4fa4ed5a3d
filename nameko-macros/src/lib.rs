//! Procedural macros of nameko-rs. Use them through the `nameko` crate, which re-exports them.
//!
//! Each macro parses its input into a small model, validates it (every mistake is a
//! `syn::Error` pointing at the user's code) and emits code that names only
//! `::nameko::__private`. No behaviour lives here.

mod attr;
mod ctxt;
mod dependencies;
mod event;
mod http;
mod method;
mod rpc;
mod service;
#[cfg(test)]
mod snapshots;
mod timer;

use proc_macro::TokenStream;

/// Declares a service on an `impl` block. See the `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    service::expand(args.into(), input.into()).into()
}

/// Marks an RPC method inside a `#[service]` block. See the `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn rpc(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("rpc", input.into()).into()
}

/// Marks an event handler inside a `#[service]` block. See the `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("event_handler", input.into()).into()
}

/// Marks a websocket method inside a `#[service]` block. See the `nameko` crate's
/// documentation.
#[proc_macro_attribute]
pub fn ws_rpc(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("ws_rpc", input.into()).into()
}

/// Marks a queue's consumer inside a `#[service]` block. See the `nameko` crate's
/// documentation.
#[proc_macro_attribute]
pub fn consume(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("consume", input.into()).into()
}

/// Puts an entrypoint of the user's own on a method inside a `#[service]` block. See the
/// `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn entrypoint(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("entrypoint", input.into()).into()
}

/// The HTTP constants the runtime shares with the checks of `#[http]`, written once, here: the
/// HTTP methods a route may name and the most parameters it may have. Not public API.
#[doc(hidden)]
#[proc_macro]
pub fn __http_constants(input: TokenStream) -> TokenStream {
    let _ = input;
    http::constants().into()
}

/// Builds a service struct from its fields. See the `nameko` crate's documentation.
#[proc_macro_derive(Dependencies, attributes(nameko))]
pub fn derive_dependencies(input: TokenStream) -> TokenStream {
    dependencies::expand(input.into()).into()
}

/// Marks an HTTP route of a method inside a `#[service]` block. See the `nameko` crate's
/// documentation.
#[proc_macro_attribute]
pub fn http(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("http", input.into()).into()
}

/// Marks a method inside a `#[service]` block to run on a schedule. See the `nameko` crate's
/// documentation.
#[proc_macro_attribute]
pub fn timer(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("timer", input.into()).into()
}

/// Marks a method inside a `#[service]` block to run once, when the service starts. See the
/// `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn once(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("once", input.into()).into()
}

/// Marks a method inside a `#[service]` block as an entrypoint that never fires by itself. See
/// the `nameko` crate's documentation.
#[proc_macro_attribute]
pub fn dummy(args: TokenStream, input: TokenStream) -> TokenStream {
    let _ = args;
    rpc::outside_service("dummy", input.into()).into()
}

/// `<Type as Trait>::function`, every token shown at the type (see [`type_span`]). The
/// generated code names a user's type through a trait this way at each of its uses, so that a
/// type that does not implement the trait gets one error, at the type, shown once (the
/// compiler shows an error once however many identical copies of it there are).
pub(crate) fn via_trait(
    ty: &syn::Type,
    trait_path: proc_macro2::TokenStream,
    function: &str,
) -> proc_macro2::TokenStream {
    let function = proc_macro2::Ident::new(function, proc_macro2::Span::call_site());
    respan(
        quote::quote!(<#ty as #trait_path>::#function),
        type_span(ty),
    )
}

/// The same tokens, all shown at `span`'s place in the source. A name that is not part of a
/// path (a local variable, `self`) keeps its own resolution (`Span::located_at`), so that it
/// resolves as it would have even when `span` comes from a `macro_rules!` expansion; every
/// other token takes `span` itself, so that errors about the expression they make up carry no
/// trace of this macro and are all alike.
pub(crate) fn respan(
    tokens: proc_macro2::TokenStream,
    span: proc_macro2::Span,
) -> proc_macro2::TokenStream {
    use proc_macro2::TokenTree;
    let is_path_sep = |token: Option<&TokenTree>| matches!(token, Some(TokenTree::Punct(p)) if p.as_char() == ':');
    let mut tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for i in 0..tokens.len() {
        let in_path = is_path_sep(i.checked_sub(1).and_then(|j| tokens.get(j)))
            || is_path_sep(tokens.get(i + 1));
        match &mut tokens[i] {
            TokenTree::Group(group) => {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                *group = inner;
            }
            TokenTree::Ident(ident) if !in_path => ident.set_span(ident.span().located_at(span)),
            other => other.set_span(span),
        }
    }
    tokens.into_iter().collect()
}

/// Where errors about a type point: its name (the last segment of a path, through references,
/// groups and slices), else its first token. Never a span joined from several tokens: joining
/// works only where the compiler offers unstable proc-macro features, so a joined span would
/// make the same mistake point at different code on different toolchain set-ups.
pub(crate) fn type_span(ty: &syn::Type) -> proc_macro2::Span {
    use quote::ToTokens;
    match ty {
        syn::Type::Path(path) => match path.path.segments.last() {
            Some(segment) => segment.ident.span(),
            None => proc_macro2::Span::call_site(),
        },
        syn::Type::Reference(reference) => type_span(&reference.elem),
        syn::Type::Group(group) => type_span(&group.elem),
        syn::Type::Paren(paren) => type_span(&paren.elem),
        syn::Type::Slice(slice) => type_span(&slice.elem),
        syn::Type::Array(array) => type_span(&array.elem),
        other => other
            .to_token_stream()
            .into_iter()
            .next()
            .map_or_else(proc_macro2::Span::call_site, |token| token.span()),
    }
}
