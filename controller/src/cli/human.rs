//! Human output: aligned tables, key/value blocks, durations, and the progress lines of
//! `run --follow`. Pure functions (the current time is a parameter) so they are testable.
//!
//! Times are shown in the operator's local time zone (`YYYY-MM-DD HH:MM:SS`); `-o json` carries
//! the exact UTC instants. Counters are shown with the engine's own names, zero values left out
//! to keep lines short (`-o json` has them all).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Local, Utc};
use prost_types::Timestamp;
use syncfleet_proto::v1::{Agent, AgentState, Run, RunState, Step, StepCounters, StepState};

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
    if state == AgentState::Connected && !a.engine_healthy {
        format!("{} (engine down)", state.label())
    } else {
        state.label().to_string()
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `agents list` table: NAME STATE ENGINE MAS LAST-SEEN LABELS.
pub fn agents_table(agents: &[Agent], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&["NAME", "STATE", "ENGINE", "MAS", "LAST-SEEN", "LABELS"]);
    for a in agents {
        t.row(vec![
            a.name.clone(),
            agent_state_brief(a),
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

/// Steps that have finished executing on the engine, out of all steps: `2/3`.
fn steps_brief(r: &Run) -> String {
    let done = r
        .steps
        .iter()
        .filter(|s| s.state() == StepState::Done)
        .count();
    format!("{done}/{}", r.steps.len())
}

/// `runs list` table: ID AGENT STATE RESULT CREATED DURATION STEPS.
pub fn runs_table(runs: &[Run], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&[
        "ID", "AGENT", "STATE", "RESULT", "CREATED", "DURATION", "STEPS",
    ]);
    for r in runs {
        t.row(vec![
            r.id.clone(),
            r.agent.clone(),
            r.state().label().to_string(),
            or_dash(&r.result).to_string(),
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
    add("result", or_dash(&r.result).to_string());
    add("origin", or_dash(&r.origin).to_string());
    add("requested by", or_dash(&r.requested_by).to_string());
    add("created", local_time(r.created_at.as_ref()));
    add("started", local_time(r.started_at.as_ref()));
    add("finished", local_time(r.finished_at.as_ref()));
    add(
        "duration",
        elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
    );
    if !r.message.is_empty() {
        add("message", r.message.clone());
    }
    let rendered = kv.render();
    let mut out: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();

    out.push_str(&format!("steps ({}):\n", r.steps.len()));
    let mut t = Table::new(&[
        "#", "MA", "PROFILE", "STATE", "RESULT", "DURATION", "RUN#", "ERRORS", "COUNTERS",
    ]);
    let total = r.steps.len();
    for s in &r.steps {
        t.row(vec![
            format!("{}/{}", s.index + 1, total),
            s.ma.clone(),
            s.profile.clone(),
            step_state_brief(s),
            or_dash(&s.result).to_string(),
            elapsed(s.started_at.as_ref(), s.finished_at.as_ref(), now),
            if s.run_number == 0 {
                "-".to_string()
            } else {
                s.run_number.to_string()
            },
            s.error_count.to_string(),
            or_dash(&counters_brief(s.counters.as_ref())).to_string(),
        ]);
    }
    out.push_str(&t.render_indented("  "));
    for s in &r.steps {
        let mut notes = Vec::new();
        if !s.connection_result.is_empty() && s.connection_result != "success" {
            notes.push(format!("connection result {}", s.connection_result));
        }
        if !s.detail.is_empty() {
            notes.push(s.detail.clone());
        }
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
    out
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

/// First block of a UUID, enough to tell runs apart in progress lines.
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
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
}
