//! Prometheus metrics on the controller's HTTP port: `GET /metrics` (Prometheus text format
//! 0.0.4), plus `GET /readyz` (ready when the store answers).
//!
//! # Families
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `syncfleet_runs_total` | counter | agent, sequence, result | runs that ended, by end state, every state from 0 once the agent and sequence are known (`succeeded`, `completed_with_errors`, `failed`, `held`, `cancelled`, `skipped`, `unknown`: the labels of `syncfleet runs list`); `sequence=""` for ad-hoc runs |
//! | `syncfleet_runs_active` | gauge | state | runs `pending`, `dispatched` or `running` now |
//! | `syncfleet_run_duration_seconds` | histogram | sequence | agent start to end of runs that ended |
//! | `syncfleet_step_duration_seconds` | histogram | agent, ma, profile | executed steps (engine start to result) |
//! | `syncfleet_step_objects_total` | counter | agent, ma, counter | objects changed by executed steps (every counter from 0 for the MAs of an agent's inventory): `counter` is the engine's run-history name (`stage-add`, `stage-update`, `stage-delete`, `stage-failure`, `export-add`, `export-update`, `export-delete`, `export-failure`) or `errors` (synchronization/import/export errors the engine listed) |
//! | `syncfleet_last_success_timestamp_seconds` | gauge | agent, ma, profile | end of the last step with a success-class result (`success`, `completed-no-objects`, `completed-warnings`, ...) |
//! | `syncfleet_schedule_lateness_seconds` | histogram | schedule | nominal fire time to agent start of scheduled runs (jitter included) |
//! | `syncfleet_schedule_fires_total` | counter | schedule | fire times that created runs (`fired`) |
//! | `syncfleet_schedule_skipped_total` | counter | schedule, reason | fire times not run: `overlap`, `buffer_dropped`, `missed_catchup`, `paused`, `drained`, `no_target`, ... (the schedule's counters in `syncfleet schedules show`); every known reason from 0 |
//! | `syncfleet_schedule_saturation` | gauge | schedule | median duration of its last 10 runs / its interval (as `schedules show`) |
//! | `syncfleet_schedule_paused` | gauge | schedule, by | 1 while paused; `by="guard_rail"` when a held run paused it, `operator` otherwise |
//! | `syncfleet_agents` | gauge | state | agents by connection state (`connected`, `disconnected`, `lost`) |
//! | `syncfleet_agent_state` | gauge | agent, state | 1 for each agent's current state |
//! | `syncfleet_agent_engine_healthy` | gauge | agent | connected agents: 1 when the engine answered its last probe |
//! | `syncfleet_pending_exports` | gauge | agent, ma, kind | connected agents' pending exports per MA (`add`, `update`, `delete`) from their heartbeats |
//!
//! Cardinality: no run ids, no result strings, no free text; the largest families grow with
//! agents × MAs × run profiles (step histograms: ~10 series per MA profile × buckets).
//!
//! # Design: counts equal the store, scrapes stay cheap
//!
//! The run-derived families are aggregates kept in memory. When the controller starts they are
//! computed from every run in the store (one pass, newest first, 1000 runs per store call), and
//! from then on they follow [`Fleet::subscribe`]: each run is counted once, when this controller
//! first sees it end, and each executed step once, when it is first seen done. A scrape encodes
//! the aggregates and makes no store call for them, so its cost grows with the number of series,
//! not of runs (10,000 agents with years of history scrape as fast as a fresh fleet).
//! `/metrics` answers 503 until the startup pass is done.
//!
//! After a restart the families are rebuilt from the store, so `syncfleet_runs_total` equals the
//! runs `syncfleet runs list` shows in each end state, and counters only move forward across a
//! restart (the store keeps every run), which is what `increase()` expects. One difference is
//! accepted until the next restart: a run that ended `unknown` (its agent was lost) and is later
//! reported by the returning agent with its real outcome stays counted as `unknown`.
//! If this process misses run updates (the broadcast overflows), the aggregates are rebuilt from
//! the store the same way.
//!
//! Fleet-shaped gauges (agents, schedules, pending exports) are read at scrape time: agents and
//! schedules from the store at most every [`GAUGE_TTL`] (cached between scrapes); pending
//! exports from the agents' last heartbeats, held in memory ([`HeartbeatPending`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1;
use syncfleet_proto::vocab::{self, ResultClass};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::schedule::scheduler::{Scheduler, counters};
use crate::store::{self, RunQuery, Store, StoreError, keys};

/// How long agent and schedule gauges read from the store are reused between scrapes.
pub const GAUGE_TTL: Duration = Duration::from_secs(5);

const RUN_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0,
];
const STEP_DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
const LATENESS_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

