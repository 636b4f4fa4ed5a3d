//! Logging through `tracing`: the text format (the default), which names the worker a line
//! comes from, and a JSON format for log pipelines (`LOG_FORMAT: json`), one object a line.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::context::WorkerContext;

/// The log filter when neither `RUST_LOG` nor the configuration's `LOGGING` says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=warn,lapin::returned_messages=error";

/// How log lines are written (the configuration's `LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines: `2026-12-05T09:30:00.123456Z  INFO worker{service="greeter"
    /// entrypoint="greet" call_id="greeter.greet.<uuid>"}: my_service: message key=value`.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message` and the event's other
    /// fields; inside a worker also `service`, `entrypoint`, `call_id`, `call_id_stack` and,
    /// when the call carries a W3C `traceparent` in its context data, `trace_id`; the spans the
    /// event is in, as `spans`.
    Json,
}

impl LogFormat {
    /// `text` or `json` (any case); `None` for anything else.
    pub fn parse(name: &str) -> Option<LogFormat> {
        match name.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default:
/// [`DEFAULT_LOG_FILTER`]). Does nothing if one is installed already.
pub fn init_logging() {
    init_logging_with(None);
}

/// Like [`init_logging`], with `filter` (e.g. the configuration's `LOGGING`) used when `RUST_LOG`
/// is not set.
pub fn init_logging_with(filter: Option<String>) {
    init_logging_as(filter, LogFormat::Text);
}

/// Like [`init_logging_with`], writing lines in `format`.
pub fn init_logging_as(filter: Option<String>, format: LogFormat) {
    let filter = env_filter(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(WorkerFormat::default())
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonFormat).try_init(),
    };
}

/// `RUST_LOG`, else `filter`, else [`DEFAULT_LOG_FILTER`].
fn env_filter(filter: Option<String>) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let fallback = || tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER);
        match filter {
            Some(filter) => {
                tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| fallback())
            }
            None => fallback(),
        }
    })
}

/// Like [`init_logging_as`], with spans also exported as OpenTelemetry traces by `provider`
/// ([`trace::layer`](crate::trace::layer)): the log lines are filtered as they would be
/// without, the spans traced are the layer's.
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub fn init_logging_traced(
    filter: Option<String>,
    format: LogFormat,
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(WorkerFormat::default())
            .boxed(),
        LogFormat::Json => lines.with_ansi(false).event_format(JsonFormat).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(env_filter(filter)))
        .with(crate::trace::layer(provider))
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

impl<S, N> FormatEvent<S, N> for WorkerFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let in_worker_span = ctx
            .event_scope()
            .is_some_and(|mut scope| scope.any(|span| span.name() == "worker"));
        let worker = match WorkerContext::current() {
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

/// One JSON object a line (see [`LogFormat::Json`]).
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut line = Map::new();
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        let metadata = event.metadata();
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        line.insert("target".into(), Value::String(metadata.target().to_owned()));
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if let Some(worker) = WorkerContext::current() {
            line.insert("service".into(), worker.service_name().into());
            line.insert("entrypoint".into(), worker.entrypoint().into());
            line.insert("call_id".into(), worker.call_id().into());
            line.insert("call_id_stack".into(), worker.call_id_stack().into());
            if let Some(trace_id) = worker
                .data()
                .get("traceparent")
                .and_then(Value::as_str)
                .and_then(trace_id)
            {
                line.insert("trace_id".into(), trace_id.into());
            }
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut text = span.name().to_owned();
                    if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                        && !fields.is_empty()
                    {
                        let _ = write!(text, "{{{fields}}}");
                    }
                    Value::String(text)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        for (key, value) in fields.0 {
            // An event's own field never hides one of the line's.
            let key = if line.contains_key(&key) {
                format!("field.{key}")
            } else {
                key
            };
            line.insert(key, value);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is one.
fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0'))
    .then_some(trace_id)
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_w3c_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("not a traceparent"), None);
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn log_formats_are_named_as_in_the_configuration() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("TEXT"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("xml"), None);
    }
}
