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

    #[http("GET", "/things/<int:id>")]
    async fn wrong_type(&self, id: String) -> String {
        id
    }

    #[http("GET", "items/<id")]
    async fn malformed_route(&self, id: String) -> String {
        id
    }

    #[http("GET", "/items/<id")]
    async fn unclosed_parameter(&self, id: String) -> String {
        id
    }

    #[http("GET", "/items/<int:1st>")]
    async fn invalid_parameter_name(&self) -> String {
        String::new()
    }

    #[http("GET", "/items/id-<id>")]
    async fn parameter_inside_a_segment(&self, id: String) -> String {
        id
    }

    #[http("GET", "/prices/<float:price>")]
    async fn float_as_an_integer(&self, price: i64) -> String {
        price.to_string()
    }

    #[http("GET", "/files/<path:rest>")]
    async fn path_as_an_integer(&self, rest: u32) -> String {
        rest.to_string()
    }

    #[http("GET", "/orders/<uuid:id>")]
    async fn uuid_as_an_integer(&self, id: u64) -> String {
        id.to_string()
    }

    #[http("FETCH", "/fetch")]
    async fn unknown_method(&self) -> String {
        String::new()
    }

    #[http("GET", "/files/<path:p>/tail")]
    async fn path_not_last(&self, p: String) -> String {
        p
    }

    #[http("GET", "/items/<int:a>/<int:a>")]
    async fn repeated_parameter(&self, a: i64) -> String {
        a.to_string()
    }

    #[http("GET", "/many/<a>/<b>/<c>/<d>/<e>/<f>/<g>/<h>/<i>/<j>/<k>/<l>/<m>/<n>/<o>/<p>/<q>")]
    #[allow(clippy::too_many_arguments)]
    async fn too_many_parameters(
        &self,
        a: String, b: String, c: String, d: String, e: String, f: String, g: String, h: String,
        i: String, j: String, k: String, l: String, m: String, n: String, o: String, p: String,
        q: String,
    ) -> String {
        let _ = (b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q);
        a
    }
}

fn main() {}
