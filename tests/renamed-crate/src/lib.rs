//! A service written against nameko renamed to `microservices` in `Cargo.toml`: both macros
//! are told the path with `crate = "..."`, and nothing in their expansion names `nameko`.

use microservices::{Config, Dependencies, service};

/// Greets, with the greeting from its config.
#[derive(Dependencies)]
#[nameko(crate = "::microservices")]
pub struct Greeter {
    config: Config,
}

#[service(name = "renamed_greeter", crate = "::microservices")]
impl Greeter {
    /// Greets `name`.
    #[rpc]
    async fn hello(&self, name: String) -> String {
        let greeting = self
            .config
            .get::<String>("GREETING")
            .and_then(Result::ok)
            .unwrap_or_else(|| "Hello".to_owned());
        format!("{greeting}, {name}!")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microservices::testing::TestServices;

    #[tokio::test]
    async fn the_service_answers_through_its_generated_client() {
        let services = TestServices::new()
            .with_service::<Greeter>()
            .start()
            .await
            .unwrap();
        let client = GreeterClient::new(&services.rpc_client().await.unwrap());
        assert_eq!(client.hello("Ann".into()).await.unwrap(), "Hello, Ann!");
        services.stop().await.unwrap();
    }
}
