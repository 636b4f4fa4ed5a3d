// `#[entrypoint(...)]` given a value that is not an entrypoint, or one whose methods do not take
// JSON arguments: the error points at the expression.
use nameko::events::EventBody;
use nameko::prelude::*;
use nameko::service::{Entrypoint, EntrypointContext, Started};

pub struct Schedule;

/// An entrypoint whose workers take an event body, not JSON arguments.
pub struct EventLike;

impl Entrypoint for EventLike {
    type Input = EventBody;
    type Output = Result<(), nameko::events::EventError>;

    async fn start(self, _cx: EntrypointContext<Self>) -> Result<Started, Error> {
        Ok(Started::idle())
    }
}

#[derive(Dependencies)]
pub struct Scheduled;

#[service(name = "scheduled")]
impl Scheduled {
    #[entrypoint(Schedule)]
    async fn not_an_entrypoint(&self) {}

    #[entrypoint(EventLike)]
    async fn takes_events(&self) {}
}

fn main() {}
