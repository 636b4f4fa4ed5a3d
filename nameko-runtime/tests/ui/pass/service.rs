use nameko::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Order {
    sku: String,
    quantity: u32,
}

#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

#[derive(Dependencies)]
pub struct Shop {
    config: Config,
    rpc: ClusterRpcClient,
}

#[service(name = "shop")]
impl Shop {
    /// Async, with a struct argument and an optional one.
    #[rpc]
    async fn place(&self, order: Order, note: Option<String>) -> Result<u32, Refused> {
        let _ = (&self.config, &self.rpc, note);
        if order.quantity == 0 { Err(Refused) } else { Ok(order.quantity) }
    }

    /// Synchronous, no arguments, no result.
    #[rpc]
    fn ping(&self) {}

    /// The receiver written out in full.
    #[rpc]
    async fn version(self: &Self) -> u32 {
        1
    }

    /// Renamed on the wire.
    #[rpc(name = "list_orders")]
    async fn orders(&self, mut limit: u32) -> Vec<Order> {
        limit = limit.min(10);
        let _ = limit;
        Vec::new()
    }

    /// Not an entrypoint: a plain helper.
    fn helper(&self) -> u32 {
        1
    }
}

#[derive(Dependencies)]
pub struct Front {
    shop: ShopClient,
}

#[service(name = "front")]
impl Front {
    #[rpc]
    async fn buy(&self, sku: String) -> Result<u32, RpcError> {
        self.shop.place(Order { sku, quantity: 1 }, None).await
    }
}

fn main() {
    let names: Vec<_> = nameko::ServiceRegistration::all().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["front", "shop"]);
    let _ = Shop::helper;
}
