//! Agent autonomy: the agent keeps firing the controller's schedules while no controller is
//! reachable, the way per-server Task Scheduler jobs would.
//!
//! - The controller sends a [`v1::ScheduleSet`] after every Welcome and whenever it changes;
//!   [`Autonomy::store_set`] keeps it in the journal (so an agent restarted during an outage
//!   still has it) and the session acknowledges its version.
//! - When the session has been down for `autonomy_after` ([`Autonomy::session_lost`] starts the
//!   timer, [`Autonomy::handshake`] followed by a Welcome stops it), the agent is autonomous: it
//!   fires each schedule of the set (schedules with `autonomy: false` excepted) with the
//!   controller's trigger code (`syncfleet_proto::trigger`) and the controller's run ids
//!   ([`run_id_for`]), through the same checks, journal and executor as a `StartRun`. Its first
//!   fire times are those after the session was lost: nominal times that passed before the agent
//!   became autonomous are caught up like the controller does after downtime (the latest runs,
//!   the others are counted `missed_catchup`).
//! - Locally: pauses (fleet, schedule), a drain and blackout windows skip fire times; the
//!   overlap policy applies against the schedule's previous run on this agent; a run that ends
//!   `held` pauses its schedule until the controller is back (the controller then pauses it for
//!   the operator's approval, from the run's events).
//! - Hand-over: while the session's Hello is unanswered nothing fires (the handshake holds the
//!   firing lock), and the Hello reports per schedule the latest nominal time covered
//!   ([`Autonomy::reports`]). The Welcome means the controller has recorded them: the agent stops
//!   firing and forgets the reports. A nominal time is thus fired by one side only; should both
//!   ever derive the same run, the journal refuses the second.
//!
//! What the agent cannot know while cut off: a pause or drain issued on the controller then
//! reaches it only with the next session.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message;
use serde::{Deserialize, Serialize};
use syncfleet_proto::schedule_model::{Clock, Overlap, ScheduleDoc, run_id_for};
use syncfleet_proto::sync::lock;
use syncfleet_proto::time::{from_millis, from_proto, to_proto};
use syncfleet_proto::trigger::Trigger;
use syncfleet_proto::v1;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::journal::{Accept, Journal, JournalError};

/// Journal record of the last schedule set (protobuf).
const SET_KEY: &str = "schedule_set";
/// Journal record of the hand-over state (JSON).
const STATE_KEY: &str = "state";
/// At most this many missed fire times are walked per schedule when the agent becomes
/// autonomous or wakes late; the rest are counted in one step.
const WALK_LIMIT: usize = 10_000;
/// How often buffered fire times are looked at while a run of their schedule is active.
const BUFFER_POLL: Duration = Duration::from_millis(500);

/// Counter names reported to the controller (added to the schedule's counters).
pub mod counters {
    pub const AUTONOMOUS: &str = "autonomous";
    pub const SKIPPED_OVERLAP: &str = "skipped_overlap";
    pub const BUFFER_DROPPED: &str = "buffer_dropped";
    pub const CANCELLED_OTHER: &str = "cancelled_other";
    pub const SKIPPED_PAUSED: &str = "skipped_paused";
    pub const SKIPPED_DRAINED: &str = "skipped_drained";
    pub const SKIPPED_BLACKOUT: &str = "skipped_blackout";
    pub const MISSED_CATCHUP: &str = "missed_catchup";
    pub const HELD: &str = "held";
    pub const REFUSED: &str = "refused";
}

/// A schedule of the set, compiled.
#[derive(Debug, Clone)]
struct Compiled {
    doc: ScheduleDoc,
    trigger: Trigger,
    stages: Vec<v1::PlanStage>,
    on_failure: i32,
    paused: bool,
}

/// What survives an agent restart (JSON in the journal).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Persisted {
    /// When the session was lost (milliseconds); `None` while connected.
    down_since: Option<i64>,
    /// When the agent became autonomous; `None` when it is not.
    autonomous_since: Option<i64>,
    /// Per schedule: the latest nominal time covered on its own, and what it did.
    reports: BTreeMap<String, Report>,
    /// Schedules paused locally because one of their autonomous runs ended `held`.
    held: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Report {
    last_nominal: i64,
    counters: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    set: v1::ScheduleSet,
    schedules: Vec<Compiled>,
    persisted: Persisted,
    /// The latest autonomous run per schedule (for the overlap policy).
    active: HashMap<String, String>,
    /// `buffer_one`: the fire time kept per schedule until its running run ends.
    buffered: HashMap<String, DateTime<Utc>>,
}

