//! Services run for one test: [`TestServices`], and what they give once started,
//! [`TestCluster`].

use std::ops::Deref;

use super::TestBroker;
use crate::config::Config;
use crate::error::Error;
use crate::events::StandaloneEventDispatcher;
use crate::rpc::ClusterRpcClient;
use crate::service::Service;
use crate::{RunningServices, ServiceRunner};

/// A change a test makes to the configuration.
type Configure = Box<dyn FnOnce(&mut Config) + Send>;

/// A set of services to run for one test: on an embedded broker of their own by default, or on
/// a [`TestBroker`] given with [`on`](Self::on); HTTP on a free local port.
///
/// ```
/// # use nameko::prelude::*;
/// # use nameko::testing::TestServices;
/// # #[derive(Dependencies)] struct Greeter;
/// # #[service(name = "greeter")] impl Greeter { #[rpc] fn hello(&self) -> String { "hi".into() } }
/// # #[tokio::main] async fn main() -> Result<(), nameko::Error> {
/// let services = TestServices::new().with_service::<Greeter>().start().await?;
/// # services.stop().await }
/// ```
pub struct TestServices {
    uri: String,
    broker: Option<TestBroker>,
    runner: ServiceRunner,
    configure: Vec<Configure>,
}

impl Default for TestServices {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServices")
            .field("broker", &self.uri)
            .finish_non_exhaustive()
    }
}

impl TestServices {
    /// No services yet, on a new embedded broker.
    pub fn new() -> Self {
        Self::on(TestBroker::embedded())
    }

    /// No services yet, on `broker` (e.g. [`TestBroker::rabbitmq`]), which lives as long as
    /// the services.
    pub fn on(broker: TestBroker) -> Self {
        let mut services = Self::on_uri(broker.uri());
        services.broker = Some(broker);
        services
    }

    /// No services yet, on the broker at `uri`, whose lifetime is the caller's (a
    /// [`TestBroker`] shared by several runs, say).
    pub fn on_uri(uri: &str) -> Self {
        TestServices {
            uri: uri.to_owned(),
            broker: None,
            runner: ServiceRunner::new(Config::default()),
            configure: Vec::new(),
        }
    }

    /// Adds service `S`.
    pub fn with_service<S: Service>(mut self) -> Self {
        self.runner = self.runner.with_service::<S>();
        self
    }

    /// Changes the configuration (the broker and the HTTP address are set by the test).
    pub fn with_config(mut self, configure: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.configure.push(Box::new(configure));
        self
    }

    /// Gives service `S`'s field `field` this value instead of building it: see
    /// [`ServiceRunner::replace_dependency`].
    pub fn replace_dependency<S: Service, T: Send + 'static>(
        mut self,
        field: &str,
        value: T,
    ) -> Self {
        self.runner = self.runner.replace_dependency::<S, T>(field, value);
        self
    }

    /// Lets only these entrypoints of `S` fire: see [`ServiceRunner::restrict_entrypoints`].
    pub fn restrict_entrypoints<S: Service>(mut self, entrypoints: &[&str]) -> Self {
        self.runner = self.runner.restrict_entrypoints::<S>(entrypoints);
        self
    }

    /// Starts the services; they are ready when this returns.
    pub async fn start(self) -> Result<TestCluster, Error> {
        let mut config = Config {
            amqp_uri: Some(self.uri.clone()),
            web_server_address: "127.0.0.1:0".to_owned(),
            ..Config::default()
        };
        for configure in self.configure {
            configure(&mut config);
        }
        let transport = config.connect().await?;
        let services = self
            .runner
            .with_config(config)
            .with_transport(transport)
            .start()
            .await?;
        Ok(TestCluster {
            services,
            uri: self.uri,
            _broker: self.broker,
        })
    }
}

/// Services running for a test ([`TestServices::start`]); everything of [`RunningServices`]
/// (hooks, waiters, the HTTP router) plus clients on the same broker.
pub struct TestCluster {
    services: RunningServices,
    uri: String,
    _broker: Option<TestBroker>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("broker", &self.uri)
            .field("services", &self.services.service_names())
            .finish()
    }
}

impl Deref for TestCluster {
    type Target = RunningServices;
    fn deref(&self) -> &RunningServices {
        &self.services
    }
}

impl TestCluster {
    /// The URI of the broker the services run on.
    pub fn broker_uri(&self) -> &str {
        &self.uri
    }

    /// A standalone RPC client on the services' broker (Nameko's `ClusterRpcProxy`).
    pub async fn rpc_client(&self) -> Result<ClusterRpcClient, Error> {
        Ok(ClusterRpcClient::standalone(self.services.transport(), self.services.config()).await?)
    }

    /// A standalone event dispatcher on the services' broker (Nameko's `event_dispatcher`).
    pub fn event_dispatcher(&self) -> StandaloneEventDispatcher {
        StandaloneEventDispatcher::new(self.services.transport(), self.services.config())
    }

    /// Stops the services gracefully.
    pub async fn stop(self) -> Result<(), Error> {
        self.services.stop().await
    }

    /// Kills the services: running workers are abandoned.
    pub async fn kill(self) {
        self.services.kill().await
    }

    /// Waits until the services stop or one fails: see [`RunningServices::wait`].
    pub async fn wait(self) -> Result<(), Error> {
        self.services.wait().await
    }
}
