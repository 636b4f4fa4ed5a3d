//! Distributed traces with OpenTelemetry (the `opentelemetry` feature).
//!
//! With the feature on and an exporter configured, every worker is a span, and so is every
//! RPC call, event dispatch and message published from it: one trace across services. The
//! W3C trace context travels as context data, `traceparent` and `tracestate` (headers
//! `nameko.traceparent` and `nameko.tracestate`), which Python Nameko forwards unchanged on
//! its own calls and events: a Python hop between two Rust services keeps the trace whole
//! (the Python service itself shows no span of its own). An HTTP request's `traceparent`
//! header becomes its worker's parent.
//!
//! `nameko::main` sets it up from the configuration:
//!
//! ```yaml
//! TRACING:
//!   exporter: otlp                    # OTLP over HTTP (protobuf); `none` turns traces off
//!   endpoint: http://collector:4318   # `/v1/traces` is added to an address without a path
//!   service_name: greeter             # default: the services the process runs
//! ```
//!
//! or, without `TRACING`, from the standard `OTEL_*` environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_TRACES_EXPORTER=otlp` turns it on,
//! `OTEL_SDK_DISABLED=true` off; `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and the
//! exporter's own variables are honoured).
//!
//! A program with its own `tracing` subscriber adds [`layer`]:
#![cfg_attr(
    feature = "opentelemetry",
    doc = r#"
```
use nameko::trace::opentelemetry::trace::TraceContextExt;
use nameko::trace::opentelemetry_sdk::trace::SdkTracerProvider;
use nameko::trace::tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

// In a program: `nameko::trace::provider(&config, "my_service")?`, which exports.
let provider = SdkTracerProvider::builder().build();
let subscriber = tracing_subscriber::registry().with(nameko::trace::layer(&provider));
tracing::subscriber::with_default(subscriber, || {
    let span = tracing::info_span!("my_span");
    assert!(span.context().span().span_context().is_valid());
});
```
"#
)]
//!
//! Without the feature, the runtime still forwards an incoming `traceparent` as it forwards any
//! context data, and JSON logs show its trace id.

use crate::context::ContextData;

/// The context data key of the W3C `traceparent`.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The context data key of the W3C `tracestate`.
pub(crate) const TRACESTATE: &str = "tracestate";

/// What kind of thing fires a worker, for its span's kind.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WorkerKind {
    /// A call with JSON arguments: an RPC request (`server`) or, with no caller, a timer or
    /// another local firing (`internal`).
    Call,
    /// An HTTP request (`server`).
    Request,
    /// An event or message from a queue (`consumer`).
    Message,
}

/// The trace context of an HTTP request's (or websocket upgrade's) headers, as context data.
pub(crate) fn context_from_http(headers: &axum::http::HeaderMap) -> ContextData {
    use axum::http::HeaderName;
    // Names made once: a name given as a string is parsed at every lookup.
    const NAMES: [(&str, HeaderName); 2] = [
        (TRACEPARENT, HeaderName::from_static(TRACEPARENT)),
        (TRACESTATE, HeaderName::from_static(TRACESTATE)),
    ];
    let mut data = ContextData::new();
    for (key, name) in &NAMES {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            data.insert((*key).to_owned(), value.into());
        }
    }
    data
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use off::*;
#[cfg(feature = "opentelemetry")]
pub(crate) use on::*;
#[cfg(feature = "opentelemetry")]
pub use on::{layer, provider};
#[cfg(feature = "opentelemetry")]
pub use {opentelemetry, opentelemetry_sdk, tracing_opentelemetry};

/// Without the feature: the worker's `debug` span as it always was, nothing else.
#[cfg(not(feature = "opentelemetry"))]
mod off {
    use super::WorkerKind;
    use crate::context::WorkerContext;
    use crate::protocol::{Headers, RemoteError};

    pub(crate) fn worker_span(context: &WorkerContext, _kind: WorkerKind) -> tracing::Span {
        tracing::debug_span!(
            "worker",
            service = context.service_name(),
            entrypoint = context.entrypoint(),
            call_id = context.call_id()
        )
    }

    #[inline]
    pub(crate) fn worker_finished(_failure: Option<&RemoteError>) {}

    #[inline]
    pub(crate) fn inject(_headers: &mut Headers) {}

    #[inline]
    pub(crate) fn rpc_call<F: Future>(_service: &str, _method: &str, call: F) -> F {
        call
    }

