//! The expansions of the talk's services (`examples/greeter.rs`, `events.rs`, `multiply.rs`,
//! `ping.rs`), made by this crate's own expansion functions and formatted with `prettyplease`,
//! are checked in under `nameko-macros/snapshots/`: a change to the generated code is a diff to
//! review. `NAMEKO_BLESS=1 cargo test -p nameko-macros` writes them anew.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

/// The file's items, with `#[derive(Dependencies)]` and `#[service]` expanded (as `cargo
/// expand` shows them, without the expansions of the other macros); `fn main` left out.
fn expand_file(source: &str) -> String {
    let file = syn::parse_file(source).expect("an example parses");
    let mut items: Vec<TokenStream> = Vec::new();
    for item in file.items {
        match item {
            syn::Item::Struct(mut item) if derives_dependencies(&item) => {
                let expansion = crate::dependencies::expand(item.to_token_stream());
                strip_derive(&mut item);
                items.push(item.to_token_stream());
                items.push(expansion);
            }
            syn::Item::Impl(mut item) => {
                let service = item.attrs.iter().position(|a| a.path().is_ident("service"));
                match service {
                    Some(index) => {
                        let attr = item.attrs.remove(index);
                        let args = match attr.meta {
                            syn::Meta::List(list) => list.tokens,
                            _ => TokenStream::new(),
                        };
                        items.push(crate::service::expand(args, item.to_token_stream()));
                    }
                    None => items.push(item.to_token_stream()),
                }
            }
            syn::Item::Fn(item) if item.sig.ident == "main" => {}
            other => items.push(other.to_token_stream()),
        }
    }
    let expanded: syn::File = syn::parse2(quote!(#(#items)*)).expect("the expansion is valid Rust");
    prettyplease::unparse(&expanded)
}

fn derives_dependencies(item: &syn::ItemStruct) -> bool {
    item.attrs.iter().any(|a| {
        a.path().is_ident("derive") && a.to_token_stream().to_string().contains("Dependencies")
    })
}

/// Removes `Dependencies` from the struct's derives (and a derive left empty).
fn strip_derive(item: &mut syn::ItemStruct) {
    use syn::punctuated::Punctuated;
    item.attrs.retain_mut(|attr| {
        if !attr.path().is_ident("derive") {
            return true;
        }
        let Ok(paths) =
            attr.parse_args_with(Punctuated::<syn::Path, syn::Token![,]>::parse_terminated)
        else {
            return true;
        };
        let kept: Vec<_> = paths
            .into_iter()
            .filter(|p| p.segments.last().is_none_or(|s| s.ident != "Dependencies"))
            .collect();
        if kept.is_empty() {
            return false;
        }
        *attr = syn::parse_quote!(#[derive(#(#kept),*)]);
        true
    });
}

#[test]
fn the_talks_services_expand_as_their_snapshots() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var("NAMEKO_BLESS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for example in ["greeter", "events", "multiply", "ping"] {
        let source = std::fs::read_to_string(root.join(format!("../examples/{example}.rs")))
            .expect("read the example");
        let expanded = expand_file(&source);
        let snapshot = root.join(format!("snapshots/{example}.expanded.rs"));
        if bless {
            std::fs::write(&snapshot, &expanded).expect("write the snapshot");
            continue;
        }
        let kept = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if kept != expanded {
            stale.push(format!(
                "{}: the expansion of examples/{example}.rs changed; review it and run \
                 NAMEKO_BLESS=1 cargo test -p nameko-macros\n--- new expansion ---\n{expanded}",
                snapshot.display()
            ));
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}
