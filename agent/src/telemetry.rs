//! Traces and structured logs (design decision 10), shared by the agent and the controller.
//!
//! - **Logs** go to stderr as text or JSON (`--log-format json`), filtered by `SYNCFLEET_LOG`
//!   (default `info`). Everything the agent does for a run happens inside a `run` span (and each
//!   step inside a `step` span) whose fields carry `run_id` and `trace_id`, so every log line
//!   about a run names both: the JSON formatter prints them under `span` / `spans`, the text
//!   formatter as the `run{run_id=… trace_id=…}:` prefix.
//! - **Traces** are exported over OTLP/gRPC when the standard variables ask for it:
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` set (and neither
//!   `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`). The rest of `OTEL_*` applies as
//!   the OpenTelemetry SDK reads it: `OTEL_BSP_*` (batching), `OTEL_TRACES_SAMPLER[_ARG]`,
//!   `OTEL_EXPORTER_OTLP_[TRACES_]{HEADERS,TIMEOUT,COMPRESSION,INSECURE}`, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (and
//!   `…CLIENT_CERTIFICATE` / `…CLIENT_KEY`) for an `https://` collector. Unset: no exporter, no
//!   OpenTelemetry layer, no export thread.
//! - **One trace per run across processes**: the controller opens the run's root span and sends
//!   its W3C `traceparent` in `StartRun`; the agent's `run` span is its child and the `step`
//!   spans are children of the `run` span. With export off, the controller still sends a
//!   generated `traceparent`, so controller and agent logs share the run's trace id.
//! - Spans are exported by a batch processor on its own thread; the gRPC channel lives on a small
//!   dedicated runtime, so the daemons' own runtimes (the agent's is single-threaded) never block
//!   on export, and [`TelemetryGuard`] can flush from anywhere when dropped at exit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rand::Rng;
use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::engine::SyncEngine;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `service.name` unless `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
    pub service_name: &'static str,
    /// `text` or `json`.
    pub log_format: String,
    /// Extra resource attributes (agent name and labels).
    pub attributes: Vec<(String, String)>,
}

/// Keeps the exporter alive; flushes and stops it when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Export what is buffered now and stop the exporter (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            // Ends the batch processor after a last export (bounded by its own timeout).
            if let Err(e) = p.shutdown() {
                eprintln!("warning: flushing traces at exit failed: {e}");
            }
            EXPORTING.store(false, Ordering::Relaxed);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the `OTEL_*` environment asks for trace export.
pub fn export_requested() -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return false;
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// Install the global `tracing` subscriber (logs, and trace export when requested). Call once,
/// early in `main`; keep the guard until exit.
pub fn init(setup: &Setup) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if setup.log_format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let mut layers = vec![fmt];
    let mut guard = TelemetryGuard {
        provider: None,
        runtime: None,
    };
    let mut problem = None;
    if export_requested() {
        match exporter(setup) {
            Ok((provider, runtime)) => {
                let tracer = provider.tracer(setup.service_name);
                // Only syncfleet's own spans and events: no gRPC/HTTP internals, and a quiet
                // `SYNCFLEET_LOG` does not switch tracing off.
                let targets = tracing_subscriber::filter::Targets::new()
                    .with_target("syncfleet_agent", tracing::Level::INFO)
                    .with_target("syncfleet_controller", tracing::Level::INFO);
                layers.push(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(targets)
                        .boxed(),
                );
                guard.provider = Some(provider);
                guard.runtime = Some(runtime);
                EXPORTING.store(true, Ordering::Relaxed);
            }
            Err(e) => problem = Some(e),
        }
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        // A subscriber exists already (tests, or dev mode's in-process agents): keep it.
        guard.shutdown();
        return guard;
    }
    if let Some(e) = problem {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be set up");
    } else if exporting() {
        tracing::info!(
            endpoint = %env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")).unwrap_or_default(),
            "exporting traces over OTLP/gRPC"
        );
    }
    guard
}

fn resource(setup: &Setup) -> opentelemetry_sdk::Resource {
    let mut b = opentelemetry_sdk::Resource::builder();
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named_by_env {
        b = b.with_service_name(setup.service_name);
    }
    b = b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    for (k, v) in &setup.attributes {
        b = b.with_attribute(KeyValue::new(k.clone(), v.clone()));
    }
    b.build()
}

fn read_pem(var: &str) -> Result<Option<Vec<u8>>, String> {
    match env(var) {
        None => Ok(None),
        Some(path) => std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("{var}={path}: {e}")),
    }
}

/// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` / `CLIENT_CERTIFICATE` / `CLIENT_KEY`.
fn tls_from_env() -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let pick = |suffix: &str| -> Result<Option<Vec<u8>>, String> {
        match read_pem(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))? {
            Some(v) => Ok(Some(v)),
            None => read_pem(&format!("OTEL_EXPORTER_OTLP_{suffix}")),
        }
    };
    let ca = pick("CERTIFICATE")?;
    let cert = pick("CLIENT_CERTIFICATE")?;
    let key = pick("CLIENT_KEY")?;
    if ca.is_none() && cert.is_none() {
        return Ok(None);
    }
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

