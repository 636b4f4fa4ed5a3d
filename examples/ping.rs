//! The talk's timer example: `ping_service` prints one of SPAM, EGG, BACON or SPAMMY SPAM every
//! second.
//!
//! ```text
//! cargo run --example ping -- run
//! ```

use nameko::prelude::*;

/// Pings.
#[derive(Dependencies)]
pub struct PingService;

#[service(name = "ping_service")]
impl PingService {
    /// Prints a word, every second.
    #[timer(interval = 1)]
    async fn ping(&self) {
        const WORDS: [&str; 4] = ["SPAM", "EGG", "BACON", "SPAMMY SPAM"];
        let pick = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % WORDS.len();
        println!("{}", WORDS[pick]);
    }
}

#[allow(dead_code)] // The demo includes this file as a module and has its own `main`.
fn main() -> std::process::ExitCode {
    nameko::main()
}
