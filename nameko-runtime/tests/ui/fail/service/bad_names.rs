use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "my.service")]
impl Svc {
    #[rpc]
    async fn ping(&self) {}

    #[rpc(name = "ping")]
    async fn pong(&self) {}

    #[rpc(name = 42)]
    async fn other(&self) {}

    #[rpc(name = "")]
    async fn nameless(&self) {}
}

fn main() {}
