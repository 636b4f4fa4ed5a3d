//! `nameko`: talk to a cluster from the command line.
//!
//! ```text
//! nameko call greeter_service.greet '["Tim"]' [--kwargs '{}'] [--timeout 5] [--broker URI | --config FILE]
//! nameko dispatch my_event_publisher_service my_event '"hi"'
//! nameko shell                      # greeter_service.greet("Tim"), dispatch("svc", "type", {"a": 1})
//! nameko services [--json]           # the services live on the broker, with their instances
//! nameko describe greeter_service    # one service: instances, RPC signatures, entrypoints
//! nameko show-config [--config FILE]
//! ```

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nameko::discovery::{Discovery, LiveService, ServiceDescription};
use nameko::events::StandaloneEventDispatcher;
use nameko::shell::{Completions, Line, parse_line};
use nameko::{ClusterRpcClient, Config, RpcError};
use serde_json::Value;

/// Talk to Nameko services (Rust or Python) from the command line.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The broker (over the configuration's `AMQP_URI`); default `amqp://guest:guest@localhost`.
    #[arg(long, global = true)]
    broker: Option<String>,
    /// A Nameko-style YAML configuration file.
    #[arg(long, short = 'c', global = true)]
    config: Option<std::path::PathBuf>,
    /// Sets a configuration key: `--define rpc_exchange=my-rpc`.
    #[arg(long = "define", short = 'd', global = true, value_name = "KEY=VALUE")]
    defines: Vec<String>,
    /// RabbitMQ's management API, for service discovery (`services`, `describe`, the shell's
    /// completion); default: the broker's host on port 15672, with the broker's credentials.
    #[arg(long, global = true, value_name = "http://USER:PASSWORD@HOST:PORT")]
    management: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Call one method; the result is printed as JSON.
    Call {
        /// `service.method`.
        target: String,
        /// Positional arguments, a JSON list (default `[]`).
        #[arg(default_value = "[]")]
        args: String,
        /// Keyword arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Dispatch an event in the name of a service.
    Dispatch {
        /// The source service.
        service: String,
        /// The event type.
        event_type: String,
        /// The payload, JSON.
        payload: String,
    },
    /// An interactive shell: `service.method(args, key=value)` and `dispatch(service, type, payload)`.
    Shell,
    /// List the services live on the broker (Python and Rust), with their instance counts.
    Services {
        /// Print JSON (a list), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Describe one service: its instances and, for a nameko-rs service, its RPC methods'
    /// signatures, its entrypoints and the events it dispatched.
    Describe {
        /// The service.
        service: String,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration in effect, passwords masked.
    ShowConfig,
}

/// How long discovery waits for a service to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The services live on the broker, each with its description (`None`: it does not describe
/// itself, or has no RPC queue to be asked on).
async fn discover(
    cli: &Cli,
    config: &Config,
    session: &Session,
) -> Result<Vec<(LiveService, Option<ServiceDescription>)>, String> {
    let services = Discovery::new(config, cli.management.as_deref())
        .map_err(|e| e.to_string())?
        .services()
        .await
        .map_err(|e| e.to_string())?;
    let client = session.client.with_timeout(DESCRIBE_TIMEOUT);
    let asked = services.iter().map(|service| {
        let client = &client;
        async move {
            if !service.rpc {
                return None;
            }
            nameko::discovery::describe(client, &service.name)
                .await
                .unwrap_or_else(|e| {
                    eprintln!(
                        "warning: {} did not describe itself: {}",
                        service.name,
                        describe(&e)
                    );
                    None
                })
        }
    });
    let descriptions = futures_util::future::join_all(asked).await;
    Ok(services.into_iter().zip(descriptions).collect())
}

fn instances(count: usize) -> String {
    match count {
        1 => "1 instance".to_owned(),
        n => format!("{n} instances"),
    }
}

/// What `services` says of a service after its name and instances.
fn summary(service: &LiveService, description: Option<&ServiceDescription>) -> String {
    match description {
        Some(description) => {
            let methods: Vec<&str> = description.rpc.iter().map(|m| m.name.as_str()).collect();
            format!("{}: {}", description.framework, methods.join(", "))
        }
        None if service.rpc => "does not describe itself (Python nameko)".to_owned(),
        None => "event handlers only".to_owned(),
    }
}

/// Connects and discovers the services, or says why not on stderr.
async fn connect_and_discover(
    cli: &Cli,
    config: &Config,
) -> Result<Vec<(LiveService, Option<ServiceDescription>)>, ()> {
    let session = Session::open(config).await?;
    discover(cli, config, &session)
        .await
        .map_err(|e| eprintln!("error: {e}"))
}

/// A service as `--json` prints it.
fn as_json(service: &LiveService, description: Option<&ServiceDescription>) -> Value {
    serde_json::json!({
        "name": service.name,
        "instances": service.instances,
        "rpc": service.rpc,
        "description": description,
    })
}

async fn services(cli: &Cli, config: &Config, json: bool) -> ExitCode {
    let Ok(found) = connect_and_discover(cli, config).await else {
        return ExitCode::FAILURE;
    };
    if json {
        let list: Vec<Value> = found
            .iter()
            .map(|(service, description)| as_json(service, description.as_ref()))
            .collect();
        println!("{}", pretty(&Value::Array(list)));
        return ExitCode::SUCCESS;
    }
    let width = found
        .iter()
        .map(|(service, _)| service.name.len())
        .max()
        .unwrap_or(0);
    for (service, description) in &found {
        println!(
            "{:<width$}  {:<11}  {}",
            service.name,
            instances(service.instances),
            summary(service, description.as_ref())
        );
    }
    ExitCode::SUCCESS
}

async fn describe_service(cli: &Cli, config: &Config, name: &str, json: bool) -> ExitCode {
    let Ok(found) = connect_and_discover(cli, config).await else {
        return ExitCode::FAILURE;
    };
    let Some((service, description)) = found.into_iter().find(|(s, _)| s.name == name) else {
        eprintln!("error: no service `{name}` runs on the broker (`nameko services` lists them)");
        return ExitCode::FAILURE;
    };
    if json {
        println!("{}", pretty(&as_json(&service, description.as_ref())));
        return ExitCode::SUCCESS;
    }
    match description {
        Some(description) => {
            println!(
                "{}: {}, {}",
                service.name,
                instances(service.instances),
                description.framework
            );
            for line in &description.entrypoints {
                println!("  {line}");
            }
            if !description.events_dispatched.is_empty() {
                println!(
                    "  dispatched so far: {}",
                    description.events_dispatched.join(", ")
                );
            }
        }
        None => println!(
            "{}: {}, {}",
            service.name,
            instances(service.instances),
            summary(&service, None)
        ),
    }
    ExitCode::SUCCESS
}

/// The shell's line editor helper: completes service and method names.
struct ShellHelper(Completions);

impl rustyline::completion::Completer for ShellHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.0.complete(line, pos))
    }
}

