// `#[service]` on a trait implementation: one error, at the trait.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Default for Svc {
    fn default() -> Self {
        Svc
    }
}

fn main() {}