    #[inline]
    pub(crate) fn event_dispatch<F: Future>(_source: &str, _event_type: &str, publish: F) -> F {
        publish
    }

    /// A message's span (none without the feature).
    pub(crate) struct Producer;

    #[inline]
    pub(crate) fn publish_span(_exchange: &str, _routing_key: &str) -> Producer {
        Producer
    }

    #[inline]
    pub(crate) fn producer<F: Future>(_span: Producer, publish: F) -> F {
        publish
    }
}

#[cfg(feature = "opentelemetry")]
mod on {
    use std::future::Future;

    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use serde_json::Value;
    use tracing::{Instrument, Level, Metadata, Span};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::{Context, Filter};
    use tracing_subscriber::registry::LookupSpan;

    use super::{TRACEPARENT, TRACESTATE, WorkerKind};
    use crate::config::Config;
    use crate::context::{ContextData, WorkerContext};
    use crate::error::Error;
    use crate::protocol::{HEADER_PREFIX, Headers, RemoteError};

    /// The `tracing` layer that turns spans into OpenTelemetry spans exported by `provider`:
    /// the runtime's own spans (workers, RPC calls, dispatches; `debug` spans of the `nameko`
    /// targets), every other span at `info` or above, and `warn` and `error` events, which
    /// become events of their span.
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("nameko"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(Traced)
    }

    /// What [`layer`] passes on.
    struct Traced;

    impl Traced {
        fn wanted(metadata: &Metadata<'_>) -> bool {
            if metadata.is_span() {
                *metadata.level() <= Level::INFO
                    || (*metadata.level() <= Level::DEBUG
                        && (metadata.target() == "nameko"
                            || metadata.target().starts_with("nameko::")))
            } else {
                *metadata.level() <= Level::WARN
            }
        }
    }

    impl<S> Filter<S> for Traced {
        fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
            Self::wanted(metadata)
        }

