use nameko::prelude::*;

pub struct Opaque;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[http("GET", "/opaque")]
    async fn opaque(&self) -> Opaque {
        Opaque
    }
}

fn main() {}
