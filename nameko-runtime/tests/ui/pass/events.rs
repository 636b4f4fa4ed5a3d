use nameko::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}

#[derive(Dependencies)]
pub struct Orders {
    dispatch: EventDispatcher,
}

#[service(name = "orders")]
impl Orders {
    #[rpc]
    async fn place(&self, order_id: u64) -> Result<(), nameko::events::DispatchError> {
        self.dispatch.dispatch("order_placed", &serde_json::json!({ "order_id": order_id })).await
    }
}

macro_rules! listener {
    ($ty:ident, $name:literal, $handler_type:literal) => {
        #[derive(Dependencies)]
        pub struct $ty;

        #[service(name = $name)]
        impl $ty {
            /// An entrypoint may be an RPC method and an event handler at once.
            #[rpc]
            #[event_handler("orders", "order_placed", handler_type = $handler_type)]
            async fn on_order(&self, order: serde_json::Value) {
                let _ = order;
            }

            #[event_handler("orders", "order_placed", reliable_delivery = false, requeue_on_error = true)]
            fn blocking(&self, order: OrderPlaced) -> Result<(), String> {
                let _ = order.order_id;
                Ok(())
            }
        }
    };
}

listener!(Billing, "billing", "service_pool");
listener!(Audit, "audit", "singleton");

fn main() {
    let names: Vec<_> = nameko::ServiceRegistration::all().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["audit", "billing", "orders"]);
}
