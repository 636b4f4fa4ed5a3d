//! Configuration, with Nameko's keys and defaults.

use std::time::Duration;

use crate::protocol::DEFAULT_RPC_EXCHANGE;

/// The URI of the embedded broker used when none is configured.
pub const EMBEDDED_BROKER_URI: &str = "memory://";

/// Settings shared by the services of one runner and by clients.
///
/// Field names follow Nameko's configuration keys (`AMQP_URI`, `max_workers`, ...).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `AMQP_URI`: the broker. `None` runs on the embedded broker.
    pub amqp_uri: Option<String>,
    /// `rpc_exchange`: the exchange for RPC requests and replies.
    pub rpc_exchange: String,
    /// `max_workers`: workers running at once per service, across all its entrypoints.
    pub max_workers: usize,
    /// `PREFETCH_COUNT`: unacknowledged messages a consumer may hold. Independent of
    /// `max_workers`; messages beyond the free workers wait, unacknowledged, in order.
    pub prefetch_count: u16,
    /// `parent_calls_tracked`: how many callers the call id stack keeps.
    pub parent_calls_tracked: usize,
    /// The default timeout of every RPC call made through a client (Nameko has none).
    pub rpc_timeout: Duration,
    /// How long a graceful stop waits for running workers before killing them.
    pub stop_timeout: Duration,
    /// `AUTO_DELETE_EVENT_EXCHANGES`: declare `<service>.events` exchanges auto-deleting.
    pub auto_delete_event_exchanges: bool,
    /// `WEB_SERVER_ADDRESS`: where the HTTP server listens, `[host:]port`.
    pub web_server_address: String,
    /// The largest request body the HTTP server accepts (413 beyond).
    pub http_max_body_bytes: usize,
    /// How long the HTTP server lets a request run (408 beyond).
    pub http_request_timeout: Duration,
    /// The identifier of this instance in broadcast handlers' queue names (e.g. the host name).
    /// Unset, each start picks a new random one, which only suits handlers declared with
    /// `reliable_delivery = false`.
    pub broadcast_identifier: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_uri: None,
            rpc_exchange: DEFAULT_RPC_EXCHANGE.to_owned(),
            max_workers: 10,
            prefetch_count: 10,
            parent_calls_tracked: 10,
            rpc_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            auto_delete_event_exchanges: false,
            web_server_address: "0.0.0.0:8000".to_owned(),
            http_max_body_bytes: 1024 * 1024,
            http_request_timeout: Duration::from_secs(30),
            broadcast_identifier: None,
        }
    }
}

impl Config {
    /// The defaults, with `AMQP_URI` and `WEB_SERVER_ADDRESS` taken from the environment when set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
        let defaults = Config::default();
        Config {
            amqp_uri: var("AMQP_URI"),
            web_server_address: var("WEB_SERVER_ADDRESS")
                .unwrap_or(defaults.web_server_address.clone()),
            ..defaults
        }
    }

    /// Sets where the HTTP server listens (`[host:]port`; port 0 picks a free port).
    pub fn with_web_server_address(mut self, address: impl Into<String>) -> Self {
        self.web_server_address = address.into();
        self
    }

    /// Sets the broker URI (`amqp://...`, `amqps://...` or `memory://[name]`).
    pub fn with_broker(mut self, uri: impl Into<String>) -> Self {
        self.amqp_uri = Some(uri.into());
        self
    }

    /// Sets `max_workers`.
    pub fn with_max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = max_workers.max(1);
        self
    }

    /// Sets the prefetch count.
    pub fn with_prefetch_count(mut self, prefetch_count: u16) -> Self {
        self.prefetch_count = prefetch_count;
        self
    }

    /// Sets the default RPC timeout.
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Sets the graceful-stop timeout.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Sets the broadcast identifier of this instance.
    pub fn with_broadcast_identifier(mut self, identifier: impl Into<String>) -> Self {
        self.broadcast_identifier = Some(identifier.into());
        self
    }

    /// The broker URI in effect: `AMQP_URI`, or the embedded broker.
    pub fn broker_uri(&self) -> &str {
        self.amqp_uri.as_deref().unwrap_or(EMBEDDED_BROKER_URI)
    }

    /// Whether the services run on the embedded broker.
    pub fn is_embedded(&self) -> bool {
        self.broker_uri().starts_with("memory://")
    }
}
