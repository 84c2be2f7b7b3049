//! What the ADSync cmdlets' output objects mean: field lookups that accept the shapes
//! `ConvertTo-Json` gives on Windows PowerShell 5.1 and PowerShell 7, the scheduler settings,
//! run profile steps, run results, and the run-history XML built from a run result.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::engine::runhistory::ENGINE_TIMESTAMP_FORMAT;
use crate::engine::{RunProfileInfo, RunStepInfo};

/// A property of an output object as a string (numbers and booleans printed).
pub fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A property as a boolean (`true`, `"True"`).
pub fn flag(v: &Value, key: &str) -> Option<bool> {
    match v.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => {
            s.trim()
                .parse::<bool>()
                .ok()
                .or_else(|| match s.trim().to_ascii_lowercase().as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                })
        }
        _ => None,
    }
}

/// A property as an unsigned number (`5`, `"5"`).
pub fn number(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The output objects of a call (always an array from the runner; tolerate one object).
pub fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().filter(|x| !x.is_null()).collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// A date as `ConvertTo-Json` writes it: `"\/Date(1700000000000)\/"` (Windows PowerShell 5.1,
/// milliseconds since 1970 UTC) or an ISO 8601 string (PowerShell 7, the REST shape), in the
/// engine's run-history format (`yyyy-mm-dd hh:mm:ss.fff`). ISO strings without an offset are
/// taken as UTC.
pub fn engine_date(v: &Value, key: &str) -> Option<String> {
    let raw = text(v, key)?;
    let raw = raw.trim();
    let at: DateTime<Utc> = if let Some(ms) = raw
        .strip_prefix("/Date(")
        .and_then(|r| r.strip_suffix(")/"))
    {
        let digits: String = ms
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        DateTime::from_timestamp_millis(digits.parse().ok()?)?
    } else if let Ok(d) = DateTime::parse_from_rfc3339(raw) {
        d.with_timezone(&Utc)
    } else {
        chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc()
    };
    Some(at.format(ENGINE_TIMESTAMP_FORMAT).to_string())
}

/// `Get-ADSyncScheduler` settings the driver relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerState {
    pub sync_cycle_enabled: bool,
    pub sync_cycle_in_progress: bool,
    pub scheduler_suspended: bool,
    pub staging_mode_enabled: bool,
}

impl SchedulerState {
    /// From the output of `Get-ADSyncScheduler`; `None` when `SyncCycleEnabled` is missing (not
    /// a scheduler object). Other missing flags count as false.
    pub fn parse(output: &Value) -> Option<SchedulerState> {
        let s = items(output).into_iter().next()?;
        Some(SchedulerState {
            sync_cycle_enabled: flag(s, "SyncCycleEnabled")?,
            sync_cycle_in_progress: flag(s, "SyncCycleInProgress").unwrap_or(false),
            scheduler_suspended: flag(s, "SchedulerSuspended").unwrap_or(false),
            // Older builds name it IsStagingModeEnabled.
            staging_mode_enabled: flag(s, "StagingModeEnabled")
                .or_else(|| flag(s, "IsStagingModeEnabled"))
                .unwrap_or(false),
        })
    }
}

/// The step of a run step type as ADSync names it (`FullImport`, `Delta Synchronization`,
/// `export`, ...), or of a standard run profile name; `None` when unknown.
pub fn step_of(name: &str) -> Option<RunStepInfo> {
    let key: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    let (ty, sub) = match key.as_str() {
        "fullimport" | "fullimportstageonly" => ("full-import", "to-cs"),
        "deltaimport" | "deltaimportstageonly" => ("delta-import", "to-cs"),
        "fullsync" | "fullsynchronization" => ("apply-rules", "reevaluate-flow-connectors"),
        "deltasync" | "deltasynchronization" => ("apply-rules", "apply-pending"),
        "export" => ("export", ""),
        _ => return None,
    };
    Some(RunStepInfo {
        step_type: ty.to_owned(),
        subtype: sub.to_owned(),
        partition: String::new(),
    })
}

/// The run profiles Entra Connect creates on every connector (names UNCONFIRMED), assumed when a
/// connector object lists none.
pub const STANDARD_PROFILES: [&str; 5] = [
    "Full Import",
    "Delta Import",
    "Full Synchronization",
    "Delta Synchronization",
    "Export",
];

/// A non-empty string property (the host sends missing properties as `""`).
fn non_empty(v: &Value, key: &str) -> Option<String> {
    text(v, key).filter(|s| !s.trim().is_empty())
}

