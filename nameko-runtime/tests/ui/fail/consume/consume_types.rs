// A queue expression of another type, and a body type that is not JSON: each one error, at the
// user's code.
use nameko::prelude::*;

pub struct Opaque;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[consume(queue = "orders")]
    async fn queue_is_a_string(&self, _body: String) {}

    #[consume(queue = nameko::messaging::Queue::new("orders"))]
    async fn opaque_body(&self, body: Opaque) {
        let _ = body;
    }
}

fn main() {}
