//! Logging for a benchmark, with traces when asked: built with `--features opentelemetry` and
//! run with `NAMEKO_BENCH_TRACES=1`, every span is made, batched and handed to an exporter that
//! drops it (what a real exporter then does, encoding and sending on the batch thread, is left
//! out). Built with the feature and without the variable, the feature's code runs with no
//! exporter.

/// What the run measures, for its table.
pub fn mode() -> &'static str {
    if cfg!(feature = "opentelemetry") {
        if traced() {
            "traces on (spans batched, then dropped)"
        } else {
            "feature on, no exporter"
        }
    } else {
        "feature off"
    }
}

fn traced() -> bool {
    std::env::var("NAMEKO_BENCH_TRACES").is_ok_and(|v| v == "1")
}

/// Installs the log subscriber (`filter`), with the trace layer when traces are on.
pub fn init_logging(filter: &str) {
    #[cfg(feature = "opentelemetry")]
    if traced() {
        use nameko::trace::opentelemetry_sdk::trace::SdkTracerProvider;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Dropped)
            .build();
        nameko::log::init_logging_traced(
            Some(filter.to_owned()),
            nameko::log::LogFormat::Text,
            &provider,
        );
        // Spans go on being exported for as long as the benchmark runs.
        std::mem::forget(provider);
        return;
    }
    nameko::cli::init_logging_with(Some(filter.to_owned()));
}

/// Takes spans and drops them.
#[cfg(feature = "opentelemetry")]
#[derive(Debug)]
struct Dropped;

#[cfg(feature = "opentelemetry")]
impl nameko::trace::opentelemetry_sdk::trace::SpanExporter for Dropped {
    async fn export(
        &self,
        batch: Vec<nameko::trace::opentelemetry_sdk::trace::SpanData>,
    ) -> nameko::trace::opentelemetry_sdk::error::OTelSdkResult {
        drop(batch);
        Ok(())
    }
}
