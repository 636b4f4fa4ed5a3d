// Method signatures an entrypoint cannot have: one error each, at the mistake.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc]
    async fn bounded(&self) -> u32
    where
        Self: Sized,
    {
        1
    }

    #[rpc]
    const fn constant(&self) -> u32 {
        1
    }

    #[rpc]
    unsafe fn dangerous(&self) -> u32 {
        1
    }

    #[rpc]
    unsafe extern "C" fn variadic(&self, first: u32, _: ...) -> u32 {
        first
    }

    #[rpc]
    async fn takes_impl(&self, value: impl serde::Serialize) {
        let _ = value;
    }

    #[rpc]
    async fn returns_impl(&self) -> impl serde::Serialize {
        1
    }

    #[rpc]
    async fn io_result(&self) -> std::io::Result<u32> {
        Ok(1)
    }

    #[rpc]
    async fn boxed_receiver(self: Box<Self>) -> u32 {
        1
    }
}

fn main() {}