/// The agent's autonomy: its copy of the controller's schedules and the task firing them.
pub struct Autonomy {
    agent: String,
    after: Duration,
    clock: Clock,
    journal: Arc<Journal>,
    executor: Arc<Executor>,
    outbox: Arc<Notify>,
    state: Mutex<State>,
    changed: Notify,
    /// Held by the session from its Hello to the Welcome (or failure), and by a firing: the
    /// Hello's reports are final until the controller answers.
    firing: tokio::sync::Mutex<()>,
    /// The whole set as stored (every schedule, also those not fired autonomously), for the
    /// change watcher ([`crate::change::Watcher`]).
    set_tx: tokio::sync::watch::Sender<v1::ScheduleSet>,
}

impl std::fmt::Debug for Autonomy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autonomy")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Compile the schedules of a set that the agent may fire; the others are logged and left out.
fn compile(set: &v1::ScheduleSet) -> Vec<Compiled> {
    let mut out = Vec::new();
    for s in &set.schedules {
        let doc: ScheduleDoc = match serde_json::from_str(&s.schedule_json) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "schedule from the controller unreadable; not fired autonomously");
                continue;
            }
        };
        if !doc.autonomy.unwrap_or(true) {
            continue;
        }
        match Trigger::compile(&doc) {
            Ok(trigger) => out.push(Compiled {
                trigger,
                stages: s.stages.clone(),
                on_failure: s.on_failure,
                paused: s.paused,
                doc,
            }),
            Err(e) => {
                tracing::error!(schedule = %doc.name, error = %e, "schedule does not compile; not fired autonomously");
            }
        }
    }
    out
}

impl Autonomy {
    /// Load the stored set and hand-over state. `after` of zero turns autonomy off.
    pub fn open(
        agent: &str,
        after: Duration,
        clock: Clock,
        journal: Arc<Journal>,
        executor: Arc<Executor>,
        outbox: Arc<Notify>,
    ) -> Result<Arc<Self>, JournalError> {
        let mut state = State::default();
        if let Some(raw) = journal.autonomy_record(SET_KEY)? {
            match v1::ScheduleSet::decode(raw.as_slice()) {
                Ok(set) => {
                    state.schedules = compile(&set);
                    state.set = set;
                }
                Err(e) => tracing::error!(error = %e, "stored schedule set unreadable; ignored"),
            }
        }
        if let Some(raw) = journal.autonomy_record(STATE_KEY)? {
            match serde_json::from_slice::<Persisted>(&raw) {
                Ok(p) => state.persisted = p,
                Err(e) => tracing::error!(error = %e, "stored autonomy state unreadable; ignored"),
            }
        }
        // An agent (re)started without a session counts as cut off from its start, unless it
        // already was before.
        if state.persisted.down_since.is_none() {
            state.persisted.down_since = Some(millis(clock.now()));
        }
        let set_tx = tokio::sync::watch::Sender::new(state.set.clone());
        Ok(Arc::new(Self {
            set_tx,
            agent: agent.to_string(),
            after,
            clock,
            journal,
            executor,
            outbox,
            state: Mutex::new(state),
            changed: Notify::new(),
            firing: tokio::sync::Mutex::new(()),
        }))
    }

