//! Traces and structured logs of both daemons: the subscriber, the `OTEL_*` handling, OTLP
//! export and the W3C trace-context helpers. The spans themselves are the daemons' own: the
//! controller's run root span in `syncfleet_controller::telemetry`, the agent's run and step
//! spans in `syncfleet_agent::telemetry`.
//!
//! - **Logs** go to stderr as text or JSON (`--log-format json`), filtered by `SYNCFLEET_LOG`
//!   (default `info`). Everything the agent does for a run happens inside a `run` span (and each
//!   step inside a `step` span) whose fields carry `run_id` and `trace_id`, so every log line
//!   about a run names both: the JSON formatter prints them under `span` / `spans`, the text
//!   formatter as the `run{run_id=… trace_id=…}:` prefix.
//! - **Traces** are exported over OTLP when the standard variables ask for it:
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` set (and neither
//!   `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`).
//!   `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` picks the protocol: `grpc` (also when unset, so
//!   endpoints set up for earlier versions keep working) or `http/protobuf` (spans POSTed to
//!   `<endpoint>/v1/traces`, or to the `…TRACES_ENDPOINT` as given; plain `http://` only). Any
//!   other value, and an `https://` endpoint with `http/protobuf`, stop the daemon at start
//!   ([`check_env`], exit code 64) rather than being ignored. Failed exports are logged (target
//!   `syncfleet::otlp`) at most once a minute, with the number of failures since the last such
//!   line. The rest of `OTEL_*` applies as
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
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP in this process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Problems with the `OTEL_*` settings, found before the daemon starts.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "{var}={value:?} is not an OTLP protocol syncfleet speaks: use `grpc` or `http/protobuf` (unset means grpc)"
    )]
    UnknownProtocol { var: &'static str, value: String },
    #[error(
        "{var}=http/json is not supported: use `http/protobuf` (the same collector port, 4318) or `grpc`"
    )]
    JsonProtocol { var: &'static str },
    #[error(
        "OTLP http/protobuf is sent over plain HTTP only, and the endpoint {endpoint} is https: use OTEL_EXPORTER_OTLP_PROTOCOL=grpc for an https collector (verified with OTEL_EXPORTER_OTLP_CERTIFICATE), or an http:// endpoint such as a local collector"
    )]
    HttpsOverHttp { endpoint: String },
}

/// The OTLP protocols the exporter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn label(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The protocol `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (else `OTEL_EXPORTER_OTLP_PROTOCOL`)
/// names; gRPC when neither is set.
pub fn otlp_protocol() -> Result<OtlpProtocol, TelemetryError> {
    let (var, value) = match (
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        env("OTEL_EXPORTER_OTLP_PROTOCOL"),
    ) {
        (Some(v), _) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        (None, Some(v)) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
        (None, None) => return Ok(OtlpProtocol::Grpc),
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err(TelemetryError::JsonProtocol { var }),
        _ => Err(TelemetryError::UnknownProtocol { var, value }),
    }
}

fn otlp_endpoint() -> String {
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_default()
}

