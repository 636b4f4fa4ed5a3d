//! `#[rpc]`: the model of one RPC method, read from a method of a `#[service]` block.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItemFn, LitStr, Pat, PathArguments, ReturnType,
    Type,
};

use crate::attr::{KeyValues, check_wire_name};
use crate::ctxt::{Ctxt, with_item};

/// One RPC method.
pub(crate) struct RpcMethod {
    /// The Rust method name.
    pub(crate) ident: Ident,
    /// The name on the wire.
    pub(crate) wire_name: String,
    pub(crate) wire_name_span: proc_macro2::Span,
    pub(crate) is_async: bool,
    pub(crate) params: Vec<RpcParam>,
    pub(crate) output: RpcOutput,
    pub(crate) docs: Vec<Attribute>,
}

pub(crate) struct RpcParam {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    pub(crate) optional: bool,
}

pub(crate) enum RpcOutput {
    /// No return type: `()`.
    Unit,
    /// A plain value.
    Value(Type),
    /// `Result<T, E>`: `T` is the result; `E` becomes the error reply.
    Result { ok: Type },
}

/// Whether `attr` is `#[rpc]` or `#[...::rpc]`.
pub(crate) fn is_rpc_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "rpc")
}

/// The `T` of `Option<T>`, written as a path ending in `Option`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let args = generic_args_of(ty, "Option")?;
    match args[..] {
        [GenericArgument::Type(t)] => Some(t),
        _ => None,
    }
}

fn generic_args_of<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a GenericArgument>> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) => Some(args.args.iter().collect()),
        _ => None,
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Reference(r) => contains_impl_trait(&r.elem),
        Type::Paren(p) => contains_impl_trait(&p.elem),
        Type::Group(g) => contains_impl_trait(&g.elem),
        Type::Tuple(t) => t.elems.iter().any(contains_impl_trait),
        Type::Slice(s) => contains_impl_trait(&s.elem),
        Type::Array(a) => contains_impl_trait(&a.elem),
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().any(|g| match g {
                GenericArgument::Type(t) => contains_impl_trait(t),
                _ => false,
            }),
            _ => false,
        }),
        _ => false,
    }
}

