//! Service discovery: which services are live on a broker, how many instances each has, and
//! what a nameko-rs service offers.
//!
//! The list comes from the broker, through RabbitMQ's management API, for Python and Rust
//! services alike: a service with RPC methods has its queue `rpc-<service>` bound to the RPC
//! exchange with `<service>.*`, and each running instance consumes it once; a service with only
//! event handlers has its `evt-<source>-<event>--<service>.<method>` queues. A nameko-rs service
//! also describes itself over RPC ([`DESCRIBE_METHOD`]): its RPC methods with their signatures,
//! every entrypoint, the events it dispatched so far. A Python service answers that call
//! `MethodNotFound` like any unknown method, so that asking costs it nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nameko::discovery::{Discovery, describe};
//!
//! let config = nameko::Config::default().with_broker("amqp://guest:guest@localhost");
//! for service in Discovery::new(&config, None)?.services().await? {
//!     println!("{} x{}", service.name, service.instances);
//! }
//! let client = nameko::ClusterRpcClient::connect_with(&config).await?;
//! if let Some(description) = describe(&client, "greeter_service").await? {
//!     for method in &description.rpc {
//!         println!("{}{}", method.name, method.signature.as_deref().unwrap_or("(...)"));
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::protocol::DESCRIBE_METHOD;

use crate::config::Config;
use crate::error::{Error, RpcError};
use crate::management::{ManagementApi, management_defaults, percent_encode};
use crate::rpc::client::ClusterRpcClient;

/// What a nameko-rs service says of itself (the answer to [`DESCRIBE_METHOD`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceDescription {
    /// The service's name.
    pub service: String,
    /// What runs it: `nameko-rs <version>`.
    pub framework: String,
    /// Its RPC methods.
    pub rpc: Vec<RpcMethod>,
    /// Every entrypoint, as the service binary's `list` shows it (`rpc greet(name: String) ->
    /// String`, `event handle <- source.type (service_pool)`, `http multiply GET /multiply/...`,
    /// `timer ping every 1s`).
    pub entrypoints: Vec<String>,
    /// The event types the answering instance dispatched since it started (what it dispatches
    /// is only known once it does).
    pub events_dispatched: Vec<String>,
}

/// An RPC method of a nameko-rs service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RpcMethod {
    /// Its name on the wire.
    pub name: String,
    /// Its parameters' names, in order (what keyword arguments may name).
    pub params: Vec<String>,
    /// Its parameters and result as written: `(name: String) -> String`.
    pub signature: Option<String>,
}

impl ServiceDescription {
    pub(crate) fn new(service: &str, rpc: Vec<RpcMethod>, entrypoints: Vec<String>) -> Self {
        ServiceDescription {
            service: service.to_owned(),
            framework: format!("nameko-rs {}", env!("CARGO_PKG_VERSION")),
            rpc,
            entrypoints,
            events_dispatched: crate::metrics::events_dispatched_by(service),
        }
    }
}

impl RpcMethod {
    pub(crate) fn new(name: &str, params: &[&str], signature: Option<&str>) -> Self {
        RpcMethod {
            name: name.to_owned(),
            params: params.iter().map(|p| (*p).to_owned()).collect(),
            signature: signature.map(str::to_owned),
        }
    }
}

/// A service live on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LiveService {
    /// Its name.
    pub name: String,
    /// How many instances run: the consumers of its RPC queue, or, for a service without RPC
    /// methods, of the busiest of its event handlers' queues.
    pub instances: usize,
    /// Whether it has RPC methods (an `rpc-<service>` queue bound to the RPC exchange).
    pub rpc: bool,
}

/// Finds the services live on one virtual host of a RabbitMQ broker, through its management
/// API.
#[derive(Debug, Clone)]
pub struct Discovery {
    api: ManagementApi,
    vhost: String,
    rpc_exchange: String,
}

impl Discovery {
    /// Discovery on the broker of `config` (its first address, its virtual host, its
    /// `rpc_exchange`), through the management API at `management_uri`
    /// (`http://user:password@host:15672`), by default the broker's host on port 15672 with the
    /// broker's credentials.
    pub fn new(config: &Config, management_uri: Option<&str>) -> Result<Discovery, Error> {
        if config.is_embedded() {
            return Err(Error::ManagementApi(
                "service discovery needs RabbitMQ and its management API; the embedded broker \
                 has neither"
                    .into(),
            ));
        }
        let first = crate::transport::broker_list(config.broker_uri())
            .first()
            .copied()
            .unwrap_or_default()
            .to_owned();
        let (default_uri, vhost) = management_defaults(&first).map_err(|e| {
            Error::Config(format!(
                "invalid AMQP URI `{}`: {e}",
                crate::transport::mask_password(&first)
            ))
        })?;
        Ok(Discovery {
            api: ManagementApi::parse(management_uri.unwrap_or(&default_uri))?,
            vhost,
            rpc_exchange: config.rpc_exchange.clone(),
        })
    }

