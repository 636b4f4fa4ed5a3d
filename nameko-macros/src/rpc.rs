//! `#[rpc]`: an RPC entrypoint, and the typed client's method for it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{Attribute, Expr, LitStr};

use crate::attr::{EntrypointOptions, Grammar, attr_tokens, check_wire_name};

/// The RPC method the runtime answers with the service's description
/// (`nameko::protocol::DESCRIBE_METHOD`).
const DESCRIBE_METHOD: &str = "__nameko_describe__";
use crate::ctxt::{Ctxt, with_item};
use crate::method::{Method, Output};

const RPC: Grammar = Grammar {
    positional: &[],
    keys: &["name"],
    usage: "`#[rpc]`, optionally with `name = \"...\"`, \
        `expected_exceptions = \"ErrorType,...\"`, `sensitive_arguments = \"password,...\"`",
};
const WS_RPC: Grammar = Grammar {
    positional: &[],
    keys: &[],
    usage: "`#[ws_rpc]`, optionally with `expected_exceptions = \"ErrorType,...\"`, \
        `sensitive_arguments = \"password,...\"`",
};
const DUMMY: Grammar = Grammar {
    positional: &[],
    keys: &[],
    usage: "`#[dummy]`, optionally with `expected_exceptions = \"ErrorType,...\"`, \
        `sensitive_arguments = \"password,...\"`",
};
/// After the entrypoint expression (see [`split_entrypoint`]).
const ENTRYPOINT: Grammar = Grammar {
    positional: &[],
    keys: &[],
    usage: "`#[entrypoint(MyEntrypoint::new(...))]`: an expression whose \
        type implements `nameko::service::Entrypoint`, optionally followed by \
        `expected_exceptions = \"ErrorType,...\"`, `sensitive_arguments = \"password,...\"`",
};

/// A method called with JSON arguments bound to its parameters: one `#[rpc]`, `#[dummy]` or
/// `#[entrypoint(...)]` attribute.
pub(crate) struct Rpc {
    /// The name on the wire.
    pub(crate) wire_name: String,
    pub(crate) wire_name_span: Span,
    options: EntrypointOptions,
    kind: Kind,
}

enum Kind {
    Rpc,
    /// `#[ws_rpc]`: called over a websocket, the socket's id first.
    WsRpc,
    /// `#[dummy]`: an entrypoint that never fires by itself.
    Dummy,
    /// `#[entrypoint(expr)]`: the user's entrypoint.
    Custom(Box<Expr>),
}

/// Where errors about a user's entrypoint expression point: its first token (a path's last
/// segment would be better, but any one token's span is stable across toolchains).
fn expr_span(expr: &Expr) -> Span {
    use quote::ToTokens;
    expr.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |token| token.span())
}

