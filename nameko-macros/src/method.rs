//! What every entrypoint method has in common: its signature, read and checked once.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItemFn, Pat, PathArguments, ReturnType, Type,
};

use crate::ctxt::Ctxt;

/// A method of a service that carries at least one entrypoint attribute.
pub(crate) struct Method {
    pub(crate) ident: Ident,
    /// Its name, as callers and logs spell it (`r#match` is `match`).
    pub(crate) name: String,
    pub(crate) is_async: bool,
    pub(crate) params: Vec<Param>,
    pub(crate) output: Output,
    pub(crate) docs: Vec<Attribute>,
}

pub(crate) struct Param {
    pub(crate) ident: Ident,
    /// Its name, as callers spell it by keyword (`r#type` is `type`).
    pub(crate) name: String,
    pub(crate) ty: Type,
    pub(crate) optional: bool,
}

pub(crate) enum Output {
    /// No return type: `()`.
    Unit,
    /// A plain value.
    Value(Type),
    /// `Result<T, E>`: `T` is the result; `E` becomes the error reply.
    Result { ok: Type },
}

impl Method {
    /// The parameters and result as written, for people: `(name: String) -> String`.
    pub(crate) fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|param| format!("{}: {}", param.name, type_text(&param.ty)))
            .collect();
        let result = match &self.output {
            Output::Unit => "()".to_owned(),
            Output::Value(ty) | Output::Result { ok: ty } => type_text(ty),
        };
        format!("({}) -> {result}", params.join(", "))
    }
}

/// A type as it is usually written (`Vec<String>`, not `Vec < String >`).
fn type_text(ty: &syn::Type) -> String {
    let mut text = quote::ToTokens::to_token_stream(ty).to_string();
    for (spaced, tight) in [
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (" ::", "::"),
        (":: ", "::"),
        (" ,", ","),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        text = text.replace(spaced, tight);
    }
    text
}

/// Whether `attr`'s last path segment is `name` (`#[rpc]`, `#[nameko::rpc]`).
pub(crate) fn is_attr(attr: &Attribute, name: &str) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == name)
}

/// `&Self`.
fn is_ref_self(ty: &Type) -> bool {
    matches!(ty, Type::Reference(r) if r.mutability.is_none()
        && matches!(&*r.elem, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self")))
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

impl Method {
    /// Reads `f`'s signature, reporting every misuse; `what` names the entrypoint kind.
    pub(crate) fn parse(f: &ImplItemFn, what: &str, cx: &mut Ctxt) -> Method {
        let sig = &f.sig;
        if !sig.generics.params.is_empty() {
            cx.error(
                &sig.generics,
                format!("{what} methods cannot be generic: the arguments' types must be known to decode them"),
            );
        }
        if let Some(wc) = &sig.generics.where_clause {
            cx.error(wc, format!("{what} methods cannot have a where clause"));
        }
        if let Some(c) = &sig.constness {
            cx.error(c, format!("{what} methods cannot be `const`"));
        }
        // A variadic method is `unsafe` too: its one mistake is reported once.
        if let Some(v) = &sig.variadic {
            cx.error(v, format!("{what} methods cannot be variadic"));
        } else if let Some(u) = &sig.unsafety {
            cx.error(u, format!("{what} methods cannot be `unsafe`"));
        }
        match sig.inputs.first() {
            // `&self`, or `self: &Self`, which means the same.
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
            Some(FnArg::Receiver(r)) if r.colon_token.is_some() && is_ref_self(&r.ty) => {}
            Some(FnArg::Receiver(r)) => cx.error(
                r,
                format!("{what} methods take `&self`: one service instance serves many concurrent workers"),
            ),
            _ => cx.error(
                &sig.ident,
                format!("{what} methods take `&self` as their first parameter: add `&self`"),
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
                        format!("{what} arguments must be plain names (`name: Type`): callers pass them by keyword"),
                    );
                    continue;
                }
            };
            let ty = (*pat_type.ty).clone();
            if let Type::Reference(r) = &ty {
                cx.error(
                    r,
                    format!("{what} arguments are decoded into owned values: use an owned type (`String`, not `&str`)"),
                );
                continue;
            }
            if contains_impl_trait(&ty) {
                cx.error(
                    &ty,
                    format!("{what} arguments cannot be `impl Trait`: name a concrete type"),
                );
                continue;
            }
            params.push(Param {
                optional: option_inner(&ty).is_some(),
                name: ident.unraw().to_string(),
                ident,
                ty,
            });
        }
        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) if contains_impl_trait(ty) => {
                cx.error(
                    ty,
                    format!("{what} methods cannot return `impl Trait`: name a concrete type"),
                );
                Output::Unit
            }
            ReturnType::Type(_, ty) => match generic_args_of(ty, "Result").as_deref() {
                Some(&[GenericArgument::Type(ok), GenericArgument::Type(_)]) => {
                    Output::Result { ok: ok.clone() }
                }
                Some(_) => {
                    cx.error(
                        ty,
                        "write the result type as `Result<T, E>` so the error type is known",
                    );
                    Output::Unit
                }
                None => Output::Value((**ty).clone()),
            },
        };
        let docs = f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect();
        Method {
            ident: sig.ident.clone(),
            name: sig.ident.unraw().to_string(),
            is_async: sig.asyncness.is_some(),
            params,
            output,
            docs,
        }
    }

    /// The call of the user's method with the bound parameters, awaited (an `async` method) or
    /// run on the blocking pool (a synchronous one).
    pub(crate) fn call(&self, p: &TokenStream) -> TokenStream {
        let ident = &self.ident;
        let names = self.params.iter().map(|param| &param.ident);
        if self.is_async {
            quote!(this.#ident(#(#names),*).await)
        } else {
            quote!(#p::run_blocking(move || this.#ident(#(#names),*)).await?)
        }
    }

    /// Maps the method's outcome: a value through `encode(value)`, an error to a `RemoteError`.
    pub(crate) fn map_outcome(
        &self,
        p: &TokenStream,
        call: TokenStream,
        encode: impl Fn(Option<&Type>, TokenStream) -> TokenStream,
    ) -> TokenStream {
        match &self.output {
            Output::Unit => encode(None, call),
            Output::Value(ty) => encode(Some(ty), call),
            Output::Result { ok } => {
                let ok = encode(Some(ok), quote!(value));
                quote! {
                    match #call {
                        ::std::result::Result::Ok(value) => #ok,
                        ::std::result::Result::Err(error) => {
                            use #p::{ViaDisplay as _, ViaToRemoteError as _};
                            let error = (&#p::Wrap(&error)).__to_remote_error();
                            ::std::result::Result::Err(::std::convert::Into::into(error))
                        }
                    }
                }
            }
        }
    }
}
