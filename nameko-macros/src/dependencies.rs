//! `#[derive(Dependencies)]`: builds a service struct field by field, and runs the fields'
//! lifecycle hooks.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, Fields};

use crate::ctxt::Ctxt;

const USAGE: &str = "`#[nameko(crate = \"path::to::nameko\")]`";

/// The path of the `nameko` crate: `::nameko`, or what `#[nameko(crate = "...")]` says (as
/// `#[service(crate = "...")]` does, for a crate that renames or re-exports it).
fn crate_path(attrs: &[syn::Attribute], cx: &mut Ctxt) -> syn::Path {
    let mut krate = syn::parse_quote!(::nameko);
    for attr in attrs.iter().filter(|a| a.path().is_ident("nameko")) {
        let tokens = crate::method::attr_tokens(attr, USAGE, cx);
        let args = crate::attr::AttrArgs::parse(tokens, &[], &["crate"], USAGE, cx);
        if let Some(lit) = args.string("crate", cx) {
            match lit.parse() {
                Ok(path) => krate = path,
                Err(e) => cx.push(e),
            }
        }
    }
    krate
}

/// A struct deriving `Dependencies`, as read: its name, the crate's path, its fields.
struct DependenciesDef {
    ident: syn::Ident,
    krate: syn::Path,
    /// The named fields (none for a unit struct).
    fields: Vec<(syn::Ident, syn::Type)>,
    /// Whether it is a unit struct (`struct S;`).
    unit: bool,
    /// Whether a stand-in implementation can be emitted for it (not generic).
    plain: bool,
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut cx = Ctxt::default();
    let def = parse(&input, &mut cx);
    match cx.check() {
        Ok(()) => emit(&def),
        Err(errors) => fallback(&def, errors),
    }
}

/// Reads the struct, reporting every misuse.
fn parse(input: &DeriveInput, cx: &mut Ctxt) -> DependenciesDef {
    let plain = input.generics.params.is_empty();
    if !plain {
        cx.error(&input.generics, "service structs cannot be generic");
    }
    let krate = crate_path(&input.attrs, cx);
    let mut fields = Vec::new();
    let mut unit = false;
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Unit => unit = true,
            Fields::Named(named) => {
                fields = named
                    .named
                    .iter()
                    .filter_map(|f| Some((f.ident.clone()?, f.ty.clone())))
                    .collect();
            }
            Fields::Unnamed(unnamed) => cx.error(
                unnamed,
                "name the fields of a service struct: each is a named dependency",
            ),
        },
        Data::Enum(e) => cx.error(e.enum_token, "`Dependencies` is derived for structs only"),
        Data::Union(u) => cx.error(u.union_token, "`Dependencies` is derived for structs only"),
    }
    DependenciesDef {
        ident: input.ident.clone(),
        krate,
        fields,
        unit,
        plain,
    }
}

/// The errors, and a stand-in implementation (building panics; the crate does not compile)
/// so that a `#[service]` on the struct reports only its own mistakes.
fn fallback(def: &DependenciesDef, errors: syn::Error) -> TokenStream {
    let mut out = errors.to_compile_error();
    if def.plain {
        let (ident, krate) = (&def.ident, &def.krate);
        let p = quote!(#krate::__private);
        out.extend(quote! {
            impl #p::Dependencies for #ident {
                async fn build(
                    _cx: &#p::DependencyContext,
                ) -> ::std::result::Result<Self, #p::Error> {
                    ::std::unimplemented!()
                }
            }
        });
    }
    out
}

/// The implementation: each field built by its `Dependency`, each lifecycle hook the fields'.
fn emit(def: &DependenciesDef) -> TokenStream {
    let (ident, krate, fields) = (&def.ident, &def.krate, &def.fields);
    let p = quote!(#krate::__private);
    let inits = fields.iter().map(|(name, ty)| {
        let label = name.to_string();
        let build =
            quote_spanned!(crate::type_span(ty)=> #p::build_dependency::<#ty>(cx, #label).await?);
        quote!(#name: #build)
    });
    let body = if def.unit {
        quote!(Self)
    } else {
        quote!(Self { #(#inits),* })
    };
    let cx = if fields.is_empty() {
        quote!(_cx)
    } else {
        quote!(cx)
    };
    let lifecycle = (!fields.is_empty()).then(|| {
        let names: Vec<_> = fields.iter().map(|(name, _)| name).collect();
        // `<Type as Dependency>`, spanned at the field's type: a type that is not a dependency
        // gets its error there, once.
        let tys: Vec<_> = fields
            .iter()
            .map(|(_, ty)| quote_spanned!(crate::type_span(ty)=> <#ty as #p::Dependency>))
            .collect();
        let labels: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        // Field i starts once fields 0..i have; if it fails, they are stopped again, last first.
        let starts = (0..fields.len()).map(|i| {
            let (ty, name) = (&tys[i], names[i]);
            let undo = (0..i).rev().map(|j| {
                let (ty, name) = (&tys[j], names[j]);
                quote!(#ty::stop(&self.#name).await;)
            });
            quote! {
                if let ::std::result::Result::Err(error) = #ty::start(&self.#name).await {
                    #(#undo)*
                    return ::std::result::Result::Err(error);
                }
            }
        });
        quote! {
            async fn start(&self) -> ::std::result::Result<(), #p::Error> {
                #(#starts)*
                ::std::result::Result::Ok(())
            }

            async fn stop(&self) {
                #( #p::guard(#labels, "stop", #tys::stop(&self.#names)).await; )*
            }

            fn kill(&self) {
                #( #p::guard_kill(#labels, || #tys::kill(&self.#names)); )*
            }

            async fn worker_setup(
                &self,
                worker: &#p::WorkerContext,
            ) -> ::std::result::Result<(), #p::Error> {
                #( #p::guard_result(#labels, "worker_setup", #tys::worker_setup(&self.#names, worker)).await?; )*
                ::std::result::Result::Ok(())
            }

            async fn worker_result(
                &self,
                worker: &#p::WorkerContext,
                result: &#p::WorkerResult<'_>,
            ) -> ::std::result::Result<(), #p::Error> {
                // Every dependency sees the result; the first refusal is the answer.
                let mut refusal = ::std::result::Result::Ok(());
                #(
                    let outcome = #p::guard_result(#labels, "worker_result", #tys::worker_result(&self.#names, worker, result)).await;
                    if refusal.is_ok() {
                        refusal = outcome;
                    }
                )*
                refusal
            }

            async fn worker_teardown(&self, worker: &#p::WorkerContext) {
                #( #p::guard(#labels, "worker_teardown", #tys::worker_teardown(&self.#names, worker)).await; )*
            }
        }
    });
    quote! {
        impl #p::Dependencies for #ident {
            async fn build(
                #cx: &#p::DependencyContext,
            ) -> ::std::result::Result<Self, #p::Error> {
                ::std::result::Result::Ok(#body)
            }

            #lifecycle
        }
    }
}
