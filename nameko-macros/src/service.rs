//! `#[service(name = "...")]` on an `impl` block: implements `Service`, registers it, and
//! generates the typed client `<Type>Client`.
//!
//! Three stages, as serde_derive's: [`parse`] reads the whole block into a [`ServiceDef`] (the
//! service's options, each method's signature and entrypoints; the entrypoint attributes
//! `#[rpc]`, `#[event_handler]`, `#[http]`, `#[timer]`, `#[once]`, `#[dummy]`,
//! `#[entrypoint(...)]` removed from the methods), [`validate`] checks the model as a whole
//! (names on the wire, routes), and [`emit`] writes the code. Every error of every stage is
//! collected and reported in one compile; with errors, [`fallback`] still emits the block and
//! stand-ins for what the service would have generated, so the rest of the crate type-checks and
//! only the mistakes are reported.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::{Ident, ImplItem, ItemImpl, LitStr, Type};

use crate::attr::{AttrArgs, check_wire_name};
use crate::ctxt::Ctxt;
use crate::event::{Consume, EventHandler};
use crate::http::Http;
use crate::method::{Method, is_attr};
use crate::rpc::Rpc;
use crate::timer::Timer;

const USAGE: &str = "`#[service(name = \"...\")]`";

/// The entrypoint attributes a method of a service may carry.
const ENTRYPOINT_ATTRS: &[&str] = &[
    "rpc",
    "event_handler",
    "consume",
    "ws_rpc",
    "http",
    "timer",
    "once",
    "dummy",
    "entrypoint",
];

/// A service, as read off its `impl` block.
pub(crate) struct ServiceDef {
    /// The name on the wire.
    name: Option<LitStr>,
    /// The path of the `nameko` crate.
    krate: syn::Path,
    /// The struct's name, when the block implements a named, non-generic struct.
    self_ident: Option<Ident>,
    /// The block, its entrypoint attributes removed.
    item: ItemImpl,
    /// Each method that carries an entrypoint attribute.
    methods: Vec<MethodDef>,
}

/// A method of the service and its entrypoints.
struct MethodDef {
    method: Method,
    entrypoints: Vec<EntrypointDef>,
}

/// One entrypoint attribute, parsed.
enum EntrypointDef {
    /// `#[rpc]`, `#[dummy]` or `#[entrypoint(...)]`: called with JSON arguments.
    Called(Rpc),
    Event(EventHandler),
    Consume(Consume),
    Http(Http),
    Timer(Timer),
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let Some(def) = parse(args, input.clone(), &mut cx) else {
        let error = cx
            .check()
            .err()
            .unwrap_or_else(|| not_an_impl(Span::call_site(), ""));
        return crate::ctxt::with_item(error, input);
    };
    validate(&def, &mut cx);
    match (cx.check(), &def.name, &def.self_ident) {
        (Ok(()), Some(name), Some(self_ident)) => emit(&def, name, self_ident),
        // A missing name or struct was reported as an error.
        (errors, ..) => fallback(&def, errors.err()),
    }
}

/// `#[service]` on something else than an `impl` block: at the first token that is not one,
/// with syn's word for what it expected.
fn not_an_impl(span: Span, expected: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!(
            "`#[service]` goes on an `impl` block: `#[service(name = \"...\")] impl MyService {{ ... }}`{expected}"
        ),
    )
}