impl RpcMethod {
    /// Reads the method `f` carrying the `#[rpc]` attribute `attr`, reporting every misuse.
    pub(crate) fn parse(f: &ImplItemFn, attr: &Attribute, cx: &mut Ctxt) -> Option<RpcMethod> {
        let args = match &attr.meta {
            syn::Meta::Path(_) => TokenStream::new(),
            syn::Meta::List(list) => list.tokens.clone(),
            syn::Meta::NameValue(nv) => {
                cx.error(nv, "expected `#[rpc]` or `#[rpc(name = \"...\")]`");
                TokenStream::new()
            }
        };
        let keys = KeyValues::parse(args, &["name"], cx);
        let sig = &f.sig;
        let (wire_name, wire_name_span) = match keys.get("name") {
            Some(lit) => {
                check_wire_name(lit, "RPC method name", cx);
                (lit.value(), lit.span())
            }
            None => (sig.ident.to_string(), sig.ident.span()),
        };
        if !sig.generics.params.is_empty() {
            cx.error(
                &sig.generics,
                "RPC methods cannot be generic: the arguments' types must be known to decode them",
            );
        }
        if let Some(wc) = &sig.generics.where_clause {
            cx.error(wc, "RPC methods cannot have a where clause");
        }
        if let Some(c) = &sig.constness {
            cx.error(c, "RPC methods cannot be `const`");
        }
        if let Some(u) = &sig.unsafety {
            cx.error(u, "RPC methods cannot be `unsafe`");
        }
        if let Some(v) = &sig.variadic {
            cx.error(v, "RPC methods cannot be variadic");
        }
        match sig.inputs.first() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {
                if r.colon_token.is_some() {
                    cx.error(r, "write the receiver as `&self`");
                }
            }
            Some(FnArg::Receiver(r)) => cx.error(
                r,
                "RPC methods take `&self`: one service instance serves many concurrent workers",
            ),
            _ => cx.error(
                &sig.ident,
                "RPC methods take `&self` as their first parameter: add `&self`",
            ),
        }
        let mut params = Vec::new();
        for input in sig.inputs.iter().skip(1) {
            let FnArg::Typed(pat_type) = input else {
                continue;
            };
            let ident = match &*pat_type.pat {
                Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => pi.ident.clone(),
                other => {
                    cx.error(
                        other,
                        "RPC arguments must be plain names (`name: Type`): callers pass them by keyword",
                    );
                    continue;
                }
            };
            let ty = (*pat_type.ty).clone();
            if let Type::Reference(r) = &ty {
                cx.error(
                    r,
                    "RPC arguments are decoded into owned values: use an owned type (`String`, not `&str`)",
                );
                continue;
            }
            if contains_impl_trait(&ty) {
                cx.error(
                    &ty,
                    "RPC arguments cannot be `impl Trait`: name a concrete type",
                );
                continue;
            }
            params.push(RpcParam {
                optional: option_inner(&ty).is_some(),
                ident,
                ty,
            });
        }
        let output = match &sig.output {
            ReturnType::Default => RpcOutput::Unit,
            ReturnType::Type(_, ty) if contains_impl_trait(ty) => {
                cx.error(
                    ty,
                    "RPC methods cannot return `impl Trait`: name a concrete type",
                );
                RpcOutput::Unit
            }
            ReturnType::Type(_, ty) => match generic_args_of(ty, "Result").as_deref() {
                Some(&[GenericArgument::Type(ok), GenericArgument::Type(_)]) => {
                    RpcOutput::Result { ok: ok.clone() }
                }
                Some(_) => {
                    cx.error(
                        ty,
                        "write the result type as `Result<T, E>` so the error type is known",
                    );
                    RpcOutput::Unit
                }
                None => RpcOutput::Value((**ty).clone()),
            },
        };
        let docs = f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect();
        Some(RpcMethod {
            ident: sig.ident.clone(),
            wire_name,
            wire_name_span,
            is_async: sig.asyncness.is_some(),
            params,
            output,
            docs,
        })
    }

    /// `Entrypoint::rpc("name", |this, body| ...)`: binds the arguments, calls the method,
    /// encodes its outcome.
    pub(crate) fn entrypoint(&self, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let ident = &self.ident;
        let wire = LitStr::new(&self.wire_name, self.wire_name_span);
        let param_descs = self.params.iter().map(|param| {
            let name = param.ident.to_string();
            let optional = param.optional;
            quote!(#p::Param { name: #name, optional: #optional })
        });
        let names: Vec<&Ident> = self.params.iter().map(|param| &param.ident).collect();
        let mutability = (!names.is_empty()).then(|| quote!(mut));
        let takes = self.params.iter().enumerate().map(|(i, param)| {
            let (name, ty) = (&param.ident, &param.ty);
            quote_spanned!(ty.span()=> let #name = args.take::<#ty>(#i)?;)
        });
        let call = if self.is_async {
            quote!(this.#ident(#(#names),*).await)
        } else {
            quote!(#p::run_blocking(move || this.#ident(#(#names),*)).await?)
        };
        let encode_value = |value: TokenStream| match &self.output {
            RpcOutput::Unit => quote!(#p::encode_result::<()>(&#value)),
            RpcOutput::Value(ty) | RpcOutput::Result { ok: ty } => {
                quote_spanned!(ty.span()=> #p::encode_result::<#ty>(&#value))
            }
        };
        let encode = match &self.output {
            RpcOutput::Unit | RpcOutput::Value(_) => encode_value(call),
            RpcOutput::Result { .. } => {
                let ok = encode_value(quote!(value));
                quote! {
                match #call {
                    ::std::result::Result::Ok(value) => #ok,
                    ::std::result::Result::Err(error) => {
                        use #p::{ViaDisplay as _, ViaToRemoteError as _};
                        #[allow(clippy::needless_borrow)] // The borrow selects the conversion.
                        let error = (&#p::Wrap(&error)).__to_remote_error();
                        ::std::result::Result::Err(error)
                    }
                }
                }
            }
        };
        quote! {
            #p::Entrypoint::rpc(#wire, |this, body| {
                ::std::boxed::Box::pin(async move {
                    const PARAMS: &[#p::Param] = &[#(#param_descs),*];
                    let #mutability args = #p::BoundArgs::bind(#wire, PARAMS, body)?;
                    #(#takes)*
                    #encode
                })
            })
        }
    }

    /// The typed client's method for this RPC method.
    pub(crate) fn client_method(&self, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let ident = &self.ident;
        let wire = &self.wire_name;
        let docs = &self.docs;
        let params = self.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            quote!(#name: #ty)
        });
        let count = self.params.len();
        let args = self.params.iter().map(|param| {
            let (name, ty) = (&param.ident, &param.ty);
            quote_spanned!(ty.span()=> #p::encode_argument::<#ty>(&#name)?)
        });
        let (ok, call) = match &self.output {
            RpcOutput::Unit => (
                quote!(()),
                quote!(#p::call::<()>(&self.proxy, #wire, &args).await),
            ),
            RpcOutput::Value(ty) | RpcOutput::Result { ok: ty } => (
                quote!(#ty),
                quote_spanned!(ty.span()=> #p::call::<#ty>(&self.proxy, #wire, &args).await),
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

/// `#[rpc]` that was not removed by an enclosing `#[service]`: always a mistake.
pub(crate) fn expand_outside_service(_args: TokenStream, input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "`#[rpc]` can only be used on a method inside an `impl` block annotated with `#[service(name = \"...\")]`",
    );
    with_item(error, input)
}
