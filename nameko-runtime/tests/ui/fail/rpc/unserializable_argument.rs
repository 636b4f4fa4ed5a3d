use nameko::prelude::*;

pub struct Opaque;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn take(&self, value: Opaque) -> u32 {
        let _ = value;
        1
    }
}

fn main() {}
