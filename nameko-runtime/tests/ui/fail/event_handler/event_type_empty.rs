// An event handler for an empty event type: one error, at the event type.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[event_handler("source", "")]
    async fn handle(&self, payload: String) {
        let _ = payload;
    }
}

fn main() {}
