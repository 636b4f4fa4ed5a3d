use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn echo<T: serde::Serialize>(&self, value: T) -> T {
        value
    }
}

fn main() {}
