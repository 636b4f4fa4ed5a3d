use nameko::prelude::*;

pub struct Opaque;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn give(&self) -> Opaque {
        Opaque
    }
}

fn main() {}
