//! Configuration, with Nameko's keys and defaults.
//!
//! (Over 600 lines with its unit tests, which are half of it; reading the YAML file is in
//! `yaml`.)

use std::time::Duration;

use crate::protocol::DEFAULT_RPC_EXCHANGE;

/// The URI of the embedded broker used when none is configured.
pub const EMBEDDED_BROKER_URI: &str = "memory://";

/// Settings shared by the services of one runner and by clients.
///
/// Field names follow Nameko's configuration keys (`AMQP_URI`, `max_workers`, ...). Its `Debug`
/// output masks the password of `amqp_uri`.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `AMQP_URI`: the broker, or several (a cluster's nodes, separated by `;`; a list in the
    /// file): the first that answers is used, and after a lost connection the next one. `None`
    /// runs on the embedded broker.
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
    /// `HEARTBEAT`: seconds between AMQP heartbeats (`None`: the broker's proposal, 60 s on
    /// RabbitMQ).
    pub heartbeat: Option<u16>,
    /// `AMQP_SSL`: connect to RabbitMQ over TLS with these settings (`true` in the file: the
    /// system's certificate authorities, no client certificate).
    pub amqp_ssl: Option<crate::transport::TlsOptions>,
    /// `AUTO_DELETE_EVENT_EXCHANGES`: declare `<service>.events` exchanges auto-deleting.
    pub auto_delete_event_exchanges: bool,
    /// `WEB_SERVER_ADDRESS`: where the HTTP server listens, `[host:]port`.
    pub web_server_address: String,
    /// The largest request body the HTTP server accepts (413 beyond).
    pub http_max_body_bytes: usize,
    /// How long the HTTP server lets a request run before it answers 504 (the worker goes on
    /// to its end, still counted in `max_workers`, and its dependencies' hooks run: the request
    /// may have taken effect). A request body must all arrive within this time of the first
    /// wait for it, or its method does not run (408, or 504 if the request's own limit comes
    /// first); the time a request waits for a worker slot does not count against its body.
    pub http_request_timeout: Duration,
    /// How long an HTTP connection may wait for a request's headers before the server drops
    /// it (slow clients, slowloris): from its opening, and from when the previous request's
    /// body was let go and its response sent. It goes between one and one and a half times
    /// this after the wait began.
    pub http_header_read_timeout: Duration,
    /// How long an HTTP connection may stay idle (no request in progress, nothing sent or
    /// received) before the server closes it.
    pub http_idle_timeout: Duration,
    /// The most HTTP connections served at once; more wait to be accepted.
    pub http_max_connections: usize,
    /// `PUBLISH_CONFIRM_TIMEOUT`: how long a publish waits for RabbitMQ's confirm before it
    /// fails (a broker with a memory or disk alarm blocks publishers and confirms nothing).
    pub publish_timeout: Duration,
    /// `MAX_REDELIVERIES`: how many times a message (an RPC request, an event) may come back
    /// unsettled (its worker's connection lost, its reply unpublishable, its
    /// `requeue_on_error` handler failing) before it is given up: rejected without requeue
    /// (dead-lettered where its queue has a dead-letter exchange), with an error reply to an
    /// RPC caller.
    pub max_redeliveries: u32,
    /// `QUEUE_ARGUMENTS`: the arguments of queues the services declare, by queue name:
    /// `x-max-priority`, `x-dead-letter-exchange`, `x-dead-letter-routing-key`,
    /// `x-message-ttl` (milliseconds), `x-queue-type`. For a service's RPC queue
    /// (`rpc-<service>`) and its event handlers' queues (`evt-<source>-<event_type>--<service>.<method>`
    /// for a service pool); a queue that already exists with other arguments stops the start
    /// with an error naming both.
    ///
    /// ```yaml
    /// QUEUE_ARGUMENTS:
    ///   rpc-orders: {x-max-priority: 10}
    ///   evt-shop-order_placed--fulfilment.take: {x-dead-letter-exchange: dead-letters}
    /// ```
    pub queue_arguments: std::collections::BTreeMap<String, crate::transport::QueueArguments>,
    /// `QUEUE_TYPE`: the type of the durable queues a service owns (`rpc-<service>`, its
    /// service-pool and singleton event handlers' queues, its `#[consume]` queues that name no
    /// type): `classic` (the default, as Nameko declares them) or `quorum` (replicated across a
    /// cluster's nodes). Reply queues and other transient queues stay as they are.
    pub queue_type: crate::transport::QueueType,
    /// `DELIVERY_LIMIT`: with `QUEUE_TYPE: quorum`, the `x-delivery-limit` of those queues: a
    /// message returned unsettled more times than this is dead-lettered (or dropped) rather than
    /// looping.
    pub delivery_limit: u32,
    /// Every key of the configuration file the runtime does not use itself, for services to read
    /// ([`Config::get`]).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The identifier of this instance in broadcast handlers' queue names (e.g. the host name).
    /// Unset, each start picks a new random one, which only suits handlers declared with
    /// `reliable_delivery = false`.
    pub broadcast_identifier: Option<String>,
}

