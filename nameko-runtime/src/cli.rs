//! The command line every service binary gets from one call: `run [SERVICE...]`, `list`,
//! `show-config`, with `--config FILE` and `--define KEY=VALUE`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::runner::{ServiceRegistration, ServiceRunner, Signals};

/// Nameko-style services in one binary.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// A Nameko-style YAML configuration file (`${VAR:default}` substitution applies). Without
    /// one, `AMQP_URI` and `WEB_SERVER_ADDRESS` come from the environment.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<std::path::PathBuf>,
    /// Sets a configuration key (a YAML value), over the file: `--define max_workers=4`.
    #[arg(long = "define", short = 'd', global = true, value_name = "KEY=VALUE", value_parser = parse_define)]
    pub defines: Vec<(String, String)>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_define(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

impl Cli {
    /// The configuration: the file (or the environment), then the `--define`s.
    pub fn load_config(&self) -> Result<Config, crate::Error> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::from_env(),
        };
        for (key, value) in &self.defines {
            config.define(key, value)?;
        }
        Ok(config)
    }

    /// The `service.name` of a process's spans: the services it runs, by name.
    #[cfg(feature = "opentelemetry")]
    fn traced_service_name(&self) -> String {
        match &self.command {
            Command::Run { services, .. } if !services.is_empty() => services.join(","),
            _ => {
                let all: Vec<_> = ServiceRegistration::all()
                    .iter()
                    .map(|s| s.name())
                    .collect();
                if all.is_empty() {
                    "nameko".to_owned()
                } else {
                    all.join(",")
                }
            }
        }
    }
}

/// The commands of a service binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run services until SIGINT or SIGTERM (a second signal kills them).
    Run {
        /// The services to run (all registered services when none is named).
        services: Vec<String>,
        /// The broker: `amqp://user:pass@host[:port][/vhost]`, or `memory://` for the embedded
        /// one (over the configuration's `AMQP_URI`).
        #[arg(long)]
        broker: Option<String>,
        /// Workers running at once per service (over `max_workers`).
        #[arg(long)]
        max_workers: Option<usize>,
        /// Unacknowledged messages each consumer may hold (over `PREFETCH_COUNT`).
        #[arg(long)]
        prefetch_count: Option<u16>,
        /// Where the HTTP server listens, `[host:]port` (over `WEB_SERVER_ADDRESS`).
        #[arg(long)]
        web_server_address: Option<String>,
    },
    /// List the services registered in this binary and their entrypoints.
    List,
    /// Print the configuration in effect, as YAML, passwords masked.
    ShowConfig,
}

pub use crate::log::{
    DEFAULT_LOG_FILTER, LogFormat, init_logging, init_logging_as, init_logging_with,
};

