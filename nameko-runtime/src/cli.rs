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
        .event_format(WorkerFormat::default())
        .try_init();
}

/// The default log format, plus the worker an event comes from: a line logged inside a worker
/// reads `... INFO worker{service="s" entrypoint="e" call_id="s.e.<uuid>"}: target: message`.
///
/// The runtime's `worker` span carries the same fields, but it is a `debug` span: creating a
/// span for every worker costs more than a worker of a simple HTTP endpoint. This format reads
/// the worker from its context instead, which costs nothing until a line is logged. With the
/// span enabled (`RUST_LOG=nameko=debug`), the span is shown as usual.
#[derive(Default)]
struct WorkerFormat {
    inner: tracing_subscriber::fmt::format::Format,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for WorkerFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        use tracing_subscriber::fmt::{FormatFields, FormattedFields};
        let in_worker_span = ctx
            .event_scope()
            .is_some_and(|mut scope| scope.any(|span| span.name() == "worker"));
        let worker = match crate::WorkerContext::current() {
            Some(worker) if !in_worker_span => worker,
            _ => return self.inner.format_event(ctx, writer, event),
        };
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(
            writer,
            " {:>5} worker{{service={:?} entrypoint={:?} call_id={:?}}}:",
            event.metadata().level(),
            worker.service_name(),
            worker.entrypoint(),
            worker.call_id()
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ":")?;
            }
        }
        write!(writer, " {}: ", event.metadata().target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

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
        let runner = ServiceRunner::new(config.clone());
        let runner = if services.is_empty() {
            Ok(runner.with_all_registered())
        } else {
            runner.with_registered(&services)
        };
        let outcome = match runner {
            Ok(runner) => match runner.start().await {
                Ok(running) => {
                    if has_run {
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
        match lost {
            Some(reason) if !stopping.is_cancelled() => {
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
    result
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
