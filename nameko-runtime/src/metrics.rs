//! The process's metrics, in the Prometheus text format (OpenMetrics): workers by service and
//! entrypoint (started, finished by outcome and error type, durations, in use against
//! `max_workers`), RPC client calls by outcome, events dispatched, HTTP requests by route and
//! status, broker connections lost and regained.
//!
//! The HTTP server serves them at `/metrics` (unless a route of a service claims the path), and
//! `nameko::main` on `METRICS_ADDRESS` for services without HTTP routes. [`render`] gives the
//! text to serve them elsewhere; [`register`] adds an application's own metrics to it.
//!
//! The counters are the process's: they go on across the restarts that follow a lost broker
//! connection. Each entrypoint holds its own counters, so a worker's cost is a few atomic
//! additions; labels are looked up only for a failure's error type, an RPC call's outcome, an
//! event type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The buckets of the duration histograms, in seconds: half a millisecond to 30 s.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntrypointLabels {
    service: &'static str,
    entrypoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: &'static str,
    entrypoint: &'static str,
    /// `success`, `expected_error` (the type is one of the method's `expected_exceptions`) or
    /// `error`.
    outcome: &'static str,
    /// The error's type (`exc_type`), empty for a success.
    error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    source_service: String,
    event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    service: String,
    queue: String,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    /// The route as declared (`/multiply/<int:a>/<int:b>`), empty when none matched.
    route: &'static str,
    status: u16,
}

/// Hashes the status and the lengths of the strings, not their bytes: enough to tell a
/// process's few routes apart (equal labels hash equally; the rest `Eq` sorts out), and much
/// less than hashing every request's route text.
impl std::hash::Hash for HttpLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let lengths = (self.method.len() as u64) << 32 | (self.route.len() as u64) << 16;
        state.write_u64(lengths | u64::from(self.status));
    }
}

/// Every metric of the runtime, and the registry they are in.
struct Metrics {
    registry: Mutex<Registry>,
    workers_started: Family<EntrypointLabels, Counter>,
    workers_finished: Family<OutcomeLabels, Counter>,
    worker_duration: Family<EntrypointLabels, Histogram>,
    rpc_calls: Family<CallLabels, Counter>,
    /// `rpc_calls`' counters by service and method (one per outcome), found without
    /// allocating.
    rpc_call_counters: ByTwoNames<[Counter; CALL_OUTCOMES.len()]>,
    events_dispatched: Family<EventLabels, Counter>,
    event_counters: ByTwoNames<Counter>,
    http_requests: Family<HttpLabels, Counter>,
    messages_held: Family<QueueLabels, Gauge>,
    connections_lost: Counter,
    reconnects: Counter,
    services: Arc<ServiceGauges>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::default();
        let workers_started = Family::default();
        registry.register(
            "nameko_workers_started",
            "Workers started, by service and entrypoint",
            workers_started.clone(),
        );
        let workers_finished = Family::default();
        registry.register(
            "nameko_workers_finished",
            "Workers finished, by outcome (success, expected_error, error) and error type",
            workers_finished.clone(),
        );
        let worker_duration =
            Family::<EntrypointLabels, Histogram>::new_with_constructor(duration_histogram as _);
        registry.register(
            "nameko_worker_duration_seconds",
            "How long workers took, from their start to their result",
            worker_duration.clone(),
        );
        let rpc_calls = Family::default();
        registry.register(
            "nameko_rpc_client_calls",
            "RPC calls made by this process, by outcome (ok, remote_error, timeout, \
             unknown_service, reply_lost, failed)",
            rpc_calls.clone(),
        );
        let events_dispatched = Family::default();
        registry.register(
            "nameko_events_dispatched",
            "Events dispatched, by source service and event type",
            events_dispatched.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "nameko_http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let messages_held = Family::default();
        registry.register(
            "nameko_messages_held",
            "Messages a service's consumer took and has not settled yet (waiting for a worker \
             slot or being worked on), by service and queue",
            messages_held.clone(),
        );
        let connections_lost = Counter::default();
        registry.register(
            "nameko_broker_connections_lost",
            "Broker connections the services lost",
            connections_lost.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "nameko_broker_reconnects",
            "Times the services started again on a new broker connection",
            reconnects.clone(),
        );
        let services = Arc::new(ServiceGauges::default());
        registry.register_collector(Box::new(services.clone()));
        Metrics {
            registry: Mutex::new(registry),
            workers_started,
            workers_finished,
            worker_duration,
            rpc_calls,
            rpc_call_counters: ByTwoNames::default(),
            events_dispatched,
            event_counters: ByTwoNames::default(),
            http_requests,
            messages_held,
            connections_lost,
            reconnects,
            services,
        }
    })
}

