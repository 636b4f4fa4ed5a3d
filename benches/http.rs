//! Requests per second for the talk's multiply endpoint served by a nameko-rs `#[http]` method,
//! against a bare axum handler doing the same work, with the same load generator in the same run.
//!
//! ```text
//! cargo bench --bench http -- [--seconds 5] [--connections 50] [--rounds 3]
//! ```
//!
//! Needs `wrk` (Debian's package). Both servers run in this process on loopback, one at a time;
//! wrk runs as a separate process with 2 threads.

use std::process::Command;

use axum::extract::{Path, Query};
use clap::Parser;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/traces.rs"]
mod traces;
use nameko::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `max_workers` of the nameko-rs service (every request is a worker).
    #[arg(long, default_value_t = 10)]
    max_workers: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Serve only, for profiling one server: print both addresses and wait for Ctrl-C.
    #[arg(long)]
    serve_only: bool,
}

// The service measured is the talk's example itself.
#[path = "../examples/multiply.rs"]
mod multiply;
use multiply::HttpService;

#[derive(Deserialize)]
struct Third {
    third: Option<i64>,
}

async fn bare_axum(Path((first, second)): Path<(i64, i64)>, Query(q): Query<Third>) -> Json<Value> {
    Json(json!({ "value": first * second * q.third.unwrap_or(1) }))
}

/// Runs wrk against `url`; returns requests per second.
fn wrk(url: &str, args: &Args) -> anyhow::Result<f64> {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{}s", args.seconds),
            url,
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}): apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = text
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    anyhow::ensure!(!errors, "wrk saw errors:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output:\n{text}"))
}

/// Allocations per request, over `n` sequential requests on one keep-alive connection from a
/// client that allocates nothing per request.
fn allocations_per_request(
    address: std::net::SocketAddr,
    path: &str,
    n: u64,
) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut buffer = [0u8; 4096];
    let mut exchange = |stream: &mut std::net::TcpStream| -> anyhow::Result<()> {
        stream.write_all(request.as_bytes())?;
        let mut filled = 0;
        loop {
            let read = stream.read(&mut buffer[filled..])?;
            anyhow::ensure!(read > 0, "the server closed the connection");
            filled += read;
            let text = &buffer[..filled];
            if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&text[..end])?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if filled >= end + 4 + length {
                    return Ok(());
                }
            }
        }
    };
    for _ in 0..100 {
        exchange(&mut stream)?;
    }
    let started = counting_alloc::start();
    for _ in 0..n {
        exchange(&mut stream)?;
    }
    let counted = counting_alloc::stop(started);
    Ok(counted as f64 / n as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    traces::init_logging(nameko::log::DEFAULT_LOG_FILTER);
    eprintln!("traces: {}", traces::mode());
    let args = Args::parse();
    let _ = args.bench;

    let bare =
        axum::Router::new().route("/multiply/{first}/{second}", axum::routing::get(bare_axum));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, bare).await });

    let config = Config::default()
        .with_broker("memory://bench-http")
        .with_web_server_address("127.0.0.1:0")
        .with_max_workers(args.max_workers);
    let running = ServiceRunner::new(config)
        .with_service::<HttpService>()
        .start()
        .await?;
    let ours_address = running.http_address().expect("an HTTP server");

    if args.serve_only {
        println!("bare axum: http://{bare_address}\nnameko-rs: http://{ours_address}");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let path = "/multiply/6/7?third=2";
    let (bare_allocs, our_allocs) = tokio::task::block_in_place(|| {
        anyhow::Ok((
            allocations_per_request(bare_address, path, 10_000)?,
            allocations_per_request(ours_address, path, 10_000)?,
        ))
    })?;
    eprintln!("allocations per request: bare axum {bare_allocs:.1}, nameko-rs {our_allocs:.1}");
    let (mut bare_rates, mut our_rates) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let b =
            tokio::task::block_in_place(|| wrk(&format!("http://{bare_address}{path}"), &args))?;
        let o =
            tokio::task::block_in_place(|| wrk(&format!("http://{ours_address}{path}"), &args))?;
        eprintln!("round {round}: bare axum {b:.0}/s, nameko-rs {o:.0}/s");
        bare_rates.push(b);
        our_rates.push(o);
    }
    let (bare, ours) = (median(bare_rates), median(our_rates));
    println!(
        "\nGET {path}: requests per second (wrk -t2 -c{} -d{}s, median of {} rounds)\n",
        args.connections, args.seconds, args.rounds
    );
    println!("| server | requests/s | ratio to bare axum | allocations per request |");
    println!("|---|---:|---:|---:|");
    println!("| bare axum handler | {bare:.0} | 1.00 | {bare_allocs:.1} |");
    println!(
        "| nameko-rs `#[http]` method | {ours:.0} | {:.2} | {our_allocs:.1} |",
        ours / bare
    );
    running.stop().await?;
    Ok(())
}
