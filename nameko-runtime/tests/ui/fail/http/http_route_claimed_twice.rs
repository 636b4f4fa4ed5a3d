// Two methods of one service claiming one route and HTTP method: one error, at the second.
use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[http("GET,POST", "/items/<int:id>")]
    async fn item(&self, id: i64) -> String {
        id.to_string()
    }

    // Another parameter name, the same paths: still the same route.
    #[http("POST", "/items/<int:number>")]
    async fn create(&self, number: i64) -> String {
        number.to_string()
    }

    // Another converter: another route.
    #[http("GET", "/items/<name>")]
    async fn by_name(&self, name: String) -> String {
        name
    }
}

fn main() {}
