//! A service instance without a container ([`worker_factory`]), and running code as one of its
//! workers would run ([`run_as_worker`]).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::config::Config;
use crate::context::{ContextData, WorkerContext};
use crate::error::Error;
use crate::protocol::RemoteError;
use crate::service::io::sealed;
use crate::service::worker::run_worker;
use crate::service::{Dependencies, DependencyContext, Replacements, Service, WorkerResult};
use crate::transport;
use std::borrow::Cow;

/// Builds an instance of service `S` outside any container (Nameko's `worker_factory`): each
/// field is built by its [`Dependency`](crate::Dependency) implementation on an embedded broker
/// of its own (or the one given with [`on_uri`](WorkerFactory::on_uri)), unless given a value
/// with [`replace`](WorkerFactory::replace). Call its methods directly: no broker to run, no
/// container, no worker (wrap a call in [`run_as_worker`] for the dependencies' worker hooks).
///
/// ```
/// # use nameko::prelude::*;
/// # use nameko::testing::worker_factory;
/// # #[derive(Dependencies)] struct Greeter { greeting: Greeting }
/// # #[derive(Clone)] struct Greeting(String);
/// # impl nameko::Dependency for Greeting {
/// #     async fn build(_: &nameko::DependencyContext, _: &'static str) -> Result<Self, nameko::Error> { Ok(Greeting("Hello".into())) }
/// # }
/// # #[service(name = "greeter")] impl Greeter {
/// #     #[rpc] fn hello(&self, name: String) -> String { format!("{} {name}!", self.greeting.0) }
/// # }
/// # #[tokio::main] async fn main() -> Result<(), nameko::Error> {
/// let greeter = worker_factory::<Greeter>()
///     .replace("greeting", Greeting("Bonjour".into()))
///     .build()
///     .await?;
/// assert_eq!(greeter.hello("Tim".into()), "Bonjour Tim!");
/// # Ok(()) }
/// ```
pub fn worker_factory<S: Service>() -> WorkerFactory<S> {
    WorkerFactory {
        config: Config::default(),
        broker_uri: None,
        replacements: Vec::new(),
        service: PhantomData,
    }
}

/// A builder of a service instance for unit tests; see [`worker_factory`].
pub struct WorkerFactory<S> {
    config: Config,
    broker_uri: Option<String>,
    replacements: Replacements,
    service: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for WorkerFactory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerFactory").finish_non_exhaustive()
    }
}

impl<S: Service> WorkerFactory<S> {
    /// Uses `value` for the field `field` instead of building it.
    pub fn replace<T: Send + 'static>(mut self, field: &str, value: T) -> Self {
        self.replacements.push((field.to_owned(), Box::new(value)));
        self
    }

    /// Builds the other fields with this configuration.
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Builds the other fields on the broker at `uri` instead of an embedded broker of their
    /// own: e.g. [`TestCluster::broker_uri`](super::TestCluster::broker_uri) of services standing in for the ones this service
    /// calls, so its clients get their answers.
    pub fn on_uri(mut self, uri: &str) -> Self {
        self.broker_uri = Some(uri.to_owned());
        self
    }

    /// Builds the instance and starts its dependencies ([`Dependencies::start`]). Fails if a
    /// replaced field does not exist or has another type.
    pub async fn build(self) -> Result<S, Error> {
        let uri = self.broker_uri.unwrap_or_else(|| {
            format!("memory://worker-factory-{}", uuid::Uuid::new_v4().simple())
        });
        let transport = transport::connect(&uri).await?;
        let cx = DependencyContext::new(
            S::NAME,
            self.config,
            transport,
            self.replacements,
            Default::default(),
        );
        let service = S::build(&cx).await?;
        cx.check_replacements_taken()?;
        Dependencies::start(&service).await?;
        Ok(service)
    }
}

/// Runs `future` as a worker of `service` would run: in a worker context for `entrypoint`,
/// between the dependencies' `worker_setup` and `worker_result`/`worker_teardown`, on the same
/// path as every worker of a running service. For unit tests of a [`worker_factory`] instance
/// whose dependencies keep per-worker state (such as a transaction).
///
/// Returns the future's output (an `Err` of the future is what `worker_result` sees as the
/// worker's error), or [`Error::Worker`] with the error object of a dependency that refused
/// the worker (in `worker_setup`) or its success (in `worker_result`, e.g. a failed commit), or
/// of a panic.
pub async fn run_as_worker<S, F, T, E>(
    service: &S,
    entrypoint: &str,
    future: F,
) -> Result<Result<T, E>, Error>
where
    S: Service,
    F: Future<Output = Result<T, E>> + Send,
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let context = Arc::new(WorkerContext::with_data(
        S::NAME,
        entrypoint,
        ContextData::new(),
        Config::default().parent_calls_tracked,
    ));
    let method = async {
        let outcome = future.await;
        let error = outcome
            .as_ref()
            .err()
            .map(|e| crate::error::remote_error_from_display(e));
        Ran::Finished(outcome, error)
    };
    match run_worker(
        service,
        None,
        context,
        crate::trace::WorkerKind::Call,
        None,
        method,
    )
    .await
    {
        Ran::Finished(outcome, _) => Ok(outcome),
        Ran::Failed(error) => Err(Error::Worker(error)),
    }
}

/// What [`run_as_worker`]'s worker came to.
enum Ran<T, E> {
    /// The future finished; its error as an error object, for the dependencies.
    Finished(Result<T, E>, Option<RemoteError>),
    /// A dependency refused the worker or its success, or it panicked.
    Failed(RemoteError),
}

impl<T: Send + 'static, E: Send + 'static> sealed::Output for Ran<T, E> {
    fn result(&self) -> WorkerResult<'_> {
        match self {
            Ran::Finished(_, None) => WorkerResult::Done,
            Ran::Finished(_, Some(error)) | Ran::Failed(error) => {
                WorkerResult::Failed(Cow::Borrowed(error))
            }
        }
    }
    fn fail(self, error: RemoteError) -> Self {
        Ran::Failed(error)
    }
    fn from_error(error: RemoteError) -> Self {
        Ran::Failed(error)
    }
    fn failure(&self) -> Option<&RemoteError> {
        None
    }
    fn into_hook(self) -> Result<serde_json::Value, RemoteError> {
        match self {
            Ran::Finished(..) => Ok(serde_json::Value::Null),
            Ran::Failed(error) => Err(error),
        }
    }
}
