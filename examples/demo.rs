//! The talk, in one process on the embedded broker: the services start, a client calls them
//! the way the talk does, and what goes wrong is shown too.
//!
//! ```text
//! cargo run --example demo                                          # embedded broker
//! cargo run --example demo -- --broker amqp://guest:guest@localhost # or on RabbitMQ
//! ```

#[path = "events.rs"]
mod events;
#[path = "greeter.rs"]
mod greeter;

use clap::Parser;
use events::{MyEventHandlerService1, MyEventHandlerService2, MyEventPublisherService};
use greeter::{ExpandedGreeterService, ExpandedGreeterServiceClient, GreeterService};
use nameko::prelude::*;
use serde_json::{Value, json};

/// Runs the talk's services and calls them.
#[derive(Parser)]
struct Args {
    /// The broker: the embedded one by default.
    #[arg(long, env = "AMQP_URI", default_value = "memory://")]
    broker: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    nameko::cli::init_logging();
    let args = Args::parse();
    let running = ServiceRunner::new(Config::default().with_broker(&args.broker))
        .with_service::<GreeterService>()
        .with_service::<ExpandedGreeterService>()
        .with_service::<MyEventPublisherService>()
        .with_service::<MyEventHandlerService1>()
        .with_service::<MyEventHandlerService2>()
        .start()
        .await?;
    println!(
        "== Services running on {}: {:?}",
        running.transport().describe(),
        running.service_names()
    );

    let client = ClusterRpcClient::standalone(running.transport(), running.config()).await?;

    println!("\n== Example 2: RPC (n.rpc.greeter_service.greet(\"Tim\"))");
    let greeting: String = client
        .service("greeter_service")
        .call("greet", ["Tim"])
        .await?;
    println!("{greeting}");

    println!(
        "\n== Service to service (n.rpc.expanded_greeter_service.greet(\"Tim the Enchanter\"))"
    );
    let expanded = ExpandedGreeterServiceClient::new(&client);
    println!("{}", expanded.greet("Tim the Enchanter".into()).await?);

    println!("\n== Keyword arguments (greet(name=\"Arthur\"))");
    let by_keyword: String = client
        .service("greeter_service")
        .call_with("greet", (), json!({"name": "Arthur"}))
        .await?;
    println!("{by_keyword}");

    println!("\n== Example 3: events (n.rpc.my_event_publisher_service.publish(\"hi\"))");
    client
        .service("my_event_publisher_service")
        .call::<_, ()>("publish", ["hi"])
        .await?;
    // Both handler services log what they received (on stderr), in a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    println!("\n== Mistakes get clear errors, and the services keep serving");
    let unknown_method = client
        .service("greeter_service")
        .call::<_, Value>("shout", ["Tim"])
        .await;
    println!(
        "greeter_service.shout(\"Tim\")      -> {}",
        unknown_method.unwrap_err()
    );
    let wrong_args = client
        .service("greeter_service")
        .call::<_, Value>("greet", json!([1, 2]))
        .await;
    println!(
        "greeter_service.greet(1, 2)        -> {}",
        wrong_args.unwrap_err()
    );
    let unknown_service = client
        .service("holy_grail")
        .call::<_, Value>("find", ["it"])
        .await;
    println!(
        "holy_grail.find(\"it\")              -> {}",
        unknown_service.unwrap_err()
    );
    let still_serving: String = client
        .service("greeter_service")
        .call("greet", ["Lancelot"])
        .await?;
    println!("greeter_service.greet(\"Lancelot\")  -> {still_serving}");

    drop((client, expanded));
    running.stop().await?;
    println!("\n== Stopped");
    Ok(())
}
