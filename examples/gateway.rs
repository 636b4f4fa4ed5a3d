//! The talk's web app backend: an HTTP gateway in front of the RPC services of
//! `examples/greeter.rs`, which it calls over RPC. Run the two together:
//!
//! ```text
//! cargo run --example greeter -- run --broker amqp://guest:guest@localhost
//! cargo run --example gateway -- run --broker amqp://guest:guest@localhost   # another shell
//! curl localhost:8000/greet/Tim        # {"greeting":"Hello Tim! Welcome to Pygotham!"}
//! curl localhost:8000/multiply/6/7     # {"value":42}
//! ```
//!
//! The gateway consumes nothing from the broker, and still comes back when the broker does:
//! `run` starts it again on a new connection, with a new RPC client.

use nameko::http::{HttpError, StatusCode};
use nameko::prelude::*;
use serde_json::{Value, json};

/// The HTTP front of the greeters.
#[derive(Dependencies)]
pub struct Gateway {
    rpc: ClusterRpcClient,
}

#[service(name = "gateway")]
impl Gateway {
    /// The expanded greeter's greeting for `name`, as JSON; 503 while the greeters are not
    /// reachable.
    #[http("GET", "/greet/<name>")]
    async fn greet(&self, name: String) -> Result<Json<Value>, HttpError> {
        let greeting: String = self
            .rpc
            .service("expanded_greeter_service")
            .call("greet", [name])
            .await
            .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        Ok(Json(json!({ "greeting": greeting })))
    }

    /// `first * second`, computed here.
    #[http("GET", "/multiply/<int:first>/<int:second>")]
    async fn multiply(&self, first: i64, second: i64) -> Json<Value> {
        Json(json!({ "value": first.saturating_mul(second) }))
    }
}

fn main() -> std::process::ExitCode {
    nameko::main()
}
