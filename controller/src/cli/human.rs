//! Human output: aligned tables, key/value blocks, durations, and the progress lines of
//! `run --follow`. Pure functions (the current time is a parameter) so they are testable.
//!
//! Times are shown in the operator's local time zone (`YYYY-MM-DD HH:MM:SS`); `-o json` carries
//! the exact UTC instants. Counters are shown with the engine's own names, zero values left out
//! to keep lines short (`-o json` has them all).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Local, SecondsFormat, Utc};
use chrono_tz::Tz;
use prost_types::Timestamp;
use syncfleet_proto::v1::{
    Agent, AgentState, ApplyResponse, FleetStatus, Pause, PendingCounters, Run, RunState,
    ScheduleStatus, Step, StepCounters, StepState, limit,
};

use crate::model::{ScheduleDoc, Targets, TriggerDoc};

/// A table with a header row; columns are separated by two spaces and padded to the widest
/// cell. The last column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one `\n`-terminated line per row, header first.
    pub fn render(&self) -> String {
        self.render_indented("")
    }

    /// Like [`render`](Self::render) with `indent` before every line.
    pub fn render_indented(&self, indent: &str) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let mut line = String::from(indent);
            for (i, width) in widths.iter().enumerate() {
                let c = cell(row, i);
                if i + 1 == n {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = width - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Cell `i` of `row`, empty when the row is short.
fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

/// A set timestamp as a UTC instant (`None` when unset, zero or out of range).
pub fn instant(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.filter(|t| t.seconds != 0 || t.nanos != 0)
        .and_then(syncfleet_proto::time::from_proto)
}

/// Local wall-clock time, `-` when unset.
pub fn local_time(t: Option<&Timestamp>) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            d.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// Compact duration: `850ms`, `45s`, `3m07s`, `2h05m`, `3d04h`.
pub fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `12s ago`, `-` when unset.
pub fn age(t: Option<&Timestamp>, now: DateTime<Utc>) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            let ago = now - d;
            if ago < chrono::TimeDelta::seconds(1) {
                "just now".to_string()
            } else {
                format!("{} ago", duration(ago))
            }
        },
    )
}

/// Time between `start` and `end` (or `now` while unfinished); `-` before it started.
pub fn elapsed(start: Option<&Timestamp>, end: Option<&Timestamp>, now: DateTime<Utc>) -> String {
    match (instant(start), instant(end)) {
        (Some(s), Some(e)) => duration(e - s),
        (Some(s), None) => duration(now - s),
        _ => "-".to_string(),
    }
}

/// Non-zero counters as `name=value`, sorted, then outbound flows per target MA:
/// `stage-add=3 stage-update=27 | HR: connector-flow=2`. Empty when all are zero.
pub fn counters_brief(c: Option<&StepCounters>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let sorted: BTreeMap<_, _> = c.counters.iter().filter(|(_, v)| **v != 0).collect();
    let mut parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let outbound: BTreeMap<_, _> = c.outbound.iter().collect();
    for (ma, set) in outbound {
        let vals: BTreeMap<_, _> = set.values.iter().filter(|(_, v)| **v != 0).collect();
        if vals.is_empty() {
            continue;
        }
        let inner: Vec<String> = vals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("| {ma}: {}", inner.join(" ")));
    }
    parts.join(" ")
}

