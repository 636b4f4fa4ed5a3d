//! Events handled per second by a nameko-rs event handler, against a raw lapin consumer doing
//! the same work, in the same run on the same broker.
//!
//! ```text
//! cargo bench --bench events -- [--broker amqp://guest:guest@localhost] [--events 10000] [--rounds 3]
//! ```
//!
//! Each round fills a durable queue with the same events (persistent JSON, as Nameko publishes
//! them), then times how long the consumer takes to drain it:
//! - raw lapin: one consumer, prefetch 10, parses each body as JSON and acks it;
//! - nameko-rs: a service with one `#[event_handler]` (prefetch 10, `max_workers` 10), which
//!   decodes each payload into a struct and counts it; acked after the handler returns.
//!
//! Also measured, without a baseline: the same handler on the embedded broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use nameko::prelude::*;
use nameko::{Dependency, DependencyContext};
use serde::Deserialize;
use tokio::sync::Notify;

#[derive(Parser)]
struct Args {
    /// The RabbitMQ to measure on.
    #[arg(long, env = "AMQP_URI", default_value = "amqp://guest:guest@localhost")]
    broker: String,
    /// Events per round.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Counts handled events and wakes the bench when a round's target is reached.
#[derive(Clone, Default)]
pub struct Counter(Arc<(AtomicUsize, AtomicUsize, Notify)>);

impl Counter {
    fn global() -> &'static Counter {
        static COUNTER: std::sync::OnceLock<Counter> = std::sync::OnceLock::new();
        COUNTER.get_or_init(Counter::default)
    }
    fn expect(&self, n: usize) {
        self.0.0.store(0, Ordering::SeqCst);
        self.0.1.store(n, Ordering::SeqCst);
    }
    fn hit(&self) {
        if self.0.0.fetch_add(1, Ordering::SeqCst) + 1 == self.0.1.load(Ordering::SeqCst) {
            self.0.2.notify_one();
        }
    }
    async fn done(&self) {
        self.0.2.notified().await;
    }
}

impl Dependency for Counter {
    async fn build(_cx: &DependencyContext, _field: &'static str) -> Result<Self, nameko::Error> {
        Ok(Counter::global().clone())
    }
}

#[derive(Deserialize)]
pub struct Tick {
    #[allow(dead_code)]
    n: u64,
}

#[derive(Dependencies)]
pub struct BenchHandler {
    counter: Counter,
}

#[service(name = "bench_handler")]
impl BenchHandler {
    #[event_handler("bench_source", "tick")]
    async fn on_tick(&self, tick: Tick) {
        let _ = tick;
        self.counter.hit();
    }
}

const NAMEKO_QUEUE: &str = "evt-bench_source-tick--bench_handler.on_tick";
const RAW_QUEUE: &str = "bench-raw-events";

fn payload(n: usize) -> Vec<u8> {
    format!("{{\"n\": {n}}}").into_bytes()
}

/// Publishes `count` events to `exchange` with confirms, as Nameko does (persistent JSON).
async fn fill(connection: &Connection, exchange: &str, count: usize) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default());
    for n in 0..count {
        channel
            .basic_publish(
                exchange.into(),
                "tick".into(),
                BasicPublishOptions::default(),
                &payload(n),
                properties.clone(),
            )
            .await?;
    }
    channel.wait_for_confirms().await?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

async fn declare(connection: &Connection, exchange: &str, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "tick".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Raw lapin: drain `count` events with prefetch 10, parsing and acking each.
async fn raw_round(connection: &Connection, count: usize) -> anyhow::Result<Duration> {
    fill(connection, "bench_raw.events", count).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    let start = Instant::now();
    let mut consumer = channel
        .basic_consume(
            RAW_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut handled = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let _: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        delivery.ack(BasicAckOptions::default()).await?;
        handled += 1;
        if handled == count {
            break;
        }
    }
    let elapsed = start.elapsed();
    channel.close(200, "OK".into()).await?;
    Ok(elapsed)
}

/// nameko-rs: start the handler service on a filled queue and time until it handled `count`.
async fn nameko_round(
    broker: &str,
    fill_with: Option<&Connection>,
    count: usize,
) -> anyhow::Result<Duration> {
    let config = Config::default().with_broker(broker);
    if let Some(connection) = fill_with {
        fill(connection, "bench_source.events", count).await?;
    }
    let counter = Counter::global();
    counter.expect(count);
    let start = Instant::now();
    let running = ServiceRunner::new(config)
        .with_service::<BenchHandler>()
        .start()
        .await?;
    if fill_with.is_none() {
        // The embedded broker: the queue exists now; publish through a standalone dispatcher.
        let dispatcher =
            nameko::events::StandaloneEventDispatcher::new(running.transport(), running.config());
        for n in 0..count {
            dispatcher
                .dispatch("bench_source", "tick", &serde_json::json!({ "n": n }))
                .await?;
        }
    }
    counter.done().await;
    let elapsed = start.elapsed();
    running.stop().await?;
    Ok(elapsed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = args.bench;
    let connection = Connection::connect(&args.broker, ConnectionProperties::default()).await?;
    declare(&connection, "bench_raw.events", RAW_QUEUE).await?;
    declare(&connection, "bench_source.events", NAMEKO_QUEUE).await?;

    let (mut raw, mut ours, mut embedded) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let r = args.events as f64 / raw_round(&connection, args.events).await?.as_secs_f64();
        let o = args.events as f64
            / nameko_round(&args.broker, Some(&connection), args.events)
                .await?
                .as_secs_f64();
        let e = args.events as f64
            / nameko_round(&format!("memory://bench-{round}"), None, args.events)
                .await?
                .as_secs_f64();
        eprintln!("round {round}: raw lapin {r:.0}/s, nameko-rs {o:.0}/s, embedded {e:.0}/s");
        raw.push(r);
        ours.push(o);
        embedded.push(e);
    }
    let (raw, ours, embedded) = (median(raw), median(ours), median(embedded));
    println!(
        "\nEvents handled per second ({} events per round, median of {} rounds)\n",
        args.events, args.rounds
    );
    println!("| consumer | events/s | ratio to raw lapin |");
    println!("|---|---:|---:|");
    println!("| raw lapin (prefetch 10, parse + ack) | {raw:.0} | 1.00 |");
    println!(
        "| nameko-rs `#[event_handler]` on RabbitMQ | {ours:.0} | {:.2} |",
        ours / raw
    );
    println!(
        "| nameko-rs `#[event_handler]` on the embedded broker (dispatch included) | {embedded:.0} | — |"
    );

    let channel = connection.create_channel().await?;
    for queue in [RAW_QUEUE, NAMEKO_QUEUE] {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    connection.close(200, "OK".into()).await?;
    Ok(())
}