/// Check the `OTEL_*` settings when they ask for export: the protocol, and that an
/// http/protobuf endpoint is plain HTTP. The daemons call this with their configuration, so a
/// bad value stops them (exit code 64) before any port is bound instead of being ignored.
pub fn check_env() -> Result<Option<OtlpProtocol>, TelemetryError> {
    if !export_requested() {
        return Ok(None);
    }
    let protocol = otlp_protocol()?;
    let endpoint = otlp_endpoint();
    if protocol == OtlpProtocol::HttpProtobuf
        && endpoint.trim().to_ascii_lowercase().starts_with("https://")
    {
        return Err(TelemetryError::HttpsOverHttp { endpoint });
    }
    Ok(Some(protocol))
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
    /// The agent this process is, if it is one: the setup's own log lines name it like every
    /// other line of the agent.
    pub agent: Option<String>,
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

/// Whether text logs are coloured: only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>). A file or pipe gets plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Install the global `tracing` subscriber (logs, and trace export when requested). Call once,
/// early in `main`; keep the guard until exit.
pub fn init(setup: &Setup) -> TelemetryGuard {
    init_with(setup, Vec::new())
}

/// [`init`] with `extra` layers next to the log and trace layers, each with its own filter
/// (the agent's Windows Event Log writer, under the Service Control Manager).
pub fn init_with(
    setup: &Setup,
    extra: Vec<Box<dyn Layer<Registry> + Send + Sync>>,
) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_env("SYNCFLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var("NO_COLOR").ok().as_deref(),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if setup.log_format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let mut layers = vec![fmt];
    layers.extend(extra);
    let mut guard = TelemetryGuard {
        provider: None,
        runtime: None,
    };
    let mut problem = None;
    let protocol = match check_env() {
        Ok(p) => p,
        Err(e) => {
            problem = Some(e.to_string());
            None
        }
    };
    if let Some(protocol) = protocol {
        match exporter(setup, protocol) {
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
    let _agent = setup
        .agent
        .as_deref()
        .map(|name| agent_span(name).entered());
    if let Some(e) = problem {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be set up");
    } else if let Some(protocol) = protocol.filter(|_| exporting()) {
        tracing::info!(
            endpoint = %otlp_endpoint(),
            protocol = protocol.label(),
            "exporting traces over OTLP"
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

fn exporter(
    setup: &Setup,
    protocol: OtlpProtocol,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
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
        match protocol {
            OtlpProtocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(tls) = tls_from_env()? {
                    b = b.with_tls_config(tls);
                }
                b.build().map_err(|e| e.to_string())?
            }
            // The endpoint (`…/v1/traces` appended to OTEL_EXPORTER_OTLP_ENDPOINT), headers,
            // timeout and compression come from the standard variables.
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()
                .map_err(|e| e.to_string())?,
        }
    };
    let exporter = LoggedExporter {
        inner: Arc::new(exporter),
        runtime: runtime.handle().clone(),
        failures: std::sync::Mutex::new(ExportFailures::new(EXPORT_FAILURE_LOG_INTERVAL)),
        protocol,
        endpoint: otlp_endpoint(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(setup))
        .build();
    Ok((provider, runtime))
}

/// Failed exports are logged at most once in this interval.
const EXPORT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Counts failed exports and says when to log them: the first failure at once, later ones at
/// most once per `every`, with the number of failures since the last line.
#[derive(Debug)]
struct ExportFailures {
    every: Duration,
    last_logged: Option<tokio::time::Instant>,
    unreported: u64,
}

impl ExportFailures {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last_logged: None,
            unreported: 0,
        }
    }

    /// One more failure at `now`: the count to log now, or None to stay quiet.
    fn failed(&mut self, now: tokio::time::Instant) -> Option<u64> {
        self.unreported += 1;
        match self.last_logged {
            Some(t) if now.saturating_duration_since(t) < self.every => None,
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unreported))
            }
        }
    }
}

/// The OTLP exporter, run on the export runtime (the batch processor's own thread has none,
/// and the HTTP client needs one), with its failures logged instead of dropped silently.
struct LoggedExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    failures: std::sync::Mutex<ExportFailures>,
    protocol: OtlpProtocol,
    endpoint: String,
}

impl std::fmt::Debug for LoggedExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedExporter")
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl LoggedExporter {
    fn failed(&self, error: &opentelemetry_sdk::error::OTelSdkError) {
        let report = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(tokio::time::Instant::now());
        if let Some(failures) = report {
            // Target outside `syncfleet_agent`/`syncfleet_controller`: never exported itself.
            tracing::warn!(
                target: "syncfleet::otlp",
                failures,
                protocol = self.protocol.label(),
                endpoint = %self.endpoint,
                error = %error,
                "OTLP trace export failed; the spans of the failed batches are dropped (logged at most once a minute, `failures` counts them since the last such line)"
            );
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for LoggedExporter {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    format!("the export task ended: {e}"),
                )),
            };
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called while the provider is built, before any export shares the exporter.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
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

/// The span everything one agent logs and traces is emitted in: its `agent=<name>` field tells
/// apart the agents of one process (the controller's `dev` mode). Tasks the agent spawns run in
/// it too (`in_current_span`). ERROR level, so that no log filter drops it (a disabled span
/// would take the field away); target `syncfleet::agent`, outside the `syncfleet_agent` target
/// that trace export takes, so it is never exported and every run stays a trace of its own.
pub fn agent_span(name: &str) -> tracing::Span {
    tracing::span!(target: "syncfleet::agent", tracing::Level::ERROR, "agent", agent = %name)
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
    fn export_failures_are_logged_at_most_once_a_minute_with_their_count() {
        let t0 = tokio::time::Instant::now();
        let mut f = ExportFailures::new(Duration::from_secs(60));
        assert_eq!(f.failed(t0), Some(1), "the first failure is logged at once");
        assert_eq!(f.failed(t0 + Duration::from_secs(1)), None);
        assert_eq!(f.failed(t0 + Duration::from_secs(30)), None);
        assert_eq!(f.failed(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            f.failed(t0 + Duration::from_secs(61)),
            Some(4),
            "the next line counts every failure since the last one"
        );
        assert_eq!(f.failed(t0 + Duration::from_secs(62)), None);
        assert_eq!(f.failed(t0 + Duration::from_secs(200)), Some(2));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some("1")));
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