impl std::fmt::Debug for Config {
    /// Every field, with the password of `amqp_uri` masked (as in logs and `show-config`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field cannot be left out of the output unnoticed.
        let Config {
            amqp_uri,
            rpc_exchange,
            max_workers,
            prefetch_count,
            parent_calls_tracked,
            rpc_timeout,
            stop_timeout,
            heartbeat,
            amqp_ssl,
            auto_delete_event_exchanges,
            web_server_address,
            http_max_body_bytes,
            http_request_timeout,
            http_header_read_timeout,
            http_idle_timeout,
            http_max_connections,
            publish_timeout,
            max_redeliveries,
            queue_arguments,
            queue_type,
            delivery_limit,
            extra,
            broadcast_identifier,
        } = self;
        f.debug_struct("Config")
            .field(
                "amqp_uri",
                &amqp_uri.as_deref().map(crate::transport::mask_password),
            )
            .field("rpc_exchange", rpc_exchange)
            .field("max_workers", max_workers)
            .field("prefetch_count", prefetch_count)
            .field("parent_calls_tracked", parent_calls_tracked)
            .field("rpc_timeout", rpc_timeout)
            .field("stop_timeout", stop_timeout)
            .field("heartbeat", heartbeat)
            .field("amqp_ssl", amqp_ssl)
            .field("auto_delete_event_exchanges", auto_delete_event_exchanges)
            .field("web_server_address", web_server_address)
            .field("http_max_body_bytes", http_max_body_bytes)
            .field("http_request_timeout", http_request_timeout)
            .field("http_header_read_timeout", http_header_read_timeout)
            .field("http_idle_timeout", http_idle_timeout)
            .field("http_max_connections", http_max_connections)
            .field("publish_timeout", publish_timeout)
            .field("max_redeliveries", max_redeliveries)
            .field("queue_arguments", queue_arguments)
            .field("queue_type", queue_type)
            .field("delivery_limit", delivery_limit)
            .field("extra", extra)
            .field("broadcast_identifier", broadcast_identifier)
            .finish()
    }
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
            heartbeat: None,
            amqp_ssl: None,
            auto_delete_event_exchanges: false,
            extra: serde_json::Map::new(),
            web_server_address: "0.0.0.0:8000".to_owned(),
            http_max_body_bytes: 1024 * 1024,
            http_request_timeout: Duration::from_secs(30),
            http_header_read_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            http_max_connections: 512,
            publish_timeout: crate::transport::amqp::DEFAULT_PUBLISH_TIMEOUT,
            max_redeliveries: 10,
            queue_arguments: std::collections::BTreeMap::new(),
            queue_type: crate::transport::QueueType::Classic,
            delivery_limit: 10,
            broadcast_identifier: None,
        }
    }
}

