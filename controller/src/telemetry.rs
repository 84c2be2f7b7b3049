//! The controller's side of tracing: logging and OTLP export setup, and the root span of every
//! run.
//!
//! The subscriber, the `OTEL_*` handling and the W3C helpers are shared with the agent
//! ([`syncfleet_proto::telemetry`]): export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `service.name` is `syncfleet-controller`.
//!
//! A run's trace starts where the run is created ([`crate::fleet::Fleet::create_run`]: a manual
//! run, a schedule's fire, a catch-up or an approval): [`open_run_span`] opens a `run` span
//! (attributes: run id, agent, origin, schedule, sequence, requester) and stores its W3C
//! `traceparent` on the run (`Run.traceparent`). Every `StartRun` sent for the run, including
//! resends after reconnects and controller restarts, carries that value, so the agent's run and
//! step spans join the same trace. Without export a `traceparent` is still generated, so
//! controller and agent log lines of a run share its `trace_id`.

use syncfleet_proto::telemetry::{self as shared, TelemetryGuard};
use syncfleet_proto::v1;
use tracing::field::Empty;

/// Install logging (text or JSON on stderr) and, when requested by `OTEL_*`, OTLP export. Keep
/// the guard until exit: dropping it flushes buffered spans.
pub fn init(log_format: &str) -> TelemetryGuard {
    shared::init(&shared::Setup {
        service_name: "syncfleet-controller",
        log_format: log_format.to_string(),
        attributes: Vec::new(),
        agent: None,
    })
}

/// Open the root span of a new run and record its `traceparent` on the run. The span is the
/// parent of the agent's spans for the run; log lines emitted inside it carry `run_id` and
/// `trace_id`.
pub fn open_run_span(mut run: v1::Run) -> (v1::Run, tracing::Span) {
    let span = tracing::info_span!(
        "run",
        otel.name = "create run",
        otel.kind = "producer",
        run_id = %run.id,
        trace_id = Empty,
        agent = %run.agent,
        origin = %run.origin,
        schedule = %run.schedule,
        sequence = %run.sequence,
        requested_by = %run.requested_by,
        steps = run.steps.len(),
    );
    let traceparent = shared::traceparent_of(&span).unwrap_or_else(shared::new_traceparent);
    if let Some(t) = shared::trace_id_of(&traceparent) {
        span.record("trace_id", t);
    }
    run.traceparent = traceparent;
    (run, span)
}

/// The trace id of a stored run (empty for runs created before tracing existed).
pub fn trace_id(run: &v1::Run) -> &str {
    shared::trace_id_of(&run.traceparent).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_gets_a_traceparent_even_without_export() {
        let (run, _span) = open_run_span(v1::Run {
            id: "r1".into(),
            agent: "sync-01".into(),
            ..Default::default()
        });
        assert_eq!(trace_id(&run).len(), 32, "{}", run.traceparent);
        let (other, _span) = open_run_span(v1::Run {
            id: "r2".into(),
            ..Default::default()
        });
        assert_ne!(trace_id(&run), trace_id(&other));
    }
}
