//! JSON as Python's `json.dumps` writes it with its defaults, which is what Nameko's websocket
//! frames are: `", "` and `": "` between items, and every character beyond ASCII escaped as
//! `\uXXXX` (a surrogate pair beyond the first plane).

/// Rewrites compact JSON (as serde_json writes it) the way Python would have written the same
/// value, keeping the order of object keys.
pub(super) fn python_style(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 8);
    let mut in_string = false;
    let mut escaped = false;
    for c in compact.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
            } else if c == '\\' {
                escaped = true;
                out.push(c);
            } else if c == '"' {
                in_string = false;
                out.push(c);
            } else if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            ',' => out.push_str(", "),
            ':' => out.push_str(": "),
            // Compact JSON has none; a value given pretty is made compact.
            ' ' | '\n' | '\r' | '\t' => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_and_escapes_are_pythons() {
        assert_eq!(
            python_style(r#"{"a":[1,2,{"b:c":"x, y"}],"é":"ünï 🎉","q":"\"\\"}"#),
            r#"{"a": [1, 2, {"b:c": "x, y"}], "\u00e9": "\u00fcn\u00ef \ud83c\udf89", "q": "\"\\"}"#
        );
        assert_eq!(python_style("null"), "null");
        assert_eq!(python_style("{ \"a\" :\n 1 }"), r#"{"a": 1}"#);
    }
}
