//! `#[http("GET", "/multiply/<int:first>/<int:second>")]`: an HTTP route of a method.
//!
//! The route is parsed and checked here, against the method's signature: each route parameter
//! must be a parameter of the method with a type its converter can produce. Other parameters
//! are axum extractors (such as `nameko::http::Request`, `Json<T>`), the last one may read the
//! body.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Attribute, LitStr, Type};

use crate::attr::{EntrypointOptions, Grammar};
use crate::ctxt::Ctxt;
use crate::method::{Method, Output};

const GRAMMAR: Grammar = Grammar {
    positional: &["the HTTP method", "the route"],
    keys: &[],
    usage: "`#[http(\"GET\", \"/path/<int:id>\")]`, optionally with \
        `expected_exceptions = \"ErrorType,...\"`, `sensitive_arguments = \"route_param,...\"`",
};
/// The most parameters a route may have (the runtime's too: [`constants`]).
const MAX_ROUTE_PARAMS: usize = 16;
/// The HTTP methods a route may name (the runtime's too: [`constants`]).
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The runtime's definitions of [`MAX_ROUTE_PARAMS`] and [`METHODS`]
/// (`nameko_macros::__http_constants!()`), so that both are written once.
pub(crate) fn constants() -> TokenStream {
    let (max, methods) = (MAX_ROUTE_PARAMS, METHODS);
    quote! {
        /// The most parameters a route may have.
        pub const MAX_ROUTE_PARAMS: usize = #max;
        /// The HTTP methods a route may name.
        pub const METHODS: &[&str] = &[#(#methods),*];
    }
}
const INTEGERS: &[&str] = &[
    "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
];

#[derive(Debug, Clone, PartialEq)]
enum Converter {
    String,
    Int,
    Float,
    Path,
    Uuid,
    Any(Vec<String>),
}

#[derive(Debug)]
enum Segment {
    Static(String),
    Param { converter: Converter, name: String },
}

impl Segment {
    /// Whether two segments match the same paths (parameter names aside).
    fn same_as(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Static(a), Segment::Static(b)) => a == b,
            (Segment::Param { converter: a, .. }, Segment::Param { converter: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// One `#[http]` attribute on a method.
pub(crate) struct Http {
    methods: Vec<String>,
    route: LitStr,
    segments: Vec<Segment>,
    options: EntrypointOptions,
}

fn parse_converter(spec: &str) -> Option<Converter> {
    Some(match spec {
        "" | "string" | "default" => Converter::String,
        "int" => Converter::Int,
        "float" => Converter::Float,
        "path" => Converter::Path,
        "uuid" => Converter::Uuid,
        any if any.starts_with("any(") && any.ends_with(')') => {
            let words: Vec<String> = any[4..any.len() - 1]
                .split(',')
                .map(|w| w.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
                .collect();
            if words.iter().any(|w| w.is_empty()) {
                return None;
            }
            Converter::Any(words)
        }
        _ => return None,
    })
}

/// Parses a werkzeug route into segments, or says what is wrong with it.
fn parse_route(route: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = route.strip_prefix('/') else {
        return Err("a route starts with `/`".into());
    };
    let mut segments = Vec::new();
    if rest.is_empty() {
        return Ok(segments);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if let Some(inner) = part.strip_prefix('<') {
            let Some(inner) = inner.strip_suffix('>') else {
                return Err(format!(
                    "malformed parameter `{part}`: a parameter is a whole segment, `<converter:name>`"
                ));
            };
            let (spec, name) = match inner.rsplit_once(':') {
                Some((spec, name)) => (spec, name),
                None => ("", inner),
            };
            let valid = !name.is_empty()
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "malformed parameter `{part}`: `{name}` is not a valid name"
                ));
            }
            let converter = parse_converter(spec).ok_or_else(|| {
                format!("unknown converter `{spec}`; expected int, float, string, path, uuid or any(a,b)")
            })?;
            if converter == Converter::Path && i + 1 != parts.len() {
                return Err("a `<path:...>` parameter must be the last segment".into());
            }
            if segments
                .iter()
                .any(|s| matches!(s, Segment::Param { name: n, .. } if n == name))
            {
                return Err(format!("the parameter `{name}` appears twice"));
            }
            segments.push(Segment::Param {
                converter,
                name: name.to_owned(),
            });
        } else if part.contains('<') || part.contains('>') {
            return Err(format!(
                "malformed segment `{part}`: a parameter is a whole segment, `<converter:name>`"
            ));
        } else {
            segments.push(Segment::Static((*part).to_owned()));
        }
    }
    Ok(segments)
}

fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            last.arguments.is_none().then(|| last.ident.to_string())
        }
        Type::Group(g) => type_name(&g.elem),
        _ => None,
    }
}