/// The metrics of the process (the runtime's and those added with [`register`]) in the
/// Prometheus text format (OpenMetrics, [`CONTENT_TYPE`]). A labelled family (workers by
/// service, say) appears once it has a sample.
///
/// ```
/// let text = nameko::metrics::render();
/// assert!(text.contains("nameko_broker_connections_lost_total 0"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub fn render() -> String {
    let mut text = String::new();
    let registry = metrics().registry.lock().unwrap_or_else(|p| p.into_inner());
    // Writing to a `String` does not fail; an encoder's error would leave a partial text.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "could not encode the metrics");
    }
    text
}

/// Adds an application's metrics to those [`render`] (and so `/metrics`) shows.
///
/// ```
/// use nameko::metrics::prometheus_client::metrics::counter::Counter;
///
/// let orders = Counter::<u64>::default();
/// nameko::metrics::register(|registry| {
///     registry.register("shop_orders", "Orders taken", orders.clone());
/// });
/// orders.inc();
/// assert!(nameko::metrics::render().contains("shop_orders_total 1"));
/// ```
pub fn register(f: impl FnOnce(&mut Registry)) {
    f(&mut metrics().registry.lock().unwrap_or_else(|p| p.into_inner()));
}

/// The counters of one entrypoint of one service, looked up once when it starts.
#[derive(Clone)]
pub(crate) struct EntrypointMetrics {
    service: &'static str,
    entrypoint: &'static str,
    started: Counter,
    succeeded: Counter,
    duration: Histogram,
}

impl EntrypointMetrics {
    pub(crate) fn new(service: &'static str, entrypoint: &'static str) -> Self {
        let m = metrics();
        let labels = EntrypointLabels {
            service,
            entrypoint,
        };
        EntrypointMetrics {
            service,
            entrypoint,
            started: m.workers_started.get_or_create_owned(&labels),
            succeeded: m.workers_finished.get_or_create_owned(&OutcomeLabels {
                service,
                entrypoint,
                outcome: "success",
                error_type: String::new(),
            }),
            duration: m.worker_duration.get_or_create_owned(&labels),
        }
    }

    pub(crate) fn started(&self) {
        self.started.inc();
    }

    /// A worker finished after `elapsed`: successfully, or with an error of type `error_type`,
    /// one the entrypoint expects or not.
    pub(crate) fn finished(&self, elapsed: Duration, failure: Option<(&str, bool)>) {
        self.duration.observe(elapsed.as_secs_f64());
        match failure {
            None => {
                self.succeeded.inc();
            }
            Some((error_type, expected)) => {
                metrics()
                    .workers_finished
                    .get_or_create(&OutcomeLabels {
                        service: self.service,
                        entrypoint: self.entrypoint,
                        outcome: if expected { "expected_error" } else { "error" },
                        error_type: error_type.to_owned(),
                    })
                    .inc();
            }
        }
    }
}

/// Values by two names (a service's and a method's, say), found without allocating once
/// there.
struct ByTwoNames<V>(RwLock<ByName<ByName<V>>>);

/// Looked up at every call or dispatch: a fast hasher (the names are the application's own).
type ByName<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

impl<V> Default for ByTwoNames<V> {
    fn default() -> Self {
        ByTwoNames(RwLock::default())
    }
}

