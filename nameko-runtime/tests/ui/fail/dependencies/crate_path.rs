use nameko::prelude::*;

// The path is used: a crate that does not exist is an error at it.
#[derive(Dependencies)]
#[nameko(crate = "not_a_crate")]
pub struct Elsewhere;

fn main() {}
