use nameko::prelude::*;

pub struct Opaque;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[event_handler("source", "type")]
    async fn handle(&self, payload: Opaque) {
        let _ = payload;
    }
}

fn main() {}
