use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service]
impl Svc {
    #[rpc]
    async fn ping(&self) {}
}

fn main() {}
