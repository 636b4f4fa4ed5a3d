// `#[consume]`'s mistakes: one error each, at the mistake.
use nameko::messaging::Queue;
use nameko::prelude::*;

fn orders() -> Queue {
    Queue::new("orders")
}

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[consume]
    async fn no_queue(&self, _body: String) {}

    #[consume(queue = orders(), requeue_on_error = "yes")]
    async fn not_a_bool(&self, _body: String) {}

    #[consume(queue = orders())]
    async fn two_arguments(&self, _a: String, _b: String) {}

    #[consume(queue = orders(), retries = 3)]
    async fn unknown_key(&self, _body: String) {}

    #[consume(queu = orders())]
    async fn misspelt_queue(&self, _body: String) {}
}

fn main() {}