/// Reads the block into a [`ServiceDef`]; `None` if it is not an `impl` block at all.
pub(crate) fn parse(args: TokenStream, input: TokenStream, cx: &mut Ctxt) -> Option<ServiceDef> {
    let mut item: ItemImpl = match syn::parse2(input) {
        Ok(item) => item,
        Err(error) => {
            // syn's own message says where the input stops being an impl block.
            cx.push(not_an_impl(error.span(), &format!(" ({error})")));
            return None;
        }
    };
    let keys = AttrArgs::parse(args, &[], &["name", "crate"], USAGE, cx);
    let name = keys.string("name", cx);
    if let Some(lit) = &name {
        check_wire_name(lit, "service name", cx);
    } else if keys.report_missing("name") {
        cx.error(
            item.impl_token,
            "missing the service's name: `#[service(name = \"my_service\")]`",
        );
    }
    let krate: syn::Path = match keys.string("crate", cx) {
        Some(lit) => lit.parse().unwrap_or_else(|e| {
            cx.push(e);
            syn::parse_quote!(::nameko)
        }),
        None => syn::parse_quote!(::nameko),
    };
    let mut self_ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    if self_ident.is_none() {
        cx.error(
            &item.self_ty,
            "`#[service]` implements a named struct: `impl MyService { ... }`",
        );
    }
    if !item.generics.params.is_empty() {
        cx.error(&item.generics, "services cannot be generic");
        self_ident = None;
    }
    if let Some((_, path, _)) = &item.trait_ {
        cx.error(
            path,
            "`#[service]` goes on an inherent `impl` block, not a trait implementation",
        );
        self_ident = None;
    }
    let mut methods = Vec::new();
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
        let method = Method::parse(f, what, cx);
        // Reported above; without it, the block that is emitted as written gets no second
        // error from the compiler about the same `...`.
        if f.sig.variadic.take().is_some() {
            f.sig.unsafety = None;
            f.sig.abi = None;
        }
        let mut entrypoints = Vec::new();
        let mut seen_rpc = false;
        for attr in &attrs {
            let parsed = if is_attr(attr, "rpc") {
                if std::mem::replace(&mut seen_rpc, true) {
                    cx.error(attr, "duplicate `#[rpc]` attribute");
                    continue;
                }
                Rpc::parse(&method, attr, cx).map(EntrypointDef::Called)
            } else if is_attr(attr, "dummy")
                || is_attr(attr, "entrypoint")
                || is_attr(attr, "ws_rpc")
            {
                Rpc::parse(&method, attr, cx).map(EntrypointDef::Called)
            } else if is_attr(attr, "timer") || is_attr(attr, "once") {
                Timer::parse(&method, attr, cx).map(EntrypointDef::Timer)
            } else if is_attr(attr, "http") {
                Http::parse(&method, attr, cx).map(EntrypointDef::Http)
            } else if is_attr(attr, "consume") {
                Consume::parse(&method, attr, cx).map(EntrypointDef::Consume)
            } else {
                EventHandler::parse(&method, attr, cx).map(EntrypointDef::Event)
            };
            entrypoints.extend(parsed);
        }
        methods.push(MethodDef {
            method,
            entrypoints,
        });
    }
    Some(ServiceDef {
        name,
        krate,
        self_ident,
        item,
        methods,
    })
}

/// Checks what no single method can: two RPC methods with one name on the wire, two routes
/// claiming the same path and HTTP method.
pub(crate) fn validate(def: &ServiceDef, cx: &mut Ctxt) {
    let mut rpc_names: Vec<(&str, &Ident)> = Vec::new();
    let mut routes: Vec<(&Http, &Ident)> = Vec::new();
    for m in &def.methods {
        for entrypoint in &m.entrypoints {
            match entrypoint {
                EntrypointDef::Called(rpc) if rpc.is_rpc() => {
                    if let Some((_, other)) = rpc_names.iter().find(|(n, _)| *n == rpc.wire_name) {
                        cx.push(syn::Error::new(
                            rpc.wire_name_span,
                            format!(
                                "two RPC methods are named `{}` on the wire (the other is `{other}`)",
                                rpc.wire_name
                            ),
                        ));
                    }
                    rpc_names.push((&rpc.wire_name, &m.method.ident));
                }
                EntrypointDef::Http(http) => {
                    if let Some((other, ident)) = routes.iter().find(|(r, _)| r.overlaps(http)) {
                        let (method, route) = http.clash(other);
                        cx.push(syn::Error::new(
                            http.route_span(),
                            format!("`{method} {route}` is also a route of `{ident}`"),
                        ));
                    }
                    routes.push((http, &m.method.ident));
                }
                _ => {}
            }
        }
    }
}

