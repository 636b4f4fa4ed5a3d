// A crate that reaches nameko under another name (here through a module that re-exports it)
// names that path for both macros.
mod framework {
    pub use ::nameko;
}

use nameko::prelude::*;

#[derive(Dependencies)]
#[nameko(crate = "framework::nameko")]
pub struct Greeter {
    config: Config,
}

#[service(name = "greeter", crate = "framework::nameko")]
impl Greeter {
    #[rpc]
    async fn hello(&self, name: String) -> String {
        let _ = &self.config;
        format!("hello {name}")
    }
}

fn main() {}
