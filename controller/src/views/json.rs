//! The JSON shapes of `syncfleet … -o json` and of the web console's API: pure functions from
//! `syncfleet.v1` messages to `serde_json::Value`, shared by every command and the console.
//!
//! These shapes are a scripting contract, so they are built by hand rather than derived from the
//! generated types: enum fields are lower-case labels (`"completed_with_errors"`, not `5`),
//! timestamps are RFC 3339 UTC strings or `null` when unset (a zero timestamp counts as unset),
//! engine result strings and counter names are passed through verbatim, and every documented key
//! is always present (empty string, `0`, `{}` or `[]` rather than missing) so `jq` filters do
//! not need `//` defaults. New keys may be added; existing ones keep their meaning.

use prost_types::Timestamp;
use serde_json::{Map, Value, json};
use syncfleet_proto::v1::{
    Agent, ApplyResponse, Condition, EngineInfo, FleetStatus, Guard, Limit, ManagementAgent,
    OnFailure, Pause, Run, RunState, ScheduleRunSummary, ScheduleStatus, Step, StepCounters, limit,
};

/// RFC 3339 (UTC, milliseconds) of `t`, or `null` when it is unset, zero or out of range.
pub fn timestamp_json(t: Option<&Timestamp>) -> Value {
    match t {
        Some(t) if t.seconds != 0 || t.nanos != 0 => {
            let s = syncfleet_proto::time::rfc3339(t);
            if s.is_empty() {
                Value::Null
            } else {
                Value::String(s)
            }
        }
        _ => Value::Null,
    }
}

/// Step counters: the engine's counter names as keys, outbound flow counters nested per target
/// MA under `"outbound"` (omitted when there are none):
/// `{"stage-add": 3, "outbound": {"HR": {"connector-flow": 2}}}`. `None` gives `{}`.
pub fn counters_json(c: Option<&StepCounters>) -> Value {
    let mut obj = Map::new();
    let Some(c) = c else {
        return Value::Object(obj);
    };
    for (k, v) in &c.counters {
        obj.insert(k.clone(), Value::from(*v));
    }
    let mut outbound = Map::new();
    for (ma, set) in &c.outbound {
        if set.values.is_empty() {
            continue;
        }
        let inner: Map<String, Value> = set
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        outbound.insert(ma.clone(), Value::Object(inner));
    }
    if !outbound.is_empty() {
        // An engine counter literally named "outbound" would collide; the nested per-MA map is
        // the documented meaning of this key, so it wins.
        obj.insert("outbound".to_string(), Value::Object(outbound));
    }
    Value::Object(obj)
}

/// One step of a run.
pub fn step_json(s: &Step) -> Value {
    json!({
        "index": s.index,
        "ma": s.ma,
        "profile": s.profile,
        "state": s.state().label(),
        "result": s.result,
        "started_at": timestamp_json(s.started_at.as_ref()),
        "finished_at": timestamp_json(s.finished_at.as_ref()),
        "run_number": s.run_number,
        "connection_result": s.connection_result,
        "error_count": s.error_count,
        "detail": s.detail,
        "progress": s.progress,
        "counters": counters_json(s.counters.as_ref()),
        "attempts": s.attempts,
        "pending_before": s.pending_before.as_ref().map(pending_json),
        "stage": s.stage,
        "only_if": condition_label(s.only_if()),
        "guard": s.guard.as_ref().map_or(Value::Null, guard_json),
        "object_errors": object_errors_json(s),
        "object_errors_omitted": s.object_errors_omitted,
        "connection_incidents": incidents_json(s),
        "connection_incidents_omitted": s.connection_incidents_omitted,
        "waiting_since": timestamp_json(s.waiting_since.as_ref()),
        "wait_reason": s.wait_reason,
        "waited_ms": s.waited_ms,
    })
}

/// The snake_case name of an `only_if` condition (`"staged_changes"`), `None` for
/// [`Condition::Always`] (no condition).
pub fn condition_label(c: Condition) -> Option<&'static str> {
    match c {
        Condition::Always => None,
        Condition::StagedChanges => Some("staged_changes"),
        Condition::PendingExports => Some("pending_exports"),
        Condition::Exported => Some("exported"),
    }
}

/// `"stop"` or `"continue"`.
pub fn on_failure_label(f: OnFailure) -> &'static str {
    match f {
        OnFailure::Stop => "stop",
        OnFailure::Continue => "continue",
    }
}

