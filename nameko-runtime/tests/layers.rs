//! The rules of ARCHITECTURE.md, checked on the source: each module of `src` imports only from
//! its own layer's folder or from the layers below; production code never imports `testing`;
//! only `transport::amqp` uses lapin; only `http::server` uses hyper.

#![allow(
    clippy::unwrap_used,
    reason = "a test: a file it cannot read is a failure"
)]

use std::path::{Path, PathBuf};

/// The layers, bottom first: a module belongs to the last entry that is a prefix of its path.
const LAYERS: &[(&str, u8)] = &[
    ("protocol", 0),
    ("transport", 1),
    ("error", 2),
    ("config", 2),
    ("context", 2),
    ("log", 2),
    ("metrics", 2),
    ("health", 2),
    ("trace", 2),
    ("rpc::args", 3),
    ("rpc::client", 3),
    ("http", 3),
    ("management", 3),
    ("discovery", 3),
    ("service", 4),
    ("rpc", 5),
    ("rpc::server", 5),
    ("events", 5),
    ("http::route", 5),
    ("timer", 5),
    ("websocket", 5),
    ("messaging", 6),
    ("runner", 6),
    ("testing", 7),
    ("cli", 7),
    ("shell", 7),
];

/// What `lib.rs` re-exports at the crate's root, by the module that defines it.
const ROOT: &[(&str, &str)] = &[
    ("Config", "config"),
    ("ContextData", "context"),
    ("WorkerContext", "context"),
    ("Error", "error"),
    ("RpcError", "error"),
    ("ToRemoteError", "error"),
    ("RemoteError", "protocol"),
    ("ClusterRpcClient", "rpc::client"),
    ("ServiceProxy", "rpc::client"),
    ("RunningServices", "runner"),
    ("ServiceRunner", "runner"),
    ("StopHandle", "runner"),
    ("ServiceRegistration", "runner"),
    ("Dependencies", "service"),
    ("Dependency", "service"),
    ("DependencyContext", "service"),
    ("Service", "service"),
    ("ServiceClient", "service"),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, layer)| *layer)
}

fn folder(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Every `.rs` file under `dir`, with its module path (`service/mod.rs` is `service`).
fn modules(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let inner = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}::{name}")
            };
            modules(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = match (prefix, name.as_str()) {
                (p, "mod") => p.to_owned(),
                ("", n) => n.to_owned(),
                (p, n) => format!("{p}::{n}"),
            };
            out.push((module, path));
        }
    }
}

/// The code of a file without its comments, string literals and unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let lines = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
        // A quote as a character is not the start of a string.
        .replace("'\"'", "' '")
        .replace("'\\\"'", "' '");
    // Outside string literals only (a log filter may name `lapin::...`).
    let mut code = String::with_capacity(lines.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in lines.chars() {
        match (in_string, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, _, _) => escaped = false,
            (false, _, '"') => in_string = true,
            (false, _, c) => code.push(c),
        }
    }
    code
}

/// The modules of this crate a piece of code names with `crate::...`.
fn imports(code: &str, known: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let first = path.split("::").next().unwrap_or_default();
        if first.starts_with(char::is_uppercase) {
            if let Some((_, module)) = ROOT.iter().find(|(name, _)| *name == first) {
                found.push((*module).to_owned());
            }
            continue;
        }
        // The longest module the path starts with.
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if let Some(module) = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|candidate| known.contains(candidate))
        {
            found.push(module);
        }
    }
    found
}

#[test]
fn modules_import_only_downwards_and_the_rules_of_architecture_md_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    modules(&src, "", &mut all);
    let known: Vec<String> = all.iter().map(|(m, _)| m.clone()).collect();
    let mut broken = Vec::new();
    for (module, path) in &all {
        if ["lib", "__private"].contains(&module.as_str()) || module.starts_with("bin") {
            continue;
        }
        let Some(own) = layer(module) else {
            broken.push(format!("{module}: in no layer of ARCHITECTURE.md"));
            continue;
        };
        let code = code(path);
        for import in imports(&code, &known) {
            if folder(&import) == folder(module) {
                continue;
            }
            let theirs = layer(&import).unwrap_or(u8::MAX);
            if theirs > own {
                broken.push(format!(
                    "{module} (layer {own}) imports {import} (layer {theirs})"
                ));
            }
            if import.starts_with("testing") {
                broken.push(format!("{module} imports {import}: production code"));
            }
        }
        if code.contains("lapin::") && !module.starts_with("transport::amqp") {
            broken.push(format!("{module} uses lapin"));
        }
        if code.contains("hyper::") && module != "http::server" {
            broken.push(format!("{module} uses hyper"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
