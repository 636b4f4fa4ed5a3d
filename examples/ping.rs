//! The talk's timer example: `ping_service` prints one of SPAM, EGG, BACON or SPAMMY SPAM every
//! second (and dispatches it as a `ping` event, which the webapp example shows live).
//!
//! ```text
//! cargo run --example ping -- run
//! ```

use nameko::prelude::*;

/// Pings.
#[derive(Dependencies)]
pub struct PingService {
    dispatch: EventDispatcher,
}

#[service(name = "ping_service")]
impl PingService {
    /// Prints a word, and dispatches it as a `ping` event, every second.
    #[timer(interval = 1)]
    async fn ping(&self) -> Result<(), DispatchError> {
        const WORDS: [&str; 4] = ["SPAM", "EGG", "BACON", "SPAMMY SPAM"];
        let pick = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % WORDS.len();
        println!("{}", WORDS[pick]);
        self.dispatch.dispatch("ping", WORDS[pick]).await
    }
}

#[allow(dead_code)] // The demo includes this file as a module and has its own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
