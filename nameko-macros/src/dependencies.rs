//! `#[derive(Dependencies)]`: builds a service struct field by field, and runs the fields'
//! lifecycle hooks.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

use crate::ctxt::Ctxt;

const USAGE: &str = "`#[nameko(crate = \"path::to::nameko\")]`";

/// The path of the `nameko` crate: `::nameko`, or what `#[nameko(crate = "...")]` says (as
/// `#[service(crate = "...")]` does, for a crate that renames or re-exports it).
fn crate_path(attrs: &[syn::Attribute], cx: &mut Ctxt) -> syn::Path {
    let mut krate = syn::parse_quote!(::nameko);
    for attr in attrs.iter().filter(|a| a.path().is_ident("nameko")) {
        let tokens = crate::attr::attr_tokens(attr, USAGE, cx);
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

/// One field, as the implementation's code names it.
struct FieldUse<'a> {
    name: &'a syn::Ident,
    ty: &'a syn::Type,
    p: &'a TokenStream,
}

impl FieldUse<'_> {
    /// The field's name as logs and errors show it.
    fn label(&self) -> String {
        self.name.to_string()
    }

    /// `<Type as Dependency>::hook`.
    fn hook(&self, hook: &str) -> TokenStream {
        let p = self.p;
        crate::via_trait(self.ty, quote!(#p::Dependency), hook)
    }
}

/// The implementation: each field built by its `Dependency`, each lifecycle hook the fields'.
fn emit(def: &DependenciesDef) -> TokenStream {
    let (ident, krate, fields) = (&def.ident, &def.krate, &def.fields);
    let p = quote!(#krate::__private);
    // Each use of a field's type (`<Type as Dependency>::hook(...)`, and the `.await` of the
    // hook's future, which needs the same trait) is spanned at the type: a type that is not a
    // dependency gets one error there, shown once.
    let per_field = |emit: &dyn Fn(&FieldUse) -> TokenStream| -> Vec<TokenStream> {
        fields
            .iter()
            .map(|(name, ty)| {
                let field = FieldUse { name, ty, p: &p };
                crate::respan(emit(&field), crate::type_span(ty))
            })
            .collect()
    };
    let inits = per_field(&|f| {
        let (name, label) = (f.name, f.label());
        let build = f.hook("build");
        quote!(#name: #p::build_dependency(cx, #label, || #build(cx, #label)).await?)
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
        // Field i starts once fields 0..i have; if it fails, they are stopped again, last first.
        let start_calls = per_field(&|f| {
        let name = f.name;
            let start = f.hook("start");
            quote!(#start(&self.#name).await)
        });
        let stop_calls = per_field(&|f| {
        let name = f.name;
            let stop = f.hook("stop");
            quote!(#stop(&self.#name).await;)
        });
        let starts = start_calls.iter().enumerate().map(|(i, start)| {
            let undo = stop_calls[..i].iter().rev();
            quote! {
                if let ::std::result::Result::Err(error) = #start {
                    #(#undo)*
                    return ::std::result::Result::Err(error);
                }
            }
        });
        let stops = per_field(&|f| {
        let (name, label) = (f.name, f.label());
            let stop = f.hook("stop");
            quote!(#p::guard(#label, "stop", #stop(&self.#name)).await;)
        });
        let kills = per_field(&|f| {
        let (name, label) = (f.name, f.label());
            let kill = f.hook("kill");
            quote!(#p::guard_kill(#label, || #kill(&self.#name));)
        });
        let setups = per_field(&|f| {
        let (name, label) = (f.name, f.label());
            let setup = f.hook("worker_setup");
            quote!(#p::guard_result(#label, "worker_setup", #setup(&self.#name, worker)).await?;)
        });
        let results = per_field(&|f| {
        let (name, label) = (f.name, f.label());
            let result = f.hook("worker_result");
            quote! {
                let outcome = #p::guard_result(#label, "worker_result", #result(&self.#name, worker, result)).await;
                if refusal.is_ok() {
                    refusal = outcome;
                }
            }
        });
        let teardowns = per_field(&|f| {
        let (name, label) = (f.name, f.label());
            let teardown = f.hook("worker_teardown");
            quote!(#p::guard(#label, "worker_teardown", #teardown(&self.#name, worker)).await;)
        });
        quote! {
            async fn start(&self) -> ::std::result::Result<(), #p::Error> {
                #(#starts)*
                ::std::result::Result::Ok(())
            }

            async fn stop(&self) {
                #(#stops)*
            }

            fn kill(&self) {
                #(#kills)*
            }

            async fn worker_setup(
                &self,
                worker: &#p::WorkerContext,
            ) -> ::std::result::Result<(), #p::Error> {
                #(#setups)*
                ::std::result::Result::Ok(())
            }

            async fn worker_result(
                &self,
                worker: &#p::WorkerContext,
                result: &#p::WorkerResult<'_>,
            ) -> ::std::result::Result<(), #p::Error> {
                // Every dependency sees the result; the first refusal is the answer.
                let mut refusal = ::std::result::Result::Ok(());
                #(#results)*
                refusal
            }

            async fn worker_teardown(&self, worker: &#p::WorkerContext) {
                #(#teardowns)*
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
