use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn greet(&mut self, name: String) -> String {
        name
    }
}

fn main() {}
