use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc {
    pool: std::net::TcpStream,
}

fn main() {}