fn exporter(setup: &Setup) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the export runtime: {e}"))?;
    let exporter = {
        // The tonic channel spawns its connection tasks on the runtime it is built in.
        let _rt = runtime.enter();
        let mut b = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc);
        if let Some(tls) = tls_from_env()? {
            b = b.with_tls_config(tls);
        }
        b.build().map_err(|e| e.to_string())?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(setup))
        .build();
    Ok((provider, runtime))
}

// ---------------------------------------------------------------------------------------------
// W3C trace context

/// A fresh W3C `traceparent` (sampled), for a run whose controller does not export traces.
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let span: u64 = rng.random_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id (32 hex digits) of a valid `traceparent`, else `None`.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && span.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then_some(trace)
}

/// The OpenTelemetry context a `traceparent` names (empty context when invalid).
pub fn extract(traceparent: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.trim().to_string());
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of a span, when it is exported and sampled-in or not (None when the span
/// has no OpenTelemetry context, i.e. export is off).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

// ---------------------------------------------------------------------------------------------
// Agent spans

/// The agent's span for one run: the child of the controller's span named by
/// `StartRun.traceparent` (a new trace when it is empty). Fields `run_id` and `trace_id` tag every
/// log line inside it.
pub fn run_span(start: &v1::StartRun) -> tracing::Span {
    let span = tracing::info_span!(
        "run",
        otel.name = "execute run",
        otel.kind = "consumer",
        otel.status_code = Empty,
        run_id = %start.run_id,
        trace_id = Empty,
        state = Empty,
        result = Empty,
    );
    let parent = trace_id_of(&start.traceparent).map(|_| start.traceparent.clone());
    if exporting()
        && let Some(tp) = &parent
    {
        let _ = span.set_parent(extract(tp));
    }
    let trace_id = match (&parent, traceparent_of(&span)) {
        (_, Some(own)) => trace_id_of(&own).map(str::to_string),
        (Some(tp), None) => trace_id_of(tp).map(str::to_string),
        (None, None) => trace_id_of(&new_traceparent()).map(str::to_string),
    };
    if let Some(t) = trace_id {
        span.record("trace_id", t.as_str());
        lock_traces().insert(start.run_id.clone(), t);
    }
    span
}

/// The span of one step of a run; created inside the run span, so it is its child.
pub fn step_span(run_id: &str, index: u32, step: &v1::StepSpec) -> tracing::Span {
    let span = tracing::info_span!(
        "step",
        otel.name = %format!("{}: {}", step.ma, step.profile),
        otel.status_code = Empty,
        run_id = %run_id,
        trace_id = Empty,
        step = index + 1,
        ma = %step.ma,
        profile = %step.profile,
        outcome = Empty,
        result = Empty,
        result_class = Empty,
        run_number = Empty,
        attempt = Empty,
        stage_add = Empty,
        stage_update = Empty,
        stage_delete = Empty,
        export_add = Empty,
        export_update = Empty,
        export_delete = Empty,
        error_count = Empty,
        detail = Empty,
    );
    if let Some(t) = lock_traces().get(run_id) {
        span.record("trace_id", t.as_str());
    }
    span
}

/// Run `fut` (one step of a run) inside its step span.
pub fn in_step<F: std::future::Future>(
    run_id: &str,
    index: u32,
    step: &v1::StepSpec,
    fut: F,
) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(fut, step_span(run_id, index, step))
}

/// Trace ids of the runs executing now (for their step spans' `trace_id` field).
static RUN_TRACES: std::sync::LazyLock<std::sync::Mutex<HashMap<String, String>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

fn lock_traces() -> std::sync::MutexGuard<'static, HashMap<String, String>> {
    RUN_TRACES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Record what an agent event says on the span it is emitted in (the step or run span) and log
