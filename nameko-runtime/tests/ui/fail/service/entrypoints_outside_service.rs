// Each entrypoint attribute outside a `#[service]` block: one error each, at the attribute.
use nameko::prelude::*;

pub struct NotAService;

impl NotAService {
    #[http("GET", "/greet/<name>")]
    async fn greet(&self, name: String) -> String {
        name
    }

    #[timer(interval = 1)]
    async fn tick(&self) {}

    #[nameko::once]
    async fn at_start(&self) {}

    #[nameko::dummy]
    async fn by_hand(&self) {}

    #[entrypoint(nameko::timer::Once)]
    async fn of_my_own(&self) {}
}

fn main() {}
