//! The agent's spans: every run in a `run` span, every step in a child `step` span, everything
//! one agent does in its `agent` span; and the pending counters heartbeats carry.
//!
//! - Every log line about a run names its `run_id` and `trace_id`: they are fields of the `run`
//!   and `step` spans (the JSON formatter prints them under `span` / `spans`, the text formatter
//!   as the `run{run_id=… trace_id=…}:` prefix).
//! - **One trace per run across processes**: the controller opens the run's root span and sends
//!   its W3C `traceparent` in `StartRun`; the agent's `run` span is its child and the `step`
//!   spans are children of the `run` span. With export off, the controller still sends a
//!   generated `traceparent`, so controller and agent logs share the run's trace id.
//!
//! The subscriber, OTLP export and the W3C helpers are shared with the controller
//! ([`syncfleet_proto::telemetry`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use syncfleet_proto::telemetry::trace_id_of;
use syncfleet_proto::telemetry::{agent_span, exporting, extract, new_traceparent, traceparent_of};
use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::engine::SyncEngine;
use crate::event_ids::EventId;

tokio::task_local! {
    /// The name of the agent whose task this is, for the `agent` attribute of exported run and
    /// step spans (the agent span itself is never exported).
    static AGENT_NAME: String;
}

/// Run `fut` (an agent) inside its [`agent_span`], with its name known to the run spans it
/// opens.
pub async fn in_agent<F: std::future::Future>(name: &str, fut: F) -> F::Output {
    let span = agent_span(name);
    AGENT_NAME
        .scope(name.to_string(), tracing::Instrument::instrument(fut, span))
        .await
}

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
        agent = Empty,
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
    let agent = AGENT_NAME.try_with(String::clone).unwrap_or_default();
    if !agent.is_empty() {
        span.record("agent", agent.as_str());
    }
    if let Some(t) = trace_id {
        span.record("trace_id", t.as_str());
        lock_traces().insert(start.run_id.clone(), (t, agent));
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
        agent = Empty,
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
    if let Some((t, agent)) = lock_traces().get(run_id) {
        span.record("trace_id", t.as_str());
        if !agent.is_empty() {
            span.record("agent", agent.as_str());
        }
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

/// Trace ids and agent names of the runs executing now (for their step spans' `trace_id` and
/// `agent` fields).
static RUN_TRACES: std::sync::LazyLock<std::sync::Mutex<HashMap<String, (String, String)>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(HashMap::new()));

fn lock_traces() -> std::sync::MutexGuard<'static, HashMap<String, (String, String)>> {
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
                let event_id = match state {
                    v1::RunState::Held => EventId::RunHeld,
                    v1::RunState::Cancelled => EventId::Other,
                    _ => EventId::RunFailed,
                };
                tracing::warn!(event_id = event_id.code(), run_id, state = state.label(), result = %f.result, detail = %f.message, "run finished");
            }
        }
        Kind::ChangeDetected(c) => {
            tracing::info!(schedule = %c.schedule, source = %c.source, changes = c.changes, cursor = %c.cursor, "change detected");
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
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let read =
                    tokio::time::timeout(PENDING_REFRESH_TIMEOUT, read_pending(&engine)).await;
                let mut st = inner.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(Some(v)) = read {
                    st.last = v;
                }
                st.refreshing = false;
            }));
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
                counters: Some(crate::executor::pending_to_proto(&p)),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what a formatter writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_run_logs_one_message_key_and_its_detail() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            on_event(
                "r1",
                &Kind::RunFinished(v1::RunFinished {
                    state: v1::RunState::Failed as i32,
                    result: "stopped-connectivity".into(),
                    message: "AD: the directory did not answer".into(),
                }),
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().next().unwrap();
        assert_eq!(
            line.matches("\"message\":").count(),
            1,
            "one `message` key per JSON line: {line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["fields"]["message"], "run finished");
        assert_eq!(v["fields"]["detail"], "AD: the directory did not answer");
    }
}
