use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

// The method that answers service discovery belongs to the runtime.
#[service(name = "svc")]
impl Svc {
    #[rpc(name = "__nameko_describe__")]
    async fn describe(&self) -> String {
        "mine".into()
    }
}

#[derive(Dependencies)]
pub struct Other;

#[service(name = "other")]
impl Other {
    #[rpc]
    async fn __nameko_describe__(&self) -> String {
        "mine too".into()
    }
}

fn main() {}
