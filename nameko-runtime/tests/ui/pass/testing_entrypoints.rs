use nameko::prelude::*;

#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc(expected_exceptions = "Refused", sensitive_arguments = "password,user.token")]
    async fn login(&self, user: serde_json::Value, password: String) -> Result<bool, Refused> {
        let _ = (user, password);
        Err(Refused)
    }

    #[event_handler("src", "evt", expected_exceptions = "Refused", sensitive_arguments = "payment.card")]
    async fn handle(&self, payment: serde_json::Value) {
        let _ = payment;
    }

    #[timer(interval = 1, expected_exceptions = "Refused")]
    async fn tick(&self) {}

    #[http("GET", "/user/<int:id>", sensitive_arguments = "id")]
    async fn user(&self, id: u32) -> String {
        id.to_string()
    }

    #[once(expected_exceptions = "Refused")]
    fn setup(&self) {}

    #[dummy(sensitive_arguments = "secret")]
    fn probe(&self, secret: String) -> usize {
        secret.len()
    }
}

fn main() {}