/// Run profiles of a `Get-ADSyncConnector` object: its `RunProfiles` items (`Name`, and steps
/// in `RunSteps` with a `Type`/`TaskType`/`StepType`, shape UNCONFIRMED). A profile whose steps
/// cannot be read gets the step its name implies (standard names), else no steps: `known` is
/// then false and the driver treats it as possibly exporting. A connector that lists no run
/// profiles gets [`STANDARD_PROFILES`].
pub fn run_profiles(connector: &Value) -> Vec<(RunProfileInfo, bool)> {
    let list = match connector.get("RunProfiles") {
        Some(Value::Array(list)) if !list.is_empty() => list.clone(),
        _ => STANDARD_PROFILES
            .iter()
            .map(|n| serde_json::json!({ "Name": n }))
            .collect(),
    };
    list.iter()
        .filter_map(|p| {
            let name = non_empty(p, "Name")?;
            let steps: Option<Vec<RunStepInfo>> = match p.get("RunSteps") {
                Some(Value::Array(steps)) if !steps.is_empty() => steps
                    .iter()
                    .map(|s| {
                        ["Type", "TaskType", "StepType"]
                            .iter()
                            .find_map(|k| non_empty(s, k))
                            .and_then(|t| step_of(&t))
                            .map(|mut step| {
                                if let Some(part) = non_empty(s, "PartitionName") {
                                    step.partition = part;
                                }
                                step
                            })
                    })
                    .collect(),
                _ => step_of(&name).map(|s| vec![s]),
            };
            let known = steps.is_some();
            Some((
                RunProfileInfo {
                    name,
                    steps: steps.unwrap_or_default(),
                },
                known,
            ))
        })
        .collect()
}

/// The result string of `Invoke-ADSyncRunProfile`'s output: the `Result` property of its object,
/// or the string it wrote.
pub fn invoke_result(output: &Value) -> Option<String> {
    items(output).into_iter().find_map(|o| match o {
        Value::String(s) => Some(s.trim().to_owned()),
        obj => text(obj, "Result").map(|s| s.trim().to_owned()),
    })
}

/// A run-step counter property (`StageAdd`) as the run-history element name (`stage-add`).
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Which run-history block a counter property belongs to.
fn counter_block(name: &str) -> Option<&'static str> {
    if name.starts_with("Stage") {
        Some("staging-counters")
    } else if name.starts_with("Disconnector")
        || (name.starts_with("Connector")
            && !name.ends_with("Xml")
            && !name.contains("Errors")
            && !name.contains("Information"))
        || name == "FlowFailure"
    {
        Some("inbound-flow-counters")
    } else if name.starts_with("Export") {
        Some("export-counters")
    } else {
        None
    }
}

/// A `<run-history>` document for the agent's one run-history parser, built from one
/// `Get-ADSyncRunProfileResult -RunStepDetails` object: run fields from the result, one
/// `<step-details>` per `RunStepResults` item with its `StepResult`, dates, `StepXml` as the step
/// description, the connection XML, and its counters. With `fragments` false, the XML fragments
/// (step description, connection, errors) are left out: used when a fragment is not well-formed.
pub fn run_history_xml(result: &Value, connector_id: &str, fragments: bool) -> String {
    let mut x = String::from("<run-history><run-details>");
    let field = |k: &str| escape(&text(result, k).unwrap_or_default());
    let _ = write!(
        x,
        "<ma-id>{{{}}}</ma-id><ma-name>{}</ma-name><run-number>{}</run-number>\
         <run-profile-name>{}</run-profile-name><security-id>{}</security-id>",
        escape(&connector_id.trim_matches(['{', '}']).to_ascii_uppercase()),
        field("ConnectorName"),
        field("RunNumber"),
        field("RunProfileName"),
        field("Username"),
    );
    let steps = match result.get("RunStepResults") {
        Some(Value::Array(s)) => s.iter().collect(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => Vec::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        let number = number(step, "StepNumber").unwrap_or(i as u64 + 1);
        let _ = write!(x, "<step-details step-number=\"{number}\">");
        for (k, el) in [("StartDate", "start-date"), ("EndDate", "end-date")] {
            if let Some(d) = engine_date(step, k) {
                let _ = write!(x, "<{el}>{d}</{el}>");
            }
        }
        let _ = write!(
            x,
            "<step-result>{}</step-result>",
            escape(&text(step, "StepResult").unwrap_or_default())
        );
        if fragments {
            for (k, el) in [
                ("StepXml", "step-description"),
                ("ConnectorConnectionInformationXml", "ma-connection"),
                ("ConnectorDiscoveryErrors", "ma-discovery-errors"),
                ("SyncErrors", "synchronization-errors"),
                ("MvRetryErrors", "mv-retry-errors"),
            ] {
                if let Some(inner) = text(step, k).filter(|s| !s.trim().is_empty()) {
                    let _ = write!(x, "<{el}>{inner}</{el}>");
                }
            }
        }
        for block in [
            "staging-counters",
            "inbound-flow-counters",
            "export-counters",
        ] {
            let _ = write!(x, "<{block}>");
            if let Value::Object(map) = step {
                for (k, v) in map {
                    if counter_block(k) == Some(block)
                        && let Some(n) = v.as_u64()
                    {
                        let el = kebab(k);
                        let _ = write!(x, "<{el}>{n}</{el}>");
                    }
                }
            }
            let _ = write!(x, "</{block}>");
        }
        x.push_str("</step-details>");
    }
    x.push_str("</run-details></run-history>");
    x
}