/// The code of a valid service.
pub(crate) fn emit(def: &ServiceDef, name: &LitStr, self_ident: &Ident) -> TokenStream {
    let krate = &def.krate;
    let entrypoints = def.methods.iter().flat_map(|m| {
        m.entrypoints.iter().map(|e| match e {
            EntrypointDef::Called(rpc) => rpc.entrypoint(&m.method, krate),
            EntrypointDef::Event(event) => event.entrypoint(&m.method, krate),
            EntrypointDef::Consume(consume) => consume.entrypoint(&m.method, krate),
            EntrypointDef::Http(http) => http.entrypoint(&m.method, krate),
            EntrypointDef::Timer(timer) => timer.entrypoint(&m.method, krate),
        })
    });
    let client_methods = def.methods.iter().flat_map(|m| {
        m.entrypoints.iter().filter_map(|e| match e {
            EntrypointDef::Called(rpc) if rpc.is_rpc() => Some(rpc.client_method(&m.method, krate)),
            _ => None,
        })
    });
    let item = &def.item;
    let self_ty = &item.self_ty;
    let p = quote!(#krate::__private);
    let client = client(name, self_ident, krate, client_methods);
    quote! {
        #item

        impl #p::Service for #self_ty {
            const NAME: &'static str = #name;

            fn entrypoints() -> ::std::vec::Vec<#p::BoundEntrypoint<Self>> {
                ::std::convert::From::from([#(#entrypoints),*])
            }
        }

        #p::inventory::submit! {
            #p::ServiceRegistration::of::<#self_ty>()
        }

        #client
    }
}

/// The typed client `<Type>Client`, with `methods`.
fn client(
    name: &LitStr,
    self_ident: &Ident,
    krate: &syn::Path,
    methods: impl Iterator<Item = TokenStream>,
) -> TokenStream {
    let p = quote!(#krate::__private);
    let client = format_ident!("{}Client", self_ident);
    let client_doc = format!(
        "Typed client for the `{}` service, generated by `#[service]` on [`{}`].",
        name.value(),
        self_ident
    );
    quote! {
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

            /// The same client, its requests of this priority (on a queue declared with
            /// `x-max-priority`, taken before those of a lower one).
            pub fn with_priority(&self, priority: u8) -> Self {
                Self { proxy: self.proxy.with_priority(priority) }
            }

            #(#methods)*
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

/// The errors, the block, and stand-ins for the service's implementation and its client (their
/// methods' bodies `unimplemented!()`), so that the crate's other uses of them type-check and
/// only the mistakes are reported.
pub(crate) fn fallback(def: &ServiceDef, errors: Option<syn::Error>) -> TokenStream {
    let mut out = errors.map(|e| e.to_compile_error()).unwrap_or_default();
    let item = &def.item;
    out.extend(quote!(#item));
    let Some(self_ident) = &def.self_ident else {
        return out;
    };
    let krate = &def.krate;
    let p = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let name = def
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&self_ident.to_string(), self_ident.span()));
    let methods = def.methods.iter().flat_map(|m| {
        m.entrypoints.iter().filter_map(|e| match e {
            EntrypointDef::Called(rpc) if rpc.is_rpc() => Some(rpc.client_stub(&m.method, krate)),
            _ => None,
        })
    });
    out.extend(quote! {
        impl #p::Service for #self_ty {
            const NAME: &'static str = #name;

            fn entrypoints() -> ::std::vec::Vec<#p::BoundEntrypoint<Self>> {
                ::std::vec::Vec::new()
            }
        }
    });
    out.extend(client(&name, self_ident, krate, methods));
    out
}
