//! The talk's opening example, whole: a web page (client-side code), its backend, and the
//! talk's services behind it. One process on the embedded broker by default:
//!
//! ```text
//! cargo run --example webapp                                           # then open http://localhost:8000/
//! cargo run --example webapp -- --broker amqp://guest:guest@localhost  # or on RabbitMQ
//! ```
//!
//! The page multiplies through the talk's HTTP `multiply_service`, greets through the expanded
//! greeter (over RPC), dispatches `my_event` through the talk's publisher, and places orders
//! through a queue (`Publisher` → `#[consume]`). Its live panel is fed by the websocket hub:
//! every `my_event` dispatched anywhere, every order taken, and the ping service's words as they
//! tick by.

#[path = "events.rs"]
mod events;
#[path = "greeter.rs"]
mod greeter;
#[path = "multiply.rs"]
mod multiply;
#[path = "ping.rs"]
mod ping;

use axum::http::header;
use clap::Parser;
use nameko::messaging::{Exchange, PublishError, Publisher, Queue};
use nameko::prelude::*;
use nameko::websocket::{HubError, WebSocketHub};
use serde::{Deserialize, Serialize};

/// The page: one file, no build step.
const INDEX: &str = include_str!("webapp/index.html");

/// The channel the page's live panel subscribes to.
const LIVE: &str = "live";

/// Where orders wait to be taken.
fn orders() -> Queue {
    Queue::new("webapp-orders")
        .exchange(Exchange::direct("webapp"))
        .routing_key("order")
}

/// An order placed on the page.
#[derive(Debug, Serialize, Deserialize)]
pub struct Order {
    item: String,
    quantity: u32,
}

/// What the page sends to greet.
#[derive(Deserialize)]
pub struct GreetForm {
    name: String,
}

/// What the page sends to dispatch `my_event`.
#[derive(Deserialize)]
pub struct EventForm {
    text: String,
}

/// The page's backend.
#[derive(Dependencies)]
pub struct WebappService {
    greeter: greeter::ExpandedGreeterServiceClient,
    events: events::MyEventPublisherServiceClient,
    publisher: Publisher,
    hub: WebSocketHub,
}

#[service(name = "webapp")]
impl WebappService {
    /// The page.
    #[http("GET", "/")]
    fn index(&self) -> ([(header::HeaderName, &'static str); 1], &'static str) {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
    }

    /// Greets, through the expanded greeter.
    #[http("POST", "/api/greet")]
    async fn greet(&self, form: Json<GreetForm>) -> Result<Json<String>, RpcError> {
        Ok(Json(self.greeter.greet(form.0.name).await?))
    }

    /// Dispatches `my_event`, through the talk's publisher.
    #[http("POST", "/api/events")]
    async fn dispatch(&self, form: Json<EventForm>) -> Result<Json<()>, RpcError> {
        Ok(Json(self.events.publish(form.0.text).await?))
    }

    /// Places an order: a message on the orders queue.
    #[http("POST", "/api/orders")]
    async fn order(&self, order: Json<Order>) -> Result<Json<()>, PublishError> {
        self.publisher.publish(&order.0).to_queue(&orders()).await?;
        Ok(Json(()))
    }

    /// Takes an order off the queue, and shows it live.
    #[consume(queue = orders())]
    fn take_order(&self, order: Order) -> Result<usize, HubError> {
        self.hub.broadcast(LIVE, "order", &order)
    }

    /// Every `my_event`, shown live.
    #[event_handler(
        "my_event_publisher_service",
        "my_event",
        handler_type = "broadcast",
        reliable_delivery = false
    )]
    fn on_my_event(&self, payload: String) -> Result<usize, HubError> {
        self.hub.broadcast(LIVE, "my_event", &payload)
    }

    /// The ping service's words, shown live.
    #[event_handler(
        "ping_service",
        "ping",
        handler_type = "broadcast",
        reliable_delivery = false
    )]
    fn on_ping(&self, word: String) -> Result<usize, HubError> {
        self.hub.broadcast(LIVE, "ping", &word)
    }

    /// Subscribes the page's socket to a channel.
    #[ws_rpc]
    fn subscribe(&self, socket_id: String, channel: String) -> Result<Vec<String>, HubError> {
        self.hub.subscribe(&socket_id, &channel)?;
        Ok(self.hub.get_subscriptions(&socket_id))
    }
}

/// Runs the webapp and the talk's services.
#[derive(Parser)]
struct Args {
    /// The broker: the embedded one by default.
    #[arg(long, env = "AMQP_URI", default_value = "memory://")]
    broker: String,
    /// Where the page is served.
    #[arg(long, env = "WEB_SERVER_ADDRESS", default_value = "127.0.0.1:8000")]
    web_server_address: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    nameko::cli::init_logging();
    let args = Args::parse();
    let config = Config::default()
        .with_broker(&args.broker)
        .with_web_server_address(&args.web_server_address);
    let running = ServiceRunner::new(config)
        .with_service::<WebappService>()
        .with_service::<greeter::GreeterService>()
        .with_service::<greeter::ExpandedGreeterService>()
        .with_service::<events::MyEventPublisherService>()
        .with_service::<events::MyEventHandlerService1>()
        .with_service::<events::MyEventHandlerService2>()
        .with_service::<multiply::HttpService>()
        .with_service::<ping::PingService>()
        .start()
        .await?;
    if let Some(address) = running.http_address() {
        println!(
            "The webapp is at http://localhost:{}/ (Ctrl-C stops it)",
            address.port()
        );
    }
    running.run_until_signal().await?;
    Ok(())
}
