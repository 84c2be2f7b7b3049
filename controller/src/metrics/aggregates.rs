//! The run-derived families, kept in memory: computed from every run in the store when the
//! controller starts ([`scan`]) and then fed each run update ([`Aggregates::apply`]), so each
//! run is counted once, when it is first seen ending, and each executed step once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1;
use syncfleet_proto::vocab::{self, ResultClass};

use crate::store::{RunQuery, Store, StoreError};

pub(super) const RUN_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0,
];
pub(super) const STEP_DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
pub(super) const LATENESS_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

/// Engine counters exported per step (run-history element names).
pub(super) const OBJECT_COUNTERS: &[&str] = &[
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
pub(super) const ERRORS: &str = "errors";

/// Runs recently seen ending (and runs found ended while the store was read): updates about them
/// that arrive late never count them again. Bounded; old entries fall out first.
pub(super) const ENDED_MEMORY: usize = 100_000;

#[derive(Debug, Clone)]
pub(super) struct Hist {
    pub(super) counts: Vec<u64>,
    pub(super) sum: f64,
    pub(super) count: u64,
}

impl Hist {
    pub(super) fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(super) fn observe(&mut self, bounds: &[f64], v: f64) {
        let v = v.max(0.0);
        self.sum += v;
        self.count += 1;
        if let Some(i) = bounds.iter().position(|b| v <= *b)
            && let Some(c) = self.counts.get_mut(i)
        {
            *c += 1;
        }
    }

    pub(super) fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// What is known of a run that has not ended.
#[derive(Debug, Clone, Default)]
pub(super) struct Active {
    pub(super) state: i32,
    pub(super) started: bool,
    pub(super) done: Vec<bool>,
}

#[derive(Debug, Default)]
pub(super) struct Ended {
    pub(super) set: HashSet<String>,
    pub(super) order: VecDeque<String>,
}

impl Ended {
    pub(super) fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > ENDED_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// `(agent, ma, profile)`; the agent is `""` unless per-agent detail is on.
pub(super) type AgentMaProfile = (String, String, String);

/// `(agent, ma, step_type, profile)` of `syncfleet_last_success_timestamp_seconds`; the
/// profile is `""` unless per-agent detail is on.
pub(super) type LastSuccessKey = (String, String, &'static str, String);

/// The `result` labels of `syncfleet_runs_total`: every end state of a run.
pub(super) static END_STATES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        (0..64)
            .filter_map(|i| v1::RunState::try_from(i).ok())
            .filter(|s| s.is_terminal())
            .map(|s| s.label())
            .collect()
    });

/// The origin of runs an agent started on its own (`syncfleet_autonomous_runs_total`).
pub(super) const AUTONOMOUS_ORIGIN: &str = "autonomous";

/// The `step_type` label of a run profile, from its name (run profiles are named by the
/// operator; the engine's UI names them after their step type): `sync` when the name says
/// sync or synchronization (combined "Import and Delta Sync" steps included), else `import`,
/// else `export`, else `other`. Four values at most, so the per-agent last-success series
/// stay bounded however many run profiles an MA has.
pub(super) fn step_type(profile: &str) -> &'static str {
    let p = profile.to_ascii_lowercase();
    if p.contains("sync") {
        "sync"
    } else if p.contains("import") {
        "import"
    } else if p.contains("export") {
        "export"
    } else {
        "other"
    }
}

/// The run-derived families.
///
/// Without per-agent detail (the default) the fleet-wide families are keyed with an empty
/// agent, so their series grow with distinct sequences, MAs and run profiles, not with
/// agents; the per-agent families (`agent_runs`, `agent_errors`, `last_success` by step type,
/// `autonomous`) hold a bounded number of series per agent and MA.
#[derive(Debug, Default)]
pub(super) struct Aggregates {
    /// `metrics.per_agent_detail`: keep the agent in the fleet-wide families (and the run
    /// profile in `last_success`).
    pub(super) detail: bool,
    /// `syncfleet_runs_total`: (agent or "", sequence, end state).
    pub(super) runs: BTreeMap<(String, String, &'static str), u64>,
    /// `syncfleet_agent_runs_total`: (agent, end state).
    pub(super) agent_runs: BTreeMap<(String, &'static str), u64>,
    /// Ended runs an agent started on its own while no controller was reachable, per agent.
    pub(super) autonomous: BTreeMap<String, u64>,
    /// (agent, sequence) pairs whose run series exist for every end state.
    pub(super) known: HashSet<(String, String)>,
    pub(super) run_duration: BTreeMap<String, Hist>,
    pub(super) step_duration: BTreeMap<AgentMaProfile, Hist>,
    /// `syncfleet_step_objects_total`: (agent or "", ma, counter).
    pub(super) step_objects: BTreeMap<(String, String, &'static str), u64>,
    /// `syncfleet_agent_object_errors_total`: (agent, ma) -> errors + stage-failure +
    /// export-failure.
    pub(super) agent_errors: BTreeMap<(String, String), u64>,
    pub(super) last_success: BTreeMap<LastSuccessKey, f64>,
    pub(super) lateness: BTreeMap<String, Hist>,
    pub(super) active: HashMap<String, Active>,
    pub(super) ended: Ended,
}

pub(super) fn state_of(run: &v1::Run) -> v1::RunState {
    v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified)
}

pub(super) fn secs_between(
    a: Option<&prost_types::Timestamp>,
    b: Option<&prost_types::Timestamp>,
) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some((to_millis(b) - to_millis(a)) as f64 / 1000.0)
}

impl Aggregates {
    /// Empty aggregates; `detail`: `metrics.per_agent_detail`.
    pub(super) fn new(detail: bool) -> Self {
        Self {
            detail,
            ..Self::default()
        }
    }

    /// The agent as the fleet-wide families key it: itself with per-agent detail, else "".
    fn who(&self, agent: &str) -> String {
        if self.detail {
            agent.to_string()
        } else {
            String::new()
        }
    }

    /// Make the `syncfleet_runs_total` series of an agent and sequence exist, at 0 for every
    /// end state not counted yet. A counter series that appears only at its first increment
    /// loses that increment to `increase()`/`rate()` (nothing to compare it with), so series
    /// are created when the pair becomes known: a connected agent (ad-hoc runs, sequence ""),
    /// a run's first update (long before it ends), a run in the store.
    pub(super) fn know(&mut self, agent: &str, sequence: &str) {
        if self
            .known
            .contains(&(agent.to_string(), sequence.to_string()))
        {
            return;
        }
        self.known.insert((agent.to_string(), sequence.to_string()));
        let who = self.who(agent);
        for state in END_STATES.iter() {
            self.runs
                .entry((who.clone(), sequence.to_string(), state))
                .or_insert(0);
            self.agent_runs
                .entry((agent.to_string(), state))
                .or_insert(0);
        }
    }

    /// Make the `syncfleet_step_objects_total` series of an agent's MA exist (0 until its
    /// first step), for the same reason as [`Aggregates::know`].
    pub(super) fn know_ma(&mut self, agent: &str, ma: &str) {
        let who = self.who(agent);
        for name in OBJECT_COUNTERS.iter().chain([&ERRORS]) {
            self.step_objects
                .entry((who.clone(), ma.to_string(), name))
                .or_insert(0);
        }
        self.agent_errors
            .entry((agent.to_string(), ma.to_string()))
            .or_insert(0);
    }

    /// Record what a run did so far that was not recorded yet (its start, steps now done).
    pub(super) fn progress(&mut self, run: &v1::Run, a: &mut Active) {
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

    pub(super) fn step_done(&mut self, agent: &str, step: &v1::Step) {
        let who = self.who(agent);
        if let Some(d) = secs_between(step.started_at.as_ref(), step.finished_at.as_ref()) {
            self.step_duration
                .entry((who.clone(), step.ma.clone(), step.profile.clone()))
                .or_insert_with(|| Hist::new(STEP_DURATION_BUCKETS))
                .observe(STEP_DURATION_BUCKETS, d);
        }
        let counters = step.counters.as_ref().map(|c| &c.counters);
        let mut failures = step.error_count;
        for name in OBJECT_COUNTERS {
            let v = counters.and_then(|c| c.get(*name)).copied().unwrap_or(0);
            if name.ends_with("-failure") {
                failures += v;
            }
            *self
                .step_objects
                .entry((who.clone(), step.ma.clone(), *name))
                .or_default() += v;
        }
        *self
            .step_objects
            .entry((who, step.ma.clone(), ERRORS))
            .or_default() += step.error_count;
        *self
            .agent_errors
            .entry((agent.to_string(), step.ma.clone()))
            .or_default() += failures;
        if matches!(
            vocab::classify(&step.result),
            ResultClass::Success | ResultClass::Warning
        ) && let Some(end) = step.finished_at.as_ref()
        {
            let t = to_millis(end) as f64 / 1000.0;
            let profile = if self.detail {
                step.profile.clone()
            } else {
                String::new()
            };
            let key = (
                agent.to_string(),
                step.ma.clone(),
                step_type(&step.profile),
                profile,
            );
            let e = self.last_success.entry(key).or_insert(t);
            *e = e.max(t);
        }
    }

    pub(super) fn finish(&mut self, run: &v1::Run, state: v1::RunState) {
        *self
            .runs
            .entry((self.who(&run.agent), run.sequence.clone(), state.label()))
            .or_default() += 1;
        *self
            .agent_runs
            .entry((run.agent.clone(), state.label()))
            .or_default() += 1;
        if run.origin == AUTONOMOUS_ORIGIN {
            *self.autonomous.entry(run.agent.clone()).or_default() += 1;
        }
        if let Some(d) = secs_between(run.started_at.as_ref(), run.finished_at.as_ref()) {
            self.run_duration
                .entry(run.sequence.clone())
                .or_insert_with(|| Hist::new(RUN_DURATION_BUCKETS))
                .observe(RUN_DURATION_BUCKETS, d);
        }
    }

    /// A run as read from the store. `guard`: remember it as ended (updates about it may still
    /// be queued).
    pub(super) fn load(&mut self, run: &v1::Run, guard: bool) {
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
    pub(super) fn apply(&mut self, run: &v1::Run) -> bool {
        self.know(&run.agent, &run.sequence);
        let state = state_of(run);
        if state.is_terminal() {
            let Some(mut a) = self.active.remove(&run.id) else {
                // A run an agent started on its own is first seen when it reports it, often
                // already ended (its whole outbox arrives in one batch): count it once.
                if run.origin == AUTONOMOUS_ORIGIN && !self.ended.contains(&run.id) {
                    let mut a = Active::default();
                    self.progress(run, &mut a);
                    self.finish(run, state);
                    self.ended.insert(&run.id);
                    return true;
                }
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
pub(super) async fn scan(store: &dyn Store, detail: bool) -> Result<Aggregates, StoreError> {
    let snapshot_ms = chrono::Utc::now().timestamp_millis();
    let active_ids: HashSet<String> = store
        .runs_in_states(
            None,
            &[
                v1::RunState::Pending,
                v1::RunState::Dispatched,
                v1::RunState::Running,
            ],
        )
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let mut agg = Aggregates::new(detail);
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list_runs(&RunQuery {
                limit: 1000,
                page_token: token.take(),
                ..RunQuery::default()
            })
            .await?;
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
        // Fleet-wide families carry no agent by default; the per-agent ones do.
        let key = (String::new(), "delta".to_string(), "succeeded");
        assert_eq!(a.runs[&key], 1);
        assert_eq!(a.agent_runs[&("sync-01".to_string(), "succeeded")], 1);
        let objects = (String::new(), "AD".to_string(), "stage-add");
        assert_eq!(a.step_objects[&objects], 5);
        let errors = (String::new(), "AD".to_string(), ERRORS);
        assert_eq!(a.step_objects[&errors], 1);
        assert_eq!(
            a.agent_errors[&("sync-01".to_string(), "AD".to_string())],
            1
        );
        assert_eq!(a.lateness["every-5m"].count, 1);
        let mp = (String::new(), "AD".to_string(), "Delta Import".to_string());
        assert_eq!(a.step_duration[&mp].count, 1);
        assert!((a.step_duration[&mp].sum - 2.0).abs() < 1e-9);
        let last = (
            "sync-01".to_string(),
            "AD".to_string(),
            "import",
            String::new(),
        );
        assert!((a.last_success[&last] - 3.0).abs() < 1e-9);
        assert!((a.run_duration["delta"].sum - 3.5).abs() < 1e-9);
    }

    #[test]
    fn an_autonomous_run_first_seen_ended_counts_once() {
        let mut a = Aggregates::default();
        let done = step(0, v1::StepState::Done, "success", 5);
        let mut r = run("auto", v1::RunState::Succeeded, vec![done]);
        r.origin = AUTONOMOUS_ORIGIN.to_string();
        assert!(a.apply(&r), "counted when first seen, already ended");
        assert!(!a.apply(&r), "and only once");
        assert_eq!(a.autonomous["sync-01"], 1);
        let key = (String::new(), "delta".to_string(), "succeeded");
        assert_eq!(a.runs[&key], 1);
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
        let failed = (String::new(), "delta".to_string(), "failed");
        let held = (String::new(), "delta".to_string(), "held");
        assert_eq!((a.runs[&failed], a.runs[&held]), (1, 1));
        // The live run's step was recorded by the pass, not again at its end.
        let objects = (String::new(), "AD".to_string(), "stage-add");
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

    #[test]
    fn known_agents_and_sequences_have_every_end_state_at_zero() {
        let mut a = Aggregates::new(true);
        a.know("sync-02", "");
        let held = ("sync-02".to_string(), String::new(), "held");
        assert_eq!(a.runs.get(&held), Some(&0));
        assert_eq!(a.agent_runs.get(&("sync-02".to_string(), "held")), Some(&0));
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
        let errors = ("sync-02".to_string(), "HR".to_string());
        assert_eq!(a.agent_errors.get(&errors), Some(&0));
        // The same from the store pass, and without per-agent detail.
        let mut b = Aggregates::default();
        b.load(&run("r2", v1::RunState::Succeeded, vec![]), true);
        let key = (String::new(), "delta".to_string(), "failed");
        assert_eq!(b.runs.get(&key), Some(&0));
        assert_eq!(
            b.agent_runs.get(&("sync-01".to_string(), "failed")),
            Some(&0)
        );
    }

    #[test]
    fn run_profiles_map_to_a_few_step_types() {
        for (profile, t) in [
            ("Delta Sync", "sync"),
            ("Full Synchronization", "sync"),
            ("Delta Import and Delta Synchronization", "sync"),
            ("DI", "other"),
            ("Full Import", "import"),
            ("delta import (stage only)", "import"),
            ("Export", "export"),
            ("Nightly", "other"),
        ] {
            assert_eq!(step_type(profile), t, "{profile}");
        }
    }

    #[test]
    fn per_agent_detail_keeps_the_agent_and_the_profile() {
        let mut a = Aggregates::new(true);
        let mut done = step(0, v1::StepState::Done, "success", 5);
        done.profile = "Delta Sync".into();
        a.apply(&run("r1", v1::RunState::Running, vec![]));
        assert!(a.apply(&run("r1", v1::RunState::Succeeded, vec![done])));
        let key = ("sync-01".to_string(), "delta".to_string(), "succeeded");
        assert_eq!(a.runs[&key], 1);
        let amp = (
            "sync-01".to_string(),
            "AD".to_string(),
            "Delta Sync".to_string(),
        );
        assert_eq!(a.step_duration[&amp].count, 1);
        let objects = ("sync-01".to_string(), "AD".to_string(), "stage-add");
        assert_eq!(a.step_objects[&objects], 5);
        let last = (
            "sync-01".to_string(),
            "AD".to_string(),
            "sync",
            "Delta Sync".to_string(),
        );
        assert!(a.last_success.contains_key(&last));
    }
}
