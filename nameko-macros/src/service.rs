//! `#[service(name = "...")]` on an `impl` block: implements `Service`, registers it, and
//! generates the typed client `<Type>Client`.
//!
//! Reads the entrypoint attributes (`#[rpc]`, `#[event_handler]`, `#[http]`, `#[timer]`,
//! `#[once]`, `#[dummy]`, `#[entrypoint(...)]`) off the block's methods and removes them; a
//! method may carry several.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{ImplItem, ItemImpl, Type};

use crate::attr::{AttrArgs, check_wire_name};
use crate::ctxt::{Ctxt, with_item};
use crate::event::EventHandler;
use crate::http::Http;
use crate::method::{Method, is_attr};
use crate::rpc::Rpc;
use crate::timer::Timer;

const USAGE: &str = "`#[service(name = \"...\")]`";

/// The entrypoint attributes a method of a service may carry.
const ENTRYPOINT_ATTRS: &[&str] = &[
    "rpc",
    "event_handler",
    "http",
    "timer",
    "once",
    "dummy",
    "entrypoint",
];

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[service]` goes on an `impl` block: `#[service(name = \"...\")] impl MyService { ... }`",
            );
            return with_item(error, input);
        }
    };
    let mut cx = Ctxt::default();
    let keys = AttrArgs::parse(args, &[], &["name", "crate"], USAGE, &mut cx);
    let name = keys.string("name", &mut cx);
    match &name {
        Some(lit) => check_wire_name(lit, "service name", &mut cx),
        None => cx.error(
            item.impl_token,
            "missing the service's name: `#[service(name = \"my_service\")]`",
        ),
    }
    let krate: syn::Path = match keys.string("crate", &mut cx) {
        Some(lit) => lit.parse().unwrap_or_else(|e| {
            cx.push(e);
            syn::parse_quote!(::nameko)
        }),
        None => syn::parse_quote!(::nameko),
    };
    if !item.generics.params.is_empty() {
        cx.error(&item.generics, "services cannot be generic");
    }
    if let Some((_, path, _)) = &item.trait_ {
        cx.error(
            path,
            "`#[service]` goes on an inherent `impl` block, not a trait implementation",
        );
    }
    let self_ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    if self_ident.is_none() {
        cx.error(
            &item.self_ty,
            "`#[service]` implements a named struct: `impl MyService { ... }`",
        );
    }

    let mut entrypoints = Vec::new();
    let mut client_methods = Vec::new();
    let mut rpc_names: Vec<(String, syn::Ident)> = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let attrs: Vec<_> = f
            .attrs
            .iter()
            .filter(|a| ENTRYPOINT_ATTRS.iter().any(|n| is_attr(a, n)))
            .cloned()
            .collect();
        f.attrs
            .retain(|a| !ENTRYPOINT_ATTRS.iter().any(|n| is_attr(a, n)));
        if attrs.is_empty() {
            continue;
        }
        let what = if attrs.iter().all(|a| is_attr(a, "rpc")) {
            "RPC"
        } else {
            "entrypoint"
        };
        let method = Method::parse(f, what, &mut cx);
        let mut seen_rpc = false;
        for attr in &attrs {
            if is_attr(attr, "rpc") {
                if std::mem::replace(&mut seen_rpc, true) {
                    cx.error(attr, "duplicate `#[rpc]` attribute");
                    continue;
                }
                let Some(rpc) = Rpc::parse(&method, attr, &mut cx) else {
                    continue;
                };
                if let Some((_, other)) = rpc_names.iter().find(|(n, _)| *n == rpc.wire_name) {
                    cx.push(syn::Error::new(
                        rpc.wire_name_span,
                        format!(
                            "two RPC methods are named `{}` on the wire (the other is `{other}`)",
                            rpc.wire_name
                        ),
                    ));
                }
                rpc_names.push((rpc.wire_name.clone(), method.ident.clone()));
                entrypoints.push(rpc.entrypoint(&method, &krate));
                client_methods.push(rpc.client_method(&method, &krate));
            } else if is_attr(attr, "dummy") || is_attr(attr, "entrypoint") {
                if let Some(called) = Rpc::parse(&method, attr, &mut cx) {
                    entrypoints.push(called.entrypoint(&method, &krate));
                }
            } else if is_attr(attr, "timer") || is_attr(attr, "once") {
                if let Some(timer) = Timer::parse(&method, attr, &mut cx) {
                    entrypoints.push(timer.entrypoint(&method, &krate));
                }
            } else if is_attr(attr, "http") {
                if let Some(http) = Http::parse(&method, attr, &mut cx) {
                    entrypoints.push(http.entrypoint(&method, &krate));
                }
            } else if let Some(handler) = EventHandler::parse(&method, attr, &mut cx) {
                entrypoints.push(handler.entrypoint(&method, &krate));
            }
        }
    }

    if let Err(error) = cx.check() {
        return with_item(error, item);
    }
    let (Some(name), Some(self_ident)) = (name, self_ident) else {
        return with_item(
            syn::Error::new(proc_macro2::Span::call_site(), "invalid service"),
            item,
        );
    };

    let self_ty = &item.self_ty;
    let p = quote!(#krate::__private);
    let client = format_ident!("{}Client", self_ident);
    let client_doc = format!(
        "Typed client for the `{}` service, generated by `#[service]` on [`{}`].",
        name.value(),
        self_ident
    );

    quote! {
        #item

        impl #p::Service for #self_ty {
            const NAME: &'static str = #name;

            fn entrypoints() -> ::std::vec::Vec<#p::BoundEntrypoint<Self>> {
                ::std::vec![#(#entrypoints),*]
            }
        }

        #p::inventory::submit! {
            #p::ServiceRegistration::of::<#self_ty>()
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        pub struct #client {
            proxy: #krate::ServiceProxy,
        }

        impl #client {
            /// A client sending its calls through `client`.
            pub fn new(client: &#krate::ClusterRpcClient) -> Self {
                Self { proxy: client.service(#name) }
            }

            /// The same client with another timeout for its calls.
            pub fn with_timeout(&self, timeout: #p::Duration) -> Self {
                Self { proxy: self.proxy.with_timeout(timeout) }
            }

            #(#client_methods)*
        }

        impl #p::ServiceClient for #client {
            const SERVICE_NAME: &'static str = #name;

            fn from_client(client: &#krate::ClusterRpcClient) -> Self {
                Self::new(client)
            }
        }

        impl #p::Dependency for #client {
            async fn build(
                cx: &#p::DependencyContext,
                _field: &'static str,
            ) -> ::std::result::Result<Self, #p::Error> {
                ::std::result::Result::Ok(Self::new(&cx.rpc_client().await?))
            }
        }
    }
}
