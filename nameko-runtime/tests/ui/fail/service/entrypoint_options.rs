use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[rpc(sensitive_arguments = "user.password,pasword")]
    async fn login(&self, user: String, password: String) -> bool {
        let _ = (user, password);
        true
    }

    #[event_handler("src", "evt", sensitive_arguments = "card")]
    async fn handle(&self, payment: String) {
        let _ = payment;
    }

    #[timer(interval = 1, sensitive_arguments = "x")]
    async fn tick(&self) {}

    #[http("GET", "/user/<int:id>", sensitive_arguments = "name")]
    async fn user(&self, id: u32) -> String {
        id.to_string()
    }

    #[once]
    async fn setup(&self, value: u32) {
        let _ = value;
    }

    #[dummy(name = "other")]
    async fn probe(&self) {}
}

fn main() {}
