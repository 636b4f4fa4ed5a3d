use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(nmae = "svc")]
impl Svc {
    #[rpc(nam = "x")]
    async fn ping(&self) {}
}

fn main() {}
