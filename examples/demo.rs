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
#[path = "multiply.rs"]
mod multiply;
#[path = "ping.rs"]
mod ping;

use clap::Parser;
use events::{MyEventHandlerService1, MyEventHandlerService2, MyEventPublisherService};
use greeter::{ExpandedGreeterService, ExpandedGreeterServiceClient, GreeterService};
use multiply::HttpService;
use nameko::prelude::*;
use ping::PingService;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs the talk's services and calls them.
#[derive(Parser)]
struct Args {
    /// The broker: the embedded one by default.
    #[arg(long, env = "AMQP_URI", default_value = "memory://")]
    broker: String,
    /// Where the HTTP server listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    web_server_address: String,
}

/// `GET path` on the demo's own HTTP server, printed as curl would show it.
async fn http_get(address: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok(format!("{status} {body}").trim_end().to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    nameko::cli::init_logging();
    let args = Args::parse();
    let config = Config::default()
        .with_broker(&args.broker)
        .with_web_server_address(&args.web_server_address);
    let running = ServiceRunner::new(config)
        .with_service::<GreeterService>()
        .with_service::<ExpandedGreeterService>()
        .with_service::<MyEventPublisherService>()
        .with_service::<MyEventHandlerService1>()
        .with_service::<MyEventHandlerService2>()
        .with_service::<HttpService>()
        .with_service::<PingService>()
        .start()
        .await?;
    println!(
        "== Services running on {}: {:?}",
        running.transport().describe(),
        running.service_names()
    );

    let client = ClusterRpcClient::standalone(running.transport(), running.config()).await?;

    let address = running
        .http_address()
        .expect("the multiply service serves HTTP");
    println!("\n== Example 1: HTTP (curl http://{address}/multiply/6/7?third=2)");
    for path in ["/multiply/6/7?third=2", "/multiply/6/x", "/multiply/6/7"] {
        println!("GET {path:<24} -> {}", http_get(address, path).await?);
    }

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

    println!("\n== Example 4: timer (ping_service prints a word every second)");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

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