impl Config {
    /// The defaults, with `AMQP_URI`, `WEB_SERVER_ADDRESS` and `METRICS_ADDRESS` taken from
    /// the environment when set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
        let defaults = Config::default();
        let mut extra = serde_json::Map::new();
        if let Some(address) = var("METRICS_ADDRESS") {
            extra.insert("METRICS_ADDRESS".into(), Value::String(address));
        }
        Config {
            amqp_uri: var("AMQP_URI"),
            web_server_address: var("WEB_SERVER_ADDRESS")
                .unwrap_or(defaults.web_server_address.clone()),
            extra,
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

    /// The URI to connect with: the broker URI, with `HEARTBEAT` as its `heartbeat` parameter
    /// when set (and the URI does not say otherwise).
    pub fn connection_uri(&self) -> String {
        let uri = self.broker_uri();
        match self.heartbeat {
            Some(seconds) if !self.is_embedded() && !uri.contains("heartbeat=") => {
                let separator = if uri.contains('?') { '&' } else { '?' };
                format!("{uri}{separator}heartbeat={seconds}")
            }
            _ => uri.to_owned(),
        }
    }

    /// Connects to the broker in effect: `AMQP_URI` with `HEARTBEAT`, over TLS when `AMQP_SSL`
    /// is set.
    pub(crate) async fn connect(
        &self,
    ) -> Result<crate::transport::SharedTransport, crate::transport::TransportError> {
        crate::transport::connect_with_options(&self.connection_uri(), &self.amqp_options()).await
    }

    /// Connects a standalone client (an RPC client, an event dispatcher): as
    /// [`connect`](Self::connect), publishing on the one connection.
    pub(crate) async fn connect_client(
        &self,
    ) -> Result<crate::transport::SharedTransport, crate::transport::TransportError> {
        crate::transport::connect_with_options(&self.connection_uri(), &self.client_options()).await
    }

    /// [`amqp_options`](Self::amqp_options) for a standalone client: one connection.
    pub(crate) fn client_options(&self) -> crate::transport::amqp::AmqpOptions {
        crate::transport::amqp::AmqpOptions {
            separate_publisher: false,
            ..self.amqp_options()
        }
    }

    /// The settings of a RabbitMQ connection besides its URI: `AMQP_SSL`,
    /// `PUBLISH_CONFIRM_TIMEOUT`.
    pub fn amqp_options(&self) -> crate::transport::amqp::AmqpOptions {
        crate::transport::amqp::AmqpOptions {
            tls: self.amqp_ssl.clone(),
            publish_timeout: self.publish_timeout,
            separate_publisher: true,
        }
    }

    /// Whether the services run on the embedded broker.
    pub fn is_embedded(&self) -> bool {
        self.broker_uri().starts_with("memory://")
    }
}

// ---------------------------------------------------------------------------------------------
// The configuration file.

use std::cell::{Cell, RefCell};

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde_json::Value;

use crate::error::Error;

mod yaml;

pub use yaml::substitute_env;
use yaml::*;

/// `AMQP_SSL` as Nameko reads it: `true`/`false`, or kombu's mapping of `ssl` options.
impl Config {
    /// The arguments of `queue`, a durable queue a service owns: its `QUEUE_TYPE` (with the
    /// `DELIVERY_LIMIT` of a quorum queue), then its own `QUEUE_ARGUMENTS` over them.
    pub fn owned_queue_arguments(&self, queue: &str) -> crate::transport::QueueArguments {
        use crate::transport::{QueueArguments, QueueType};
        let mut arguments = QueueArguments::default();
        if self.queue_type == QueueType::Quorum {
            arguments.queue_type = Some(QueueType::Quorum);
            arguments.delivery_limit = Some(self.delivery_limit);
        }
        if let Some(own) = self.queue_arguments.get(queue) {
            let own = own.clone();
            arguments.max_priority = own.max_priority.or(arguments.max_priority);
            arguments.dead_letter_exchange =
                own.dead_letter_exchange.or(arguments.dead_letter_exchange);
            arguments.dead_letter_routing_key = own
                .dead_letter_routing_key
                .or(arguments.dead_letter_routing_key);
            arguments.message_ttl = own.message_ttl.or(arguments.message_ttl);
            arguments.queue_type = own.queue_type.or(arguments.queue_type);
            arguments.delivery_limit = own.delivery_limit.or(arguments.delivery_limit);
        }
        arguments
    }
}

/// One queue's `QUEUE_ARGUMENTS` entry.
fn queue_arguments(queue: &str, value: Value) -> Result<crate::transport::QueueArguments, Error> {
    use crate::transport::{QueueArguments, QueueType};
    let bad = |key: &str, what: &str| {
        Error::Config(format!(
            "`QUEUE_ARGUMENTS` of `{queue}`: `{key}` must be {what}"
        ))
    };
    let Value::Object(map) = value else {
        return Err(Error::Config(format!(
            "`QUEUE_ARGUMENTS` of `{queue}` must be a mapping of `x-...` arguments"
        )));
    };
    let mut arguments = QueueArguments::default();
    for (key, value) in map {
        match key.as_str() {
            "x-max-priority" => {
                let max = value.as_u64().and_then(|v| u8::try_from(v).ok());
                arguments.max_priority =
                    Some(max.ok_or_else(|| bad(&key, "a whole number from 0 to 255"))?);
            }
            "x-dead-letter-exchange" => {
                let name = value.as_str().ok_or_else(|| bad(&key, "a string"))?;
                arguments.dead_letter_exchange = Some(name.to_owned());
            }
            "x-dead-letter-routing-key" => {
                let key_value = value.as_str().ok_or_else(|| bad(&key, "a string"))?;
                arguments.dead_letter_routing_key = Some(key_value.to_owned());
            }
            "x-message-ttl" => {
                let ms = value
                    .as_u64()
                    .ok_or_else(|| bad(&key, "a whole number of milliseconds"))?;
                arguments.message_ttl = Some(Duration::from_millis(ms));
            }
            "x-delivery-limit" => {
                let limit = value.as_u64().and_then(|v| u32::try_from(v).ok());
                arguments.delivery_limit = Some(limit.ok_or_else(|| bad(&key, "a whole number"))?);
            }
            "x-queue-type" => {
                arguments.queue_type = Some(match value.as_str() {
                    Some("classic") => QueueType::Classic,
                    Some("quorum") => QueueType::Quorum,
                    _ => return Err(bad(&key, "`classic` or `quorum`")),
                });
            }
            other => {
                return Err(Error::Config(format!(
                    "`QUEUE_ARGUMENTS` of `{queue}`: unknown argument `{other}`; expected x-max-priority, x-dead-letter-exchange, x-dead-letter-routing-key, x-message-ttl, x-queue-type or x-delivery-limit"
                )));
            }
        }
    }
    Ok(arguments)
}

fn tls_options(value: Value) -> Result<Option<crate::transport::TlsOptions>, Error> {
    use crate::transport::TlsOptions;
    let map = match value {
        Value::Bool(false) | Value::Null => return Ok(None),
        Value::Bool(true) => return Ok(Some(TlsOptions::new())),
        Value::Object(map) => map,
        other => {
            return Err(Error::Config(format!(
                "`AMQP_SSL` must be true, false or a mapping of ca_certs, certfile, keyfile, \
                 cert_reqs; not `{other}`"
            )));
        }
    };
    let mut tls = TlsOptions::new();
    for (key, value) in map {
        let path = |value: &Value| {
            value.as_str().map(std::path::PathBuf::from).ok_or_else(|| {
                Error::Config(format!(
                    "`AMQP_SSL.{key}` must be a file path, not `{value}`"
                ))
            })
        };
        match key.as_str() {
            "ca_certs" => tls.ca_certs = Some(path(&value)?),
            "certfile" => tls.certfile = Some(path(&value)?),
            "keyfile" => tls.keyfile = Some(path(&value)?),
            // Python's ssl.CERT_REQUIRED: the only mode there is here.
            "cert_reqs" if value == 2 || value == "CERT_REQUIRED" => {}
            "cert_reqs" => {
                return Err(Error::Config(format!(
                    "`AMQP_SSL.cert_reqs: {value}` is not supported: the broker's certificate \
                     is always verified (CERT_REQUIRED, 2)"
                )));
            }
            other => {
                return Err(Error::Config(format!(
                    "`AMQP_SSL.{other}` is not supported (known: ca_certs, certfile, keyfile, \
                     cert_reqs)"
                )));
            }
        }
    }
    if tls.certfile.is_some() != tls.keyfile.is_some() {
        return Err(Error::Config(
            "`AMQP_SSL` needs both certfile and keyfile, or neither".into(),
        ));
    }
    Ok(Some(tls))
}

impl Config {
    /// Reads a Nameko-style YAML configuration, with `${VAR}` and `${VAR:default}` taken from
    /// the environment. Known keys become fields; every other key is kept in [`Config::extra`].
    ///
    /// The substitution ([`substitute_env`]) applies to scalar values once the YAML is parsed, as
    /// Nameko 2.14's loader does (`env_var_constructor` in `nameko/cli/main.py`), never to the
    /// text: `${...}` in a comment is nothing, and a variable's value cannot break the quoting or
    /// add keys, whatever it holds. Which scalars are substituted:
    ///
    /// - a plain (unquoted) scalar whose first line holds `${...}` (Nameko's implicit resolver,
    ///   keys included): the result is then read as YAML, so `max_workers: ${N:10}` is a number,
    ///   `AMQP_URI: ${URI}` a string and `${LIST:[a, b]}` a list;
    /// - a scalar tagged `!env_var`, quoted or not: the same (`!env_var "${PORT:8000}"` is the
    ///   number 8000);
    /// - a scalar tagged `!raw_env_var`: substituted and kept as the string it gives
    ///   (`!raw_env_var "${PORT:8000}"` is `"8000"`).
    ///
    /// Quoted (`"${VAR}"`, `'${VAR}'`) and block (`|`, `>`) scalars without a tag, and scalars
    /// with a standard tag (`!!str ${VAR}`), are kept as written, as in Nameko, whose implicit
    /// resolver only sees untagged plain scalars. A variable's value is not substituted again.
    /// Where Nameko would fail to read a result as YAML (say a value of several lines such as
    /// `x\nKEY: 1`), it stays the string it is, the value of its own key.
    /// Local tags other than these two (`!name`) are errors.
    ///
    /// ```
    /// let config = nameko::Config::from_yaml("AMQP_URI: ${NOT_SET_ANYWHERE:memory://}\nmax_workers: 4\nGREETING: hi\n")?;
    /// assert_eq!(config.amqp_uri.as_deref(), Some("memory://"));
    /// assert_eq!(config.max_workers, 4);
    /// assert_eq!(config.get::<String>("GREETING").transpose()?, Some("hi".to_owned()));
    /// # Ok::<(), nameko::Error>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Config, Error> {
        Self::from_yaml_with(text, &|name| std::env::var(name).ok())
    }

