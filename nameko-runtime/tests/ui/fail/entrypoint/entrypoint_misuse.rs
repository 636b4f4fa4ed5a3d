// `#[entrypoint(...)]` written wrong: one error each, at the mistake.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Scheduled;

#[service(name = "scheduled")]
impl Scheduled {
    // No entrypoint at all.
    #[entrypoint]
    async fn none(&self) {}

    // A key where the entrypoint should be.
    #[entrypoint(expected_exceptions = "Late")]
    async fn key_first(&self) {}

    // `name` is `#[rpc]`'s: an entrypoint's method keeps its own name.
    #[entrypoint(nameko::timer::Once, name = "other")]
    async fn renamed(&self) {}

    // Sensitive arguments the method does not have.
    #[entrypoint(nameko::timer::Once, sensitive_arguments = "password")]
    async fn secretive(&self, token: String) {
        let _ = token;
    }

    // Arguments are decoded into owned values.
    #[entrypoint(nameko::timer::Once)]
    async fn borrowed(&self, name: &str) {
        let _ = name;
    }
}

fn main() {}