/// Engine counters exported per step (run-history element names).
const OBJECT_COUNTERS: &[&str] = &[
    "stage-add",
    "stage-update",
    "stage-delete",
    "stage-failure",
    "export-add",
    "export-update",
    "export-delete",
    "export-failure",
];
/// The `counter` label of a step's error count.
const ERRORS: &str = "errors";

/// Runs recently seen ending (and runs found ended while the store was read): updates about them
/// that arrive late never count them again. Bounded; old entries fall out first.
const ENDED_MEMORY: usize = 100_000;

// -------------------------------------------------------------------------------------------
// Heartbeat pending counters

/// Pending exports (add, update, delete) per MA of one agent.
type MaExports = Vec<(String, [u64; 3])>;

/// Pending export counters per agent and MA from the agents' last heartbeats.
#[derive(Default)]
pub struct HeartbeatPending {
    by_agent: std::sync::Mutex<HashMap<String, MaExports>>,
}

impl std::fmt::Debug for HeartbeatPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatPending").finish_non_exhaustive()
    }
}

impl HeartbeatPending {
    /// Keep what a heartbeat says (a heartbeat without readings leaves the last ones).
    pub fn record(&self, agent: &str, hb: &v1::Heartbeat) {
        if hb.pending.is_empty() {
            return;
        }
        let rows = hb
            .pending
            .iter()
            .map(|p| {
                let c = p.counters.unwrap_or_default();
                (
                    p.ma.clone(),
                    [c.export_add, c.export_update, c.export_delete],
                )
            })
            .collect();
        self.lock().insert(agent.to_string(), rows);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MaExports>> {
        self.by_agent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// -------------------------------------------------------------------------------------------
// Aggregates

#[derive(Debug, Clone)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        let v = v.max(0.0);
        self.sum += v;
        self.count += 1;
        if let Some(i) = bounds.iter().position(|b| v <= *b)
            && let Some(c) = self.counts.get_mut(i)
        {
            *c += 1;
        }
    }

    fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// What is known of a run that has not ended.
#[derive(Debug, Clone, Default)]
struct Active {
    state: i32,
    started: bool,
    done: Vec<bool>,
}

#[derive(Debug, Default)]
struct Ended {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Ended {
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > ENDED_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

type AgentMaProfile = (String, String, String);

/// The `result` labels of `syncfleet_runs_total`: every end state of a run.
static END_STATES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    (0..64)
        .filter_map(|i| v1::RunState::try_from(i).ok())
        .filter(|s| s.is_terminal())
        .map(|s| s.label())
        .collect()
});

/// The run-derived families.
#[derive(Debug, Default)]
struct Aggregates {
    runs: BTreeMap<(String, String, &'static str), u64>,
    /// (agent, sequence) pairs whose `syncfleet_runs_total` series exist for every end state.
    known: HashSet<(String, String)>,
    run_duration: BTreeMap<String, Hist>,
    step_duration: BTreeMap<AgentMaProfile, Hist>,
    step_objects: BTreeMap<(String, String, &'static str), u64>,
    last_success: BTreeMap<AgentMaProfile, f64>,
    lateness: BTreeMap<String, Hist>,
    active: HashMap<String, Active>,
    ended: Ended,
}

fn state_of(run: &v1::Run) -> v1::RunState {
    v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified)
}

fn secs_between(
    a: Option<&prost_types::Timestamp>,
    b: Option<&prost_types::Timestamp>,
) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some((to_millis(b) - to_millis(a)) as f64 / 1000.0)
}

impl Aggregates {
    /// Make the `syncfleet_runs_total` series of an agent and sequence exist, at 0 for every
    /// end state not counted yet. A counter series that appears only at its first increment
    /// loses that increment to `increase()`/`rate()` (nothing to compare it with), so series
    /// are created when the pair becomes known: a connected agent (ad-hoc runs, sequence ""),
    /// a run's first update (long before it ends), a run in the store.
    fn know(&mut self, agent: &str, sequence: &str) {
        if self
            .known
            .contains(&(agent.to_string(), sequence.to_string()))
        {
            return;
        }
        self.known.insert((agent.to_string(), sequence.to_string()));
        for state in END_STATES.iter() {
            self.runs
                .entry((agent.to_string(), sequence.to_string(), state))
                .or_insert(0);
        }
    }

    /// Make the `syncfleet_step_objects_total` series of an agent's MA exist (0 until its
    /// first step), for the same reason as [`Aggregates::know`].
    fn know_ma(&mut self, agent: &str, ma: &str) {
        for name in OBJECT_COUNTERS.iter().chain([&ERRORS]) {
            self.step_objects
                .entry((agent.to_string(), ma.to_string(), name))
                .or_insert(0);
        }
    }

    /// Record what a run did so far that was not recorded yet (its start, steps now done).
    fn progress(&mut self, run: &v1::Run, a: &mut Active) {
        if !a.started && run.started_at.is_some() {
            a.started = true;
            if !run.schedule.is_empty()
                && let Some(late) = secs_between(run.nominal_time.as_ref(), run.started_at.as_ref())
            {
                self.lateness
                    .entry(run.schedule.clone())
                    .or_insert_with(|| Hist::new(LATENESS_BUCKETS))
                    .observe(LATENESS_BUCKETS, late);
            }
        }
        if a.done.len() < run.steps.len() {
            a.done.resize(run.steps.len(), false);
        }
        for (i, step) in run.steps.iter().enumerate() {
            if step.state != v1::StepState::Done as i32 || a.done[i] {
                continue;
            }
            a.done[i] = true;
            self.step_done(&run.agent, step);
        }
    }

    fn step_done(&mut self, agent: &str, step: &v1::Step) {
        let key = (agent.to_string(), step.ma.clone(), step.profile.clone());
        if let Some(d) = secs_between(step.started_at.as_ref(), step.finished_at.as_ref()) {
            self.step_duration
                .entry(key.clone())
                .or_insert_with(|| Hist::new(STEP_DURATION_BUCKETS))
                .observe(STEP_DURATION_BUCKETS, d);
        }
        let counters = step.counters.as_ref().map(|c| &c.counters);
        for name in OBJECT_COUNTERS {
            let v = counters.and_then(|c| c.get(*name)).copied().unwrap_or(0);
            *self
                .step_objects
                .entry((agent.to_string(), step.ma.clone(), *name))
                .or_default() += v;
        }
        *self
            .step_objects
            .entry((agent.to_string(), step.ma.clone(), ERRORS))
            .or_default() += step.error_count;
        if matches!(
            vocab::classify(&step.result),
            ResultClass::Success | ResultClass::Warning
        ) && let Some(end) = step.finished_at.as_ref()
        {
            let t = to_millis(end) as f64 / 1000.0;
            let e = self.last_success.entry(key).or_insert(t);
            *e = e.max(t);
        }
    }

    fn finish(&mut self, run: &v1::Run, state: v1::RunState) {
        *self
            .runs
            .entry((run.agent.clone(), run.sequence.clone(), state.label()))
            .or_default() += 1;
        if let Some(d) = secs_between(run.started_at.as_ref(), run.finished_at.as_ref()) {
            self.run_duration
                .entry(run.sequence.clone())
                .or_insert_with(|| Hist::new(RUN_DURATION_BUCKETS))
                .observe(RUN_DURATION_BUCKETS, d);
        }
    }

    /// A run as read from the store. `guard`: remember it as ended (updates about it may still
    /// be queued).
    fn load(&mut self, run: &v1::Run, guard: bool) {
        self.know(&run.agent, &run.sequence);
        let state = state_of(run);
        let mut a = Active::default();
        self.progress(run, &mut a);
        if state.is_terminal() {
            self.finish(run, state);
            if guard {
                self.ended.insert(&run.id);
            }
        } else {
            a.state = run.state;
            self.active.insert(run.id.clone(), a);
        }
    }

    /// A run update from the fleet. Returns true when the run has just ended.
    fn apply(&mut self, run: &v1::Run) -> bool {
        self.know(&run.agent, &run.sequence);
        let state = state_of(run);
        if state.is_terminal() {
            let Some(mut a) = self.active.remove(&run.id) else {
                // Counted already (or ended before this process read the store).
                return false;
            };
            self.progress(run, &mut a);
            self.finish(run, state);
            self.ended.insert(&run.id);
            return true;
        }
        if self.ended.contains(&run.id) {
            return false;
        }
        let mut a = self.active.remove(&run.id).unwrap_or_default();
        a.state = run.state;
        self.progress(run, &mut a);
        self.active.insert(run.id.clone(), a);
        false
    }
}

/// Read every run of the store into fresh aggregates.
fn scan(store: &dyn Store) -> Result<Aggregates, StoreError> {
    let snapshot_ms = chrono::Utc::now().timestamp_millis();
    let active_ids: HashSet<String> = store
        .runs_in_states(
            None,
            &[
                v1::RunState::Pending,
                v1::RunState::Dispatched,
                v1::RunState::Running,
            ],
        )?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let mut agg = Aggregates::default();
    let mut token: Option<String> = None;
    loop {
        let page = store.list_runs(&RunQuery {
            limit: 1000,
            page_token: token.take(),
            ..RunQuery::default()
        })?;
        for run in &page.runs {
            let created = run.created_at.as_ref().map_or(0, to_millis);
            let guard = active_ids.contains(&run.id) || created >= snapshot_ms - 60_000;
            agg.load(run, guard);
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    Ok(agg)
}

// -------------------------------------------------------------------------------------------
// Fleet gauges (read at scrape time)

#[derive(Debug, Default, Clone)]
struct AgentRow {
    name: String,
    state: &'static str,
    engine_healthy: Option<bool>,
}

#[derive(Debug, Default, Clone)]
struct ScheduleRow {
    name: String,
    counters: Vec<(String, u64)>,
    saturation: f64,
    paused_by: Option<&'static str>,
}

#[derive(Debug, Default, Clone)]
struct FleetGauges {
    agents: Vec<AgentRow>,
    schedules: Vec<ScheduleRow>,
}

/// The `reason` label of a schedule counter that counts fire times not run.
fn skip_reason(counter: &str) -> Option<&str> {
    match counter {
        "missed_catchup" | "buffer_dropped" => Some(counter),
        c => c.strip_prefix("skipped_"),
    }
}

/// The schedule counters that count fire times not run, reported for every schedule from 0.
const SKIP_COUNTERS: &[&str] = &[
    counters::SKIPPED_OVERLAP,
    counters::MISSED_CATCHUP,
    counters::BUFFER_DROPPED,
    counters::SKIPPED_PAUSED,
    counters::SKIPPED_DRAINED,
    counters::SKIPPED_NO_TARGET,
];

/// `syncfleet_schedule_skipped_total` of one schedule: every known reason (0 until it
/// happens, so the first skip is not lost to `increase()`), then any other skip counter stored.
fn skip_rows(s: &ScheduleRow) -> Vec<(&str, u64)> {
    let value = |name: &str| {
        s.counters
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    };
    let mut rows: Vec<(&str, u64)> = SKIP_COUNTERS
        .iter()
        .filter_map(|c| skip_reason(c).map(|r| (r, value(c))))
        .collect();
    for (k, v) in &s.counters {
        if !SKIP_COUNTERS.contains(&k.as_str())
            && let Some(r) = skip_reason(k)
        {
            rows.push((r, *v));
        }
    }
    rows
}

// -------------------------------------------------------------------------------------------
// The collector

struct Inner {
    fleet: Arc<Fleet>,
    runs: std::sync::Mutex<Aggregates>,
    gauges: std::sync::Mutex<FleetGauges>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("metrics").finish_non_exhaustive()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Fmt = Result<(), std::fmt::Error>;

fn counter_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, f64)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    rows: impl Iterator<Item = (L, &'a Hist)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let mut fam = m.encode_family(&labels)?;
        fam.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets(bounds),
            None,
        )?;
    }
    Ok(())
}

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        {
            let a = lock(&self.runs);
            counter_family(
                &mut enc,
                "syncfleet_runs",
                "Runs that ended, by agent, sequence (empty for ad-hoc runs) and end state.",
                a.runs.iter().map(|((agent, seq, state), v)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("sequence", seq.as_str()),
                            ("result", *state),
                        ],
                        *v,
                    )
                }),
            )?;
            let mut active: BTreeMap<&'static str, f64> = [
                (v1::RunState::Pending.label(), 0.0),
                (v1::RunState::Dispatched.label(), 0.0),
                (v1::RunState::Running.label(), 0.0),
            ]
            .into_iter()
            .collect();
            for r in a.active.values() {
                let s = v1::RunState::try_from(r.state).unwrap_or(v1::RunState::Pending);
                *active.entry(s.label()).or_default() += 1.0;
            }
            gauge_family(
                &mut enc,
                "syncfleet_runs_active",
                "Runs not ended yet, by state.",
                active.into_iter().map(|(s, v)| ([("state", s)], v)),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_run_duration_seconds",
                "Duration of runs that ended, from the agent's start to the end, by sequence.",
                RUN_DURATION_BUCKETS,
                a.run_duration
                    .iter()
                    .map(|(seq, h)| ([("sequence", seq.as_str())], h)),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_step_duration_seconds",
                "Duration of executed steps (engine run profile executions).",
                STEP_DURATION_BUCKETS,
                a.step_duration.iter().map(|((agent, ma, profile), h)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("profile", profile.as_str()),
                        ],
                        h,
                    )
                }),
            )?;
            counter_family(
                &mut enc,
                "syncfleet_step_objects",
                "Objects processed by executed steps, by engine counter (stage-*, export-*) or errors.",
                a.step_objects.iter().map(|((agent, ma, c), v)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("counter", *c),
                        ],
                        *v,
                    )
                }),
            )?;
            gauge_family(
                &mut enc,
                "syncfleet_last_success_timestamp_seconds",
                "End time of the last step with a success-class result, per agent, MA and run profile.",
                a.last_success.iter().map(|((agent, ma, profile), t)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("profile", profile.as_str()),
                        ],
                        *t,
                    )
                }),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_schedule_lateness_seconds",
                "Time from a scheduled run's nominal fire time to its start on the agent.",
                LATENESS_BUCKETS,
                a.lateness
                    .iter()
                    .map(|(s, h)| ([("schedule", s.as_str())], h)),
            )?;
        }
        let g = lock(&self.gauges).clone();
        counter_family(
            &mut enc,
            "syncfleet_schedule_fires",
            "Fire times of a schedule that created runs.",
            g.schedules.iter().map(|s| {
                let fired = s
                    .counters
                    .iter()
                    .find(|(k, _)| k == "fired")
                    .map_or(0, |(_, v)| *v);
                ([("schedule", s.name.as_str())], fired)
            }),
        )?;
        counter_family(
            &mut enc,
            "syncfleet_schedule_skipped",
            "Fire times of a schedule that did not run, by reason.",
            g.schedules.iter().flat_map(|s| {
                skip_rows(s)
                    .into_iter()
                    .map(|(r, v)| ([("schedule", s.name.as_str()), ("reason", r)], v))
            }),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_schedule_saturation",
            "Median duration of a schedule's last 10 runs divided by its interval.",
            g.schedules
                .iter()
                .map(|s| ([("schedule", s.name.as_str())], s.saturation)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_schedule_paused",
            "1 while a schedule is paused; by=guard_rail when a held run paused it.",
            g.schedules.iter().filter_map(|s| {
                s.paused_by
                    .map(|by| ([("schedule", s.name.as_str()), ("by", by)], 1.0))
            }),
        )?;
        let mut by_state: BTreeMap<&'static str, f64> = ["connected", "disconnected", "lost"]
            .into_iter()
            .map(|s| (s, 0.0))
            .collect();
        for a in &g.agents {
            *by_state.entry(a.state).or_default() += 1.0;
        }
        gauge_family(
            &mut enc,
            "syncfleet_agents",
            "Agents by connection state.",
            by_state.into_iter().map(|(s, v)| ([("state", s)], v)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_agent_state",
            "1 for each agent's current connection state.",
            g.agents
                .iter()
                .map(|a| ([("agent", a.name.as_str()), ("state", a.state)], 1.0)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_agent_engine_healthy",
            "Connected agents: 1 when the sync engine answered its last health probe.",
            g.agents.iter().filter_map(|a| {
                a.engine_healthy
                    .map(|h| ([("agent", a.name.as_str())], if h { 1.0 } else { 0.0 }))
            }),
        )?;
        let pending = self.fleet.pending_exports.lock().clone();
        let mut rows: Vec<(String, String, &'static str, u64)> = Vec::new();
        for (agent, mas) in &pending {
            if !self.fleet.is_connected(agent) {
                continue;
            }
            for (ma, [add, update, delete]) in mas {
                for (kind, v) in [("add", add), ("update", update), ("delete", delete)] {
                    rows.push((agent.clone(), ma.clone(), kind, *v));
                }
            }
        }
        rows.sort();
        gauge_family(
            &mut enc,
            "syncfleet_pending_exports",
            "Pending exports per connected agent and MA (NumExportAdd/Update/Delete) from heartbeats.",
            rows.iter().map(|(agent, ma, kind, v)| {
                (
                    [
                        ("agent", agent.as_str()),
                        ("ma", ma.as_str()),
                        ("kind", *kind),
                    ],
                    *v as f64,
                )
            }),
        )?;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// Metrics service

/// The controller's metrics: in-memory run aggregates fed by the fleet's run updates, plus
/// gauges read at scrape time.
pub struct Metrics {
    inner: Arc<Inner>,
    scheduler: Arc<Scheduler>,
    registry: Registry,
    loaded: AtomicBool,
    gauges_at: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("loaded", &self.loaded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

enum Update {
    Run(Box<v1::Run>),
    /// Updates were lost: rebuild from the store.
    Rebuild,
}

impl Metrics {
    /// Subscribe to the fleet's run updates now (nothing created from here on is missed), then
    /// read the store in the background and follow the updates until `shutdown`.
    pub fn start(
        fleet: Arc<Fleet>,
        scheduler: Arc<Scheduler>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut updates = fleet.subscribe();
        let inner = Arc::new(Inner {
            fleet: Arc::clone(&fleet),
            runs: std::sync::Mutex::new(Aggregates::default()),
            gauges: std::sync::Mutex::new(FleetGauges::default()),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&inner)));
        let metrics = Arc::new(Self {
            inner,
            scheduler,
            registry,
            loaded: AtomicBool::new(false),
            gauges_at: tokio::sync::Mutex::new(None),
        });
        // Drain the broadcast at once into an unbounded queue, so the store pass (which may
        // take a while on a large store) never makes this subscriber lag.
        let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    r = updates.recv() => r,
                    () = stop.cancelled() => return,
                };
                let sent = match msg {
                    Ok(run) => tx.send(Update::Run(Box::new(run))),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "metrics missed run updates; rebuilding them from the store"
                        );
                        tx.send(Update::Rebuild)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            if !m.rebuild().await {
                return;
            }
            loop {
                let msg = tokio::select! {
                    r = rx.recv() => r,
                    () = shutdown.cancelled() => return,
                };
                match msg {
                    Some(Update::Run(run)) => m.apply(&run),
                    Some(Update::Rebuild) => {
                        // Everything queued so far is in the store already.
                        while rx.try_recv().is_ok() {}
                        if !m.rebuild().await {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        metrics
    }

    fn apply(&self, run: &v1::Run) {
        let ended = lock(&self.inner.runs).apply(run);
        if ended {
            let state = state_of(run);
            tracing::info!(
                run_id = %run.id,
                trace_id = crate::telemetry::trace_id(run),
                agent = %run.agent,
                state = state.label(),
                result = %run.result,
                "run ended"
            );
        }
    }

    /// Recompute the run aggregates from the store (retrying while the store fails). False when
    /// the store worker is gone.
    async fn rebuild(&self) -> bool {
        let started = Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match store::blocking(&self.inner.fleet.store, scan).await {
                Ok(agg) => {
                    let runs = agg.runs.values().sum::<u64>() + agg.active.len() as u64;
                    *lock(&self.inner.runs) = agg;
                    self.loaded.store(true, Ordering::Relaxed);
                    tracing::info!(
                        runs,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "run metrics loaded from the store"
                    );
                    return true;
                }
                Err(StoreError::Worker(e)) => {
                    tracing::error!(error = %e, "metrics: the store worker stopped");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics: cannot read runs from the store; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Whether the startup pass over the store is done.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Refresh the agent and schedule gauges when older than [`GAUGE_TTL`].
    async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let mut at = self.gauges_at.lock().await;
        if at.is_some_and(|t| t.elapsed() < GAUGE_TTL) {
            return Ok(());
        }
        let fleet = &self.inner.fleet;
        let (agents, schedules) = store::blocking(&fleet.store, |s| {
            let agents = s.list_agents()?;
            let mut schedules = Vec::new();
            for d in s.list_documents(Some("Schedule"))? {
                let counters = s.counters(&d.name)?;
                let recent = s.list_runs(&RunQuery {
                    schedule: Some(d.name.clone()),
                    limit: 10,
                    ..RunQuery::default()
                })?;
                let durations: Vec<i64> = recent
                    .runs
                    .iter()
                    .filter_map(|r| {
                        let (s, f) = (r.started_at.as_ref()?, r.finished_at.as_ref()?);
                        Some(to_millis(f) - to_millis(s))
                    })
                    .filter(|d| *d > 0)
                    .collect();
                let pause = s
                    .get_state(&keys::schedule_pause(&d.name))?
                    .and_then(|b| <v1::Pause as prost::Message>::decode(b.as_slice()).ok())
                    .filter(|p| p.paused);
                let doc = match crate::fleetfile::from_json(&d.kind, &d.json) {
                    Ok(crate::model::Document::Schedule(doc)) => Some(doc),
                    _ => None,
                };
                schedules.push((d.name, counters, durations, pause, doc));
            }
            Ok((agents, schedules))
        })
        .await?;
        let mut g = FleetGauges::default();
        {
            // Series from 0 for what may happen next: ad-hoc runs of every agent, the runs of
            // every schedule on the agents it targets, the object counters of every MA.
            let mut runs = lock(&self.inner.runs);
            for a in &agents {
                runs.know(&a.name, "");
                for ma in &a.management_agents {
                    runs.know_ma(&a.name, &ma.name);
                }
                for doc in schedules.iter().filter_map(|s| s.4.as_ref()) {
                    if doc.targets.matches(&a.name, &a.labels) {
                        runs.know(&a.name, &doc.sequence);
                    }
                }
            }
        }
        for a in agents {
            let a = fleet.agent_view(a);
            let state = v1::AgentState::try_from(a.state).unwrap_or(v1::AgentState::Unspecified);
            let connected = fleet.is_connected(&a.name);
            g.agents.push(AgentRow {
                engine_healthy: connected.then_some(a.engine_healthy),
                name: a.name,
                state: state.label(),
            });
        }
        for (name, counters, durations, pause, _) in schedules {
            let interval = self.scheduler.interval(&name).await;
            g.schedules.push(ScheduleRow {
                saturation: crate::operations::saturation(&durations, interval),
                paused_by: pause.map(|p| {
                    if p.by.contains("guard rail") {
                        "guard_rail"
                    } else {
                        "operator"
                    }
                }),
                name,
                counters,
            });
        }
        *lock(&self.inner.gauges) = g;
        *at = Some(Instant::now());
        Ok(())
    }

    /// The text exposition of every family.
    pub async fn render(&self) -> Result<String, String> {
        if let Err(e) = self.refresh_gauges().await {
            // Serve the last gauges rather than nothing.
            tracing::warn!(error = %e, "metrics: cannot refresh agent and schedule gauges");
        }
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(body)
    }
}

/// `GET /metrics` and `GET /readyz` for the controller's HTTP router.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route("/readyz", axum::routing::get(ready))
        .with_state(metrics)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    if !m.loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "run metrics are being loaded from the store; retry shortly\n",
        )
            .into_response();
    }
    match m.render().await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Ready when the store answers a read.
async fn ready(State(m): State<Arc<Metrics>>) -> Response {
    match store::blocking(&m.inner.fleet.store, |s| s.get_state(keys::READYZ_PROBE)).await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store does not answer: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncfleet_proto::time::from_millis;

    fn step(index: u32, state: v1::StepState, result: &str, adds: u64) -> v1::Step {
        v1::Step {
            index,
            ma: "AD".into(),
            profile: "Delta Import".into(),
            state: state as i32,
            result: result.into(),
            started_at: Some(from_millis(1_000)),
            finished_at: Some(from_millis(3_000)),
            counters: Some(v1::StepCounters {
                counters: [("stage-add".to_string(), adds)].into_iter().collect(),
                outbound: Default::default(),
            }),
            error_count: 1,
            ..Default::default()
        }
    }

    fn run(id: &str, state: v1::RunState, steps: Vec<v1::Step>) -> v1::Run {
        v1::Run {
            id: id.into(),
            agent: "sync-01".into(),
            sequence: "delta".into(),
            schedule: "every-5m".into(),
            state: state as i32,
            nominal_time: Some(from_millis(0)),
            started_at: Some(from_millis(500)),
            finished_at: state.is_terminal().then(|| from_millis(4_000)),
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn each_run_and_step_counts_once_however_often_it_is_published() {
        let mut a = Aggregates::default();
        let waiting = step(0, v1::StepState::Waiting, "", 0);
        let done = step(0, v1::StepState::Done, "success", 5);
        a.apply(&run("r1", v1::RunState::Pending, vec![waiting.clone()]));
        a.apply(&run("r1", v1::RunState::Running, vec![done.clone()]));
        a.apply(&run("r1", v1::RunState::Running, vec![done.clone()]));
        assert!(a.apply(&run("r1", v1::RunState::Succeeded, vec![done.clone()])));
        // Republished (e.g. an approval note) and a stale update: nothing changes.
        assert!(!a.apply(&run("r1", v1::RunState::Succeeded, vec![done.clone()])));
        assert!(!a.apply(&run("r1", v1::RunState::Running, vec![done.clone()])));
        assert!(a.active.is_empty());
        let key = ("sync-01".to_string(), "delta".to_string(), "succeeded");
        assert_eq!(a.runs[&key], 1);
        let objects = ("sync-01".to_string(), "AD".to_string(), "stage-add");
        assert_eq!(a.step_objects[&objects], 5);
        let errors = ("sync-01".to_string(), "AD".to_string(), ERRORS);
        assert_eq!(a.step_objects[&errors], 1);
        assert_eq!(a.lateness["every-5m"].count, 1);
        let amp = (
            "sync-01".to_string(),
            "AD".to_string(),
            "Delta Import".to_string(),
        );
        assert_eq!(a.step_duration[&amp].count, 1);
        assert!((a.step_duration[&amp].sum - 2.0).abs() < 1e-9);
        assert!((a.last_success[&amp] - 3.0).abs() < 1e-9);
        assert!((a.run_duration["delta"].sum - 3.5).abs() < 1e-9);
    }

    #[test]
    fn a_store_pass_counts_ended_runs_and_follows_active_ones() {
        let mut a = Aggregates::default();
        let done = step(0, v1::StepState::Done, "completed-sync-errors", 2);
        a.load(&run("old", v1::RunState::Failed, vec![done.clone()]), true);
        a.load(
            &run("live", v1::RunState::Running, vec![done.clone()]),
            false,
        );
        // Queued updates about the ended run are ignored; the live run ends once.
        assert!(!a.apply(&run("old", v1::RunState::Running, vec![done.clone()])));
        assert!(!a.apply(&run("old", v1::RunState::Failed, vec![done.clone()])));
        assert!(a.apply(&run("live", v1::RunState::Held, vec![done.clone()])));
        let failed = ("sync-01".to_string(), "delta".to_string(), "failed");
        let held = ("sync-01".to_string(), "delta".to_string(), "held");
        assert_eq!((a.runs[&failed], a.runs[&held]), (1, 1));
        // The live run's step was recorded by the pass, not again at its end.
        let objects = ("sync-01".to_string(), "AD".to_string(), "stage-add");
        assert_eq!(a.step_objects[&objects], 4);
        // Not a success: no last-success time.
        assert!(a.last_success.is_empty());
    }

    #[test]
    fn histograms_fill_the_first_bucket_that_holds_the_value() {
        let mut h = Hist::new(LATENESS_BUCKETS);
        h.observe(LATENESS_BUCKETS, 0.2);
        h.observe(LATENESS_BUCKETS, 3.0);
        h.observe(LATENESS_BUCKETS, 1e9);
        assert_eq!(h.count, 3);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[3], 1);
        assert_eq!(
            h.counts.iter().sum::<u64>(),
            2,
            "above the last bound: +Inf only"
        );
    }

    /// Every `syncfleet ...` command an alert annotation tells operators to run parses with
    /// the CLI's own definition.
    #[test]
    fn alert_annotations_name_commands_the_cli_accepts() {
        use clap::Parser as _;
        let text = include_str!("../../deploy/prometheus/alerts.yml");
        let doc: serde_norway::Value = serde_norway::from_str(text).unwrap();
        let mut checked = 0;
        for group in doc["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let Some(annotations) = rule.get("annotations").and_then(|a| a.as_mapping()) else {
                    continue;
                };
                for (_, value) in annotations {
                    let text = value.as_str().unwrap();
                    // Commands are written between backticks.
                    for (i, quoted) in text.split('`').enumerate() {
                        if i % 2 == 0 || !quoted.trim_start().starts_with("syncfleet ") {
                            continue;
                        }
                        let mut command = quoted.to_string();
                        // Template placeholders become sample values.
                        while let Some(start) = command.find("{{") {
                            let end = command[start..].find("}}").unwrap() + start + 2;
                            command.replace_range(start..end, "sample-1");
                        }
                        let args: Vec<&str> = command.split_whitespace().collect();
                        if let Err(e) = crate::cli::Cli::try_parse_from(&args) {
                            panic!(
                                "alert {:?} tells operators to run `{quoted}`, which the CLI refuses:\n{e}",
                                rule["alert"]
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 5, "only {checked} commands found");
    }

    #[test]
    fn known_agents_and_sequences_have_every_end_state_at_zero() {
        let mut a = Aggregates::default();
        a.know("sync-02", "");
        let held = ("sync-02".to_string(), String::new(), "held");
        assert_eq!(a.runs.get(&held), Some(&0));
        // A run's agent and sequence are known from its first update, before it ends.
        a.apply(&run("r1", v1::RunState::Pending, vec![]));
        for state in [
            "succeeded",
            "completed_with_errors",
            "failed",
            "held",
            "cancelled",
            "skipped",
            "unknown",
        ] {
            let key = ("sync-01".to_string(), "delta".to_string(), state);
            assert_eq!(a.runs.get(&key), Some(&0), "{state}");
        }
        assert!(a.apply(&run("r1", v1::RunState::Held, vec![])));
        let key = ("sync-01".to_string(), "delta".to_string(), "held");
        assert_eq!(a.runs[&key], 1);
        // An MA of an agent's inventory has every object counter from 0.
        a.know_ma("sync-02", "HR");
        for c in ["stage-add", "export-delete", "export-failure", ERRORS] {
            let key = ("sync-02".to_string(), "HR".to_string(), c);
            assert_eq!(a.step_objects.get(&key), Some(&0), "{c}");
        }
        // The same from the store pass.
        let mut b = Aggregates::default();
        b.load(&run("r2", v1::RunState::Succeeded, vec![]), true);
        let key = ("sync-01".to_string(), "delta".to_string(), "failed");
        assert_eq!(b.runs.get(&key), Some(&0));
    }

    #[test]
    fn every_skip_reason_of_a_schedule_is_reported_from_zero() {
        let row = ScheduleRow {
            name: "every-5m".into(),
            counters: vec![("skipped_overlap".into(), 2), ("fired".into(), 9)],
            ..Default::default()
        };
        let rows = skip_rows(&row);
        assert!(rows.contains(&("overlap", 2)), "{rows:?}");
        for reason in [
            "missed_catchup",
            "buffer_dropped",
            "paused",
            "drained",
            "no_target",
        ] {
            assert!(rows.contains(&(reason, 0)), "{reason}: {rows:?}");
        }
    }

    #[test]
    fn skip_reasons_come_from_the_schedule_counters() {
        assert_eq!(skip_reason("skipped_overlap"), Some("overlap"));
        assert_eq!(skip_reason("skipped_paused"), Some("paused"));
        assert_eq!(skip_reason("missed_catchup"), Some("missed_catchup"));
        assert_eq!(skip_reason("buffer_dropped"), Some("buffer_dropped"));
        assert_eq!(skip_reason("fired"), None);
        assert_eq!(skip_reason("held"), None);
    }
}