    /// [`Config::from_yaml`] with the environment given by `lookup`.
    pub fn from_yaml_with(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Error> {
        let loader = EnvLoader::new(text, lookup);
        let map = match loader.load()? {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(Error::Config(format!(
                    "the configuration must be a mapping of keys, not `{other}`"
                )));
            }
        };
        let mut config = Config::default();
        config.merge(map)?;
        Ok(config)
    }

    /// Reads a configuration file (see [`Config::from_yaml`]).
    pub fn from_file(path: &std::path::Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Sets `key` to `value` (YAML, so `--define max_workers=4` gives a number), as if the file
    /// had said so.
    pub fn define(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let value: Value = serde_norway::from_str(value)
            .map_err(|e| Error::Config(format!("`{key}={value}`: not a YAML value: {e}")))?;
        let mut map = serde_json::Map::new();
        map.insert(key.to_owned(), value);
        self.merge(map)
    }

    fn merge(&mut self, mut map: serde_json::Map<String, Value>) -> Result<(), Error> {
        if let Some(uri) = take::<Value>(
            &mut map,
            "AMQP_URI",
            "a URI string (several separated by `;`), or a list of URIs",
        )? {
            // Several brokers (a cluster's nodes): a list, or `;` between them as kombu takes them.
            self.amqp_uri = Some(match uri {
                Value::String(uri) => uri,
                Value::Array(uris) if !uris.is_empty() && uris.iter().all(Value::is_string) => uris
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(";"),
                other => {
                    return Err(Error::Config(format!(
                        "`AMQP_URI` must be a URI string or a list of URIs, not `{other}`"
                    )));
                }
            });
        }
        if let Some(address) = take::<Value>(&mut map, "WEB_SERVER_ADDRESS", "`[host:]port`")? {
            self.web_server_address = match address {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(Error::Config(format!(
                        "`WEB_SERVER_ADDRESS` must be `[host:]port`, not `{other}`"
                    )));
                }
            };
        }
        if let Some(v) = take(&mut map, "rpc_exchange", "a string")? {
            self.rpc_exchange = v;
        }
        if let Some(v) = take::<usize>(&mut map, "max_workers", "a positive whole number")? {
            self.max_workers = if v == 0 {
                Config::default().max_workers
            } else {
                v
            };
        }
        if let Some(v) = take(&mut map, "parent_calls_tracked", "a whole number")? {
            self.parent_calls_tracked = v;
        }
        if let Some(v) = take(&mut map, "PREFETCH_COUNT", "a whole number from 0 to 65535")? {
            self.prefetch_count = v;
        }
        if let Some(v) = take::<f64>(&mut map, "RPC_TIMEOUT", "a number of seconds")? {
            self.rpc_timeout = Duration::try_from_secs_f64(v).map_err(|_| {
                Error::Config(format!(
                    "`RPC_TIMEOUT` must be a positive number of seconds, not `{v}`"
                ))
            })?;
        }
        if let Some(v) = take::<f64>(&mut map, "PUBLISH_CONFIRM_TIMEOUT", "a number of seconds")? {
            self.publish_timeout = Duration::try_from_secs_f64(v).map_err(|_| {
                Error::Config(format!(
                    "`PUBLISH_CONFIRM_TIMEOUT` must be a positive number of seconds, not `{v}`"
                ))
            })?;
        }
        if let Some(v) = take(&mut map, "MAX_REDELIVERIES", "a whole number")? {
            self.max_redeliveries = v;
        }
        if let Some(v) = take(&mut map, "HEARTBEAT", "a whole number of seconds")? {
            self.heartbeat = Some(v);
        }
        if let Some(v) = take::<Value>(&mut map, "AMQP_SSL", "true, false or a mapping")? {
            self.amqp_ssl = tls_options(v)?;
        }
        if let Some(v) = take(&mut map, "AUTO_DELETE_EVENT_EXCHANGES", "true or false")? {
            self.auto_delete_event_exchanges = v;
        }
        if let Some(v) = take::<String>(&mut map, "QUEUE_TYPE", "`classic` or `quorum`")? {
            self.queue_type = match v.as_str() {
                "classic" => crate::transport::QueueType::Classic,
                "quorum" => crate::transport::QueueType::Quorum,
                other => {
                    return Err(Error::Config(format!(
                        "`QUEUE_TYPE` must be `classic` or `quorum`, not `{other}`"
                    )));
                }
            };
        }
        if let Some(v) = take(&mut map, "DELIVERY_LIMIT", "a whole number")? {
            self.delivery_limit = v;
        }
        if let Some(v) = take::<serde_json::Map<String, Value>>(
            &mut map,
            "QUEUE_ARGUMENTS",
            "a mapping of queue names to their arguments",
        )? {
            for (queue, arguments) in v {
                let arguments = queue_arguments(&queue, arguments)?;
                self.queue_arguments.insert(queue, arguments);
            }
        }
        if let Some(v) = take::<String>(&mut map, "serializer", "a string")?
            && v != "json"
        {
            return Err(Error::Config(format!(
                "`serializer: {v}` is not supported: only json is"
            )));
        }
        for (key, value) in map {
            self.extra.insert(key, value);
        }
        Ok(())
    }