/// A limit as written in fleet files: a count (`500`), a percentage string (`"2%"`), or `null`
/// when unset.
pub fn limit_json(l: Option<&Limit>) -> Value {
    match l.and_then(|l| l.kind) {
        Some(limit::Kind::Count(n)) => Value::from(n),
        Some(limit::Kind::Percent(p)) => Value::String(format!("{p}%")),
        None => Value::Null,
    }
}

/// A step's guard rails: `{"max_pending_deletes": 500, "max_staged_deletes": "2%",
/// "max_staged_adds": null, ...}`, every limit of the guard, unset ones `null`.
pub fn guard_json(g: &Guard) -> Value {
    Value::Object(
        g.limits()
            .into_iter()
            .map(|(field, limit)| (field.to_string(), limit_json(limit)))
            .collect(),
    )
}

/// Milliseconds from `nominal` to `started` (negative when it started early), `None` when
/// either is unset.
pub fn lateness_ms(nominal: Option<&Timestamp>, started: Option<&Timestamp>) -> Option<i64> {
    let set = |t: Option<&Timestamp>| t.filter(|t| t.seconds != 0 || t.nanos != 0).copied();
    let (n, s) = (set(nominal)?, set(started)?);
    Some(syncfleet_proto::time::to_millis(&s) - syncfleet_proto::time::to_millis(&n))
}

/// Who changed a pause or drain state, when and why. `flag` names the boolean (`"paused"`,
/// `"draining"`); `None` is "not paused" with empty fields.
pub fn pause_json(p: Option<&Pause>, flag: &str) -> Value {
    let mut obj = Map::new();
    obj.insert(flag.to_string(), Value::Bool(p.is_some_and(|p| p.paused)));
    obj.insert(
        "note".into(),
        Value::String(p.map(|p| p.note.clone()).unwrap_or_default()),
    );
    obj.insert(
        "by".into(),
        Value::String(p.map(|p| p.by.clone()).unwrap_or_default()),
    );
    obj.insert("at".into(), timestamp_json(p.and_then(|p| p.at.as_ref())));
    Value::Object(obj)
}

/// Pending counters of an MA read before a step (keyed like the engine's WMI methods).
pub fn pending_json(p: &syncfleet_proto::v1::PendingCounters) -> Value {
    json!({
        "import_add": p.import_add,
        "import_update": p.import_update,
        "import_delete": p.import_delete,
        "export_add": p.export_add,
        "export_update": p.export_update,
        "export_delete": p.export_delete,
        "total_connectors": p.total_connectors,
        "cs_objects": p.cs_objects,
    })
}

/// The result to show for a run: empty until the run has ended, and for an `unknown` run
/// (whose outcome was not observed). The controller stores results that way; this also keeps
/// runs stored by older controllers, which kept a provisional result while running, honest.
pub fn run_result(state: RunState, result: &str) -> &str {
    if state.is_terminal() && state != RunState::Unknown {
        result
    } else {
        ""
    }
}

