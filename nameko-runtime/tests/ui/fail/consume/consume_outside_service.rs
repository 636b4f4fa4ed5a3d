use nameko::prelude::*;

pub struct NotAService;

impl NotAService {
    #[consume(queue = nameko::messaging::Queue::new("orders"))]
    async fn take(&self, _body: String) {}
}

fn main() {}
