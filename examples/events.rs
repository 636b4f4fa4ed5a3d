//! The talk's events example: `my_event_publisher_service` dispatches `my_event` from an RPC
//! method, and two services each handle it.
//!
//! ```text
//! cargo run --example events -- run                                     # embedded broker
//! cargo run --example events -- run --broker amqp://guest:guest@localhost
//! ```
//! then call `my_event_publisher_service.publish("hi")`, e.g. from Python nameko's shell: both
//! handler services log what they received.

use nameko::prelude::*;

/// Publishes `my_event`.
#[derive(Dependencies)]
pub struct MyEventPublisherService {
    dispatch: EventDispatcher,
}

#[service(name = "my_event_publisher_service")]
impl MyEventPublisherService {
    /// Dispatches `payload` as `my_event`.
    #[rpc]
    async fn publish(&self, payload: String) -> Result<(), DispatchError> {
        self.dispatch.dispatch("my_event", &payload).await
    }
}

/// Handles `my_event`.
#[derive(Dependencies)]
pub struct MyEventHandlerService1;

#[service(name = "my_event_handler_service_1")]
impl MyEventHandlerService1 {
    #[event_handler("my_event_publisher_service", "my_event")]
    async fn handle_event(&self, payload: String) {
        tracing::info!("my_event_handler_service_1 received: {payload}");
    }
}

/// Handles `my_event` too.
#[derive(Dependencies)]
pub struct MyEventHandlerService2;

#[service(name = "my_event_handler_service_2")]
impl MyEventHandlerService2 {
    #[event_handler("my_event_publisher_service", "my_event")]
    async fn handle_event(&self, payload: String) {
        tracing::info!("my_event_handler_service_2 received: {payload}");
    }
}

#[allow(dead_code)] // The demo includes this file as a module and has its own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
