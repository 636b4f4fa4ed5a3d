//! The talk's first example: an HTTP endpoint.
//!
//! ```text
//! cargo run --example multiply -- run
//! curl 'localhost:8000/multiply/6/7?third=2'     # {"value":84}
//! ```

use nameko::prelude::*;
use serde_json::{Value, json};

/// Multiplies over HTTP.
#[derive(Dependencies)]
pub struct HttpService;

#[service(name = "multiply_service")]
impl HttpService {
    /// `first * second * third`, where `third` is an optional query argument (default 1).
    #[http("GET", "/multiply/<int:first>/<int:second>")]
    async fn get_method(&self, first: i64, second: i64, request: Request) -> Json<Value> {
        let third: i64 = request
            .args()
            .get("third")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        Json(json!({ "value": first * second * third }))
    }
}

#[allow(dead_code)] // The demo includes this file as a module and has its own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
