//! The talk's RPC example: `greeter_service` and `expanded_greeter_service`, which calls it.
//!
//! ```text
//! cargo run --example greeter -- run                                    # embedded broker
//! cargo run --example greeter -- run --broker amqp://guest:guest@localhost
//! cargo run --example client -- --broker amqp://guest:guest@localhost   # in another shell
//! ```

use nameko::prelude::*;

/// Says hello.
#[derive(Dependencies)]
pub struct GreeterService;

#[service(name = "greeter_service")]
impl GreeterService {
    /// Greets `name`.
    #[rpc]
    async fn greet(&self, name: String) -> String {
        format!("Hello {name}!")
    }
}

/// Says hello through `greeter_service`, and adds a welcome.
#[derive(Dependencies)]
pub struct ExpandedGreeterService {
    greeter_service: GreeterServiceClient,
}

#[service(name = "expanded_greeter_service")]
impl ExpandedGreeterService {
    /// Greets `name` and welcomes them.
    #[rpc]
    async fn greet(&self, name: String) -> Result<String, RpcError> {
        let greeting = self.greeter_service.greet(name).await?;
        Ok(format!("{greeting} Welcome to Pygotham!"))
    }
}

#[allow(dead_code)] // The demo includes this file as a module and has its own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
