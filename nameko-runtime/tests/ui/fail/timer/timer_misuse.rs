use nameko::prelude::*;

#[derive(Dependencies)]
pub struct Svc;

#[service(name = "svc")]
impl Svc {
    #[timer]
    async fn no_interval(&self) {}

    #[timer(interval = 0)]
    async fn zero(&self) {}

    #[timer(interval = "soon")]
    async fn not_a_duration(&self) {}

    #[timer(interval = 1, eager = 1)]
    async fn eager_not_a_bool(&self) {}

    #[timer(interval = 1)]
    async fn takes_an_argument(&self, _n: u32) {}

    // The word "interval" elsewhere in the attribute is not the key.
    #[timer(expected_exceptions = "interval_error")]
    async fn interval_only_in_a_value(&self) {}
}

fn main() {}
