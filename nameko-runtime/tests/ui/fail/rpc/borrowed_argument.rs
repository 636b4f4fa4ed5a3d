use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn greet(&self, name: &str) -> String {
        name.to_owned()
    }
}

fn main() {}
