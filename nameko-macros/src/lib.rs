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
