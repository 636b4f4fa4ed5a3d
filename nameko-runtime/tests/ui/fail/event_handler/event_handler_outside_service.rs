use nameko::prelude::*;

pub struct NotAService;

impl NotAService {
    #[event_handler("source", "type")]
    async fn handle(&self, payload: String) {
        let _ = payload;
    }
}

fn main() {}
