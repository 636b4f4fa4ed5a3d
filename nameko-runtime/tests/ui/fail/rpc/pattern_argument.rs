use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn add(&self, (a, b): (i64, i64)) -> i64 {
        a + b
    }
}

fn main() {}
