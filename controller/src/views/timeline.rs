//! The timeline's facts: per server, the steps of recent runs as bars on one time axis (the
//! kind of each step, its wait) and where steps of different runs overlapped. `syncfleet
//! timeline` draws them as text; its `-o json` and the web console's `/api/timeline` are
//! [`timeline_json`].

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use syncfleet_proto::v1::{Agent, Run};

use super::instant;

/// The most runs one timeline reads.
pub const MAX_RUNS: usize = 5_000;

/// What a step does, by the step types of its run profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Import,
    Sync,
    Export,
    Other,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Import => "import",
            Kind::Sync => "sync",
            Kind::Export => "export",
            Kind::Other => "other",
        }
    }

    pub fn glyph(self) -> char {
        match self {
            Kind::Import => '=',
            Kind::Sync => '#',
            Kind::Export => '>',
            Kind::Other => '-',
        }
    }
}

/// The kind of `ma`/`profile` on `agent`: from the inventory's step types, else by the profile
/// name (an MA the agent no longer reports).
pub fn kind_of(agent: Option<&Agent>, ma: &str, profile: &str) -> Kind {
    let types: Option<Vec<String>> = agent.and_then(|a| {
        a.management_agents
            .iter()
            .find(|m| m.name == ma)
            .and_then(|m| m.run_profiles.iter().find(|p| p.name == profile))
            .map(|p| p.step_types.clone())
    });
    let words: Vec<String> = match types {
        Some(t) if !t.is_empty() => t,
        _ => vec![profile.to_ascii_lowercase()],
    };
    let has = |w: &str| words.iter().any(|t| t.contains(w));
    // A MIM Service MA import counts as a synchronization for the engine's rules, but it is
    // drawn as what it is.
    if has("sync") || has("apply-rules") {
        Kind::Sync
    } else if has("export") {
        Kind::Export
    } else if has("import") {
        Kind::Import
    } else {
        Kind::Other
    }
}

/// One step placed on the axis.
#[derive(Debug, Clone)]
pub struct Bar {
    pub run: String,
    pub step: u32,
    pub kind: Kind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// When it started waiting, when it reported a wait.
    pub wait_from: Option<DateTime<Utc>>,
}

/// Steps of different runs running at once on one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlap {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub runs: (String, String),
    /// Both steps synchronize.
    pub synchronizations: bool,
}

/// The bars of one run's steps that started (running ones end `now`).
pub fn bars_of(run: &Run, agent: Option<&Agent>, now: DateTime<Utc>) -> Vec<Bar> {
    run.steps
        .iter()
        .filter_map(|s| {
            let start = instant(s.started_at.as_ref())?;
            let end = instant(s.finished_at.as_ref()).unwrap_or(now).max(start);
            Some(Bar {
                run: run.id.clone(),
                step: s.index,
                kind: kind_of(agent, &s.ma, &s.profile),
                start,
                end,
                wait_from: instant(s.waiting_since.as_ref()).filter(|w| *w < start),
            })
        })
        .collect()
}

/// Every pair of steps of different runs that ran at the same time, in time order.
pub fn overlaps(bars: &[Bar]) -> Vec<Overlap> {
    let mut sorted: Vec<&Bar> = bars.iter().collect();
    sorted.sort_by_key(|b| b.start);
    let mut out = Vec::new();
    let mut active: Vec<&Bar> = Vec::new();
    for b in sorted {
        active.retain(|a| a.end > b.start);
        for a in &active {
            if a.run != b.run {
                out.push(Overlap {
                    from: b.start,
                    to: a.end.min(b.end),
                    runs: (a.run.clone(), b.run.clone()),
                    synchronizations: a.kind == Kind::Sync && b.kind == Kind::Sync,
                });
            }
        }
        active.push(b);
    }
    out
}

/// Each server's runs with their bars, servers by name, runs by their first step's start
/// (runs without a step in the window left out): what [`render`] and [`timeline_json`] draw.
pub fn place<'a>(
    agents: &[Agent],
    runs: &'a [Run],
    now: DateTime<Utc>,
) -> BTreeMap<String, Vec<(&'a Run, Vec<Bar>)>> {
    let by_name: HashMap<&str, &Agent> = agents.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut servers: BTreeMap<String, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        servers.entry(r.agent.clone()).or_default().push(r);
    }
    for list in servers.values_mut() {
        list.sort_by_key(|r| {
            r.steps
                .iter()
                .filter_map(|s| instant(s.started_at.as_ref()))
                .min()
                .unwrap_or(now)
        });
    }
    servers
        .iter()
        .map(|(agent, list)| {
            let a = by_name.get(agent.as_str()).copied();
            (
                agent.clone(),
                list.iter()
                    .map(|r| (*r, bars_of(r, a, now)))
                    .filter(|(_, b)| !b.is_empty())
                    .collect(),
            )
        })
        .collect()
}

/// `-o json`: `{since, until, servers: [{agent, runs: [{id, sequence, state, steps: [...]}],
/// overlaps: [{from, to, runs, synchronizations}]}]}`.
pub fn timeline_json(
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    placed: &BTreeMap<String, Vec<(&Run, Vec<Bar>)>>,
) -> Value {
    let ts =
        |t: DateTime<Utc>| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let servers: Vec<Value> = placed
        .iter()
        .map(|(agent, runs)| {
            let all: Vec<Bar> = runs.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
            json!({
                "agent": agent,
                "runs": runs.iter().map(|(run, bars)| json!({
                    "id": run.id,
                    "sequence": run.sequence,
                    "schedule": run.schedule,
                    "state": run.state().label(),
                    "result": run.result,
                    "steps": bars.iter().map(|b| {
                        let s = run.steps.iter().find(|s| s.index == b.step);
                        json!({
                            "index": b.step,
                            "ma": s.map(|s| s.ma.clone()),
                            "profile": s.map(|s| s.profile.clone()),
                            "kind": b.kind.label(),
                            "started_at": ts(b.start),
                            "finished_at": s.and_then(|s| s.finished_at.as_ref()).map_or(Value::Null, |t| crate::views::json::timestamp_json(Some(t))),
                            "waiting_since": b.wait_from.map_or(Value::Null, ts),
                            "waited_ms": s.map_or(0, |s| s.waited_ms),
                            "wait_reason": s.map(|s| s.wait_reason.clone()),
                        })
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "overlaps": overlaps(&all).iter().map(|o| json!({
                    "from": ts(o.from),
                    "to": ts(o.to),
                    "runs": [o.runs.0, o.runs.1],
                    "synchronizations": o.synchronizations,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"since": ts(since), "until": ts(now), "servers": servers})
}
