use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[http("GET", "/items/<integer:id>")]
    async fn unknown_converter(&self, id: i64) -> String {
        id.to_string()
    }

    #[http("GET", "/items/<int:id>")]
    async fn missing_parameter(&self) -> String {
        String::new()
    }

    #[http("GET", "/items/<int:id>")]
    async fn wrong_type(&self, id: String) -> String {
        id
    }

    #[http("GET", "items/<id")]
    async fn malformed_route(&self, id: String) -> String {
        id
    }

    #[http("FETCH", "/fetch")]
    async fn unknown_method(&self) -> String {
        String::new()
    }

    #[http("GET", "/files/<path:p>/tail")]
    async fn path_not_last(&self, p: String) -> String {
        p
    }
}

fn main() {}