    /// The services live on the broker, by name.
    pub async fn services(&self) -> Result<Vec<LiveService>, Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.services_blocking())
            .await
            .map_err(|e| Error::ManagementApi(format!("the discovery task failed: {e}")))?
    }

    fn get(&self, path: &str) -> Result<Value, Error> {
        let text = self.api.request("GET", path, "")?;
        serde_json::from_str(&text)
            .map_err(|e| Error::ManagementApi(format!("GET {path}: not JSON: {e}")))
    }

    fn services_blocking(&self) -> Result<Vec<LiveService>, Error> {
        let vhost = percent_encode(&self.vhost);
        let queues = self.get(&format!("/api/queues/{vhost}?columns=name,consumers"))?;
        let consumers: BTreeMap<&str, usize> = queues
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|queue| {
                let count = queue.get("consumers").and_then(Value::as_u64).unwrap_or(0);
                Some((queue.get("name")?.as_str()?, count as usize))
            })
            .collect();
        // An exchange that does not exist yet: no service has declared it, so none runs.
        let bindings = match self.get(&format!(
            "/api/exchanges/{vhost}/{}/bindings/source",
            percent_encode(&self.rpc_exchange)
        )) {
            Ok(bindings) => bindings,
            Err(Error::ManagementApi(e)) if e.contains("404") => Value::Array(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut services: BTreeMap<String, LiveService> = BTreeMap::new();
        for binding in bindings.as_array().into_iter().flatten() {
            let (Some(queue), Some(key)) = (
                binding.get("destination").and_then(Value::as_str),
                binding.get("routing_key").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(name) = rpc_service(queue, key) else {
                continue;
            };
            let instances = consumers.get(queue).copied().unwrap_or(0);
            if instances > 0 {
                services.insert(
                    name.to_owned(),
                    LiveService {
                        name: name.to_owned(),
                        instances,
                        rpc: true,
                    },
                );
            }
        }
        for (queue, &count) in &consumers {
            let Some(name) = event_handler_service(queue) else {
                continue;
            };
            if count == 0 || services.get(name).is_some_and(|s| s.rpc) {
                continue;
            }
            let service = services
                .entry(name.to_owned())
                .or_insert_with(|| LiveService {
                    name: name.to_owned(),
                    instances: 0,
                    rpc: false,
                });
            service.instances = service.instances.max(count);
        }
        Ok(services.into_values().collect())
    }
}

/// The service whose RPC queue `queue` is, bound with `routing_key` (`rpc-<service>`,
/// `<service>.*`).
fn rpc_service<'a>(queue: &'a str, routing_key: &str) -> Option<&'a str> {
    let name = queue.strip_prefix("rpc-")?;
    (routing_key.strip_suffix(".*") == Some(name)).then_some(name)
}

/// The service of an event handler's queue: `evt-<source>-<event>--<service>.<method>`, with
/// `-<id>` after it for a broadcast handler's.
fn event_handler_service(queue: &str) -> Option<&str> {
    let rest = queue.strip_prefix("evt-")?;
    let (_, target) = rest.rsplit_once("--")?;
    let (service, _method) = target.split_once('.')?;
    (!service.is_empty()).then_some(service)
}

/// Asks `service` to describe itself: `None` if it does not (a Python service, which answers
/// `MethodNotFound`).
pub async fn describe(
    client: &ClusterRpcClient,
    service: &str,
) -> Result<Option<ServiceDescription>, RpcError> {
    match client.service(service).call(DESCRIBE_METHOD, ()).await {
        Ok(description) => Ok(Some(description)),
        Err(RpcError::MethodNotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_read_from_queue_names() {
        assert_eq!(
            rpc_service("rpc-greeter_service", "greeter_service.*"),
            Some("greeter_service")
        );
        assert_eq!(rpc_service("rpc-greeter_service", "other.*"), None);
        assert_eq!(rpc_service("rpc.reply-x", "x"), None);
        assert_eq!(
            event_handler_service("evt-src-my_event--handler_svc.handle"),
            Some("handler_svc")
        );
        assert_eq!(
            event_handler_service("evt-src-my-event--handler_svc.handle-3f2a"),
            Some("handler_svc")
        );
        assert_eq!(event_handler_service("rpc-greeter"), None);
    }

    #[test]
    fn the_embedded_broker_has_no_discovery() {
        let error = Discovery::new(&Config::default(), None).unwrap_err();
        assert!(error.to_string().contains("management API"), "{error}");
    }
}