    /// A key of the configuration file the runtime does not use, read as a `T`: `None` if absent,
    /// an error naming the key if it does not fit.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<Result<T, Error>> {
        self.extra.get(key).map(|value| {
            serde_json::from_value(value.clone())
                .map_err(|e| Error::Config(format!("`{key}`: {e}")))
        })
    }

    /// The log filter the `LOGGING` key asks for: a filter string (`"info,nameko=debug"`) or a
    /// mapping with a `level` (`{level: DEBUG}`, the part of Nameko's `dictConfig` that carries
    /// over). `RUST_LOG`, when set, wins over it.
    pub fn log_filter(&self) -> Option<String> {
        let quiet = "lapin=warn,lapin::returned_messages=error";
        match self.extra.get("LOGGING")? {
            Value::String(filter) => Some(filter.clone()),
            Value::Object(map) => {
                let level = map
                    .get("level")
                    .or_else(|| map.get("root").and_then(|root| root.get("level")))?
                    .as_str()?
                    .to_ascii_lowercase();
                Some(format!("{level},{quiet}"))
            }
            _ => None,
        }
    }

    /// Where `nameko::main` serves `/metrics`, `/health/live` and `/health/ready` on a port of
    /// their own (`METRICS_ADDRESS`, `[host:]port`), for services without HTTP routes (the HTTP
    /// server serves them too); `None` when the key is absent.
    pub fn metrics_address(&self) -> Result<Option<std::net::SocketAddr>, Error> {
        let address = match self.extra.get("METRICS_ADDRESS") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(address)) => address.clone(),
            Some(Value::Number(port)) => port.to_string(),
            Some(other) => other.to_string(),
        };
        let full = if address.contains(':') {
            address.clone()
        } else {
            format!("0.0.0.0:{address}")
        };
        full.parse().map(Some).map_err(|_| {
            Error::Config(format!(
                "`METRICS_ADDRESS`: `{address}` is not of the form [host:]port"
            ))
        })
    }

    /// The log format the `LOG_FORMAT` key asks for (`text`, the default, or `json`); an error
    /// naming the key for anything else.
    pub fn log_format(&self) -> Result<crate::log::LogFormat, Error> {
        match self.extra.get("LOG_FORMAT") {
            None | Some(Value::Null) => Ok(crate::log::LogFormat::default()),
            Some(Value::String(name)) => crate::log::LogFormat::parse(name).ok_or_else(|| {
                Error::Config(format!(
                    "`LOG_FORMAT`: `{name}` is neither `text` nor `json`"
                ))
            }),
            Some(other) => Err(Error::Config(format!(
                "`LOG_FORMAT`: {other} is neither `text` nor `json`"
            ))),
        }
    }

    /// The configuration as YAML, passwords masked (what `show-config` prints).
    pub fn to_yaml(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert(
            "AMQP_URI".into(),
            Value::String(crate::transport::mask_password(self.broker_uri())),
        );
        map.insert(
            "WEB_SERVER_ADDRESS".into(),
            Value::String(self.web_server_address.clone()),
        );
        map.insert(
            "rpc_exchange".into(),
            Value::String(self.rpc_exchange.clone()),
        );
        map.insert("max_workers".into(), Value::from(self.max_workers));
        map.insert(
            "parent_calls_tracked".into(),
            Value::from(self.parent_calls_tracked),
        );
        map.insert("PREFETCH_COUNT".into(), Value::from(self.prefetch_count));
        if let Some(heartbeat) = self.heartbeat {
            map.insert("HEARTBEAT".into(), Value::from(heartbeat));
        }
        if let Some(tls) = &self.amqp_ssl {
            let mut ssl = serde_json::Map::new();
            let paths = [
                ("ca_certs", &tls.ca_certs),
                ("certfile", &tls.certfile),
                ("keyfile", &tls.keyfile),
            ];
            for (key, path) in paths {
                if let Some(path) = path {
                    ssl.insert(key.into(), Value::String(path.display().to_string()));
                }
            }
            map.insert(
                "AMQP_SSL".into(),
                if ssl.is_empty() {
                    Value::Bool(true)
                } else {
                    Value::Object(ssl)
                },
            );
        }
        map.insert(
            "RPC_TIMEOUT".into(),
            Value::from(self.rpc_timeout.as_secs_f64()),
        );
        map.insert("serializer".into(), Value::String("json".into()));
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        serde_norway::to_string(&map).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("rabbit".into()),
            "N" => Some("7".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitution_covers_every_form() {
        let s = |t: &str| substitute_env(t, &env).unwrap();
        assert_eq!(s("amqp://${HOST}:5672"), "amqp://rabbit:5672");
        assert_eq!(s("${MISSING}"), "");
        assert_eq!(s("${MISSING:10}"), "10");
        assert_eq!(s("${N:10}"), "7");
        assert_eq!(
            s("${MISSING:amqp://guest:guest@localhost}"),
            "amqp://guest:guest@localhost"
        );
        assert_eq!(s("${A:${B:${HOST}}}"), "rabbit");
        assert_eq!(s("${MISSING:https://x/{path}}"), "https://x/{path}");
        assert_eq!(s("${EMPTY:default}"), "");
        assert!(substitute_env("${UNCLOSED", &env).is_err());
        assert!(substitute_env("${not a name}", &env).is_err());
    }

    #[test]
    fn substituted_values_are_read_as_yaml() {
        let text = "AMQP_URI: ${AMQP:amqp://guest:guest@${HOST}}\nmax_workers: ${N:10}\nPREFETCH_COUNT: ${P:20}\nFLAGS: ${F:[a, b]}\nNOTHING: ${MISSING}\n";
        let config = Config::from_yaml_with(text, &env).unwrap();
        assert_eq!(
            config.amqp_uri.as_deref(),
            Some("amqp://guest:guest@rabbit")
        );
        assert_eq!(config.max_workers, 7);
        assert_eq!(config.prefetch_count, 20);
        assert_eq!(
            config.get::<Vec<String>>("FLAGS").unwrap().unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            config.get::<Option<String>>("NOTHING").unwrap().unwrap(),
            None
        );
    }

    /// The environment of the tests of substitution after parsing.
    fn hostile_env(name: &str) -> Option<String> {
        match name {
            "EVIL" => Some("x\nEVIL: 1".into()),
            "QUOTES" => Some("say \"hi\" # and 'bye'".into()),
            "REF" => Some("${HOST}".into()),
            other => env(other),
        }
    }

    #[test]
    fn substitution_applies_to_parsed_values() {
        let text = "\
# a comment with ${UNCLOSED is no value
AMQP_URI: ${MISSING:amqp://guest:guest@${HOST}:5672/} # ${HOST} in a comment
max_workers: ${N:10}
EVIL: ${EVIL}
QUOTES: ${QUOTES}
TAGGED_QUOTES: !env_var \"${QUOTES}\"
REF: ${REF}
PORT: !env_var \"${PORT:8000}\"
RAW_PORT: !raw_env_var \"${PORT:8000}\"
RAW_N: !raw_env_var ${N}
DOUBLE: \"${HOST}\"
SINGLE: '${HOST}'
ESCAPED: \"${HOST}\\t\"
BLOCK: |
  ${HOST}
FOLDED: a
  ${HOST}
${HOST}_KEY: 1
ANCHORED: &plain ${HOST}
STR: !!str ${HOST}
ALIAS: *plain
LIST:
  - ${N}
  - \"${N}\"
  - !raw_env_var '${N}'
";
        let config = Config::from_yaml_with(text, &hostile_env).unwrap();
        let get = |key: &str| config.extra.get(key).cloned();
        assert_eq!(
            config.amqp_uri.as_deref(),
            Some("amqp://guest:guest@rabbit:5672/")
        );
        assert_eq!(config.max_workers, 7);
        // A value of several lines stays the value of its key.
        assert_eq!(get("EVIL"), Some(Value::from("x\nEVIL: 1")));
        assert_eq!(config.extra.len(), 17, "{:?}", config.extra);
        // Read as YAML, as in Nameko: the comment goes.
        assert_eq!(get("QUOTES"), Some(Value::from("say \"hi\"")));
        assert_eq!(get("TAGGED_QUOTES"), Some(Value::from("say \"hi\"")));
        // The environment's values are not substituted again.
        assert_eq!(get("REF"), Some(Value::from("${HOST}")));
        assert_eq!(get("PORT"), Some(Value::from(8000)));
        assert_eq!(get("RAW_PORT"), Some(Value::from("8000")));
        assert_eq!(get("RAW_N"), Some(Value::from("7")));
        // Only plain scalars are substituted without a tag.
        assert_eq!(get("DOUBLE"), Some(Value::from("${HOST}")));
        assert_eq!(get("SINGLE"), Some(Value::from("${HOST}")));
        assert_eq!(get("ESCAPED"), Some(Value::from("${HOST}\t")));
        assert_eq!(get("BLOCK"), Some(Value::from("${HOST}\n")));
        assert_eq!(get("FOLDED"), Some(Value::from("a rabbit")));
        assert_eq!(get("rabbit_KEY"), Some(Value::from(1)));
        assert_eq!(get("ANCHORED"), Some(Value::from("rabbit")));
        assert_eq!(get("ALIAS"), Some(Value::from("rabbit")));
        assert_eq!(get("STR"), Some(Value::from("${HOST}")));
        assert_eq!(get("LIST"), Some(serde_json::json!([7, "${N}", "7"])));
        let e = Config::from_yaml_with("A: !secret x\n", &env).unwrap_err();
        assert!(e.to_string().contains("!secret"), "{e}");
        let e = Config::from_yaml_with("A: !env_var [a]\n", &env).unwrap_err();
        assert!(e.to_string().contains("!env_var"), "{e}");
    }

    #[test]
    fn wrong_values_name_their_key() {
        let e = Config::from_yaml_with("max_workers: many\n", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration error: `max_workers` must be a positive whole number, not `\"many\"`"
        );
        let e = Config::from_yaml_with("PREFETCH_COUNT: 70000\n", &env).unwrap_err();
        assert!(
            e.to_string()
                .contains("`PREFETCH_COUNT` must be a whole number from 0 to 65535"),
            "{e}"
        );
        let e = Config::from_yaml_with("a: [1\nb: 2\n", &env).unwrap_err();
        assert!(
            e.to_string().contains("not valid YAML") && e.to_string().contains("line"),
            "{e}"
        );
        let e = Config::from_yaml_with("serializer: pickle\n", &env).unwrap_err();
        assert!(e.to_string().contains("only json"), "{e}");
        let e = Config::from_yaml_with("- a list\n", &env).unwrap_err();
        assert!(e.to_string().contains("mapping"), "{e}");
    }

    #[test]
    fn the_logging_key_gives_a_filter() {
        let config = Config::from_yaml_with("LOGGING: {root: {level: DEBUG}}\n", &env).unwrap();
        assert_eq!(
            config.log_filter().as_deref(),
            Some("debug,lapin=warn,lapin::returned_messages=error")
        );
        let config = Config::from_yaml_with("LOGGING: warn,nameko=debug\n", &env).unwrap();
        assert_eq!(config.log_filter().as_deref(), Some("warn,nameko=debug"));
        assert_eq!(Config::default().log_filter(), None);
        let config = Config::from_yaml_with("LOG_FORMAT: json\n", &env).unwrap();
        assert_eq!(config.log_format().unwrap(), crate::log::LogFormat::Json);
        assert_eq!(
            Config::default().log_format().unwrap(),
            crate::log::LogFormat::Text
        );
        let config = Config::from_yaml_with("METRICS_ADDRESS: 9100\n", &env).unwrap();
        assert_eq!(
            config.metrics_address().unwrap(),
            Some("0.0.0.0:9100".parse().unwrap())
        );
        let config = Config::from_yaml_with("METRICS_ADDRESS: 127.0.0.1:0\n", &env).unwrap();
        assert_eq!(
            config.metrics_address().unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        let config = Config::from_yaml_with("METRICS_ADDRESS: here\n", &env).unwrap();
        assert!(config.metrics_address().is_err());
        assert_eq!(Config::default().metrics_address().unwrap(), None);
        let config = Config::from_yaml_with("LOG_FORMAT: xml\n", &env).unwrap();
        assert_eq!(
            config.log_format().unwrap_err().to_string(),
            "configuration error: `LOG_FORMAT`: `xml` is neither `text` nor `json`"
        );
    }

    #[test]
    fn debug_output_masks_the_password() {
        let config = Config::default().with_broker("amqp://user:s3cret@rabbit:5672/vh");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("amqp_uri: Some(\"amqp://user:********@rabbit:5672/vh\")"),
            "{shown}"
        );
        assert!(shown.contains("max_workers: 10"), "{shown}");
        assert!(shown.contains("broadcast_identifier: None"), "{shown}");
        let shown = format!("{:?}", Config::default());
        assert!(shown.contains("amqp_uri: None"), "{shown}");
    }

    #[test]
    fn defines_override_and_show_config_masks_passwords() {
        let mut config =
            Config::from_yaml_with("AMQP_URI: amqp://u:secret@h\nmax_workers: 3\n", &env).unwrap();
        config.define("max_workers", "5").unwrap();
        config.define("CUSTOM", "{a: 1}").unwrap();
        assert_eq!(config.max_workers, 5);
        let shown = config.to_yaml();
        assert!(shown.contains("AMQP_URI: amqp://u:********@h"), "{shown}");
        assert!(!shown.contains("secret"));
        assert!(shown.contains("CUSTOM:"), "{shown}");
    }
}
