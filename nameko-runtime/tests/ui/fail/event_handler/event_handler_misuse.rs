use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[event_handler("source")]
    async fn missing_type(&self, _payload: String) {}

    #[event_handler("source", "type", handler_type = "everyone")]
    async fn unknown_handler_type(&self, _payload: String) {}

    #[event_handler("source", "type", reliable_delivery = "yes")]
    async fn not_a_bool(&self, _payload: String) {}

    #[event_handler("source", "type")]
    async fn two_arguments(&self, _a: String, _b: String) {}

    #[event_handler("orders.v2", "type")]
    async fn source_not_a_wire_name(&self, _payload: String) {}

    #[event_handler("source", "type", retries = 3)]
    async fn unknown_key(&self, _payload: String) {}
}

fn main() {}
