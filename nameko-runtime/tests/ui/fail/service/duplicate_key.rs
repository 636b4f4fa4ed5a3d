use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc", name = "other")]
impl Svc {
    #[rpc]
    #[rpc]
    async fn ping(&self) {}
}

fn main() {}