        fn callsite_enabled(
            &self,
            metadata: &'static Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            if Self::wanted(metadata) {
                tracing::subscriber::Interest::always()
            } else {
                tracing::subscriber::Interest::never()
            }
        }

        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(tracing::level_filters::LevelFilter::DEBUG)
        }
    }

    /// The tracer provider the configuration asks for: `TRACING` (see the
    /// [module](crate::trace)), or the `OTEL_*` environment variables when it is absent;
    /// `None` when traces are off. Spans are exported in batches from a thread of their own;
    /// call [`SdkTracerProvider::shutdown`] before the program ends to send the last ones.
    ///
    /// `default_service_name` is the `service.name` of the spans when neither `TRACING` nor
    /// `OTEL_SERVICE_NAME` gives one.
    pub fn provider(
        config: &Config,
        default_service_name: &str,
    ) -> Result<Option<SdkTracerProvider>, Error> {
        let settings = Settings::read(config, |name| std::env::var(name).ok())?;
        let Some(settings) = settings else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = &settings.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| Error::Config(format!("`TRACING`: the OTLP exporter: {e}")))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        let name = settings.service_name.or_else(|| {
            std::env::var("OTEL_SERVICE_NAME")
                .is_err()
                .then(|| default_service_name.to_owned())
        });
        if let Some(name) = name {
            resource = resource.with_service_name(name);
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        ))
    }

    /// Traces as the configuration (or the environment) asks for them.
    #[derive(Debug, PartialEq)]
    pub(crate) struct Settings {
        /// The OTLP/HTTP endpoint of traces; `None`: the exporter's own (its environment
        /// variables, else `http://localhost:4318/v1/traces`).
        pub(crate) endpoint: Option<String>,
        pub(crate) service_name: Option<String>,
    }

    impl Settings {
        pub(crate) fn read(
            config: &Config,
            env: impl Fn(&str) -> Option<String>,
        ) -> Result<Option<Settings>, Error> {
            let invalid = |what: String| Error::Config(format!("`TRACING`: {what}"));
            match config.extra.get("TRACING") {
                None | Some(Value::Null) => {}
                Some(Value::Object(tracing)) => {
                    let text = |key: &str| match tracing.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(other) => Err(invalid(format!("`{key}`: {other} is not text"))),
                    };
                    for key in tracing.keys() {
                        if !["exporter", "endpoint", "service_name"].contains(&key.as_str()) {
                            return Err(invalid(format!(
                                "unknown key `{key}` (known: exporter, endpoint, service_name)"
                            )));
                        }
                    }
                    return match text("exporter")?.as_deref() {
                        Some("otlp") | None => Ok(Some(Settings {
                            endpoint: text("endpoint")?.map(|e| traces_endpoint(&e)),
                            service_name: text("service_name")?,
                        })),
                        Some("none") => Ok(None),
                        Some(other) => Err(invalid(format!(
                            "exporter `{other}` is neither `otlp` nor `none`"
                        ))),
                    };
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "{other} is not a mapping (exporter, endpoint, service_name)"
                    )));
                }
            }
            let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
            if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                return Ok(None);
            }
            let on = match set("OTEL_TRACES_EXPORTER").as_deref() {
                Some("otlp") => true,
                Some(_) => false,
                None => {
                    set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                }
            };
            Ok(on.then_some(Settings {
                endpoint: None,
                service_name: None,
            }))
        }
    }

    /// A collector's address as the OTLP/HTTP endpoint of traces: `/v1/traces` added to an
    /// address without a path, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn traces_endpoint(address: &str) -> String {
        let address = address.trim_end_matches('/');
        let path = address
            .split_once("://")
            .map_or(address, |(_, rest)| rest)
            .split_once('/')
            .map(|(_, path)| path);
        match path {
            None | Some("") => format!("{address}/v1/traces"),
            Some(_) => address.to_owned(),
        }
    }

    /// Reads a W3C trace context from context data.
    struct FromData<'a>(&'a ContextData);

    impl Extractor for FromData<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(Value::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    /// Writes a W3C trace context into a message's headers, as context data.
    struct IntoHeaders<'a>(&'a mut Headers);

    impl Injector for IntoHeaders<'_> {
        fn set(&mut self, key: &str, value: String) {
            if !value.is_empty() {
                self.0
                    .insert(format!("{HEADER_PREFIX}{key}"), Value::String(value));
            }
        }
    }

    /// The worker's span, a child of the trace context its context data carries.
    pub(crate) fn worker_span(context: &WorkerContext, kind: WorkerKind) -> Span {
        let remote = context.data().contains_key(TRACEPARENT);
        let kind = match kind {
            WorkerKind::Call if remote || context.immediate_parent_call_id().is_some() => "server",
            WorkerKind::Call => "internal",
            WorkerKind::Request => "server",
            WorkerKind::Message => "consumer",
        };
        let span = tracing::debug_span!(
            "worker",
            service = context.service_name(),
            entrypoint = context.entrypoint(),
            call_id = context.call_id(),
            otel.name = %format_args!("{}.{}", context.service_name(), context.entrypoint()),
            otel.kind = kind,
        );
        if remote && !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&FromData(context.data()));
            if parent.span().span_context().is_valid() {
                // Fails only without the OpenTelemetry layer, when there is nothing to parent.
                let _ = span.set_parent(parent);
            }
        }
        span
    }

    /// Marks the current (worker's) span failed if the worker failed.
    pub(crate) fn worker_finished(failure: Option<&RemoteError>) {
        if let Some(error) = failure {
            Span::current().set_status(Status::error(error.exc_type.clone()));
        }
    }

    /// Puts the current span's trace context into an outgoing message's headers, over the
    /// one forwarded from the worker's context data.
    pub(crate) fn inject(headers: &mut Headers) {
        let cx = Span::current().context();
        if cx.span().span_context().is_valid() {
            // The forwarded `tracestate` belongs to the forwarded `traceparent`: this span's
            // (possibly of a new trace) replaces both.
            headers.remove(&format!("{HEADER_PREFIX}{TRACESTATE}"));
            TraceContextPropagator::new().inject_context(&cx, &mut IntoHeaders(headers));
        }
    }

    /// An RPC call as a `client` span.
    pub(crate) fn rpc_call<F, R>(
        service: &str,
        method: &str,
        call: F,
    ) -> impl Future<Output = Result<R, crate::RpcError>> + use<F, R>
    where
        F: Future<Output = Result<R, crate::RpcError>>,
    {
        let span = tracing::debug_span!(
            "rpc_call",
            otel.name = %format_args!("{service}.{method}"),
            otel.kind = "client",
            rpc.system = "nameko",
            rpc.service = service,
            rpc.method = method,
        );
        async move {
            let result = call.instrument(span.clone()).await;
            if let Err(e) = &result {
                span.set_status(Status::error(e.to_string()));
            }
            result
        }
    }

    /// An event dispatch as a `producer` span.
    pub(crate) fn event_dispatch<F, T, E>(
        source: &str,
        event_type: &str,
        publish: F,
    ) -> impl Future<Output = Result<T, E>> + use<F, T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let span = tracing::debug_span!(
            "dispatch",
            otel.name = %format_args!("{source}.{event_type} dispatch"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %format_args!("{source}.events"),
            messaging.rabbitmq.destination.routing_key = event_type,
        );
        producer(span, publish)
    }

    /// A message's `producer` span.
    pub(crate) type Producer = Span;

    /// The span of a message published to `exchange` (`""`: the default exchange).
    pub(crate) fn publish_span(exchange: &str, routing_key: &str) -> Producer {
        tracing::debug_span!(
            "publish",
            otel.name = %format_args!("{exchange} {routing_key} publish"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = exchange,
            messaging.rabbitmq.destination.routing_key = routing_key,
        )
    }

    /// Publishes inside `span`, which is marked failed if publishing fails.
    pub(crate) async fn producer<F, T, E>(span: Producer, publish: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let result = publish.instrument(span.clone()).await;
        if let Err(e) = &result {
            span.set_status(Status::error(e.to_string()));
        }
        result
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn settings(yaml: &str, env: &[(&str, &str)]) -> Result<Option<Settings>, Error> {
            let config = Config::from_yaml(yaml)?;
            Settings::read(&config, |name| {
                env.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            })
        }

        #[test]
        fn tracing_is_configured_from_the_file_or_the_environment() {
            assert_eq!(settings("{}", &[]).ok(), Some(None));
            assert_eq!(
                settings(
                    "TRACING:\n  exporter: otlp\n  endpoint: http://collector:4318\n  service_name: shop\n",
                    &[]
                )
                .ok(),
                Some(Some(Settings {
                    endpoint: Some("http://collector:4318/v1/traces".into()),
                    service_name: Some("shop".into()),
                }))
            );
            assert_eq!(
                settings("TRACING: {endpoint: 'http://c:4318/custom/'}", &[])
                    .ok()
                    .flatten()
                    .and_then(|s| s.endpoint),
                Some("http://c:4318/custom".into())
            );
            assert_eq!(
                settings(
                    "TRACING: {exporter: none}",
                    &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]
                )
                .ok(),
                Some(None)
            );
            let from_env = Some(Some(Settings {
                endpoint: None,
                service_name: None,
            }));
            assert_eq!(
                settings("{}", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).ok(),
                from_env
            );
            assert_eq!(
                settings("{}", &[("OTEL_TRACES_EXPORTER", "otlp")]).ok(),
                from_env
            );
            assert_eq!(
                settings(
                    "{}",
                    &[
                        ("OTEL_TRACES_EXPORTER", "otlp"),
                        ("OTEL_SDK_DISABLED", "true")
                    ]
                )
                .ok(),
                Some(None)
            );
        }

        #[test]
        fn a_wrong_tracing_setting_says_what_is_wrong() {
            let error = |yaml| match settings(yaml, &[]) {
                Err(e) => e.to_string(),
                Ok(s) => panic!("{yaml} was accepted: {s:?}"),
            };
            assert!(error("TRACING: {exporter: jaeger}").contains("exporter `jaeger`"));
            assert!(error("TRACING: {endpont: x}").contains("unknown key `endpont`"));
            assert!(error("TRACING: yes").contains("not a mapping"));
        }

        #[test]
        fn trace_context_round_trips_through_headers() {
            let provider = SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::registry(),
                layer(&provider),
            );
            tracing::subscriber::with_default(subscriber, || {
                let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
                let data: ContextData = [(TRACEPARENT.to_owned(), Value::from(incoming))].into();
                let worker = WorkerContext::with_data("svc", "m", data, 10);
                let span = worker_span(&worker, WorkerKind::Call);
                let mut headers = worker.outgoing_headers();
                headers.insert("nameko.tracestate", Value::from("vendor=stale"));
                span.in_scope(|| inject(&mut headers));
                // The forwarded state went with the forwarded parent (this one had none).
                assert!(!headers.contains_key("nameko.tracestate"));
                let outgoing = headers["nameko.traceparent"].as_str().unwrap_or_default();
                // Same trace, same flags, this worker's span as the parent.
                assert!(outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
                assert!(outgoing.ends_with("-01"));
                assert_ne!(outgoing, incoming);
            });
        }
    }
}