/// Splits `#[entrypoint(expr, key = value, ...)]` into the expression and the keys' tokens.
fn split_entrypoint(attr: &Attribute, cx: &mut Ctxt) -> (Option<Expr>, TokenStream) {
    use syn::parse::Parser;
    let tokens = attr_tokens(attr, ENTRYPOINT.usage, cx);
    let parsed =
        syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated.parse2(tokens);
    let exprs = match parsed {
        Ok(exprs) => exprs,
        Err(e) => {
            cx.push(syn::Error::new(
                e.span(),
                format!("{e}; expected {}", ENTRYPOINT.usage),
            ));
            return (None, TokenStream::new());
        }
    };
    let mut exprs = exprs.into_iter();
    match exprs.next() {
        Some(Expr::Assign(assign)) => {
            cx.error(
                &assign,
                format!("the entrypoint comes first; expected {}", ENTRYPOINT.usage),
            );
            (None, TokenStream::new())
        }
        Some(expr) => {
            let rest: Vec<Expr> = exprs.collect();
            (Some(expr), quote!(#(#rest),*))
        }
        None => {
            cx.error(
                attr,
                format!("missing the entrypoint; expected {}", ENTRYPOINT.usage),
            );
            (None, TokenStream::new())
        }
    }
}

impl Rpc {
    /// Whether this is an `#[rpc]` method (called over RPC, with a client method).
    pub(crate) fn is_rpc(&self) -> bool {
        matches!(self.kind, Kind::Rpc)
    }

    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<Rpc> {
        let is = |name| crate::method::is_attr(attr, name);
        let (kind, args) = if is("entrypoint") {
            let (expr, rest) = split_entrypoint(attr, cx);
            (
                Kind::Custom(Box::new(expr?)),
                ENTRYPOINT.read_tokens(rest, cx),
            )
        } else if is("dummy") {
            (Kind::Dummy, DUMMY.read(attr, cx))
        } else if is("ws_rpc") {
            if method.params.is_empty() {
                cx.error(
                    &method.ident,
                    "a `#[ws_rpc]` method takes the socket's id as its first argument: `fn greet(&self, socket_id: String, ...)`",
                );
            }
            (Kind::WsRpc, WS_RPC.read(attr, cx))
        } else {
            (Kind::Rpc, RPC.read(attr, cx))
        };
        let params: Vec<String> = method.params.iter().map(|p| p.name.clone()).collect();
        let options = args.options(&params, &method.ident, cx);
        let (wire_name, wire_name_span) = match args.string("name", cx) {
            Some(lit) => {
                check_wire_name(&lit, "RPC method name", cx);
                (lit.value(), lit.span())
            }
            None => (method.name.clone(), method.ident.span()),
        };
        if wire_name == DESCRIBE_METHOD {
            cx.error(
                syn::LitStr::new(&wire_name, wire_name_span),
                format!(
                    "`{DESCRIBE_METHOD}` is the method nameko-rs services answer service discovery with; name this method otherwise"
                ),
            );
        }
        Some(Rpc {
            wire_name,
            wire_name_span,
            options,
            kind,
        })
    }

    /// The bound entrypoint: binds the arguments, calls the method, encodes its outcome.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let wire = LitStr::new(&self.wire_name, self.wire_name_span);
        let param_descs = method.params.iter().map(|param| {
            let name = param.name.clone();
            let optional = param.optional;
            quote!(#p::Param { name: #name, optional: #optional })
        });
        let mutability = (!method.params.is_empty()).then(|| quote!(mut));
        let takes = method.params.iter().enumerate().map(|(i, param)| {
            let (name, ty) = (&param.ident, &param.ty);
            let decode = crate::via_trait(ty, quote!(#p::RpcArgument<_>), "decode_argument");
            quote!(let #name = #decode(&mut args, #i)?;)
        });
        // A result a generated client reads must deserialise too; the others only go out.
        let result_trait = if self.is_rpc() {
            quote!(#p::RpcResult<_>)
        } else {
            quote!(#p::JsonResult<_>)
        };
        let encode = method.map_outcome(&p, method.call(&p), |ty, value| match ty {
            None => quote!(<() as #result_trait>::encode_result(&#value)),
            Some(ty) => {
                let encode = crate::via_trait(ty, result_trait.clone(), "encode_result");
                quote!(#encode(&#value))
            }
        });
        let names = method.params.iter().map(|param| param.name.clone());
        let (expected, sensitive) = (&self.options.expected, &self.options.sensitive);
        let signature = method.signature();
        let info = quote! {
            #p::MethodInfo::new(#wire, &[#(#names),*], &[#(#expected),*], &[#(#sensitive),*])
                .with_signature(#signature)
        };
        let handler = quote! {
            |this, body| {
                async move {
                    const PARAMS: &[#p::Param] = &[#(#param_descs),*];
                    let #mutability args = #p::BoundArgs::bind(#wire, PARAMS, body)?;
                    #(#takes)*
                    #encode
                }
            }
        };
        match &self.kind {
            Kind::Rpc => quote!(#p::BoundEntrypoint::<Self>::new(#p::Rpc, #info, #handler)),
            Kind::Dummy => quote!(#p::BoundEntrypoint::<Self>::new(#p::Dummy, #info, #handler)),
            Kind::WsRpc => quote!(#p::BoundEntrypoint::<Self>::new(#p::WsRpc, #info, #handler)),
            // The user's expression, and the check that its type is an entrypoint taking
            // arguments, point at the expression.
            Kind::Custom(expr) => quote_spanned! {expr_span(expr)=>
                #p::bind_entrypoint::<Self, _, _, _, _>(#expr, #info, #handler)
            },
        }
    }

    /// The typed client's method for this RPC method.
    pub(crate) fn client_method(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let wire = &self.wire_name;
        let count = method.params.len();
        let args = method.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            let encode = crate::via_trait(ty, quote!(#p::RpcArgument<_>), "encode_argument");
            quote!(#encode(&#name)?)
        });
        let decode = match &method.output {
            Output::Unit => quote!(<() as #p::RpcResult<_>>::decode_result),
            Output::Value(ty) | Output::Result { ok: ty } => {
                crate::via_trait(ty, quote!(#p::RpcResult<_>), "decode_result")
            }
        };
        let call = quote!(#p::call(&self.proxy, #wire, &args, #decode).await);
        self.client_signature(
            method,
            krate,
            quote! {
                let args: [#p::RawArgument; #count] = [#(#args),*];
                #call
            },
        )
    }

    /// The client method's stand-in while the service has errors: the same signature, a body
    /// that is never run (the crate does not compile).
    pub(crate) fn client_stub(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let names = method.params.iter().map(|param| &param.ident);
        self.client_signature(
            method,
            krate,
            quote!(let _ = (#(#names),*); ::std::unimplemented!()),
        )
    }

    fn client_signature(
        &self,
        method: &Method,
        krate: &syn::Path,
        body: TokenStream,
    ) -> TokenStream {
        let ident = &method.ident;
        let docs = &method.docs;
        let params = method.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            quote!(#name: #ty)
        });
        let ok = match &method.output {
            Output::Unit => quote!(()),
            Output::Value(ty) | Output::Result { ok: ty } => quote!(#ty),
        };
        quote! {
            #(#docs)*
            pub async fn #ident(&self, #(#params),*) -> ::std::result::Result<#ok, #krate::RpcError> {
                #body
            }
        }
    }
}

/// An entrypoint attribute that was not removed by an enclosing `#[service]`: always a mistake.
pub(crate) fn outside_service(name: &str, input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        format!(
            "`#[{name}]` can only be used on a method inside an `impl` block annotated with `#[service(name = \"...\")]`"
        ),
    );
    with_item(error, input)
}
