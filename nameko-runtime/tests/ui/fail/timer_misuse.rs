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
}

fn main() {}
