// `#[service]` on a generic `impl` block: one error, at its generics.
use nameko::prelude::*;

pub struct Svc<T>(std::marker::PhantomData<T>);

#[service(name = "svc")]
impl<T: Send + Sync + 'static> Svc<T> {
    #[rpc]
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