    fn persist(&self, st: &State) {
        match serde_json::to_vec(&st.persisted) {
            Ok(raw) => {
                if let Err(e) = self.journal.set_autonomy_record(STATE_KEY, &raw) {
                    tracing::warn!(error = %e, "cannot store the autonomy state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the autonomy state"),
        }
    }

    /// Store a schedule set from the controller; returns its version to acknowledge, or the
    /// journal's refusal (then it is not acknowledged and the controller sends it again with
    /// the next session). A set from the controller also lifts local `held` pauses: the
    /// controller now decides.
    pub fn store_set(&self, set: v1::ScheduleSet) -> Result<u64, JournalError> {
        self.journal
            .set_autonomy_record(SET_KEY, &set.encode_to_vec())?;
        let version = set.version;
        let mut st = lock(&self.state);
        st.schedules = compile(&set);
        self.set_tx.send_replace(set.clone());
        st.set = set;
        st.persisted.held.clear();
        self.persist(&st);
        drop(st);
        self.changed.notify_one();
        Ok(version)
    }

    /// The stored schedule set, now and whenever the controller replaces it.
    pub fn subscribe_set(&self) -> tokio::sync::watch::Receiver<v1::ScheduleSet> {
        self.set_tx.subscribe()
    }

    /// Version of the stored set (0 when none).
    pub fn set_version(&self) -> u64 {
        lock(&self.state).set.version
    }

    /// The session ended (or never opened): the autonomy timer runs from `at`, unless it
    /// already does.
    pub fn session_lost(&self) {
        let now = millis(self.clock.now());
        let mut st = lock(&self.state);
        if st.persisted.down_since.is_none() {
            st.persisted.down_since = Some(now);
            self.persist(&st);
        }
        drop(st);
        self.changed.notify_one();
    }

    /// Begin a session handshake: nothing fires until the returned guard is dropped. Take it
    /// before building the Hello, keep it until the Welcome has been handled.
    pub async fn handshake(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.firing.lock().await
    }

    /// What the Hello reports: per schedule, the latest nominal time covered, and since when
    /// the agent has been autonomous.
    pub fn reports(&self) -> (Vec<v1::AutonomyReport>, Option<prost_types::Timestamp>) {
        let st = lock(&self.state);
        let reports = st
            .persisted
            .reports
            .iter()
            .map(|(name, r)| v1::AutonomyReport {
                schedule: name.clone(),
                last_nominal: Some(from_millis(r.last_nominal)),
                counters: r.counters.clone().into_iter().collect(),
            })
            .collect();
        (reports, st.persisted.autonomous_since.map(from_millis))
    }

    /// The controller's Welcome: it has recorded the reports, the schedules are its own again.
    /// Call while holding the handshake guard.
    pub fn welcomed(&self) {
        let mut st = lock(&self.state);
        if st.persisted.autonomous_since.is_some() {
            tracing::info!("controller is back: schedules handed over, no longer firing them");
        }
        st.persisted = Persisted {
            held: std::mem::take(&mut st.persisted.held),
            ..Persisted::default()
        };
        st.buffered.clear();
        self.persist(&st);
    }

    /// Whether the agent fires schedules itself now, and since when.
    pub fn autonomous_since(&self) -> Option<DateTime<Utc>> {
        lock(&self.state)
            .persisted
            .autonomous_since
            .and_then(from_ms)
    }

    /// Fire schedules while autonomous, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.after.is_zero() {
            return;
        }
        let mut ended = self.executor.subscribe_ended();
        loop {
            let wake = self.step().await;
            let sleep = wake.map_or(Duration::from_secs(3600), |t| self.clock.until(t));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.changed.notified() => {}
                r = ended.recv() => {
                    if let Ok((run_id, state)) = r {
                        self.run_ended(&run_id, state);
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: become autonomous when the time has come, fire what is due, release buffered
    /// fire times. Returns when to look again (`None`: only on a change).
    async fn step(&self) -> Option<DateTime<Utc>> {
        let _firing = self.firing.lock().await;
        let now = self.clock.now();
        let mut st = lock(&self.state);
        let down_since = st.persisted.down_since.and_then(from_ms)?;
        if st.schedules.is_empty() {
            return None;
        }
        let after = chrono::Duration::from_std(self.after).unwrap_or(chrono::Duration::MAX);
        let becomes = down_since.checked_add_signed(after)?;
        if st.persisted.autonomous_since.is_none() {
            if now < becomes {
                return Some(becomes);
            }
            tracing::warn!(since = %down_since, "no controller reachable: firing schedules autonomously");
            st.persisted.autonomous_since = Some(millis(now));
        }
        let mut next: Option<DateTime<Utc>> = None;
        let schedules = st.schedules.clone();
        for c in &schedules {
            let name = c.doc.name.clone();
            let cursor = st
                .persisted
                .reports
                .get(&name)
                .and_then(|r| from_ms(r.last_nominal))
                .unwrap_or(down_since);
            // The fire times due now: all but the latest are caught up as missed.
            let mut due = Vec::new();
            let mut t = cursor;
            while let Some(f) = c.trigger.next_candidate_after(t) {
                if f > now || due.len() >= WALK_LIMIT {
                    break;
                }
                due.push(f);
                t = f;
            }
            if let Some((&latest, earlier)) = due.split_last() {
                for &f in earlier {
                    let counter = if c.trigger.is_blacked_out(f) {
                        counters::SKIPPED_BLACKOUT
                    } else {
                        counters::MISSED_CATCHUP
                    };
                    cover(&mut st, &name, f, counter);
                }
                self.fire(&mut st, c, latest);
            }
            self.release_buffered(&mut st, c);
            let t = due.last().copied().unwrap_or(cursor);
            if let Some(n) = c.trigger.next_candidate_after(t.max(now)) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
            if st.buffered.contains_key(&name) {
                let poll = now + chrono::Duration::from_std(BUFFER_POLL).unwrap_or_default();
                next = Some(next.map_or(poll, |m| m.min(poll)));
            }
        }
        self.persist(&st);
        next
    }

    /// Evaluate one nominal time of a schedule on this agent.
    fn fire(&self, st: &mut State, c: &Compiled, nominal: DateTime<Utc>) {
        let name = c.doc.name.as_str();
        let skip = if c.trigger.is_blacked_out(nominal) {
            Some(counters::SKIPPED_BLACKOUT)
        } else if st.set.fleet_paused || c.paused || st.persisted.held.contains(name) {
            Some(counters::SKIPPED_PAUSED)
        } else if st.set.drained {
            Some(counters::SKIPPED_DRAINED)
        } else {
            None
        };
        if let Some(counter) = skip {
            tracing::info!(schedule = name, %nominal, counter, "autonomous fire time skipped");
            cover(st, name, nominal, counter);
            return;
        }
        let running = st
            .active
            .get(name)
            .filter(|id| self.executor.runs_in_flight().contains(id))
            .cloned();
        if let Some(prev) = running {
            match c.doc.overlap {
                Overlap::Skip => {
                    tracing::info!(schedule = name, %nominal, "previous run still active; fire time skipped");
                    cover(st, name, nominal, counters::SKIPPED_OVERLAP);
                    return;
                }
                Overlap::BufferOne => {
                    if st.buffered.insert(name.to_string(), nominal).is_some() {
                        bump(st, name, counters::BUFFER_DROPPED);
                    }
                    // Covered once it is fired or dropped; the report moves on now so that
                    // the controller never fires it as well.
                    cover(st, name, nominal, "buffered");
                    return;
                }
                Overlap::CancelOther => {
                    self.executor.cancel(&prev);
                    bump(st, name, counters::CANCELLED_OTHER);
                }
            }
        }
        self.start(st, c, nominal);
        cover(st, name, nominal, counters::AUTONOMOUS);
    }

    /// Start a buffered fire time once the schedule's previous run has ended.
    fn release_buffered(&self, st: &mut State, c: &Compiled) {
        let name = c.doc.name.as_str();
        let Some(&nominal) = st.buffered.get(name) else {
            return;
        };
        let running = st
            .active
            .get(name)
            .is_some_and(|id| self.executor.runs_in_flight().contains(id));
        if running {
            return;
        }
        st.buffered.remove(name);
        self.start(st, c, nominal);
        bump(st, name, counters::AUTONOMOUS);
    }

    /// Journal and start the run of `nominal`, with the controller's run id.
    fn start(&self, st: &mut State, c: &Compiled, nominal: DateTime<Utc>) {
        let name = c.doc.name.as_str();
        let run_id = run_id_for(name, &self.agent, nominal);
        let start = v1::StartRun {
            run_id: run_id.clone(),
            steps: Vec::new(),
            traceparent: String::new(),
            requested_at: Some(to_proto(nominal)),
            stages: c.stages.clone(),
            on_failure: c.on_failure,
            approved_steps: Vec::new(),
            skip_steps: Vec::new(),
            autonomous: Some(v1::AutonomousOrigin {
                schedule: name.to_string(),
                sequence: c.doc.sequence.clone(),
                nominal_time: Some(to_proto(nominal)),
                stages: c.stages.clone(),
            }),
        };
        if let Err(reason) = crate::inventory::check_start_run(&start, &self.executor.inventory()) {
            tracing::warn!(schedule = name, %run_id, %reason, "autonomous run refused");
            bump(st, name, counters::REFUSED);
            return;
        }
        if let Some(problem) = self.executor.journal_problem() {
            tracing::warn!(schedule = name, %run_id, %problem, "autonomous run refused");
            bump(st, name, counters::REFUSED);
            return;
        }
        match self.journal.accept_run(&start) {
            Ok(Accept::New) => {
                tracing::info!(schedule = name, %run_id, %nominal, "autonomous run started");
                st.active.insert(name.to_string(), run_id);
                self.executor.start(start);
                self.outbox.notify_one();
            }
            Ok(Accept::Duplicate) => {
                tracing::info!(schedule = name, %run_id, "run already accepted from the controller; not executing again");
            }
            Err(e) => {
                tracing::error!(schedule = name, %run_id, error = %e, "cannot journal the autonomous run");
                bump(st, name, counters::REFUSED);
            }
        }
    }

    /// A run ended: one of ours that ended `held` pauses its schedule locally.
    fn run_ended(&self, run_id: &str, state: v1::RunState) {
        let mut st = lock(&self.state);
        let Some(name) = st
            .active
            .iter()
            .find(|(_, id)| id.as_str() == run_id)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if state == v1::RunState::Held {
            tracing::warn!(schedule = %name, run_id, "autonomous run held by a guard rail: schedule paused until an operator approves");
            st.persisted.held.insert(name.clone());
            bump(&mut st, &name, counters::HELD);
            self.persist(&st);
        }
        drop(st);
        self.changed.notify_one();
    }
}

/// Record that `nominal` of `schedule` was covered by the agent, counted under `counter`.
fn cover(st: &mut State, schedule: &str, nominal: DateTime<Utc>, counter: &str) {
    let r = st
        .persisted
        .reports
        .entry(schedule.to_string())
        .or_default();
    r.last_nominal = r.last_nominal.max(millis(nominal));
    if counter != "buffered" {
        *r.counters.entry(counter.to_string()).or_default() += 1;
    }
}

fn bump(st: &mut State, schedule: &str, counter: &str) {
    let r = st
        .persisted
        .reports
        .entry(schedule.to_string())
        .or_default();
    *r.counters.entry(counter.to_string()).or_default() += 1;
}

/// A wall-clock instant of a report as chrono time (for display and tests).
pub fn report_time(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    from_proto(ts)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use syncfleet_proto::schedule_model::{Clock, run_id_for};
    use syncfleet_proto::v1;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::{Autonomy, counters};
    use crate::engine::sim::SimConfig;
    use crate::executor::ExecutorOptions;
    use crate::executor::testkit::{Harness, build};

    /// A wall-clock origin on the 10 s grid.
    fn t0() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(secs)
    }

    fn schedule(name: &str, extra: serde_json::Value) -> v1::AgentSchedule {
        let mut doc = serde_json::json!({
            "name": name,
            "sequence": "quick",
            "targets": {"agents": ["sync-01"]},
            "trigger": {"every": "10s"},
        });
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        v1::AgentSchedule {
            schedule_json: doc.to_string(),
            stages: vec![v1::PlanStage {
                steps: vec![v1::PlanStep {
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                    ..Default::default()
                }],
            }],
            on_failure: v1::OnFailure::Stop as i32,
            paused: false,
        }
    }

    /// An agent (executor on a simulated server, journal) whose session is lost at t0, with
    /// `autonomy_after` 20 s; runs take `time_scale` of the simulated durations.
    async fn agent(time_scale: f64, set: v1::ScheduleSet) -> (Harness, std::sync::Arc<Autonomy>) {
        let mut cfg = SimConfig::example(0);
        cfg.time_scale = time_scale;
        let opts = ExecutorOptions {
            stagger: Duration::from_millis(1),
            ..ExecutorOptions::default()
        };
        let (h, _sim) = build(cfg, opts).await;
        let a = Autonomy::open(
            "sync-01",
            Duration::from_secs(20),
            Clock::tokio_from(t0()),
            std::sync::Arc::clone(&h.journal),
            std::sync::Arc::clone(&h.exec),
            std::sync::Arc::new(Notify::new()),
        )
        .unwrap();
        a.store_set(set).unwrap();
        (h, a)
    }

    fn set(schedules: Vec<v1::AgentSchedule>) -> v1::ScheduleSet {
        v1::ScheduleSet {
            version: 7,
            schedules,
            ..Default::default()
        }
    }

    fn accepted(h: &Harness, schedule: &str, secs: i64) -> bool {
        let probe = v1::StartRun {
            run_id: run_id_for(schedule, "sync-01", at(secs)),
            ..Default::default()
        };
        h.journal.accept_run(&probe).unwrap() == crate::journal::Accept::Duplicate
    }

    fn report(
        a: &Autonomy,
        schedule: &str,
    ) -> (DateTime<Utc>, std::collections::HashMap<String, u64>) {
        let (reports, _) = a.reports();
        let r = reports
            .into_iter()
            .find(|r| r.schedule == schedule)
            .unwrap();
        (
            super::report_time(r.last_nominal.as_ref().unwrap()).unwrap(),
            r.counters,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_autonomy_after_with_the_controllers_run_ids() {
        let (h, a) = agent(0.001, set(vec![schedule("s", serde_json::json!({}))])).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(a.autonomous_since().is_none(), "not before autonomy_after");
        assert!(h.exec.runs_in_flight().is_empty());
        // At 20 s it becomes autonomous: 10 s passed unfired (counted), 20 s fires.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(a.autonomous_since(), Some(at(20)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (last, counted) = report(&a, "s");
        assert_eq!(last, at(30));
        assert_eq!(counted.get(counters::AUTONOMOUS), Some(&2), "{counted:?}");
        assert_eq!(
            counted.get(counters::MISSED_CATCHUP),
            Some(&1),
            "{counted:?}"
        );
        // Journaled with the controller's derived ids (a second accept is a duplicate).
        assert!(accepted(&h, "s", 20));
        assert!(accepted(&h, "s", 30));
        assert!(!accepted(&h, "s", 10), "10 s was counted, not run");
        let (_, since) = a.reports();
        assert_eq!(since.map(|t| t.seconds), Some(at(20).timestamp()));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_restarted_while_cut_off_keeps_its_set_and_what_it_covered() {
        let (h, a) = agent(0.001, set(vec![schedule("s", serde_json::json!({}))])).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(25)).await;
        stop.cancel();
        task.await.unwrap();
        let before = a.reports();
        drop(a);
        // The same journal, a new process.
        let again = Autonomy::open(
            "sync-01",
            Duration::from_secs(20),
            Clock::tokio_from(at(25)),
            std::sync::Arc::clone(&h.journal),
            std::sync::Arc::clone(&h.exec),
            std::sync::Arc::new(Notify::new()),
        )
        .unwrap();
        assert_eq!(again.set_version(), 7);
        assert_eq!(again.reports(), before);
        assert_eq!(again.autonomous_since(), Some(at(20)));
        // It goes on from where it was: 30 s fires, 20 s is not fired again.
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&again).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (last, counted) = report(&again, "s");
        assert_eq!(last, at(30));
        assert_eq!(counted.get(counters::AUTONOMOUS), Some(&2), "{counted:?}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_handshake_stops_firing_and_the_welcome_hands_back() {
        let (h, a) = agent(0.001, set(vec![schedule("s", serde_json::json!({}))])).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(report(&a, "s").0, at(20));
        // A session opens: from its Hello to its Welcome nothing fires.
        let handshake = a.handshake().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            report(&a, "s").0,
            at(20),
            "30 s not fired during the handshake"
        );
        a.welcomed();
        drop(handshake);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            a.reports().0.is_empty(),
            "handed back: nothing left to report"
        );
        assert!(a.autonomous_since().is_none());
        assert!(
            !accepted(&h, "s", 30) && !accepted(&h, "s", 40),
            "the controller's again"
        );
        // Cut off again: the timer starts over.
        a.session_lost();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(a.autonomous_since().is_some());
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn opted_out_paused_and_drained_schedules_do_not_run() {
        let mut paused = schedule("paused", serde_json::json!({}));
        paused.paused = true;
        let (h, a) = agent(
            0.001,
            set(vec![
                schedule("watched", serde_json::json!({"autonomy": false})),
                paused,
            ]),
        )
        .await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(
            !a.reports().0.iter().any(|r| r.schedule == "watched"),
            "autonomy: false is never fired"
        );
        assert!(!accepted(&h, "watched", 20));
        let (_, counted) = report(&a, "paused");
        assert_eq!(
            counted.get(counters::SKIPPED_PAUSED),
            Some(&2),
            "{counted:?}"
        );
        assert!(!accepted(&h, "paused", 30));
        // A drain from the controller: nothing fires either.
        a.store_set(v1::ScheduleSet {
            version: 8,
            schedules: vec![schedule("s", serde_json::json!({}))],
            drained: true,
            ..Default::default()
        })
        .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_, counted) = report(&a, "s");
        assert!(
            counted.get(counters::SKIPPED_DRAINED).copied().unwrap_or(0) >= 1,
            "{counted:?}"
        );
        assert_eq!(counted.get(counters::AUTONOMOUS), None, "{counted:?}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_held_by_a_guard_rail_pauses_its_schedule_until_the_controller_decides() {
        // 800 of 10,000 connectors deleted at the source: the synchronization would stage
        // 8 % deletes, over the guard rail's 2 %.
        let cfg = SimConfig::from_toml_str(
            "seed = 11\ntime_scale = 0.001\n\
             [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 10000\nchange_rate_per_hour = 0.0\n\
             source_events = [{at_secs = 0.0, delete = 800}]\n",
        )
        .unwrap();
        let (h, _sim) = build(
            cfg,
            ExecutorOptions {
                stagger: Duration::from_millis(1),
                ..ExecutorOptions::default()
            },
        )
        .await;
        let a = Autonomy::open(
            "sync-01",
            Duration::from_secs(20),
            Clock::tokio_from(t0()),
            std::sync::Arc::clone(&h.journal),
            std::sync::Arc::clone(&h.exec),
            std::sync::Arc::new(Notify::new()),
        )
        .unwrap();
        let mut guarded = schedule("guarded", serde_json::json!({}));
        guarded.stages.push(v1::PlanStage {
            steps: vec![v1::PlanStep {
                ma: "AD".into(),
                profile: "Delta Sync".into(),
                guard: Some(v1::Guard {
                    max_staged_deletes: Some(v1::Limit {
                        kind: Some(v1::limit::Kind::Percent(2.0)),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        });
        a.store_set(set(vec![guarded.clone()])).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(45)).await;
        let (_, counted) = report(&a, "guarded");
        assert_eq!(counted.get(counters::AUTONOMOUS), Some(&1), "{counted:?}");
        assert_eq!(counted.get(counters::HELD), Some(&1), "{counted:?}");
        assert_eq!(
            counted.get(counters::SKIPPED_PAUSED),
            Some(&2),
            "30 and 40: {counted:?}"
        );
        assert!(!accepted(&h, "guarded", 30));
        // The controller's next set decides (it pauses the schedule for the operator, or not).
        a.store_set(set(vec![guarded])).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            accepted(&h, "guarded", 50),
            "fires again once the controller decided"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn overlap_skips_behind_a_running_run_and_a_held_run_pauses_the_schedule() {
        // Slowed-down simulated runs: a Delta Import outlasts the 10 s interval.
        let (h, a) = agent(100.0, set(vec![schedule("s", serde_json::json!({}))])).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(std::sync::Arc::clone(&a).run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(21)).await;
        let first = run_id_for("s", "sync-01", at(20));
        assert_eq!(h.exec.runs_in_flight(), vec![first.clone()]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_, counted) = report(&a, "s");
        assert_eq!(
            counted.get(counters::SKIPPED_OVERLAP),
            Some(&1),
            "{counted:?}"
        );
        // The run ends held by a guard rail: the schedule pauses here until the controller is
        // back (its next set decides).
        h.exec.cancel(&first);
        a.run_ended(&first, v1::RunState::Held);
        while !h.exec.runs_in_flight().is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (_, counted) = report(&a, "s");
        assert_eq!(counted.get(counters::HELD), Some(&1), "{counted:?}");
        assert!(
            counted.get(counters::SKIPPED_PAUSED).copied().unwrap_or(0) >= 1,
            "{counted:?}"
        );
        assert!(h.exec.runs_in_flight().is_empty());
        stop.cancel();
        task.await.unwrap();
    }
}
