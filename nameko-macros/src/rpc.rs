//! `#[rpc]`: an RPC entrypoint, and the typed client's method for it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{Attribute, LitStr};

use crate::attr::{AttrArgs, EntrypointOptions, OPTION_KEYS, check_wire_name};
use crate::ctxt::{Ctxt, with_item};
use crate::method::{Method, Output, attr_tokens};

const USAGE: &str = "`#[rpc]`, optionally with `name = \"...\"`, \
    `expected_exceptions = \"ErrorType,...\"`, `sensitive_arguments = \"password,...\"`";
const DUMMY_USAGE: &str = "`#[dummy]`, optionally with `expected_exceptions = \"ErrorType,...\"`, \
    `sensitive_arguments = \"password,...\"`";

/// One `#[rpc]` (or `#[dummy]`) attribute on a method.
pub(crate) struct Rpc {
    /// The name on the wire.
    pub(crate) wire_name: String,
    pub(crate) wire_name_span: Span,
    options: EntrypointOptions,
    /// `#[dummy]`: an entrypoint that never fires by itself.
    dummy: bool,
}

impl Rpc {
    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Rpc {
        let dummy = crate::method::is_attr(attr, "dummy");
        let usage = if dummy { DUMMY_USAGE } else { USAGE };
        let tokens = attr_tokens(attr, usage, cx);
        let keys: &[&str] = if dummy {
            &OPTION_KEYS
        } else {
            &["name", OPTION_KEYS[0], OPTION_KEYS[1]]
        };
        let args = AttrArgs::parse(tokens, &[], keys, usage, cx);
        let params: Vec<String> = method.params.iter().map(|p| p.ident.to_string()).collect();
        let options = EntrypointOptions::parse(&args, &params, &method.ident, cx);
        let (wire_name, wire_name_span) = match args.string("name", cx) {
            Some(lit) => {
                check_wire_name(&lit, "RPC method name", cx);
                (lit.value(), lit.span())
            }
            None => (method.ident.to_string(), method.ident.span()),
        };
        Rpc {
            wire_name,
            wire_name_span,
            options,
            dummy,
        }
    }

    /// Whether this is a `#[dummy]` entrypoint (no client method, never consumed).
    pub(crate) fn is_dummy(&self) -> bool {
        self.dummy
    }

    /// `Entrypoint::Rpc(RpcEntrypoint { ... })`: binds the arguments, calls the method, encodes
    /// its outcome.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let wire = LitStr::new(&self.wire_name, self.wire_name_span);
        let param_descs = method.params.iter().map(|param| {
            let name = param.ident.to_string();
            let optional = param.optional;
            quote!(#p::Param { name: #name, optional: #optional })
        });
        let mutability = (!method.params.is_empty()).then(|| quote!(mut));
        let takes = method.params.iter().enumerate().map(|(i, param)| {
            let (name, ty) = (&param.ident, &param.ty);
            quote_spanned!(crate::type_span(ty)=> let #name = args.take::<#ty>(#i)?;)
        });
        let encode = method.map_outcome(&p, method.call(&p), |ty, value| match ty {
            None => quote!(#p::encode_result::<()>(&#value)),
            Some(ty) => quote_spanned!(crate::type_span(ty)=> #p::encode_result::<#ty>(&#value)),
        });
        let names = method.params.iter().map(|param| param.ident.to_string());
        let options = self.options.fields();
        let variant = if self.dummy {
            quote!(Dummy)
        } else {
            quote!(Rpc)
        };
        quote! {
            #p::Entrypoint::#variant(#p::RpcEntrypoint {
                name: #wire,
                params: &[#(#names),*],
                #options
                handler: |this, body| {
                    ::std::boxed::Box::pin(async move {
                        const PARAMS: &[#p::Param] = &[#(#param_descs),*];
                        let #mutability args = #p::BoundArgs::bind(#wire, PARAMS, body)?;
                        #(#takes)*
                        #encode
                    })
                },
            })
        }
    }

    /// The typed client's method for this RPC method.
    pub(crate) fn client_method(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let ident = &method.ident;
        let wire = &self.wire_name;
        let docs = &method.docs;
        let params = method.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            quote!(#name: #ty)
        });
        let count = method.params.len();
        let args = method.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            quote_spanned!(crate::type_span(ty)=> #p::encode_argument::<#ty>(&#name)?)
        });
        let (ok, call) = match &method.output {
            Output::Unit => (
                quote!(()),
                quote!(#p::call::<()>(&self.proxy, #wire, &args).await),
            ),
            Output::Value(ty) | Output::Result { ok: ty } => (
                quote!(#ty),
                quote_spanned!(crate::type_span(ty)=> #p::call::<#ty>(&self.proxy, #wire, &args).await),
            ),
        };
        quote! {
            #(#docs)*
            pub async fn #ident(&self, #(#params),*) -> ::std::result::Result<#ok, #krate::RpcError> {
                let args: [#p::RawArgument; #count] = [#(#args),*];
                #call
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
