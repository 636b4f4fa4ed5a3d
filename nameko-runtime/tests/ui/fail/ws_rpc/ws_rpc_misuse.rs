// `#[ws_rpc]`'s mistakes: one error each, at the mistake.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[ws_rpc]
    fn no_socket_id(&self) -> u32 {
        1
    }

    #[ws_rpc(name = "other")]
    fn renamed(&self, socket_id: String) -> String {
        socket_id
    }
}

pub struct NotAService;

impl NotAService {
    #[ws_rpc]
    fn outside(&self, socket_id: String) -> String {
        socket_id
    }
}

fn main() {}
