//! The talk's cluster client: calls `expanded_greeter_service.greet("Tim the Enchanter")` from
//! outside any service (Nameko's `ClusterRpcProxy`) and prints the result.
//!
//! ```text
//! cargo run --example client -- --broker amqp://guest:guest@localhost
//! ```

use clap::Parser;
use nameko::ClusterRpcClient;

/// Calls expanded_greeter_service.greet and prints the greeting.
#[derive(Parser)]
struct Args {
    /// The broker the services run on.
    #[arg(long, env = "AMQP_URI", default_value = "amqp://guest:guest@localhost")]
    broker: String,
    /// Who to greet.
    #[arg(default_value = "Tim the Enchanter")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = ClusterRpcClient::connect(&args.broker).await?;
    let greeting: String = client
        .service("expanded_greeter_service")
        .call("greet", [&args.name])
        .await?;
    println!("{greeting}");
    Ok(())
}