fn labels_brief(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn engine_brief(a: &Agent) -> String {
    match &a.engine {
        Some(e) if !e.version.is_empty() && !e.kind.is_empty() => {
            format!("{} ({})", e.version, e.kind)
        }
        Some(e) if !e.kind.is_empty() => e.kind.clone(),
        Some(e) => e.version.clone(),
        None => "-".to_string(),
    }
}

fn agent_state_brief(a: &Agent) -> String {
    let state = a.state();
    if state == AgentState::Connected && !a.agent_problem.is_empty() {
        format!("{} (agent unhealthy)", state.label())
    } else if state == AgentState::Connected && !a.engine_healthy {
        format!("{} (engine down)", state.label())
    } else {
        state.label().to_string()
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `agents list` table: NAME STATE DRAIN ENGINE MAS LAST-SEEN LABELS (DRAIN is `draining` or
/// `-`).
pub fn agents_table(agents: &[Agent], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "DRAIN",
        "ENGINE",
        "MAS",
        "LAST-SEEN",
        "LABELS",
    ]);
    for a in agents {
        t.row(vec![
            a.name.clone(),
            agent_state_brief(a),
            if a.drain.as_ref().is_some_and(|d| d.paused) {
                "draining".to_string()
            } else {
                "-".to_string()
            },
            engine_brief(a),
            a.management_agents.len().to_string(),
            age(a.last_seen.as_ref(), now),
            or_dash(&labels_brief(&a.labels)).to_string(),
        ]);
    }
    t.render()
}

/// `agents show`: key/value lines, then each MA with its run profiles and their step types.
pub fn agent_details(a: &Agent, now: DateTime<Utc>) -> String {
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("name", a.name.clone());
    add(
        "state",
        match instant(a.state_since.as_ref()) {
            Some(_) => format!(
                "{} since {} ({})",
                a.state().label(),
                local_time(a.state_since.as_ref()),
                age(a.state_since.as_ref(), now)
            ),
            None => a.state().label().to_string(),
        },
    );
    add("hostname", or_dash(&a.hostname).to_string());
    add("engine", engine_brief(a));
    add(
        "engine health",
        match (a.engine_healthy, a.engine_detail.is_empty()) {
            (true, _) => "healthy".to_string(),
            (false, true) => "unhealthy".to_string(),
            (false, false) => format!("unhealthy: {}", a.engine_detail),
        },
    );
    add(
        "agent health",
        if a.agent_problem.is_empty() {
            "healthy".to_string()
        } else {
            format!("unhealthy: {}", a.agent_problem)
        },
    );
    add("agent version", or_dash(&a.agent_version).to_string());
    add(
        "last seen",
        match instant(a.last_seen.as_ref()) {
            Some(_) => format!(
                "{} ({})",
                local_time(a.last_seen.as_ref()),
                age(a.last_seen.as_ref(), now)
            ),
            None => "never".to_string(),
        },
    );
    add("labels", or_dash(&labels_brief(&a.labels)).to_string());
    add("drain", pause_brief(a.drain.as_ref(), "draining", "no"));
    add(
        "runs in flight",
        if a.runs_in_flight.is_empty() {
            "none".to_string()
        } else {
            a.runs_in_flight.join(", ")
        },
    );
    // The header row of the key/value table is empty; drop it.
    let rendered = kv.render();
    let mut out: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();
    out.push_str(&format!(
        "management agents ({}):\n",
        a.management_agents.len()
    ));
    for ma in &a.management_agents {
        let mut head = format!("  {}", ma.name);
        let meta: Vec<&str> = [ma.r#type.as_str(), ma.guid.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if !meta.is_empty() {
            head.push_str(&format!("  [{}]", meta.join(" ")));
        }
        out.push_str(&head);
        out.push('\n');
        if ma.run_profiles.is_empty() {
            out.push_str("    (no run profiles)\n");
        }
        for p in &ma.run_profiles {
            if p.step_types.is_empty() {
                out.push_str(&format!("    - {}\n", p.name));
            } else {
                out.push_str(&format!(
                    "    - {}  ({})\n",
                    p.name,
                    p.step_types.join(", ")
                ));
            }
        }
    }
    out
}

/// Steps that have finished executing on the engine, out of all steps, with the skipped and
/// held ones named: `2/3`, `6/7 (1 skipped)`, `1/3 (1 held)`.
fn steps_brief(r: &Run) -> String {
    let count = |st: StepState| r.steps.iter().filter(|s| s.state() == st).count();
    let mut out = format!("{}/{}", count(StepState::Done), r.steps.len());
    let extra: Vec<String> = [
        (count(StepState::Skipped), "skipped"),
        (count(StepState::Held), "held"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !extra.is_empty() {
        out.push_str(&format!(" ({})", extra.join(", ")));
    }
    out
}

/// Where a run came from: `schedule/delta-every-5m`, `catch-up/delta-every-5m`, `manual`,
/// `approval`.
pub fn origin_brief(r: &Run) -> String {
    match (r.origin.is_empty(), r.schedule.is_empty()) {
        (false, false) => format!("{}/{}", r.origin, r.schedule),
        (true, false) => format!("schedule/{}", r.schedule),
        (false, true) => r.origin.clone(),
        (true, true) => "-".to_string(),
    }
}

/// `runs list` table: ID AGENT ORIGIN SEQUENCE STATE RESULT CREATED DURATION STEPS
/// (SEQUENCE is `-` for ad-hoc runs).
pub fn runs_table(runs: &[Run], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&[
        "ID", "AGENT", "ORIGIN", "SEQUENCE", "STATE", "RESULT", "CREATED", "DURATION", "STEPS",
    ]);
    for r in runs {
        t.row(vec![
            r.id.clone(),
            r.agent.clone(),
            origin_brief(r),
            or_dash(&r.sequence).to_string(),
            r.state().label().to_string(),
            or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
            local_time(r.created_at.as_ref()),
            elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
            steps_brief(r),
        ]);
    }
    t.render()
}

/// `runs show` and the final summary of `run --follow`: the run's fields, a table of its steps
/// (result, duration, errors, non-zero counters) and each step's detail text.
pub fn run_details(r: &Run, now: DateTime<Utc>) -> String {
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("id", r.id.clone());
    add("agent", r.agent.clone());
    add(
        "state",
        if r.cancel_requested && !r.state().is_terminal() {
            format!("{} (cancel requested)", r.state().label())
        } else {
            r.state().label().to_string()
        },
    );
    add(
        "result",
        or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
    );
    add("origin", or_dash(&r.origin).to_string());
    if !r.schedule.is_empty() {
        add("schedule", r.schedule.clone());
    }
    add(
        "sequence",
        if r.sequence.is_empty() {
            "- (ad-hoc steps)".to_string()
        } else {
            r.sequence.clone()
        },
    );
    if !r.sequence.is_empty() {
        add(
            "on failure",
            super::output::on_failure_label(r.on_failure()).to_string(),
        );
    }
    add("requested by", or_dash(&r.requested_by).to_string());
    add("created", local_time(r.created_at.as_ref()));
    if instant(r.nominal_time.as_ref()).is_some() {
        add("nominal time", local_time(r.nominal_time.as_ref()));
    }
    if r.jitter_ms > 0 {
        add(
            "jitter",
            duration(chrono::TimeDelta::milliseconds(
                i64::try_from(r.jitter_ms).unwrap_or(i64::MAX),
            )),
        );
    }
    add("started", local_time(r.started_at.as_ref()));
    if let Some(ms) = super::output::lateness_ms(r.nominal_time.as_ref(), r.started_at.as_ref()) {
        add("lateness", signed_duration(ms));
    }
    add("finished", local_time(r.finished_at.as_ref()));
    add(
        "duration",
        elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
    );
    if !r.continuation_of.is_empty() {
        add("continues", format!("held run {}", r.continuation_of));
    }
    if !r.approved_by.is_empty() || instant(r.approved_at.as_ref()).is_some() {
        add(
            "approved",
            format!(
                "by {} at {}",
                or_dash(&r.approved_by),
                local_time(r.approved_at.as_ref())
            ),
        );
    }
    if !r.continued_in.is_empty() {
        add("continued in", r.continued_in.clone());
    }
    if !r.message.is_empty() {
        add("message", r.message.clone());
    }
    let rendered = kv.render();
    let mut out: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();

    out.push_str(&format!("steps ({}):\n", r.steps.len()));
    let mut t = Table::new(&[
        "#", "STAGE", "MA", "PROFILE", "STATE", "RESULT", "DURATION", "RUN#", "ERRORS", "COUNTERS",
    ]);
    let total = r.steps.len();
    for s in &r.steps {
        // A step that did not run has no duration or counters, whatever an older controller
        // stored for it.
        let not_run = s.state() == StepState::NotRun;
        t.row(vec![
            format!("{}/{}", s.index + 1, total),
            (s.stage + 1).to_string(),
            s.ma.clone(),
            s.profile.clone(),
            step_state_brief(s),
            or_dash(&s.result).to_string(),
            if not_run {
                "-".to_string()
            } else {
                elapsed(s.started_at.as_ref(), s.finished_at.as_ref(), now)
            },
            if s.run_number == 0 {
                "-".to_string()
            } else {
                s.run_number.to_string()
            },
            s.error_count.to_string(),
            if not_run {
                "-".to_string()
            } else {
                or_dash(&counters_brief(s.counters.as_ref())).to_string()
            },
        ]);
    }
    out.push_str(&t.render_indented("  "));
    for s in &r.steps {
        let notes = step_notes(s, r.approved_steps.contains(&s.index));
        if !notes.is_empty() {
            out.push_str(&format!(
                "  step {}/{} {}: {}: {}\n",
                s.index + 1,
                total,
                s.ma,
                s.profile,
                notes.join("; ")
            ));
        }
    }
    if r.state() == RunState::Held {
        if r.continued_in.is_empty() {
            out.push_str(&format!(
                "held: approve with 'syncfleet runs approve {}'\n",
                r.id
            ));
        } else {
            out.push_str(&format!(
                "held: approved; continued in run {}\n",
                r.continued_in
            ));
        }
    }
    out
}

/// `+11s`, `-850ms`: a signed compact duration of milliseconds.
pub fn signed_duration(ms: i64) -> String {
    if ms < 0 {
        format!(
            "-{}",
            duration(chrono::TimeDelta::milliseconds(ms.saturating_neg()))
        )
    } else {
        duration(chrono::TimeDelta::milliseconds(ms))
    }
}

/// A limit as written in fleet files: `500` or `2%`.
fn limit_brief(l: Option<&syncfleet_proto::v1::Limit>) -> Option<String> {
    match l.and_then(|l| l.kind)? {
        limit::Kind::Count(n) => Some(n.to_string()),
        limit::Kind::Percent(p) => Some(format!("{p}%")),
    }
}

/// Non-zero pending counters: `export_delete=600 total_connectors=30000`.
fn pending_brief(p: &PendingCounters) -> String {
    [
        ("import_add", p.import_add),
        ("import_update", p.import_update),
        ("import_delete", p.import_delete),
        ("export_add", p.export_add),
        ("export_update", p.export_update),
        ("export_delete", p.export_delete),
        ("total_connectors", p.total_connectors),
    ]
    .iter()
    .filter(|(_, v)| *v != 0)
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The remarks shown under the steps table for one step: its condition and guard rail (and
/// whether an approval lifted it for this run: `approved`), why it was skipped or held,
/// retries, a failed connection and the agent's detail text.
pub fn step_notes(s: &Step, approved: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let cond = super::output::condition_label(s.only_if());
    match s.state() {
        StepState::Skipped => notes.push(match (s.detail.is_empty(), cond) {
            (false, _) => format!("skipped: {}", s.detail),
            (true, Some(c)) => format!("skipped: only_if {c} was false"),
            (true, None) => "skipped".to_string(),
        }),
        StepState::Held => {
            notes.push(if s.detail.is_empty() {
                "HELD: its guard rail tripped".to_string()
            } else {
                format!("HELD: {}", s.detail)
            });
            if let Some(p) = &s.pending_before {
                let b = pending_brief(p);
                if !b.is_empty() {
                    notes.push(format!("pending before: {b}"));
                }
            }
        }
        _ => {
            if let Some(c) = cond {
                notes.push(format!("only_if {c}"));
            }
        }
    }
    if let Some(g) = &s.guard {
        let parts: Vec<String> = [
            ("max_pending_deletes", g.max_pending_deletes.as_ref()),
            ("max_staged_deletes", g.max_staged_deletes.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, l)| limit_brief(l).map(|v| format!("{k}={v}")))
        .collect();
        if !parts.is_empty() {
            let lifted = if approved {
                " (lifted once by approval)"
            } else {
                ""
            };
            notes.push(format!("guard {}{lifted}", parts.join(" ")));
        }
    }
    if s.attempts > 1 {
        notes.push(format!("{} attempts", s.attempts));
    }
    if !s.connection_result.is_empty() && s.connection_result != "success" {
        notes.push(format!("connection result {}", s.connection_result));
    }
    if !s.detail.is_empty() && !matches!(s.state(), StepState::Skipped | StepState::Held) {
        notes.push(s.detail.clone());
    }
    notes
}

fn step_state_brief(s: &Step) -> String {
    if s.state() == StepState::Running && !s.progress.is_empty() {
        format!("running {}", s.progress)
    } else {
        s.state().label().to_string()
    }
}

/// Turns the snapshots of one run (from WatchRuns) into progress lines, printing a line only
/// when something a human cares about changed: the run's state or message, a step's state,
/// progress, result or detail. Repeated identical snapshots (e.g. the current snapshot sent
/// again after a reconnect) produce no lines.
#[derive(Debug, Default)]
pub struct Follower {
    last_run: Option<(RunState, String)>,
    last_steps: HashMap<u32, String>,
}

impl Follower {
    /// A follower that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// New lines (without time prefix) for this snapshot.
    pub fn observe(&mut self, r: &Run) -> Vec<String> {
        let mut lines = Vec::new();
        let run_key = (r.state(), r.message.clone());
        if self.last_run.as_ref() != Some(&run_key) {
            // Terminal states are reported by the final summary; only mention progress here.
            if !r.state().is_terminal() {
                let mut l = format!("run {} {}", short_id(&r.id), r.state().label());
                if !r.message.is_empty() {
                    l.push_str(&format!(": {}", r.message));
                }
                lines.push(l);
            }
            self.last_run = Some(run_key);
        }
        let total = r.steps.len();
        for s in &r.steps {
            let (key, line) = step_line(s, total);
            let Some(line) = line else { continue };
            if self.last_steps.get(&s.index) != Some(&key) {
                self.last_steps.insert(s.index, key);
                lines.push(line);
            }
        }
        lines
    }
}

/// First block of a run id (32 random bits of a v4 UUID, or of a schedule's derived v5 id):
/// tells runs apart in progress lines and is accepted back as a unique prefix.
pub fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

/// The dedup key and the line (if worth printing) for one step.
fn step_line(s: &Step, total: usize) -> (String, Option<String>) {
    let head = format!("step {}/{} {}: {}", s.index + 1, total, s.ma, s.profile);
    let detail = if s.detail.is_empty() {
        String::new()
    } else {
        format!("  — {}", s.detail)
    };
    match s.state() {
        StepState::Waiting | StepState::Unspecified => {
            // Every step starts out waiting; only say so when there is a reason worth showing
            // (waiting for an engine lock, a stagger, ...).
            let key = format!("waiting|{}", s.detail);
            let line = (!s.detail.is_empty()).then(|| format!("{head}  waiting{detail}"));
            (key, line)
        }
        StepState::Running => {
            let key = format!("running|{}|{}", s.progress, s.detail);
            let mut line = format!("{head}  running");
            if !s.progress.is_empty() {
                line.push_str(&format!(" {}", s.progress));
            }
            line.push_str(&detail);
            (key, Some(line))
        }
        StepState::Done => {
            // Counters may be filled in a moment after the result; keying on the result alone
            // keeps one "done" line per step. The final summary shows the final counters.
            let key = format!("done|{}", s.result);
            let mut line = format!("{head}  done {}", or_dash(&s.result));
            if s.error_count > 0 {
                line.push_str(&format!("  errors={}", s.error_count));
            }
            let c = counters_brief(s.counters.as_ref());
            if !c.is_empty() {
                line.push_str(&format!("  {c}"));
            }
            line.push_str(&detail);
            (key, Some(line))
        }
        StepState::NotRun => {
            let key = format!("not_run|{}", s.detail);
            (key, Some(format!("{head}  not run{detail}")))
        }
        StepState::Skipped => {
            let key = format!("skipped|{}", s.detail);
            (key, Some(format!("{head}  skipped{detail}")))
        }
        StepState::Held => {
            let key = format!("held|{}", s.detail);
            (key, Some(format!("{head}  HELD{detail}")))
        }
    }
}

/// A pause or drain state in one line: `paused since 2025-06-01 10:00:00 by alice: "patching"`
/// (`word` is `paused` or `draining`), or `off` when not paused.
pub fn pause_brief(p: Option<&Pause>, word: &str, off: &str) -> String {
    let Some(p) = p.filter(|p| p.paused) else {
        return off.to_string();
    };
    let mut s = word.to_string();
    if instant(p.at.as_ref()).is_some() {
        s.push_str(&format!(" since {}", local_time(p.at.as_ref())));
    }
    if !p.by.is_empty() {
        s.push_str(&format!(" by {}", p.by));
    }
    if !p.note.is_empty() {
        s.push_str(&format!(": {:?}", p.note));
    }
    s
}

/// The IANA zone `name`, `None` when unknown. Empty means UTC.
pub fn zone(name: &str) -> Option<Tz> {
    if name.is_empty() {
        return Some(Tz::UTC);
    }
    name.parse::<Tz>().ok()
}

/// RFC 3339 with the zone's offset, to the second (`2025-06-01T10:05:30+02:00`); `-` when
/// unset.
pub fn zoned_rfc3339(t: Option<&Timestamp>, tz: Tz) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            d.with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        },
    )
}

/// Wall-clock time in the zone (`2025-06-01 10:05:30`); `-` when unset.
pub fn zoned_time(t: Option<&Timestamp>, tz: Tz) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| d.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The zone to show a schedule's times in, and its label: the schedule's zone, or UTC with a
/// note when the controller named a zone this CLI does not know.
fn display_zone(name: &str) -> (Tz, String) {
    match zone(name) {
        Some(tz) => (
            tz,
            if name.is_empty() {
                "UTC".into()
            } else {
                name.to_string()
            },
        ),
        None => (Tz::UTC, format!("UTC; unknown zone {name:?}")),
    }
}

/// `every 5m, phase 30s` or `cron "0 2 * * 0" (Europe/Oslo)`.
pub fn trigger_brief(t: &TriggerDoc) -> String {
    let mut parts = Vec::new();
    if !t.cron.is_empty() {
        let crons: Vec<String> = t.cron.iter().map(|c| format!("{c:?}")).collect();
        parts.push(format!("cron {}", crons.join(" | ")));
    }
    if let Some(e) = t.every {
        let mut s = format!("every {}", humantime::format_duration(e));
        if let Some(p) = t.phase.filter(|p| !p.is_zero()) {
            s.push_str(&format!(", phase {}", humantime::format_duration(p)));
        }
        parts.push(s);
    }
    let mut out = parts.join("; ");
    if let Some(z) = &t.time_zone {
        out.push_str(&format!(" ({z})"));
    }
    if out.is_empty() { "-".to_string() } else { out }
}

/// `agents sync01, sync02; selector env=prod`.
pub fn targets_brief(t: &Targets) -> String {
    let mut parts = Vec::new();
    if !t.agents.is_empty() {
        parts.push(format!("agents {}", t.agents.join(", ")));
    }
    if let Some(sel) = t.selector.as_deref().filter(|s| !s.trim().is_empty()) {
        parts.push(format!("selector {sel}"));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

/// The schedule counters in a fixed order (the documented ones first, zeros included, then any
/// others sorted): `fired=12 skipped_overlap=1 ...`.
pub fn schedule_counters_brief(counters: &HashMap<String, u64>) -> String {
    const ORDER: [&str; 9] = [
        "fired",
        "skipped_overlap",
        "missed_catchup",
        "buffer_dropped",
        "held",
        "cancelled_other",
        "skipped_blackout",
        "skipped_paused",
        "skipped_drained",
    ];
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|k| counters.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    let others: BTreeMap<_, _> = counters
        .iter()
        .filter(|(k, _)| !ORDER.contains(&k.as_str()))
        .collect();
    parts.extend(others.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// `schedules show`: the warning first (when the schedule is close to saturation), then its
/// fields, pause state, targets, next fire times in its own time zone, recent runs (nominal
/// vs actual start, lateness, duration, outcome; times in the schedule's zone) and counters.
/// `doc` is the schedule document parsed from `s.json` (`None` if it could not be read).
pub fn schedule_details(s: &ScheduleStatus, doc: Option<&ScheduleDoc>) -> String {
    let (tz, tz_label) = display_zone(&s.time_zone);
    let mut out = String::new();
    if !s.warning.is_empty() {
        out.push_str(&format!("WARNING: {}\n", s.warning));
    }
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("name", s.name.clone());
    if let Some(d) = doc {
        if !d.description.is_empty() {
            add("description", d.description.clone());
        }
        add("sequence", d.sequence.clone());
    }
    add("state", pause_brief(s.pause.as_ref(), "PAUSED", "active"));
    if let Some(d) = doc {
        add("targets", targets_brief(&d.targets));
    }
    add(
        "targeted now",
        if s.targets.is_empty() {
            "no agents".to_string()
        } else {
            s.targets.join(", ")
        },
    );
    add("time zone", tz_label.clone());
    if let Some(d) = doc {
        add("trigger", trigger_brief(&d.trigger));
        for b in &d.blackout {
            add(
                "blackout",
                format!(
                    "{:?} for {}",
                    b.cron,
                    humantime::format_duration(b.duration)
                ),
            );
        }
        add(
            "overlap",
            match d.overlap {
                crate::model::Overlap::Skip => "skip",
                crate::model::Overlap::BufferOne => "buffer_one",
                crate::model::Overlap::CancelOther => "cancel_other",
            }
            .to_string(),
        );
        add(
            "catch-up",
            match d.catchup_window.filter(|w| !w.is_zero()) {
                Some(w) => format!("within {}", humantime::format_duration(w)),
                None => "never".to_string(),
            },
        );
        if let Some(j) = d.jitter.filter(|j| !j.is_zero()) {
            add("jitter", format!("up to {}", humantime::format_duration(j)));
        }
        if let Some(t) = d.start_at {
            add("start at", t.to_rfc3339());
        }
        if let Some(t) = d.end_at {
            add("end at", t.to_rfc3339());
        }
    }
    add(
        "saturation",
        if s.saturation > 0.0 {
            format!(
                "{:.0}% (median run duration / interval)",
                s.saturation * 100.0
            )
        } else {
            "unknown".to_string()
        },
    );
    add("counters", schedule_counters_brief(&s.counters));
    let rendered = kv.render();
    out.extend(rendered.lines().skip(1).map(|l| format!("{l}\n")));

    out.push_str(&format!("next fire times ({tz_label}):\n"));
    if s.next.is_empty() {
        out.push_str("  none\n");
    }
    for t in &s.next {
        out.push_str(&format!("  {}\n", zoned_rfc3339(Some(t), tz)));
    }
    out.push_str(&format!(
        "recent runs ({}, newest first, times in {tz_label}):\n",
        s.recent.len()
    ));
    if s.recent.is_empty() {
        out.push_str("  none yet\n");
    } else {
        let mut t = Table::new(&[
            "RUN", "AGENT", "ORIGIN", "NOMINAL", "STARTED", "LATE", "DURATION", "STATE", "RESULT",
        ]);
        for r in &s.recent {
            let started = instant(r.started_at.as_ref()).is_some();
            t.row(vec![
                r.run_id.clone(),
                r.agent.clone(),
                or_dash(&r.origin).to_string(),
                zoned_time(r.nominal_time.as_ref(), tz),
                zoned_time(r.started_at.as_ref(), tz),
                if started {
                    signed_duration(r.lateness_ms)
                } else {
                    "-".to_string()
                },
                if r.duration_ms > 0 {
                    duration(chrono::TimeDelta::milliseconds(r.duration_ms))
                } else if started && !r.state().is_terminal() {
                    "running".to_string()
                } else {
                    "-".to_string()
                },
                r.state().label().to_string(),
                or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out
}

/// One `schedules list` row's worth of data.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    /// The stored schedule document.
    pub doc: ScheduleDoc,
    /// Its status from `GetSchedule`.
    pub status: ScheduleStatus,
}

/// `schedules list` table: NAME SEQUENCE STATE TRIGGER TARGETS NEXT (`paused` or `active`;
/// the next fire time in the schedule's zone, RFC 3339 with offset).
pub fn schedules_table(rows: &[ScheduleRow]) -> String {
    let mut t = Table::new(&["NAME", "SEQUENCE", "STATE", "TRIGGER", "TARGETS", "NEXT"]);
    for r in rows {
        let s = &r.status;
        let state = if s.pause.as_ref().is_some_and(|p| p.paused) {
            "paused"
        } else {
            "active"
        };
        let next = s.next.first().map_or_else(
            || "-".to_string(),
            |t| zoned_rfc3339(Some(t), display_zone(&s.time_zone).0),
        );
        t.row(vec![
            r.doc.name.clone(),
            r.doc.sequence.clone(),
            state.to_string(),
            trigger_brief(&r.doc.trigger),
            targets_brief(&r.doc.targets),
            next,
        ]);
    }
    t.render()
}

/// `fleet status` (and the answer of `fleet pause/resume`): two key/value lines.
pub fn fleet_status(f: &FleetStatus) -> String {
    let mut kv = Table::new(&["", ""]);
    kv.row(vec![
        "fleet:".into(),
        pause_brief(f.pause.as_ref(), "PAUSED", "active"),
    ]);
    kv.row(vec![
        "draining:".into(),
        if f.draining.is_empty() {
            "none".to_string()
        } else {
            f.draining.join(", ")
        },
    ]);
    kv.render()
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `apply` output: one line per change (`created sequence/delta-cycle`,
/// `changed schedule/delta-every-5m (trigger, overlap)`), then for each forecast
/// `schedule/NAME next 5 fire times (ZONE):` and the times, RFC 3339 with the zone's offset.
pub fn apply_lines(r: &ApplyResponse) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&format!(
            "{} {}/{}",
            c.action,
            c.kind.to_lowercase(),
            c.name
        ));
        if !c.fields.is_empty() {
            out.push_str(&format!(" ({})", c.fields.join(", ")));
        }
        out.push('\n');
    }
    for f in &r.forecasts {
        let (tz, label) = display_zone(&f.time_zone);
        out.push_str(&format!(
            "schedule/{} next {} fire times ({label}):\n",
            f.name,
            f.next.len()
        ));
        for t in &f.next {
            out.push_str(&format!("  {}\n", zoned_rfc3339(Some(t), tz)));
        }
    }
    out
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

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "STATE", "X"]);
        t.row(vec!["sync01".into(), "connected".into(), String::new()]);
        t.row(vec!["a".into(), "lost".into(), "1".into()]);
        assert_eq!(
            t.render(),
            "NAME    STATE      X\nsync01  connected\na       lost       1\n"
        );
    }

    #[test]
    fn durations_are_compact() {
        let d = chrono::TimeDelta::milliseconds;
        assert_eq!(duration(d(850)), "850ms");
        assert_eq!(duration(d(45_000)), "45s");
        assert_eq!(duration(d(187_000)), "3m07s");
        assert_eq!(duration(d(7_500_000)), "2h05m");
        assert_eq!(duration(d(-5)), "0ms");
    }

    fn running_step(progress: &str) -> Step {
        Step {
            index: 0,
            ma: "AD".into(),
            profile: "Delta Import".into(),
            state: StepState::Running as i32,
            progress: progress.into(),
            ..Default::default()
        }
    }

    fn run_with(steps: Vec<Step>, state: RunState) -> Run {
        Run {
            id: "0190a0b0-0000-7000-8000-000000000001".into(),
            agent: "sync01".into(),
            state: state as i32,
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn follower_prints_changes_once() {
        let mut f = Follower::new();
        let waiting = Step {
            index: 1,
            ma: "HR".into(),
            profile: "Export".into(),
            state: StepState::Waiting as i32,
            ..Default::default()
        };
        let r1 = run_with(
            vec![running_step("1200/5000"), waiting.clone()],
            RunState::Running,
        );
        assert_eq!(
            f.observe(&r1),
            vec![
                "run 0190a0b0 running".to_string(),
                "step 1/2 AD: Delta Import  running 1200/5000".to_string()
            ]
        );
        assert!(
            f.observe(&r1).is_empty(),
            "unchanged snapshot prints nothing"
        );

        let mut done = running_step("");
        done.state = StepState::Done as i32;
        done.result = "success".into();
        let mut c = StepCounters::default();
        c.counters.insert("stage-add".into(), 3);
        c.counters.insert("stage-update".into(), 27);
        c.counters.insert("stage-delete".into(), 0);
        done.counters = Some(c);
        let r2 = run_with(vec![done, waiting], RunState::Running);
        assert_eq!(
            f.observe(&r2),
            vec![
                "step 1/2 AD: Delta Import  done success  stage-add=3 stage-update=27".to_string()
            ]
        );
        assert!(f.observe(&r2).is_empty());
    }

    #[test]
    fn counters_brief_nests_outbound() {
        let mut c = StepCounters::default();
        c.counters.insert("export-update".into(), 5);
        let mut set = syncfleet_proto::v1::CounterSet::default();
        set.values.insert("connector-flow".into(), 2);
        c.outbound.insert("HR".into(), set);
        assert_eq!(
            counters_brief(Some(&c)),
            "export-update=5 | HR: connector-flow=2"
        );
    }

    #[test]
    fn run_details_lists_steps() {
        let mut r = run_with(vec![running_step("10/20")], RunState::Running);
        r.started_at = Some(from_millis(1_700_000_000_000));
        let now = instant(Some(&from_millis(1_700_000_065_000))).unwrap();
        let text = run_details(&r, now);
        assert!(text.contains("duration:      1m05s"), "{text}");
        assert!(text.contains("running 10/20"), "{text}");
    }

    fn pause(note: &str) -> Pause {
        Pause {
            paused: true,
            note: note.into(),
            by: "alice".into(),
            at: Some(from_millis(1_705_309_200_000)),
        }
    }

    fn held_run() -> Run {
        let import = Step {
            index: 0,
            stage: 0,
            ma: "AD".into(),
            profile: "Delta Import".into(),
            state: StepState::Done as i32,
            result: "success".into(),
            attempts: 2,
            ..Default::default()
        };
        let sync = Step {
            index: 1,
            stage: 1,
            ma: "AD".into(),
            profile: "Delta Sync".into(),
            state: StepState::Skipped as i32,
            only_if: syncfleet_proto::v1::Condition::StagedChanges as i32,
            ..Default::default()
        };
        let export = Step {
            index: 2,
            stage: 2,
            ma: "AD".into(),
            profile: "Export".into(),
            state: StepState::Held as i32,
            only_if: syncfleet_proto::v1::Condition::PendingExports as i32,
            guard: Some(syncfleet_proto::v1::Guard {
                max_pending_deletes: Some(syncfleet_proto::v1::Limit {
                    kind: Some(limit::Kind::Count(500)),
                }),
                max_staged_deletes: None,
            }),
            detail: "700 pending export deletes exceed max_pending_deletes 500".into(),
            pending_before: Some(PendingCounters {
                export_delete: 700,
                total_connectors: 30_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut r = run_with(vec![import, sync, export], RunState::Held);
        r.origin = "schedule".into();
        r.schedule = "delta-every-5m".into();
        r.sequence = "delta-cycle".into();
        r.nominal_time = Some(from_millis(1_700_000_000_000));
        r.started_at = Some(from_millis(1_700_000_011_500));
        r.finished_at = Some(from_millis(1_700_000_071_500));
        r.jitter_ms = 4_000;
        r
    }

    #[test]
    fn run_details_show_schedule_fields_reasons_and_the_approve_hint() {
        let r = held_run();
        let text = run_details(&r, instant(Some(&from_millis(1_700_000_100_000))).unwrap());
        for want in [
            "schedule:      delta-every-5m\n",
            "sequence:      delta-cycle\n",
            "on failure:    stop\n",
            "jitter:        4s\n",
            "lateness:      11s\n",
            "duration:      1m00s\n",
            "step 1/3 AD: Delta Import: 2 attempts\n",
            "step 2/3 AD: Delta Sync: skipped: only_if staged_changes was false\n",
            "step 3/3 AD: Export: HELD: 700 pending export deletes exceed max_pending_deletes 500; pending before: export_delete=700 total_connectors=30000; guard max_pending_deletes=500\n",
            "held: approve with 'syncfleet runs approve 0190a0b0-0000-7000-8000-000000000001'\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains("#    STAGE  MA"), "{text}");
        let mut continuation = r.clone();
        continuation.steps[2].state = StepState::Done as i32;
        continuation.state = RunState::Succeeded as i32;
        continuation.approved_steps = vec![2];
        let text = run_details(&continuation, Utc::now());
        assert!(
            text.contains("guard max_pending_deletes=500 (lifted once by approval)"),
            "{text}"
        );
        let mut approved = r.clone();
        approved.continued_in = "r2".into();
        let text = run_details(&approved, Utc::now());
        assert!(text.contains("continued in:  r2\n"), "{text}");
        assert!(
            text.contains("held: approved; continued in run r2\n"),
            "{text}"
        );
        assert!(!text.contains("approve with"), "{text}");
        // Ad-hoc runs say so and show no schedule lines.
        let adhoc = run_with(vec![running_step("")], RunState::Running);
        let text = run_details(&adhoc, Utc::now());
        assert!(text.contains("sequence:      - (ad-hoc steps)\n"), "{text}");
        assert!(!text.contains("schedule:"), "{text}");
        assert!(!text.contains("lateness:"), "{text}");
    }

    #[test]
    fn follower_reports_skipped_and_held_steps() {
        let mut f = Follower::new();
        let lines = f.observe(&held_run());
        assert!(
            lines.contains(&"step 3/3 AD: Export  HELD  — 700 pending export deletes exceed max_pending_deletes 500".to_string()),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"step 2/3 AD: Delta Sync  skipped".to_string()),
            "{lines:#?}"
        );
    }

    #[test]
    fn runs_table_shows_origin_and_sequence() {
        let mut adhoc = run_with(vec![], RunState::Succeeded);
        adhoc.origin = "manual".into();
        adhoc.id = "r0".into();
        let text = runs_table(&[held_run(), adhoc], Utc::now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[0].contains("  ORIGIN  "), "{text}");
        assert!(
            lines[1].contains("schedule/delta-every-5m  delta-cycle  held"),
            "{text}"
        );
        assert!(lines[1].ends_with("1/3 (1 skipped, 1 held)"), "{text}");
        assert!(
            lines[2].contains("manual                   -            succeeded"),
            "{text}"
        );
    }

    #[test]
    fn agents_show_drain_state() {
        let mut a = Agent {
            name: "sync01".into(),
            ..Default::default()
        };
        let text = agents_table(std::slice::from_ref(&a), Utc::now());
        assert!(
            text.starts_with("NAME    STATE        DRAIN  ENGINE"),
            "{text}"
        );
        assert!(agent_details(&a, Utc::now()).contains("drain:           no\n"));
        a.drain = Some(pause("patching"));
        let text = agents_table(std::slice::from_ref(&a), Utc::now());
        assert!(text.contains("  draining  "), "{text}");
        let text = agent_details(&a, Utc::now());
        assert!(
            text.contains("drain:           draining since ")
                && text.contains(" by alice: \"patching\"\n"),
            "{text}"
        );
    }

    fn status() -> ScheduleStatus {
        let mut s = ScheduleStatus {
            name: "delta-every-5m".into(),
            json: r#"{"kind":"Schedule","name":"delta-every-5m","sequence":"delta-cycle","targets":{"selector":"env=prod"},"trigger":{"every":"5m","phase":"30s"},"overlap":"buffer_one","catchup_window":"10m","jitter":"10s","blackout":[{"cron":"0 22 * * 6","duration":"4h"}]}"#.into(),
            pause: Some(pause("AD maintenance")),
            time_zone: "Europe/Oslo".into(),
            // 2024-01-15T09:00:30Z, 09:05:30Z
            next: vec![from_millis(1_705_309_230_000), from_millis(1_705_309_530_000)],
            recent: vec![syncfleet_proto::v1::ScheduleRunSummary {
                run_id: "r1".into(),
                agent: "sync01".into(),
                nominal_time: Some(from_millis(1_705_308_630_000)),
                started_at: Some(from_millis(1_705_308_641_500)),
                lateness_ms: 11_500,
                duration_ms: 243_000,
                state: RunState::Succeeded as i32,
                result: "success".into(),
                origin: "schedule".into(),
            }],
            saturation: 0.85,
            warning: "runs take 85% of the 5m interval; expect skipped fire times".into(),
            targets: vec!["sync01".into(), "sync02".into()],
            ..Default::default()
        };
        s.counters.insert("skipped_overlap".into(), 3);
        s.counters.insert("fired".into(), 120);
        s.counters.insert("zz_custom".into(), 1);
        s
    }

    #[test]
    fn schedule_details_show_state_zone_times_runs_and_warning() {
        let s = status();
        let doc = match crate::fleetfile::from_json("Schedule", &s.json).unwrap() {
            crate::model::Document::Schedule(d) => d,
            crate::model::Document::Sequence(_) => panic!("not a schedule"),
        };
        let text = schedule_details(&s, Some(&doc));
        assert!(
            text.starts_with(
                "WARNING: runs take 85% of the 5m interval; expect skipped fire times\n"
            ),
            "{text}"
        );
        for want in [
            "name:          delta-every-5m\n",
            "sequence:      delta-cycle\n",
            " by alice: \"AD maintenance\"\n",
            "targets:       selector env=prod\n",
            "targeted now:  sync01, sync02\n",
            "time zone:     Europe/Oslo\n",
            "trigger:       every 5m, phase 30s\n",
            "blackout:      \"0 22 * * 6\" for 4h\n",
            "overlap:       buffer_one\n",
            "catch-up:      within 10m\n",
            "jitter:        up to 10s\n",
            "saturation:    85% (median run duration / interval)\n",
            "counters:      fired=120 skipped_overlap=3 zz_custom=1\n",
            "next fire times (Europe/Oslo):\n  2024-01-15T10:00:30+01:00\n  2024-01-15T10:05:30+01:00\n",
            "recent runs (1, newest first, times in Europe/Oslo):\n",
            "r1   sync01  schedule  2024-01-15 09:50:30  2024-01-15 09:50:41  11s   4m03s     succeeded  success\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains("state:         PAUSED since "), "{text}");
        // Without a readable document the status still shows.
        let text = schedule_details(&s, None);
        assert!(text.contains("state:         PAUSED"), "{text}");
        assert!(!text.contains("trigger:"), "{text}");
    }

    #[test]
    fn schedules_table_has_one_line_per_schedule() {
        let s = status();
        let doc = match crate::fleetfile::from_json("Schedule", &s.json).unwrap() {
            crate::model::Document::Schedule(d) => d,
            crate::model::Document::Sequence(_) => panic!("not a schedule"),
        };
        let mut active = s.clone();
        active.pause = None;
        active.next.clear();
        let mut doc2 = doc.clone();
        doc2.name = "nightly".into();
        doc2.targets.agents = vec!["sync01".into()];
        doc2.targets.selector = None;
        doc2.trigger = crate::model::TriggerDoc {
            cron: vec!["0 2 * * *".into()],
            time_zone: Some("Europe/Oslo".into()),
            ..Default::default()
        };
        let text = schedules_table(&[
            ScheduleRow { doc, status: s },
            ScheduleRow {
                doc: doc2,
                status: active,
            },
        ]);
        assert_eq!(
            text,
            "NAME            SEQUENCE     STATE   TRIGGER                         TARGETS            NEXT\n\
             delta-every-5m  delta-cycle  paused  every 5m, phase 30s             selector env=prod  2024-01-15T10:00:30+01:00\n\
             nightly         delta-cycle  active  cron \"0 2 * * *\" (Europe/Oslo)  agents sync01      -\n"
        );
    }

    #[test]
    fn fleet_status_and_helpers() {
        let f = FleetStatus {
            pause: Some(pause("datacenter move")),
            draining: vec!["sync01".into(), "sync02".into()],
        };
        let text = fleet_status(&f);
        assert!(text.starts_with("fleet:     PAUSED since "), "{text}");
        assert!(text.contains(" by alice: \"datacenter move\"\n"), "{text}");
        assert!(text.ends_with("draining:  sync01, sync02\n"), "{text}");
        assert_eq!(
            fleet_status(&FleetStatus::default()),
            "fleet:     active\ndraining:  none\n"
        );
        assert_eq!(signed_duration(-850), "-850ms");
        assert_eq!(signed_duration(11_500), "11s");
        assert_eq!(zone("Mars/Base"), None);
        assert_eq!(zone(""), Some(Tz::UTC));
        assert_eq!(
            zoned_rfc3339(Some(&from_millis(1_720_000_000_000)), Tz::Europe__Oslo),
            "2024-07-03T11:46:40+02:00"
        );
        assert_eq!(zoned_rfc3339(None, Tz::UTC), "-");
        assert_eq!(
            pause_brief(Some(&Pause::default()), "paused", "active"),
            "active"
        );
        let t = crate::model::Targets {
            agents: vec!["a".into(), "b".into()],
            selector: Some("env=prod".into()),
        };
        assert_eq!(targets_brief(&t), "agents a, b; selector env=prod");
        let mut hint_run = held_run();
        hint_run.id = "r9".into();
        assert_eq!(
            crate::cli::held_hint(&hint_run),
            "run r9 is held at step 3 AD: Export (700 pending export deletes exceed max_pending_deletes 500); approve with 'syncfleet runs approve r9'"
        );
    }
}
