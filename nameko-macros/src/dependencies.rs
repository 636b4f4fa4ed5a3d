//! `#[derive(Dependencies)]`: builds a service struct field by field.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

use crate::ctxt::Ctxt;

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut cx = Ctxt::default();
    if !input.generics.params.is_empty() {
        cx.error(&input.generics, "service structs cannot be generic");
    }
    let krate = quote!(::nameko);
    let p = quote!(#krate::__private);
    let ident = &input.ident;
    let mut uses_cx = true;
    let body = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Unit => {
                uses_cx = false;
                quote!(Self)
            }
            Fields::Named(fields) => {
                let inits = fields.named.iter().map(|field| {
                    let name = field.ident.as_ref().expect("named field");
                    let ty = &field.ty;
                    let label = name.to_string();
                    let build =
                        quote_spanned!(ty.span()=> #p::build_dependency::<#ty>(cx, #label).await?);
                    quote!(#name: #build)
                });
                quote!(Self { #(#inits),* })
            }
            Fields::Unnamed(fields) => {
                cx.error(
                    fields,
                    "name the fields of a service struct: each is a named dependency",
                );
                quote!(unreachable!())
            }
        },
        Data::Enum(e) => {
            cx.error(e.enum_token, "`Dependencies` is derived for structs only");
            quote!(unreachable!())
        }
        Data::Union(u) => {
            cx.error(u.union_token, "`Dependencies` is derived for structs only");
            quote!(unreachable!())
        }
    };
    if let Err(e) = cx.check() {
        return e.to_compile_error();
    }
    let cx = if uses_cx { quote!(cx) } else { quote!(_cx) };
    quote! {
        impl #p::Dependencies for #ident {
            async fn build(
                #cx: &#p::DependencyContext,
            ) -> ::std::result::Result<Self, #p::Error> {
                ::std::result::Result::Ok(#body)
            }
        }
    }
}