impl<V> ByTwoNames<V> {
    /// Calls `f` with the value for `(a, b)`, made by `make` the first time.
    fn with(&self, a: &str, b: &str, make: impl FnOnce() -> V, f: impl FnOnce(&V)) {
        {
            let map = self.0.read().unwrap_or_else(|p| p.into_inner());
            if let Some(value) = map.get(a).and_then(|inner| inner.get(b)) {
                return f(value);
            }
        }
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let value = map
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_insert_with(make);
        f(value);
    }
}

/// The outcome of an RPC call, as `nameko_rpc_client_calls_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    RemoteError,
    Timeout,
    UnknownService,
    ReplyLost,
    Failed,
}

/// The outcomes' label values, in the order of [`CallOutcome`].
const CALL_OUTCOMES: [&str; 6] = [
    "ok",
    "remote_error",
    "timeout",
    "unknown_service",
    "reply_lost",
    "failed",
];

/// Counts an RPC call made by a client of this process, by its outcome. A method's first call
/// shows every outcome, at 0 but its own.
pub(crate) fn rpc_call(service: &str, method: &str, outcome: CallOutcome) {
    let m = metrics();
    m.rpc_call_counters.with(
        service,
        method,
        || {
            CALL_OUTCOMES.map(|outcome| {
                m.rpc_calls.get_or_create_owned(&CallLabels {
                    service: service.to_owned(),
                    method: method.to_owned(),
                    outcome,
                })
            })
        },
        |counters| {
            if let Some(counter) = counters.get(outcome as usize) {
                counter.inc();
            }
        },
    );
}

/// Counts an event dispatched (confirmed by the broker).
/// The gauge of the messages a consumer of `service` on `queue` holds unsettled, looked up once
/// per consumer: each delivery it takes is counted until it is settled or dropped
/// (`Delivery::hold`).
pub(crate) fn messages_held(service: &str, queue: &str) -> Gauge {
    metrics().messages_held.get_or_create_owned(&QueueLabels {
        service: service.to_owned(),
        queue: queue.to_owned(),
    })
}

pub(crate) fn event_dispatched(source_service: &str, event_type: &str) {
    let m = metrics();
    m.event_counters.with(
        source_service,
        event_type,
        || {
            m.events_dispatched.get_or_create_owned(&EventLabels {
                source_service: source_service.to_owned(),
                event_type: event_type.to_owned(),
            })
        },
        |counter| {
            counter.inc();
        },
    );
}

/// The event types `source_service` dispatched in this process so far, sorted.
pub(crate) fn events_dispatched_by(source_service: &str) -> Vec<String> {
    let map = metrics()
        .event_counters
        .0
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let mut types: Vec<String> = map
        .get(source_service)
        .map(|types| types.keys().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    types.sort();
    types
}

/// Counts an HTTP request answered.
pub(crate) fn http_request(method: &'static str, route: &'static str, status: u16) {
    metrics()
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status,
        })
        .inc();
}

/// Counts a broker connection lost by running services.
pub(crate) fn connection_lost() {
    metrics().connections_lost.inc();
}

/// Counts services started again on a new connection.
pub(crate) fn reconnected() {
    metrics().reconnects.inc();
}

/// Shows the worker slots of a running service (`nameko_workers_in_use` and
/// `nameko_max_workers`) for as long as `slots` lives: read at each scrape, so that taking a
/// slot costs nothing more.
pub(crate) fn watch_worker_slots(
    service: &'static str,
    slots: &Arc<tokio::sync::Semaphore>,
    max_workers: usize,
) {
    let mut services = metrics()
        .services
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    services.retain(|watched| watched.slots.strong_count() > 0);
    services.push(WatchedService {
        service,
        slots: Arc::downgrade(slots),
        max_workers,
    });
}

#[derive(Debug, Default)]
struct ServiceGauges(Mutex<Vec<WatchedService>>);

#[derive(Debug)]
struct WatchedService {
    service: &'static str,
    slots: Weak<tokio::sync::Semaphore>,
    max_workers: usize,
}

