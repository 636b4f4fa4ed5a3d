use nameko::prelude::*;

pub struct NotAService;

impl NotAService {
    #[rpc]
    async fn greet(&self, name: String) -> String {
        name
    }
}

fn main() {}
