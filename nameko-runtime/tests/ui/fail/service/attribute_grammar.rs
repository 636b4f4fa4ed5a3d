// The attribute grammar's mistakes: one error each, at the mistake.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    // A string where none is taken.
    #[rpc("extra")]
    async fn extra(&self) {}

    // A key that is not a name.
    #[rpc(a.b = "x")]
    async fn dotted_key(&self) {}

    // A key on an attribute that takes none but the options.
    #[timer(interval = 1, every = 2)]
    async fn unknown(&self) {}

    // A third positional argument.
    #[event_handler("source", "type", "third")]
    async fn third(&self, payload: String) {
        let _ = payload;
    }
}

fn main() {}
