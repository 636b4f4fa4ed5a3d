// `Dependencies` needs a struct of named fields, each a dependency: one error for each misuse.
use nameko::prelude::*;

#[derive(Dependencies)]
pub enum Choice {
    A,
    B,
}

#[derive(Dependencies)]
pub struct Tuple(Config);

#[derive(Dependencies)]
pub struct Generic<T> {
    config: T,
}

fn main() {}