impl rustyline::hint::Hinter for ShellHelper {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for ShellHelper {}

impl rustyline::validate::Validator for ShellHelper {}

impl rustyline::Helper for ShellHelper {}

/// What the shell completes: the services discovery finds and their methods; nothing when
/// discovery cannot run (no management API).
async fn completions(cli: &Cli, config: &Config, session: &Session) -> Completions {
    let mut completions = Completions::default();
    if let Ok(found) = discover(cli, config, session).await {
        for (service, description) in found {
            let methods = description
                .map(|d| d.rpc.into_iter().map(|m| m.name).collect())
                .unwrap_or_default();
            completions.services.insert(service.name, methods);
        }
    }
    completions
}

fn config(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::from_env(),
    };
    for define in &cli.defines {
        let (key, value) = define
            .split_once('=')
            .ok_or_else(|| format!("`{define}` is not KEY=VALUE"))?;
        config
            .define(key.trim(), value)
            .map_err(|e| e.to_string())?;
    }
    if let Some(broker) = &cli.broker {
        config.amqp_uri = Some(broker.clone());
    }
    if config.amqp_uri.is_none() {
        config.amqp_uri = Some("amqp://guest:guest@localhost".into());
    }
    Ok(config)
}

fn describe(error: &RpcError) -> String {
    match error {
        RpcError::Remote(remote) => format!("{}: {}", remote.exc_type, remote.value),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

struct Session {
    client: ClusterRpcClient,
    dispatcher: StandaloneEventDispatcher,
}

impl Session {
    /// Connects, or says why not on stderr.
    async fn open(config: &Config) -> Result<Session, ()> {
        Session::connect(config)
            .await
            .map_err(|e| eprintln!("error: {e}"))
    }

    async fn connect(config: &Config) -> Result<Session, String> {
        let transport = match &config.amqp_ssl {
            Some(tls) => nameko::transport::connect_with_tls(&config.connection_uri(), tls).await,
            None => nameko::transport::connect(&config.connection_uri()).await,
        }
        .map_err(|e| e.to_string())?;
        let client = ClusterRpcClient::standalone(transport.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Session {
            client,
            dispatcher: StandaloneEventDispatcher::new(transport, config),
        })
    }

    async fn run(&self, line: Line) -> Result<Option<Value>, String> {
        match line {
            Line::Call {
                service,
                method,
                args,
                kwargs,
            } => self
                .client
                .service(service)
                .call_with::<_, _, Value>(&method, args, Value::Object(kwargs))
                .await
                .map(Some)
                .map_err(|e| describe(&e)),
            Line::Dispatch {
                service,
                event_type,
                payload,
            } => self
                .dispatcher
                .dispatch(&service, &event_type, &payload)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
        }
    }
}

async fn shell(cli: &Cli, config: &Config) -> ExitCode {
    let Ok(session) = Session::open(config).await else {
        return ExitCode::FAILURE;
    };
    if std::io::stdin().is_terminal() {
        let completions = completions(cli, config, &session).await;
        interactive(&session, config, completions).await
    } else {
        // Piped: line by line, stopping at the first error.
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else {
                return ExitCode::FAILURE;
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok(parsed) => match session.run(parsed).await {
                    Ok(Some(value)) => println!("{}", pretty(&value)),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    }
}

async fn interactive(session: &Session, config: &Config, completions: Completions) -> ExitCode {
    let mut editor =
        match rustyline::Editor::<ShellHelper, rustyline::history::DefaultHistory>::new() {
            Ok(editor) => editor,
            Err(e) => {
                eprintln!("error: cannot start the line editor: {e}");
                return ExitCode::FAILURE;
            }
        };
    editor.set_helper(Some(ShellHelper(completions)));
    let history =
        std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".nameko_history"));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    println!(
        "nameko shell on {}\n  service.method(arg, key=value)   call a method (Rust or Python)\n  dispatch(\"service\", \"event_type\", payload)\n  Tab completes service and method names; Ctrl-D to leave",
        nameko::transport::mask_password(config.broker_uri())
    );
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        match parse_line(trimmed) {
            Ok(parsed) => match session.run(parsed).await {
                Ok(Some(value)) => println!("{}", pretty(&value)),
                Ok(None) => println!("dispatched"),
                Err(e) => println!("error: {e}"),
            },
            Err(e) => println!("error: {e}"),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    ExitCode::SUCCESS
}

async fn execute(cli: Cli) -> ExitCode {
    let config = match config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::ShowConfig => {
            print!("{}", config.to_yaml());
            ExitCode::SUCCESS
        }
        Command::Shell => shell(&cli, &config).await,
        Command::Services { json } => services(&cli, &config, json).await,
        Command::Describe { ref service, json } => {
            describe_service(&cli, &config, service, json).await
        }
        Command::Call {
            target,
            args,
            kwargs,
            timeout,
        } => {
            let Some((service, method)) = target.split_once('.') else {
                eprintln!("error: `{target}` is not service.method");
                return ExitCode::FAILURE;
            };
            let (args, kwargs): (Value, Value) =
                match (serde_json::from_str(&args), serde_json::from_str(&kwargs)) {
                    (Ok(args @ Value::Array(_)), Ok(kwargs @ Value::Object(_))) => (args, kwargs),
                    _ => {
                        eprintln!(
                            "error: the arguments are a JSON list and --kwargs a JSON object"
                        );
                        return ExitCode::FAILURE;
                    }
                };
            let Ok(timeout) = Duration::try_from_secs_f64(timeout) else {
                eprintln!("error: --timeout takes a positive number of seconds");
                return ExitCode::FAILURE;
            };
            let Ok(session) = Session::open(&config).await else {
                return ExitCode::FAILURE;
            };
            let result = session
                .client
                .with_timeout(timeout)
                .service(service.to_owned())
                .call_with::<_, _, Value>(method, args, kwargs)
                .await;
            match result {
                Ok(value) => {
                    println!("{value}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", describe(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dispatch {
            service,
            event_type,
            payload,
        } => {
            let payload: Value = match serde_json::from_str(&payload) {
                Ok(payload) => payload,
                Err(e) => {
                    eprintln!("error: the payload is not JSON: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let Ok(session) = Session::open(&config).await else {
                return ExitCode::FAILURE;
            };
            match session
                .run(Line::Dispatch {
                    service,
                    event_type,
                    payload,
                })
                .await
            {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(execute(cli))
}