/// Runs the services until a signal; when the connection to the broker is lost, starts them
/// again on a new connection, waiting a capped, growing delay between attempts (a request in
/// progress on the lost connection was not acknowledged: the broker delivers it again). A
/// first start that fails is an error, as is any failure other than a lost connection.
async fn supervise(
    config: Config,
    services: Vec<String>,
    mut signals: Signals,
) -> Result<(), crate::Error> {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    const FIRST_DELAY: Duration = Duration::from_millis(250);
    const MAX_DELAY: Duration = Duration::from_secs(5);
    let current: Arc<Mutex<Option<crate::StopHandle>>> = Arc::default();
    let stopping = tokio_util::sync::CancellationToken::new();
    let health = crate::health::Health::new();
    // The operations endpoints on a port of their own outlive the restarts below, so that they
    // can say the services are reconnecting.
    let operations = match config.metrics_address()? {
        Some(address) => Some(serve_operations(address, health.clone(), stopping.clone()).await?),
        None => None,
    };
    let listener = tokio::spawn({
        let (current, stopping) = (current.clone(), stopping.clone());
        async move {
            let handle = || current.lock().unwrap_or_else(|p| p.into_inner()).clone();
            signals.recv().await;
            tracing::info!("stopping services (send the signal again to kill them)");
            stopping.cancel();
            if let Some(handle) = handle() {
                handle.stop();
            }
            signals.recv().await;
            tracing::warn!("killing services");
            if let Some(handle) = handle() {
                handle.kill();
            }
        }
    });
    let mut delay = FIRST_DELAY;
    let mut has_run = false;
    let result = loop {
        let runner = ServiceRunner::new(config.clone()).with_health(health.clone());
        let runner = if services.is_empty() {
            Ok(runner.with_all_registered())
        } else {
            runner.with_registered(&services)
        };
        let outcome = match runner {
            Ok(runner) => match runner.start().await {
                Ok(running) => {
                    if has_run {
                        crate::metrics::reconnected();
                        tracing::info!("reconnected to the broker; services running again");
                    }
                    has_run = true;
                    *current.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(running.stop_handle());
                    if stopping.is_cancelled() {
                        running.stop_handle().stop();
                    }
                    let started = Instant::now();
                    let outcome = running.wait().await;
                    if started.elapsed() > MAX_DELAY {
                        delay = FIRST_DELAY;
                    }
                    outcome
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let lost =
            match &outcome {
                Err(crate::Error::ConnectionLost(reason)) => Some(reason.clone()),
                Err(crate::Error::Transport(crate::transport::TransportError::Connection(
                    reason,
                ))) if has_run => Some(reason.clone()),
                _ => None,
            };
        if lost.is_some() && matches!(outcome, Err(crate::Error::ConnectionLost(_))) {
            crate::metrics::connection_lost();
        }
        match lost {
            Some(reason) if !stopping.is_cancelled() => {
                health.set(crate::health::Readiness::Reconnecting);
                tracing::warn!(%reason, retry_in = ?delay, "lost the connection to the broker; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopping.cancelled() => break Ok(()),
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
            _ => break outcome,
        }
    };
    listener.abort();
    health.set(crate::health::Readiness::Stopping);
    stopping.cancel();
    if let Some(operations) = operations {
        let _ = operations.await;
    }
    result
}

/// Serves `/metrics`, `/health/live` and `/health/ready` on `address` until `stop`.
async fn serve_operations(
    address: std::net::SocketAddr,
    health: crate::health::Health,
    stop: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, crate::Error> {
    let listen_error = |source| crate::Error::Listen { address, source };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(listen_error)?;
    let address = listener.local_addr().map_err(listen_error)?;
    tracing::info!(%address, "serving /metrics, /health/live and /health/ready");
    let router = crate::health::operations_router(health);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server failed");
        }
    }))
}

/// Parses the command line and runs it on a new multi-threaded tokio runtime.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     nameko::main()
/// }
/// ```
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A configuration that does not load is reported by `execute`, in the default format.
    let config = cli.load_config().ok();
    let filter = config.as_ref().and_then(Config::log_filter);
    let format = config
        .as_ref()
        .and_then(|config| config.log_format().ok())
        .unwrap_or_default();
    #[cfg(feature = "opentelemetry")]
    let traces = {
        let provider = config
            .as_ref()
            .map(|config| crate::trace::provider(config, &cli.traced_service_name()))
            .transpose();
        match provider {
            Ok(provider) => provider.flatten(),
            Err(e) => {
                init_logging_as(filter, format);
                tracing::error!(error = %e, "invalid configuration");
                return ExitCode::FAILURE;
            }
        }
    };
    #[cfg(feature = "opentelemetry")]
    match &traces {
        Some(provider) => crate::log::init_logging_traced(filter, format, provider),
        None => init_logging_as(filter, format),
    }
    #[cfg(not(feature = "opentelemetry"))]
    init_logging_as(filter, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(execute(cli));
    // The spans still in the batch, sent before the process ends.
    #[cfg(feature = "opentelemetry")]
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "could not send the last spans");
    }
    code
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> ExitCode {
    let config = match cli
        .load_config()
        .and_then(|config| config.log_format().map(|_| config))
    {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::ShowConfig => {
            print!("{}", config.to_yaml());
            ExitCode::SUCCESS
        }
        Command::List => {
            for service in ServiceRegistration::all() {
                println!("{}", service.name());
                for entrypoint in service.entrypoints() {
                    println!("  {entrypoint}");
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            services,
            broker,
            max_workers,
            prefetch_count,
            web_server_address,
        } => {
            let mut config = config;
            if let Some(broker) = broker.filter(|b| !b.is_empty()) {
                config.amqp_uri = Some(broker);
            }
            if let Some(max_workers) = max_workers {
                config = config.with_max_workers(max_workers);
            }
            if let Some(prefetch_count) = prefetch_count {
                config.prefetch_count = prefetch_count;
            }
            if let Some(address) = web_server_address {
                config.web_server_address = address;
            }
            if config.is_embedded() {
                tracing::info!(
                    "running on the embedded broker ({}): services in this process only; \
                     for RabbitMQ pass --broker amqp://guest:guest@localhost or set AMQP_URI",
                    config.broker_uri()
                );
            } else {
                tracing::info!(broker = %crate::transport::mask_password(config.broker_uri()), "running on RabbitMQ");
            }
            // Listen for signals before anything starts, so none is lost.
            let signals = Signals::install();
            let result = supervise(config, services, signals).await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
