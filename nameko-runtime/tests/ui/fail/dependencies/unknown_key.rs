use nameko::prelude::*;

#[derive(Dependencies)]
#[nameko(krate = "nameko")]
pub struct Misspelt;

fn main() {}
