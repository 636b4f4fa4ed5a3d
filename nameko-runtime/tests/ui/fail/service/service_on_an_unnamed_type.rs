// `#[service]` on an `impl` block of a type that is not a named struct: one error, at the type.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl (Svc) {
    #[rpc]
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
