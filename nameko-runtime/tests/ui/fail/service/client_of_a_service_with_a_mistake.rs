// A service with a mistake in one method: its other uses (the generated client and its other
// methods, the service itself) still type-check, so that mistake is the only error.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Calculator;

#[service(name = "calculator")]
impl Calculator {
    #[rpc]
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[rpc]
    async fn reset(&mut self) {}
}

async fn use_it(client: &ClusterRpcClient) -> Result<i64, RpcError> {
    let calculator = CalculatorClient::new(client);
    calculator.reset().await?;
    let runner = ServiceRunner::new(Config::default()).with_service::<Calculator>();
    let _ = runner;
    calculator.add(1, 2).await
}

fn main() {
    let _ = use_it;
}
