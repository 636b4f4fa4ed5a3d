use nameko::prelude::*;

#[service(name = "svc")]
pub struct Svc;

fn main() {}