/// One run with its steps (shape of `runs show -o json`, `runs list -o json` elements and the
/// final object of `run -o json`).
pub fn run_json(r: &Run) -> Value {
    json!({
        "id": r.id,
        "agent": r.agent,
        "state": r.state().label(),
        "result": run_result(r.state(), &r.result),
        "origin": r.origin,
        "coalesced_changes": r.coalesced_changes,
        "change_sources": r.change_sources,
        "message": r.message,
        "requested_by": r.requested_by,
        "cancel_requested": r.cancel_requested,
        // The W3C trace id of the run's trace (controller and agent spans), for the trace UI.
        "trace_id": r.traceparent.split('-').nth(1).unwrap_or_default(),
        "created_at": timestamp_json(r.created_at.as_ref()),
        "started_at": timestamp_json(r.started_at.as_ref()),
        "finished_at": timestamp_json(r.finished_at.as_ref()),
        "schedule": r.schedule,
        "sequence": r.sequence,
        "nominal_time": timestamp_json(r.nominal_time.as_ref()),
        "lateness_ms": lateness_ms(r.nominal_time.as_ref(), r.started_at.as_ref()),
        "jitter_ms": r.jitter_ms,
        "on_failure": on_failure_label(r.on_failure()),
        "continuation_of": r.continuation_of,
        "continued_in": r.continued_in,
        "approved_by": r.approved_by,
        "approved_at": timestamp_json(r.approved_at.as_ref()),
        "approved_steps": r.approved_steps,
        "rejected_by": r.rejected_by,
        "rejected_at": timestamp_json(r.rejected_at.as_ref()),
        "reject_note": r.reject_note,
        "skip_steps": r.skip_steps,
        "steps": r.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

/// Engine kind and version; always an object (empty strings when the agent never reported).
pub fn engine_json(e: Option<&EngineInfo>) -> Value {
    let (kind, version) = e.map_or(("", ""), |e| (e.kind.as_str(), e.version.as_str()));
    json!({ "kind": kind, "version": version })
}

/// One management agent with the names of its run profiles.
pub fn management_agent_json(ma: &ManagementAgent) -> Value {
    json!({
        "name": ma.name,
        "type": ma.r#type,
        "guid": ma.guid,
        "run_profiles": ma.run_profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
    })
}

/// One agent (shape of `agents show -o json` and of `agents list -o json` elements).
pub fn agent_json(a: &Agent) -> Value {
    let labels: Map<String, Value> = a
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "name": a.name,
        "state": a.state().label(),
        "labels": labels,
        "engine": engine_json(a.engine.as_ref()),
        "agent_version": a.agent_version,
        "hostname": a.hostname,
        "last_seen": timestamp_json(a.last_seen.as_ref()),
        "state_since": timestamp_json(a.state_since.as_ref()),
        "engine_healthy": a.engine_healthy,
        "engine_detail": a.engine_detail,
        "agent_problem": a.agent_problem,
        "runs_in_flight": a.runs_in_flight,
        // Runs the engine executes that syncfleet did not start (Sync Service Manager, scripts).
        "engine_runs": a.engine_runs.iter().map(|r| json!({
            "ma": r.ma,
            "profile": r.profile,
            "run_number": r.run_number,
            "origin": r.origin,
            "seen_since": timestamp_json(r.seen_since.as_ref()),
        })).collect::<Vec<_>>(),
        "drain": pause_json(a.drain.as_ref(), "draining"),
        // Firing its schedules on its own (no controller reachable), since when; or the last
        // such period (`autonomous_until` set once it handed its schedules back).
        "autonomous": a.autonomous,
        "autonomous_since": timestamp_json(a.autonomous_since.as_ref()),
        "autonomous_until": timestamp_json(a.autonomous_until.as_ref()),
        "autonomy_after_seconds": a.autonomy_after_seconds,
        // Engine run-history housekeeping (`engine.clear_runs_older_than`), from heartbeats.
        "runs_cleared_before": timestamp_json(a.runs_cleared_before.as_ref()),
        "clear_runs_total": a.clear_runs_total,
        "clear_runs_problem": a.clear_runs_problem,
        // The change sources it polls (`trigger.on_change`), from its last heartbeat.
        "change_sources": a.change_sources.iter().map(|c| {
            let mut v = change_source_status_json(c);
            if let Some(o) = v.as_object_mut() {
                o.insert("schedule".into(), json!(c.schedule));
                o.insert("source".into(), json!(c.source));
            }
            v
        }).collect::<Vec<_>>(),
        "management_agents": a.management_agents.iter().map(management_agent_json).collect::<Vec<_>>(),
    })
}

/// Agents as a JSON array, in the order given.
pub fn agents_json(agents: &[Agent]) -> Value {
    Value::Array(agents.iter().map(agent_json).collect())
}

/// Runs as a JSON array, in the order given.
pub fn runs_json(runs: &[Run]) -> Value {
    Value::Array(runs.iter().map(run_json).collect())
}

/// The response of `apply -o json`: `{"applied": bool, "changes": [{"kind", "name", "action",
/// "fields"}], "forecasts": [{"name", "time_zone", "next": [RFC 3339 UTC]}]}`.
pub fn apply_json(r: &ApplyResponse) -> Value {
    json!({
        "applied": r.applied,
        "changes": r.changes.iter().map(|c| json!({
            "kind": c.kind,
            "name": c.name,
            "action": c.action,
            "fields": c.fields,
        })).collect::<Vec<_>>(),
        "forecasts": r.forecasts.iter().map(|f| json!({
            "name": f.name,
            "time_zone": f.time_zone,
            "next": f.next.iter().map(|t| timestamp_json(Some(t))).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// One recent run of a schedule; `lateness_ms` is `null` when the run has not started.
pub fn schedule_run_json(r: &ScheduleRunSummary) -> Value {
    let started = r
        .started_at
        .as_ref()
        .is_some_and(|t| t.seconds != 0 || t.nanos != 0);
    let lateness = if started {
        Value::from(r.lateness_ms)
    } else {
        Value::Null
    };
    json!({
        "run_id": r.run_id,
        "agent": r.agent,
        "origin": r.origin,
        "nominal_time": timestamp_json(r.nominal_time.as_ref()),
        "started_at": timestamp_json(r.started_at.as_ref()),
        "lateness_ms": lateness,
        "duration_ms": r.duration_ms,
        "state": r.state().label(),
        "result": run_result(r.state(), &r.result),
        "coalesced_changes": r.coalesced_changes,
    })
}

/// What an agent reports of one change source it polls (`status` of `schedules show -o json`'s
/// `change_sources`; `agents show -o json`'s `change_sources`, with `schedule` and `source`).
pub fn change_source_status_json(s: &syncfleet_proto::v1::ChangeSourceStatus) -> Value {
    json!({
        "kind": s.kind,
        "target": s.target,
        "cursor": s.cursor,
        "last_poll": timestamp_json(s.last_poll.as_ref()),
        "last_change": timestamp_json(s.last_change.as_ref()),
        "changes_total": s.changes_total,
        "error": s.error,
        "error_since": timestamp_json(s.error_since.as_ref()),
        "consecutive_errors": s.consecutive_errors,
    })
}

/// One change source of a schedule on one agent (`schedules show -o json`, `change_sources`).
pub fn change_source_json(v: &syncfleet_proto::v1::ChangeSourceView) -> Value {
    let status = v.status.as_ref().map(change_source_status_json);
    json!({
        "agent": v.agent,
        "source": v.source,
        "status": status,
        "last_reported": timestamp_json(v.last_reported.as_ref()),
        "reported_cursor": v.reported_cursor,
        "examples": v.examples,
        "pending_changes": v.pending_changes,
        "last_run_id": v.last_run_id,
        "last_run_at": timestamp_json(v.last_run_at.as_ref()),
        "last_run_changes": v.last_run_changes,
    })
}

/// A schedule's status (`schedules show -o json`): the stored document parsed back into an
/// object under `"spec"` (`null` if it is not JSON), pause state, next fire times (RFC 3339
/// UTC; `time_zone` says where they are meant), recent runs newest first, counters,
/// saturation and warning, and the agents targeted now.
pub fn schedule_status_json(s: &ScheduleStatus) -> Value {
    let counters: Map<String, Value> = s
        .counters
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(*v)))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    json!({
        "name": s.name,
        "spec": serde_json::from_str::<Value>(&s.json).unwrap_or(Value::Null),
        "pause": pause_json(s.pause.as_ref(), "paused"),
        "time_zone": s.time_zone,
        "targets": s.targets,
        "next": s.next.iter().map(|t| timestamp_json(Some(t))).collect::<Vec<_>>(),
        "recent": s.recent.iter().map(schedule_run_json).collect::<Vec<_>>(),
        "counters": counters,
        "saturation": s.saturation,
        "warning": s.warning,
        "advice": s.advice.as_ref().map(interval_advice_json),
        "servers": s.servers.iter().map(server_advice_json).collect::<Vec<_>>(),
        "change_sources": s.change_sources.iter().map(change_source_json).collect::<Vec<_>>(),
    })
}

/// A schedule's interval advice (`schedules show -o json`, `advice`).
pub fn interval_advice_json(a: &syncfleet_proto::v1::IntervalAdvice) -> Value {
    json!({
        "runs_measured": a.runs_measured,
        "runs_needed": a.runs_needed,
        "p95_duration_ms": a.p95_duration_ms,
        "interval_ms": a.interval_ms,
        "saturation_p95": a.saturation_p95,
        "shortest_interval_ms": a.shortest_interval_ms,
        "summary": a.summary,
    })
}

/// One server of a schedule's advice (`schedules show -o json`, `servers`).
pub fn server_advice_json(s: &syncfleet_proto::v1::ServerAdvice) -> Value {
    json!({
        "agent": s.agent,
        "load_p95": s.load_p95,
        "competing": s.competing,
        "unmeasured": s.unmeasured,
        "shortest_interval_ms": s.shortest_interval_ms,
        "summary": s.summary,
    })
}

/// Fleet-wide pause and the agents draining (`fleet status -o json`).
pub fn fleet_status_json(f: &FleetStatus) -> Value {
    json!({
        "pause": pause_json(f.pause.as_ref(), "paused"),
        "draining": f.draining,
    })
}

/// A step's object errors as JSON, in the engine's order.
pub fn object_errors_json(s: &Step) -> Value {
    Value::Array(
        s.object_errors
            .iter()
            .map(|e| {
                json!({
                    "kind": e.kind,
                    "dn": e.dn,
                    "cs_guid": e.cs_guid,
                    "error_type": e.error_type,
                    "error_code": e.error_code,
                    "error_literal": e.error_literal,
                    "literal_truncated": e.literal_truncated,
                })
            })
            .collect(),
    )
}

/// A step's connection incidents as JSON, in the engine's order.
pub fn incidents_json(s: &Step) -> Value {
    Value::Array(
        s.connection_incidents
            .iter()
            .map(|i| {
                json!({
                    "connection_result": i.connection_result,
                    "date": timestamp_json(i.date.as_ref()),
                    "server": i.server,
                    "error_code": i.error_code,
                    "error_literal": i.error_literal,
                    "server_error_detail": i.server_error_detail,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::{AgentState, CounterSet, RunProfile, RunState, StepState};

    fn sample_run() -> Run {
        let mut counters = StepCounters::default();
        counters.counters.insert("stage-add".into(), 3);
        counters.counters.insert("stage-update".into(), 27);
        let mut hr = CounterSet::default();
        hr.values.insert("connector-flow".into(), 2);
        counters.outbound.insert("HR".into(), hr);
        Run {
            id: "0190a0b0-0000-7000-8000-000000000001".into(),
            agent: "sync01".into(),
            state: RunState::CompletedWithErrors as i32,
            result: "completed-sync-errors".into(),
            origin: "manual".into(),
            created_at: Some(from_millis(1_700_000_000_123)),
            started_at: Some(from_millis(1_700_000_001_000)),
            finished_at: None,
            message: "1 step reported errors".into(),
            requested_by: "operator".into(),
            steps: vec![
                Step {
                    index: 0,
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                    state: StepState::Done as i32,
                    result: "success".into(),
                    started_at: Some(from_millis(1_700_000_001_000)),
                    finished_at: Some(from_millis(1_700_000_002_500)),
                    counters: Some(counters),
                    progress: String::new(),
                    run_number: 42,
                    connection_result: "success".into(),
                    error_count: 0,
                    detail: String::new(),
                    ..Default::default()
                },
                Step {
                    index: 1,
                    ma: "HR".into(),
                    profile: "Export".into(),
                    state: StepState::NotRun as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn run_json_has_documented_shape() {
        let v = run_json(&sample_run());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "id",
            "agent",
            "state",
            "result",
            "origin",
            "message",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "steps",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        assert_eq!(v["state"], "completed_with_errors");
        assert_eq!(v["result"], "completed-sync-errors");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["started_at"], "2023-11-14T22:13:21.000Z");
        assert_eq!(v["finished_at"], Value::Null);
        assert_eq!(v["steps"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn step_json_has_documented_shape_and_raw_result() {
        let v = run_json(&sample_run());
        let s = &v["steps"][0];
        for k in [
            "index",
            "ma",
            "profile",
            "state",
            "result",
            "started_at",
            "finished_at",
            "run_number",
            "connection_result",
            "error_count",
            "detail",
            "progress",
            "counters",
        ] {
            assert!(s.get(k).is_some(), "missing {k} in {s}");
        }
        assert_eq!(s["index"], 0);
        assert_eq!(s["ma"], "AD");
        assert_eq!(s["profile"], "Delta Import");
        assert_eq!(s["state"], "done");
        assert_eq!(s["result"], "success");
        assert_eq!(s["run_number"], 42);
        assert_eq!(s["finished_at"], "2023-11-14T22:13:22.500Z");

        let unset = &v["steps"][1];
        assert_eq!(unset["state"], "not_run");
        assert_eq!(unset["started_at"], Value::Null);
        assert_eq!(unset["finished_at"], Value::Null);
        assert_eq!(unset["counters"], json!({}));
    }

    #[test]
    fn counters_use_engine_names_with_outbound_nested() {
        let v = run_json(&sample_run());
        assert_eq!(
            v["steps"][0]["counters"],
            json!({
                "stage-add": 3,
                "stage-update": 27,
                "outbound": {"HR": {"connector-flow": 2}}
            })
        );
    }

    #[test]
    fn outbound_is_omitted_when_empty() {
        let mut c = StepCounters::default();
        c.counters.insert("export-update".into(), 5);
        c.outbound.insert("HR".into(), CounterSet::default());
        assert_eq!(counters_json(Some(&c)), json!({"export-update": 5}));
        assert_eq!(counters_json(None), json!({}));
    }

    #[test]
    fn zero_timestamp_is_null() {
        assert_eq!(timestamp_json(Some(&Timestamp::default())), Value::Null);
        assert_eq!(timestamp_json(None), Value::Null);
    }

    #[test]
    fn agent_json_has_documented_shape() {
        let mut a = Agent {
            name: "sync01".into(),
            state: AgentState::Disconnected as i32,
            engine: Some(EngineInfo {
                kind: "sim".into(),
                version: "sim 1".into(),
            }),
            management_agents: vec![ManagementAgent {
                name: "CONTOSO AD".into(),
                guid: "{85098734-66BC-4938-8122-C5F585F463D0}".into(),
                r#type: "AD".into(),
                run_profiles: vec![
                    RunProfile {
                        name: "Delta Import".into(),
                        step_types: vec!["delta-import".into()],
                    },
                    RunProfile {
                        name: "Export".into(),
                        step_types: vec!["export".into()],
                    },
                ],
            }],
            agent_version: "0.1.0".into(),
            hostname: "SYNC01".into(),
            last_seen: Some(from_millis(1_700_000_000_123)),
            state_since: None,
            engine_healthy: true,
            engine_detail: String::new(),
            runs_in_flight: vec!["r1".into()],
            ..Default::default()
        };
        a.labels.insert("env".into(), "prod".into());
        let v = agent_json(&a);
        assert_eq!(
            v,
            json!({
                "name": "sync01",
                "state": "disconnected",
                "labels": {"env": "prod"},
                "engine": {"kind": "sim", "version": "sim 1"},
                "agent_version": "0.1.0",
                "hostname": "SYNC01",
                "last_seen": "2023-11-14T22:13:20.123Z",
                "state_since": null,
                "engine_healthy": true,
                "engine_detail": "",
                "agent_problem": "",
                "runs_in_flight": ["r1"],
                "engine_runs": [],
                "drain": {"draining": false, "note": "", "by": "", "at": null},
                "autonomous": false,
                "autonomous_since": null,
                "autonomous_until": null,
                "autonomy_after_seconds": 0,
                "runs_cleared_before": null,
                "clear_runs_total": 0,
                "clear_runs_problem": "",
                "change_sources": [],
                "management_agents": [{
                    "name": "CONTOSO AD",
                    "type": "AD",
                    "guid": "{85098734-66BC-4938-8122-C5F585F463D0}",
                    "run_profiles": ["Delta Import", "Export"]
                }]
            })
        );
        let list = agents_json(&[a.clone(), a]);
        assert_eq!(list.as_array().unwrap().len(), 2);
    }

    #[test]
    fn agent_without_engine_still_has_engine_object() {
        let v = agent_json(&Agent::default());
        assert_eq!(v["engine"], json!({"kind": "", "version": ""}));
        assert_eq!(v["state"], "unspecified");
        assert_eq!(v["last_seen"], Value::Null);
    }

    #[test]
    fn run_json_has_schedule_sequence_and_approval_fields() {
        let mut r = sample_run();
        r.schedule = "delta-every-5m".into();
        r.sequence = "delta-cycle".into();
        r.nominal_time = Some(from_millis(1_700_000_000_500));
        r.jitter_ms = 300;
        r.on_failure = OnFailure::Continue as i32;
        r.continued_in = "r2".into();
        r.approved_by = "alice".into();
        r.approved_at = Some(from_millis(1_700_000_100_000));
        r.approved_steps = vec![3];
        let v = run_json(&r);
        assert_eq!(v["schedule"], "delta-every-5m");
        assert_eq!(v["sequence"], "delta-cycle");
        assert_eq!(v["nominal_time"], "2023-11-14T22:13:20.500Z");
        // started_at is 1_700_000_001_000.
        assert_eq!(v["lateness_ms"], 500);
        assert_eq!(v["jitter_ms"], 300);
        assert_eq!(v["on_failure"], "continue");
        assert_eq!(v["continuation_of"], "");
        assert_eq!(v["continued_in"], "r2");
        assert_eq!(v["approved_by"], "alice");
        assert_eq!(v["approved_at"], "2023-11-14T22:15:00.000Z");
        assert_eq!(v["approved_steps"], json!([3]));
        assert_eq!(v["rejected_by"], "");
        assert_eq!(v["rejected_at"], Value::Null);
        assert_eq!(v["reject_note"], "");
        r.rejected_by = "bob".into();
        r.rejected_at = Some(from_millis(1_700_000_100_000));
        r.reject_note = "wrong feed".into();
        let v = run_json(&r);
        assert_eq!(v["rejected_by"], "bob");
        assert_eq!(v["rejected_at"], "2023-11-14T22:15:00.000Z");
        assert_eq!(v["reject_note"], "wrong feed");
        assert_eq!(v["skip_steps"], json!([]));

        // Manual runs: no nominal time, so no lateness.
        let v = run_json(&sample_run());
        assert_eq!(v["nominal_time"], Value::Null);
        assert_eq!(v["lateness_ms"], Value::Null);
        assert_eq!(v["on_failure"], "stop");
        assert_eq!(v["schedule"], "");
    }

    #[test]
    fn step_json_has_stage_condition_guard_and_pending_counters() {
        let mut r = sample_run();
        r.steps[1].stage = 2;
        r.steps[1].only_if = Condition::PendingExports as i32;
        r.steps[1].guard = Some(Guard {
            max_pending_deletes: Some(Limit {
                kind: Some(limit::Kind::Percent(2.0)),
            }),
            max_staged_deletes: Some(Limit {
                kind: Some(limit::Kind::Count(500)),
            }),
            max_staged_adds: Some(Limit {
                kind: Some(limit::Kind::Count(1000)),
            }),
            ..Default::default()
        });
        r.steps[1].attempts = 2;
        r.steps[1].pending_before = Some(syncfleet_proto::v1::PendingCounters {
            export_delete: 700,
            total_connectors: 30_000,
            ..Default::default()
        });
        let v = run_json(&r);
        let s = &v["steps"][1];
        assert_eq!(s["stage"], 2);
        assert_eq!(s["only_if"], "pending_exports");
        assert_eq!(
            s["guard"],
            json!({"max_pending_deletes": "2%", "max_staged_deletes": 500, "max_staged_adds": 1000,
                "max_staged_updates": null, "max_staged_renames": null, "max_pending_adds": null,
                "max_pending_updates": null})
        );
        assert_eq!(s["attempts"], 2);
        assert_eq!(s["pending_before"]["export_delete"], 700);
        assert_eq!(s["pending_before"]["total_connectors"], 30_000);
        let first = &v["steps"][0];
        assert_eq!(first["only_if"], Value::Null);
        assert_eq!(first["guard"], Value::Null);
        assert_eq!(first["pending_before"], Value::Null);
        assert_eq!(first["stage"], 0);
        let half = Guard {
            max_staged_deletes: Some(Limit {
                kind: Some(limit::Kind::Count(5)),
            }),
            ..Default::default()
        };
        assert_eq!(
            guard_json(&half),
            json!({"max_pending_deletes": null, "max_staged_deletes": 5, "max_staged_adds": null,
                "max_staged_updates": null, "max_staged_renames": null, "max_pending_adds": null,
                "max_pending_updates": null})
        );
    }

    #[test]
    fn lateness_needs_both_instants_and_may_be_negative() {
        let n = from_millis(10_000);
        let s = from_millis(9_000);
        assert_eq!(lateness_ms(Some(&n), Some(&s)), Some(-1000));
        assert_eq!(lateness_ms(Some(&s), Some(&n)), Some(1000));
        assert_eq!(lateness_ms(None, Some(&n)), None);
        assert_eq!(lateness_ms(Some(&n), Some(&Timestamp::default())), None);
    }

    #[test]
    fn agent_json_shows_drain() {
        let a = Agent {
            name: "sync01".into(),
            drain: Some(Pause {
                paused: true,
                note: "patching".into(),
                by: "alice".into(),
                at: Some(from_millis(1_700_000_000_000)),
            }),
            ..Default::default()
        };
        assert_eq!(
            agent_json(&a)["drain"],
            json!({"draining": true, "note": "patching", "by": "alice", "at": "2023-11-14T22:13:20.000Z"})
        );
    }

    fn sample_status() -> ScheduleStatus {
        let mut s = ScheduleStatus {
            name: "delta-every-5m".into(),
            json: r#"{"kind":"Schedule","name":"delta-every-5m","sequence":"delta-cycle","targets":{"selector":"env=prod"},"trigger":{"every":"5m"},"overlap":"skip"}"#.into(),
            pause: Some(Pause {
                paused: true,
                note: "AD maintenance".into(),
                by: "alice".into(),
                at: Some(from_millis(1_705_309_200_000)),
            }),
            time_zone: "Europe/Oslo".into(),
            next: vec![from_millis(1_705_309_230_000), from_millis(1_705_309_530_000)],
            recent: vec![
                ScheduleRunSummary {
                    run_id: "r2".into(),
                    agent: "sync01".into(),
                    nominal_time: Some(from_millis(1_705_308_930_000)),
                    started_at: None,
                    lateness_ms: 0,
                    duration_ms: 0,
                    state: RunState::Pending as i32,
                    result: String::new(),
                    origin: "schedule".into(),
                    coalesced_changes: 0,
                },
                ScheduleRunSummary {
                    run_id: "r1".into(),
                    agent: "sync01".into(),
                    nominal_time: Some(from_millis(1_705_308_630_000)),
                    started_at: Some(from_millis(1_705_308_641_500)),
                    lateness_ms: 11_500,
                    duration_ms: 123_000,
                    state: RunState::Succeeded as i32,
                    result: "success".into(),
                    origin: "schedule".into(),
                    coalesced_changes: 0,
                },
            ],
            saturation: 0.41,
            warning: String::new(),
            targets: vec!["sync01".into(), "sync02".into()],
            ..Default::default()
        };
        s.counters.insert("fired".into(), 12);
        s.counters.insert("skipped_overlap".into(), 1);
        s
    }

    #[test]
    fn schedule_status_json_parses_the_spec_and_uses_rfc3339() {
        let v = schedule_status_json(&sample_status());
        assert_eq!(v["name"], "delta-every-5m");
        assert_eq!(v["spec"]["trigger"]["every"], "5m");
        assert_eq!(v["spec"]["kind"], "Schedule");
        assert_eq!(
            v["pause"],
            json!({"paused": true, "note": "AD maintenance", "by": "alice", "at": "2024-01-15T09:00:00.000Z"})
        );
        assert_eq!(v["time_zone"], "Europe/Oslo");
        assert_eq!(v["next"][0], "2024-01-15T09:00:30.000Z");
        assert_eq!(v["targets"], json!(["sync01", "sync02"]));
        assert_eq!(v["counters"], json!({"fired": 12, "skipped_overlap": 1}));
        assert_eq!(v["saturation"], 0.41);
        assert_eq!(v["warning"], "");
        let pending = &v["recent"][0];
        assert_eq!(pending["state"], "pending");
        assert_eq!(pending["started_at"], Value::Null);
        assert_eq!(pending["lateness_ms"], Value::Null);
        let done = &v["recent"][1];
        assert_eq!(done["lateness_ms"], 11_500);
        assert_eq!(done["duration_ms"], 123_000);
        assert_eq!(done["result"], "success");
        assert_eq!(done["nominal_time"], "2024-01-15T08:50:30.000Z");
        let mut broken = sample_status();
        broken.json = "not json".into();
        assert_eq!(schedule_status_json(&broken)["spec"], Value::Null);
    }

    #[test]
    fn fleet_status_json_shape() {
        let f = FleetStatus {
            pause: None,
            draining: vec!["sync02".into()],
        };
        assert_eq!(
            fleet_status_json(&f),
            json!({"pause": {"paused": false, "note": "", "by": "", "at": null}, "draining": ["sync02"]})
        );
    }
}