impl Converter {
    /// Whether a parameter of type `ty` can hold this converter's value.
    fn fits(&self, ty: &Type) -> bool {
        let Some(name) = type_name(ty) else {
            return false;
        };
        match self {
            Converter::Int => INTEGERS.contains(&name.as_str()),
            Converter::Float => name == "f32" || name == "f64",
            Converter::String | Converter::Any(_) => name == "String",
            Converter::Path => name == "String" || name == "PathBuf",
            Converter::Uuid => name == "Uuid" || name == "String",
        }
    }

    fn expected_types(&self) -> &'static str {
        match self {
            Converter::Int => "an integer type (`i64`, `u32`, ...)",
            Converter::Float => "`f64` or `f32`",
            Converter::String | Converter::Any(_) => "`String`",
            Converter::Path => "`String` or `PathBuf`",
            Converter::Uuid => "`uuid::Uuid` or `String`",
        }
    }
}

impl Http {
    /// Whether `other` claims a path and an HTTP method this route claims too.
    pub(crate) fn overlaps(&self, other: &Http) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.same_as(b))
            && self.methods.iter().any(|m| other.methods.contains(m))
    }

    /// The HTTP method and the route both `self` and `other` claim.
    pub(crate) fn clash(&self, other: &Http) -> (String, String) {
        let method = self
            .methods
            .iter()
            .find(|m| other.methods.contains(m))
            .cloned()
            .unwrap_or_default();
        (method, self.route.value())
    }

    /// Where errors about the route point.
    pub(crate) fn route_span(&self) -> proc_macro2::Span {
        self.route.span()
    }

    pub(crate) fn parse(method: &Method, attr: &Attribute, cx: &mut Ctxt) -> Option<Http> {
        let args = GRAMMAR.read(attr, cx);
        let [methods_lit, route] = <[LitStr; 2]>::try_from(args.positional.clone()).ok()?;
        let mut methods = Vec::new();
        for m in methods_lit.value().split(',') {
            let m = m.trim().to_ascii_uppercase();
            if METHODS.contains(&m.as_str()) {
                methods.push(m);
            } else {
                cx.error(
                    &methods_lit,
                    format!("unknown HTTP method `{m}`; expected {}", METHODS.join(", ")),
                );
            }
        }
        let segments = match parse_route(&route.value()) {
            Ok(segments) => segments,
            Err(message) => {
                cx.error(&route, message);
                return None;
            }
        };
        for segment in &segments {
            let Segment::Param { converter, name } = segment else {
                continue;
            };
            match method.params.iter().find(|p| p.name == *name) {
                None => cx.error(
                    &route,
                    format!("the route parameter `{name}` is not a parameter of `{}`: add `{name}: ...`", method.ident),
                ),
                Some(param) if !converter.fits(&param.ty) => cx.error(
                    &param.ty,
                    format!("the route parameter `{name}` needs {}", converter.expected_types()),
                ),
                Some(_) => {}
            }
        }
        // What a failed request logs: its route parameters.
        let params: Vec<String> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param { name, .. } => Some(name.clone()),
                Segment::Static(_) => None,
            })
            .collect();
        if params.len() > MAX_ROUTE_PARAMS {
            cx.error(
                &route,
                format!("a route has at most {MAX_ROUTE_PARAMS} parameters"),
            );
        }
        let options = args.options(&params, &method.ident, cx);
        Some(Http {
            methods,
            route,
            segments,
            options,
        })
    }

    /// `Entrypoint::Http(HttpEntrypoint { ... })`.
    pub(crate) fn entrypoint(&self, method: &Method, krate: &syn::Path) -> TokenStream {
        let p = quote!(#krate::__private);
        let name = method.name.clone();
        let (methods, route, expected) = (&self.methods, &self.route, &self.options.expected);
        let sensitive = &self.options.sensitive;
        let segments = self.segments.iter().map(|segment| match segment {
            Segment::Static(s) => quote!(#p::Segment::Static(#s)),
            Segment::Param { converter, .. } => {
                let converter = match converter {
                    Converter::String => quote!(String),
                    Converter::Int => quote!(Int),
                    Converter::Float => quote!(Float),
                    Converter::Path => quote!(Path),
                    Converter::Uuid => quote!(Uuid),
                    Converter::Any(words) => quote!(Any(&[#(#words),*])),
                };
                quote!(#p::Segment::Param(#p::Converter::#converter))
            }
        });
        let route_params: Vec<&str> = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param { name, .. } => Some(name.as_str()),
                Segment::Static(_) => None,
            })
            .collect();
        let from_path = method.params.iter().filter_map(|param| {
            let index = route_params.iter().position(|n| param.name == *n)?;
            let (ident, ty) = (&param.ident, &param.ty);
            Some(quote_spanned! {crate::type_span(ty)=>
                let #ident = match #p::path_param::<#ty>(&path, #index) {
                    ::std::result::Result::Ok(value) => value,
                    ::std::result::Result::Err(response) => return response,
                };
            })
        });
        let extractors: Vec<_> = method
            .params
            .iter()
            .filter(|param| !route_params.iter().any(|n| param.name == *n))
            .collect();
        let extract = extractors.iter().enumerate().map(|(i, param)| {
            let (ident, ty) = (&param.ident, &param.ty);
            if i + 1 == extractors.len() {
                quote_spanned! {crate::type_span(ty)=>
                    let #ident = match #p::extract_last::<#ty, _>(parts, body).await {
                        ::std::result::Result::Ok(value) => value,
                        ::std::result::Result::Err(response) => return response,
                    };
                }
            } else {
                quote_spanned! {crate::type_span(ty)=>
                    let #ident = match #p::extract_parts::<#ty>(&mut parts).await {
                        ::std::result::Result::Ok(value) => value,
                        ::std::result::Result::Err(response) => return response,
                    };
                }
            }
        });
        let mutability = (extractors.len() > 1).then(|| quote!(mut));
        let unused = extractors
            .is_empty()
            .then(|| quote!(let _ = (parts, body);));
        let ident = &method.ident;
        let names = method.params.iter().map(|param| &param.ident);
        let call = if method.is_async {
            quote!(this.#ident(#(#names),*).await)
        } else {
            quote! {
                match #p::run_blocking(move || this.#ident(#(#names),*)).await {
                    ::std::result::Result::Ok(value) => value,
                    ::std::result::Result::Err(panic) => return #p::panic_response(panic),
                }
            }
        };
        let respond = match &method.output {
            Output::Unit => quote!({ #call; #p::http_response(()) }),
            Output::Value(ty) => {
                quote_spanned!(crate::type_span(ty)=> #p::http_response::<#ty>(#call))
            }
            Output::Result { ok } => {
                let ok_response =
                    quote_spanned!(crate::type_span(ok)=> #p::http_response::<#ok>(value));
                quote! {
                    match #call {
                        ::std::result::Result::Ok(value) => #ok_response,
                        ::std::result::Result::Err(error) => {
                            use #p::{ViaDisplayHttp as _, ViaIntoResponse as _, ViaRemoteHttp as _};
                            (&&&#p::HttpErr::new(error)).__http_error(&[#(#expected),*])
                        }
                    }
                }
            }
        };
        quote! {
            #p::BoundEntrypoint::<Self>::new(
                #p::Http::new(&[#(#methods),*], #route, &[#(#segments),*]),
                #p::MethodInfo::new(
                    #name,
                    &[#(#route_params),*],
                    &[#(#expected),*],
                    &[#(#sensitive),*],
                ),
                // Taken apart in the closure's parameters: the `async` block captures the
                // parts, rather than the whole call and then copies of its parts.
                |this, #p::HttpCall { #mutability parts, body, path }| {
                    async move {
                        #(#from_path)*
                        #(#extract)*
                        #unused
                        #respond
                    }
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(segments: &[Segment]) -> Vec<String> {
        segments
            .iter()
            .map(|s| match s {
                Segment::Static(text) => text.clone(),
                Segment::Param { converter, name } => format!("<{converter:?}:{name}>"),
            })
            .collect()
    }

    #[test]
    fn routes_parse_into_segments() {
        let segments = parse_route("/multiply/<int:first>/<second>").unwrap();
        assert_eq!(
            names(&segments),
            ["multiply", "<Int:first>", "<String:second>"]
        );
        let segments = parse_route("/files/<path:rest>").unwrap();
        assert_eq!(names(&segments), ["files", "<Path:rest>"]);
        let segments = parse_route("/pick/<any(red, 'green'):colour>").unwrap();
        assert_eq!(
            names(&segments),
            ["pick", "<Any([\"red\", \"green\"]):colour>"]
        );
    }

    #[test]
    fn malformed_routes_say_why() {
        assert_eq!(parse_route("items").unwrap_err(), "a route starts with `/`");
        assert!(parse_route("/items/<id").is_err());
        assert!(
            parse_route("/items/<integer:id>")
                .unwrap_err()
                .contains("unknown converter")
        );
        assert!(
            parse_route("/<a>/<a>")
                .unwrap_err()
                .contains("appears twice")
        );
        assert!(
            parse_route("/<path:p>/tail")
                .unwrap_err()
                .contains("last segment")
        );
    }

    #[test]
    fn the_runtime_gets_the_same_constants() {
        let constants = constants().to_string();
        assert!(
            constants.contains("MAX_ROUTE_PARAMS : usize = 16usize"),
            "{constants}"
        );
        assert!(constants.contains("\"OPTIONS\""), "{constants}");
    }
}
