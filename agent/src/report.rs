//! `syncfleet-agent run-details FILE`: the normalized form of engine run-history XML, as JSON
//! for scripts or as text for people. One shape for every driver and for saved history files.

use serde_json::{Value, json};

use crate::engine::runhistory::{RunDetails, StepDetails};

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

fn step_json(s: &StepDetails) -> Value {
    json!({
        "step_number": s.step_number,
        "type": s.step_type,
        "subtype": s.subtype,
        "partition": s.partition,
        "started_at": time(s.started_at),
        "finished_at": time(s.finished_at),
        "result": s.result,
        "progress": s.progress,
        "connection_result": s.connection_result,
        "connection_server": s.connection_server,
        "connection_incidents": s.connection_incidents,
        "counters": s.counters,
        "outbound": s.outbound,
        "errors": s.errors,
    })
}

/// JSON of one run: `{ma, ma_id, run_number, profile, result, security_id, steps: [...]}` with
/// `result` the most severe step result and steps in `step_number` order.
pub fn run_json(r: &RunDetails) -> Value {
    json!({
        "ma": r.ma,
        "ma_id": r.ma_id,
        "run_number": r.run_number,
        "profile": r.profile,
        "result": r.result(),
        "security_id": r.security_id,
        "started_at": time(r.started_at()),
        "finished_at": time(r.finished_at()),
        "steps": r.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

/// JSON of a whole file: one object for one run, an array for a saved history of several.
pub fn runs_json(runs: &[RunDetails]) -> Value {
    match runs {
        [one] => run_json(one),
        many => Value::Array(many.iter().map(run_json).collect()),
    }
}

/// Human summary of runs.
pub fn runs_text(runs: &[RunDetails]) -> String {
    let mut out = String::new();
    for r in runs {
        out.push_str(&format!(
            "{} run {}  {}  result {}  by {}\n",
            r.ma,
            r.run_number,
            r.profile,
            r.result().unwrap_or("-"),
            if r.security_id.is_empty() {
                "-"
            } else {
                &r.security_id
            }
        ));
        for s in &r.steps {
            out.push_str(&format!(
                "  step {} {}{} {}  {}",
                s.step_number,
                s.step_type,
                if s.subtype.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.subtype)
                },
                if s.partition.is_empty() {
                    ""
                } else {
                    &s.partition
                },
                s.result
            ));
            if let Some(c) = &s.connection_result {
                out.push_str(&format!("  connection {c}"));
            }
            out.push('\n');
            let nonzero: Vec<String> = s
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                out.push_str(&format!("    {}\n", nonzero.join(" ")));
            }
            for (ma, set) in &s.outbound {
                let v: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("    -> {ma}: {}\n", v.join(" ")));
            }
            if s.errors.count > 0 {
                out.push_str(&format!("    {} error(s)", s.errors.count));
                if let Some(e) = s.errors.first.first() {
                    out.push_str(&format!(
                        ", first: {} {} {}",
                        e.error_type,
                        e.error_code.as_deref().unwrap_or(""),
                        e.dn
                    ));
                }
                out.push('\n');
            }
        }
    }
    out
}