/// Writes a gauge with a value for each service.
fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'static str, usize)>,
) -> Result<(), std::fmt::Error> {
    let kind = ConstGauge::new(0i64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (service, value) in values {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(family.encode_family(&ServiceLabels { service })?)?;
    }
    Ok(())
}

/// A running service's worker slots, at a scrape.
struct SlotCounts {
    service: &'static str,
    in_use: usize,
    max: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: &'static str,
}

impl Collector for ServiceGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A service restarted on a new connection is shown once, with its newest slots.
        let mut live: Vec<SlotCounts> = Vec::new();
        for watched in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(slots) = watched.slots.upgrade() {
                live.retain(|counts| counts.service != watched.service);
                live.push(SlotCounts {
                    service: watched.service,
                    in_use: watched
                        .max_workers
                        .saturating_sub(slots.available_permits()),
                    max: watched.max_workers,
                });
            }
        }
        encode_gauges(
            &mut encoder,
            "nameko_workers_in_use",
            "Worker slots in use, by service",
            live.iter().map(|counts| (counts.service, counts.in_use)),
        )?;
        encode_gauges(
            &mut encoder,
            "nameko_max_workers",
            "Worker slots (max_workers), by service",
            live.iter().map(|counts| (counts.service, counts.max)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_counters_show_in_the_text() {
        let metrics = EntrypointMetrics::new("metrics_unit", "work");
        metrics.started();
        metrics.finished(Duration::from_millis(3), None);
        metrics.started();
        metrics.finished(Duration::from_millis(3), Some(("ValueError", true)));
        metrics.started();
        metrics.finished(Duration::from_secs(2), Some(("KeyError", false)));
        let text = render();
        for line in [
            r#"nameko_workers_started_total{service="metrics_unit",entrypoint="work"} 3"#,
            r#"nameko_workers_finished_total{service="metrics_unit",entrypoint="work",outcome="success",error_type=""} 1"#,
            r#"nameko_workers_finished_total{service="metrics_unit",entrypoint="work",outcome="expected_error",error_type="ValueError"} 1"#,
            r#"nameko_workers_finished_total{service="metrics_unit",entrypoint="work",outcome="error",error_type="KeyError"} 1"#,
            r#"nameko_worker_duration_seconds_count{service="metrics_unit",entrypoint="work"} 3"#,
            r#"nameko_worker_duration_seconds_bucket{le="0.005",service="metrics_unit",entrypoint="work"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn rpc_calls_show_every_outcome_once_called() {
        rpc_call("metrics_callee", "work", CallOutcome::Timeout);
        rpc_call("metrics_callee", "work", CallOutcome::Timeout);
        rpc_call("metrics_callee", "work", CallOutcome::Ok);
        let text = render();
        let line = |outcome: &str| {
            format!(
                r#"nameko_rpc_client_calls_total{{service="metrics_callee",method="work",outcome="{outcome}"}}"#
            )
        };
        for (outcome, count) in [
            ("ok", 1),
            ("remote_error", 0),
            ("timeout", 2),
            ("unknown_service", 0),
            ("reply_lost", 0),
            ("failed", 0),
        ] {
            let line = format!("{} {count}", line(outcome));
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert_eq!(CALL_OUTCOMES[CallOutcome::Failed as usize], "failed");
    }

    #[test]
    fn worker_slots_are_read_at_each_scrape() {
        let slots = Arc::new(tokio::sync::Semaphore::new(4));
        watch_worker_slots("metrics_slots", &slots, 4);
        let held = slots.clone().try_acquire_many_owned(3).unwrap();
        let text = render();
        assert!(
            text.contains("nameko_workers_in_use{service=\"metrics_slots\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("nameko_max_workers{service=\"metrics_slots\"} 4\n"),
            "{text}"
        );
        drop(held);
        drop(slots);
        assert!(
            !render().contains("metrics_slots"),
            "a stopped service is not shown"
        );
    }
}
