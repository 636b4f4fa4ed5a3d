//! Websockets: RPC round trips over `/ws` to a `#[ws_rpc]` method, and the fan-out of one hub
//! broadcast to 1,000 sockets, each against a bare axum websocket server doing the same work
//! (echoing the request's correlation id with a result; sending one frame to each of its
//! sockets), measured in the same run.
//!
//! ```text
//! cargo bench --bench websocket -- [--requests 20000] [--sockets 1000] [--rounds 3]
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use nameko::prelude::*;
use nameko::websocket::{HubError, WebSocketHub};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Sequential requests per round trip measurement (spread over `--clients` sockets).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Sockets sending requests at once.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Sockets a broadcast goes to.
    #[arg(long, default_value_t = 1_000)]
    sockets: usize,
    /// Broadcasts per fan-out measurement.
    #[arg(long, default_value_t = 50)]
    broadcasts: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure the bare server's fan-out first.
    #[arg(long)]
    bare_first: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The service measured.
#[derive(Dependencies)]
struct Bench {
    hub: WebSocketHub,
}

#[service(name = "bench")]
impl Bench {
    #[ws_rpc]
    fn echo(&self, socket_id: String, value: u64) -> u64 {
        let _ = socket_id;
        value
    }

    #[ws_rpc]
    fn join(&self, socket_id: String) -> Result<(), HubError> {
        self.hub.subscribe(&socket_id, "all")
    }

    #[ws_rpc]
    fn shout(&self, socket_id: String, n: u64) -> Result<usize, HubError> {
        let _ = socket_id;
        self.hub.broadcast("all", "shout", &n)
    }
}

/// The bare server: echo requests with a result frame; `shout` sends one frame to every socket.
#[derive(Clone, Default)]
struct Bare {
    sockets: Arc<Mutex<Vec<mpsc::Sender<String>>>>,
}

async fn bare_upgrade(State(bare): State<Bare>, upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(move |socket| bare_socket(bare, socket))
}

async fn bare_socket(bare: Bare, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<String>(256);
    bare.sockets.lock().unwrap().push(tx.clone());
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(AxumMessage::Text(frame.into())).await.is_err() {
                break;
            }
        }
    });
    let _ = tx
        .send(r#"{"type": "event", "event": "connected", "data": {"socket_id": "x"}}"#.into())
        .await;
    while let Some(Ok(AxumMessage::Text(text))) = stream.next().await {
        let request: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        let cid = request["correlation_id"].to_string();
        if request["method"] == "shout" {
            let frame = format!(
                r#"{{"type": "event", "event": "shout", "data": {}}}"#,
                request["data"]["n"]
            );
            let sockets = bare.sockets.lock().unwrap().clone();
            for socket in &sockets {
                let _ = socket.try_send(frame.clone());
            }
        }
        let data = &request["data"]["value"];
        let reply = format!(
            r#"{{"type": "result", "success": true, "data": {data}, "correlation_id": {cid}}}"#
        );
        if tx.send(reply).await.is_err() {
            break;
        }
    }
}

async fn connect(address: &str) -> Socket {
    // Without Nagle's algorithm, as the servers run.
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{address}/ws"), None, true)
            .await
            .expect("connect");
    next_text(&mut socket).await; // connected
    socket
}

async fn next_text(socket: &mut Socket) -> String {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn call(socket: &mut Socket, frame: String) -> String {
    socket
        .send(Message::Text(frame.into()))
        .await
        .expect("send");
    loop {
        let text = next_text(socket).await;
        if text.starts_with(r#"{"type": "result""#) {
            return text;
        }
    }
}

/// Round trips per second: `clients` sockets, each sending its share one after another.
async fn round_trips(address: &str, args: &Args) -> f64 {
    let per_client = args.requests / args.clients;
    let mut sockets = Vec::new();
    for _ in 0..args.clients {
        sockets.push(connect(address).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                for n in 0..per_client {
                    let frame = format!(
                        r#"{{"method": "echo", "data": {{"value": {n}}}, "correlation_id": "{n}"}}"#
                    );
                    call(&mut socket, frame).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    (per_client * args.clients) as f64 / started.elapsed().as_secs_f64()
}

/// The median time from a broadcast request to its frame reaching every one of `sockets`.
async fn fan_out(address: &str, args: &Args) -> Duration {
    let mut listeners = Vec::new();
    for _ in 0..args.sockets {
        let mut socket = connect(address).await;
        call(&mut socket, r#"{"method": "join"}"#.into()).await;
        listeners.push(socket);
    }
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    for mut socket in listeners {
        let arrived_tx = arrived_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message
                    && text
                        .as_str()
                        .starts_with(r#"{"type": "event", "event": "shout""#)
                {
                    let _ = arrived_tx.send(());
                }
            }
        });
    }
    let mut sender = connect(address).await;
    let mut times = Vec::new();
    for n in 0..args.broadcasts {
        let started = Instant::now();
        call(
            &mut sender,
            format!(r#"{{"method": "shout", "data": {{"n": {n}}}}}"#),
        )
        .await;
        for _ in 0..args.sockets {
            arrived.recv().await.expect("a frame");
        }
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let services = ServiceRunner::new(
        Config::default()
            .with_broker("memory://ws-bench")
            .with_web_server_address("127.0.0.1:0"),
    )
    .with_service::<Bench>()
    .start()
    .await?;
    let ours = services.http_address().expect("an HTTP server").to_string();
    let bare = Bare::default();
    let router = axum::Router::new()
        .route("/ws", axum::routing::get(bare_upgrade))
        .with_state(bare.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let theirs = listener.local_addr()?.to_string();
    // TCP_NODELAY, as nameko-rs's server sets it.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (mut ours_rps, mut bare_rps) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        bare_rps.push(round_trips(&theirs, &args).await);
        ours_rps.push(round_trips(&ours, &args).await);
    }
    let (ours_rps, bare_rps) = (median(ours_rps), median(bare_rps));
    println!(
        "round trips ({} sockets): nameko-rs {ours_rps:.0}/s, bare axum {bare_rps:.0}/s, ratio {:.2}",
        args.clients,
        ours_rps / bare_rps
    );
    // Ours first, then the bare server's: each server's sockets stay connected after its
    // measurement, so the second measurement runs with twice as many sockets on the machine.
    let (ours_fan, bare_fan) = if args.bare_first {
        let bare = fan_out(&theirs, &args).await;
        (fan_out(&ours, &args).await, bare)
    } else {
        let ours = fan_out(&ours, &args).await;
        (ours, fan_out(&theirs, &args).await)
    };
    println!(
        "broadcast to {} sockets (median of {}): nameko-rs {:.2} ms, bare axum {:.2} ms, ratio {:.2}",
        args.sockets,
        args.broadcasts,
        ours_fan.as_secs_f64() * 1e3,
        bare_fan.as_secs_f64() * 1e3,
        bare_fan.as_secs_f64() / ours_fan.as_secs_f64()
    );
    services.stop().await?;
    Ok(())
}
