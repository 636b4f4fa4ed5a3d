//! The command line every service binary gets from one call: `run [SERVICE...]`, `list`,
//! `show-config`, with `--config FILE` and `--define KEY=VALUE`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::ServiceRegistration;
use crate::service::runner::{ServiceRunner, Signals};

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

/// The log filter used when `RUST_LOG` is not set. lapin reports every returned (unroutable)
/// message as a warning; the runtime turns those into `UnknownService` errors itself.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=warn,lapin::returned_messages=error";

/// Installs a `tracing` subscriber printing to stderr, filtered by `RUST_LOG` (default
/// [`DEFAULT_LOG_FILTER`]). Does nothing if one is installed already.
pub fn init_logging() {
    init_logging_with(None);
}

/// Like [`init_logging`], with `filter` (e.g. the configuration's `LOGGING`) used when `RUST_LOG`
/// is not set.
pub fn init_logging_with(filter: Option<String>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let fallback = || tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER);
        match filter {
            Some(filter) => {
                tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| fallback())
            }
            None => fallback(),
        }
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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
    init_logging_with(
        cli.load_config()
            .ok()
            .and_then(|config| config.log_filter()),
    );
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
    runtime.block_on(execute(cli))
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> ExitCode {
    let config = match cli.load_config() {
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
            let runner = ServiceRunner::new(config);
            let runner = if services.is_empty() {
                Ok(runner.with_all_registered())
            } else {
                runner.with_registered(&services)
            };
            let result = match runner {
                Ok(runner) => match runner.start().await {
                    Ok(running) => running.run_until(signals).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
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
