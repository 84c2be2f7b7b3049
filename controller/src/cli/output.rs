//! JSON shapes of `-o json`: pure functions from `syncfleet.v1` messages to `serde_json::Value`.
//!
//! These shapes are a scripting contract, so they are built by hand rather than derived from the
//! generated types: enum fields are lower-case labels (`"completed_with_errors"`, not `5`),
//! timestamps are RFC 3339 UTC strings or `null` when unset (a zero timestamp counts as unset),
//! engine result strings and counter names are passed through verbatim, and every documented key
//! is always present (empty string, `0`, `{}` or `[]` rather than missing) so `jq` filters do
//! not need `//` defaults. New keys may be added; existing ones keep their meaning.

use prost_types::Timestamp;
use serde_json::{Map, Value, json};
use syncfleet_proto::v1::{Agent, EngineInfo, ManagementAgent, Run, Step, StepCounters};

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
    })
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

/// One run with its steps (shape of `runs show -o json`, `runs list -o json` elements and the
/// final object of `run -o json`).
pub fn run_json(r: &Run) -> Value {
    json!({
        "id": r.id,
        "agent": r.agent,
        "state": r.state().label(),
        "result": r.result,
        "origin": r.origin,
        "message": r.message,
        "requested_by": r.requested_by,
        "cancel_requested": r.cancel_requested,
        "created_at": timestamp_json(r.created_at.as_ref()),
        "started_at": timestamp_json(r.started_at.as_ref()),
        "finished_at": timestamp_json(r.finished_at.as_ref()),
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
        "runs_in_flight": a.runs_in_flight,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
                "runs_in_flight": ["r1"],
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
}