/// the ends of steps and runs. Called for every event the executor journals.
pub fn on_event(run_id: &str, kind: &Kind) {
    let span = tracing::Span::current();
    match kind {
        Kind::StepStarted(s) => {
            span.record("attempt", s.attempt);
            if s.run_number != 0 {
                span.record("run_number", s.run_number);
            }
        }
        Kind::StepFinished(f) => {
            let class = vocab::classify(&f.result);
            span.record("outcome", "finished");
            span.record("result", f.result.as_str());
            span.record("result_class", format!("{class:?}").as_str());
            span.record("run_number", f.run_number);
            span.record("error_count", f.error_count);
            if !f.detail.is_empty() {
                span.record("detail", f.detail.as_str());
            }
            let c = |name: &str| {
                f.counters
                    .as_ref()
                    .and_then(|c| c.counters.get(name).copied())
                    .unwrap_or(0)
            };
            span.record("stage_add", c("stage-add"));
            span.record("stage_update", c("stage-update"));
            span.record("stage_delete", c("stage-delete"));
            span.record("export_add", c("export-add"));
            span.record("export_update", c("export-update"));
            span.record("export_delete", c("export-delete"));
            let ok = matches!(class, ResultClass::Success | ResultClass::Warning);
            span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
            if ok {
                tracing::info!(run_id, step = f.index + 1, result = %f.result, errors = f.error_count, "step finished");
            } else {
                tracing::warn!(run_id, step = f.index + 1, result = %f.result, errors = f.error_count, detail = %f.detail, "step finished");
            }
        }
        Kind::StepSkipped(s) => {
            span.record("outcome", "skipped");
            span.record("detail", s.reason.as_str());
            tracing::info!(run_id, step = s.index + 1, reason = %s.reason, "step skipped");
        }
        Kind::StepHeld(h) => {
            span.record("outcome", "held");
            span.record("detail", h.reason.as_str());
            span.record("otel.status_code", "ERROR");
        }
        Kind::RunFinished(f) => {
            lock_traces().remove(run_id);
            let state = v1::RunState::try_from(f.state).unwrap_or(v1::RunState::Unspecified);
            span.record("state", state.label());
            span.record("result", f.result.as_str());
            let ok = matches!(state, v1::RunState::Succeeded);
            span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
            if ok {
                tracing::info!(run_id, state = state.label(), result = %f.result, "run finished");
            } else {
                tracing::warn!(run_id, state = state.label(), result = %f.result, message = %f.message, "run finished");
            }
        }
        Kind::RunStarted(_) | Kind::StepProgress(_) | Kind::StepWaiting(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Pending counters for heartbeats

/// Pending import/export counters of every MA, refreshed in the background so a heartbeat never
/// waits on the engine (WMI calls can be slow). A heartbeat carries the last complete reading:
/// at most one heartbeat interval old.
#[derive(Clone, Default)]
pub struct PendingCache {
    inner: Arc<std::sync::Mutex<PendingState>>,
}

#[derive(Default)]
struct PendingState {
    last: Vec<v1::MaPending>,
    refreshing: bool,
}

impl std::fmt::Debug for PendingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCache").finish_non_exhaustive()
    }
}

/// Longest one refresh may take before it is abandoned (a hung engine must not pile up tasks).
const PENDING_REFRESH_TIMEOUT: Duration = Duration::from_secs(30);

impl PendingCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last reading, and start a new one in the background (unless one is running).
    pub fn snapshot(&self, engine: &Arc<dyn SyncEngine>) -> Vec<v1::MaPending> {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !st.refreshing {
            st.refreshing = true;
            let inner = Arc::clone(&self.inner);
            let engine = Arc::clone(engine);
            tokio::spawn(async move {
                let read =
                    tokio::time::timeout(PENDING_REFRESH_TIMEOUT, read_pending(&engine)).await;
                let mut st = inner.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(Some(v)) = read {
                    st.last = v;
                }
                st.refreshing = false;
            });
        }
        st.last.clone()
    }
}

async fn read_pending(engine: &Arc<dyn SyncEngine>) -> Option<Vec<v1::MaPending>> {
    let inventory = engine.inventory().await.ok()?;
    let mut out = Vec::with_capacity(inventory.len());
    for ma in inventory {
        if let Ok(p) = engine.pending(&ma.name).await {
            out.push(v1::MaPending {
                ma: ma.name,
                counters: Some(v1::PendingCounters {
                    import_add: p.import_add,
                    import_update: p.import_update,
                    import_delete: p.import_delete,
                    export_add: p.export_add,
                    export_update: p.export_update,
                    export_delete: p.export_delete,
                    total_connectors: p.total_connectors,
                    cs_objects: p.cs_objects,
                }),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_generated_and_parsed() {
        let tp = new_traceparent();
        let id = trace_id_of(&tp).unwrap();
        assert_eq!(id.len(), 32);
        assert!(tp.ends_with("-01"));
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn extracted_context_names_the_remote_span() {
        let cx = extract("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }
}
