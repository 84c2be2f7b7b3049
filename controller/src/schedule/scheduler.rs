//! The scheduler: turns schedules' fire times into runs.
//!
//! - A timer queue keyed by next fire time (a `BTreeSet<(time, schedule)>`): the loop sleeps
//!   until the earliest entry; nothing scans every schedule on a tick.
//! - Run identity: a scheduled run's id is derived from (schedule, agent, nominal time)
//!   ([`run_id_for`]), so a duplicate fire (a restart mid-fire, two evaluations of one time) is
//!   harmless: the store keeps the first.
//! - Overlap per schedule and agent: `skip` (default; counted `skipped_overlap`), `buffer_one`
//!   (one fire time kept until the running run ends, stored so it survives a controller crash
//!   and restored at start; newer ones counted `buffer_dropped`),
//!   `cancel_other` (the running run is cancelled through its agent, the new one queues behind
//!   it on the agent's MA locks). Engine rules across schedules are the agent's job: runs of two
//!   schedules on one server queue, they never collide.
//! - Catch-up after downtime (Kubernetes CronJob v2 / Nomad): the fire times missed since the
//!   schedule's cursor are computed, not looped; at most one catch-up run per schedule and agent
//!   for the most recent missed time if it is within `catchup_window`; the rest are counted
//!   `missed_catchup`. The cursor is stored apart from the schedule document, so re-applying a
//!   document never resets it (Salt PR #54230). What is still running is checked first: the
//!   overlap policy applies to catch-up runs too (Nomad #11052).
//! - Pauses: a paused fleet or schedule, or a draining agent, skips fire times (counted
//!   `skipped_paused` / `skipped_drained`, per agent). Every path that creates a run asks the
//!   same check ([`Fleet::run_blocked`]): a fire, a catch-up and a buffered fire time released
//!   when the running run ends (a buffered time released into a pause is counted as skipped,
//!   not run later). A run that ends `held` by a guard rail pauses its schedule with a note
//!   saying why (counted `held`).
//! - Blackout windows: a fire time inside one is counted `skipped_blackout` when it passes
//!   (the timer wakes for it), and those passed while no controller ran are counted at start.
//! - Every nominal fire time ends as runs or as counted skips; skips that depend on the agent
//!   (overlap, buffering, pause, drain) are counted per target agent.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use syncfleet_proto::v1;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, NewRun, RunBlocked, steps_of};
use crate::fleetfile;
use crate::model::{Document, Overlap, ScheduleDoc, SequenceDoc};
use crate::schedule::trigger::Trigger;
use crate::store::keys::{
    buffered as buffered_key, buffered_prefix, catchup as catchup_key, cursor as cursor_key,
};
use crate::store::{self, StoreError};

/// Where the scheduler reads the time. `Tokio` follows tokio's clock (paused in tests) from a
/// fixed wall-clock origin; `System` is the real wall clock.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Tokio {
        wall: DateTime<Utc>,
        mono: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock following tokio time from now.
    pub fn tokio_from(wall: DateTime<Utc>) -> Self {
        Clock::Tokio {
            wall,
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, mono } => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(*mono);
                *wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
            }
        }
    }

    /// Time left until `t` (zero when past).
    pub fn until(&self, t: DateTime<Utc>) -> Duration {
        (t - self.now()).to_std().unwrap_or(Duration::ZERO)
    }
}

/// Deterministic run id of a scheduled fire: the same (schedule, agent, nominal time) always
/// gives the same id.
pub fn run_id_for(schedule: &str, agent: &str, nominal: DateTime<Utc>) -> String {
    let key = format!("{schedule}\u{0}{agent}\u{0}{}", nominal.timestamp_millis());
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
}

struct Entry {
    doc: ScheduleDoc,
    trigger: Trigger,
    next: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    queue: BTreeSet<(DateTime<Utc>, String)>,
    sequences: HashMap<String, SequenceDoc>,
    /// buffer_one: the fire time kept per (schedule, agent); a copy of the store's
    /// `buffered/SCHEDULE/AGENT` records.
    buffered: HashMap<(String, String), DateTime<Utc>>,
    /// Catch-up fire times decided at startup, waiting for their agents to reconnect and report
    /// what ran while no controller listened (or for the deadline).
    deferred: Vec<(String, DateTime<Utc>, tokio::time::Instant)>,
}

/// How long a reconnected agent gets to replay its outbox before its runs are trusted.
const REPLAY_SETTLE: Duration = Duration::from_secs(2);

/// The scheduler of one controller.
pub struct Scheduler {
    fleet: Arc<Fleet>,
    clock: Clock,
    reload: Notify,
    state: Mutex<State>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

fn millis_value(t: DateTime<Utc>) -> Vec<u8> {
    t.timestamp_millis().to_string().into_bytes()
}

fn parse_millis(raw: &[u8]) -> Option<DateTime<Utc>> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
}

/// The counter of a fire time skipped because of `blocked`.
fn blocked_counter(blocked: &RunBlocked) -> &'static str {
    match blocked {
        RunBlocked::FleetPaused(_) | RunBlocked::SchedulePaused(..) => counters::SKIPPED_PAUSED,
        RunBlocked::AgentDraining(..) => counters::SKIPPED_DRAINED,
    }
}

/// Counter names kept per schedule.
pub mod counters {
    pub const FIRED: &str = "fired";
    pub const SKIPPED_OVERLAP: &str = "skipped_overlap";
    pub const MISSED_CATCHUP: &str = "missed_catchup";
    pub const BUFFER_DROPPED: &str = "buffer_dropped";
    pub const BUFFERED: &str = "buffered";
    pub const HELD: &str = "held";
    pub const CANCELLED_OTHER: &str = "cancelled_other";
    pub const SKIPPED_PAUSED: &str = "skipped_paused";
    pub const SKIPPED_DRAINED: &str = "skipped_drained";
    pub const CATCHUP: &str = "catchup";
    pub const SKIPPED_NO_TARGET: &str = "skipped_no_target";
    pub const SKIPPED_BLACKOUT: &str = "skipped_blackout";
}

impl Scheduler {
    pub fn new(fleet: Arc<Fleet>, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            clock,
            reload: Notify::new(),
            state: Mutex::new(State::default()),
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Ask the loop to re-read schedules (after apply, delete, pause or resume).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    async fn bump(&self, schedule: &str, counter: &'static str, by: u64) {
        if by == 0 {
            return;
        }
        let s = schedule.to_string();
        if let Err(e) = store::blocking(&self.fleet.store, move |st| {
            st.bump_counters(&s, &[(counter, by)])
        })
        .await
        {
            tracing::error!(schedule, counter, error = %e, "cannot count");
        }
    }

    async fn cursor(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let k = cursor_key(schedule);
        let raw = store::blocking(&self.fleet.store, move |s| s.get_state(&k)).await?;
        Ok(raw.as_deref().and_then(parse_millis))
    }

    /// Store (`Some`) or forget (`None`) the buffered fire time of (schedule, agent) together
    /// with counter deltas, in one transaction; then mirror it in memory.
    async fn commit_buffered(
        &self,
        schedule: &str,
        agent: &str,
        nominal: Option<DateTime<Utc>>,
        deltas: Vec<(&'static str, u64)>,
    ) {
        let key = (schedule.to_string(), agent.to_string());
        {
            let mut st = self.state.lock().await;
            match nominal {
                Some(t) => st.buffered.insert(key, t),
                None => st.buffered.remove(&key),
            };
        }
        let record = (buffered_key(schedule, agent), nominal.map(millis_value));
        self.commit_state(schedule, vec![record], deltas).await;
    }

    /// Load the buffered fire times a previous controller process stored, then release those
    /// whose schedule has nothing running on their agent any more (the run ended while no
    /// controller listened, or just before the crash).
    async fn restore_buffered(&self) {
        let names: Vec<String> = self.state.lock().await.entries.keys().cloned().collect();
        let mut restored = Vec::new();
        for name in names {
            let prefix = buffered_prefix(&name);
            let p = prefix.clone();
            match store::blocking(&self.fleet.store, move |s| s.list_state(&p)).await {
                Ok(records) => {
                    for (key, raw) in records {
                        let (Some(agent), Some(nominal)) =
                            (key.strip_prefix(&prefix), parse_millis(&raw))
                        else {
                            tracing::error!(key, "unreadable buffered fire time ignored");
                            continue;
                        };
                        restored.push((name.clone(), agent.to_string(), nominal));
                    }
                }
                Err(e) => {
                    tracing::error!(schedule = %name, error = %e, "cannot read buffered fire times")
                }
            }
        }
        for (name, agent, nominal) in &restored {
            tracing::info!(schedule = %name, agent, %nominal, "buffered fire time restored");
            self.state
                .lock()
                .await
                .buffered
                .insert((name.clone(), agent.clone()), *nominal);
        }
        for (name, agent, _) in restored {
            self.release_buffered(&name, &agent).await;
        }
    }

    /// Start the buffered fire time of (schedule, agent) once the schedule has nothing running
    /// there, through the same pause and drain check as every fire: blocked, it is counted as
    /// skipped and dropped.
    async fn release_buffered(&self, schedule: &str, agent: &str) {
        let key = (schedule.to_string(), agent.to_string());
        let Some(nominal) = self.state.lock().await.buffered.get(&key).copied() else {
            return;
        };
        if !self.active_runs(schedule, agent).await.is_empty() {
            return;
        }
        let found = {
            let st = self.state.lock().await;
            st.entries.get(schedule).map(|e| {
                (
                    e.doc.clone(),
                    st.sequences.get(&e.doc.sequence).cloned(),
                    e.trigger.clone(),
                )
            })
        };
        let Some((doc, Some(seq), trigger)) = found else {
            tracing::warn!(schedule, agent, %nominal, "schedule or sequence gone; buffered fire time dropped");
            return self
                .commit_buffered(schedule, agent, None, Vec::new())
                .await;
        };
        match self.fleet.run_blocked(agent, Some(schedule)).await {
            Ok(Some(blocked)) => {
                tracing::info!(schedule, agent, %nominal, reason = %blocked, "buffered fire time skipped");
                let deltas = vec![(blocked_counter(&blocked), 1)];
                return self.commit_buffered(schedule, agent, None, deltas).await;
            }
            Ok(None) => {}
            Err(e) => {
                // Kept: the next run update of this schedule and agent tries again.
                tracing::error!(schedule, agent, error = %e, "cannot read pauses; buffered fire time kept");
                return;
            }
        }
        // The run id is derived from the fire time, so creating it again after a crash between
        // these two steps changes nothing.
        self.create(schedule, &doc, &seq, &trigger, agent, nominal, "schedule")
            .await;
        self.commit_buffered(schedule, agent, None, Vec::new())
            .await;
    }

    async fn set_cursor(&self, schedule: &str, t: DateTime<Utc>) {
        self.advance_cursor(schedule, t, Vec::new()).await;
    }

    /// Move the schedule's cursor (every fire time up to it is accounted for) and add the
    /// counts of the fire times passed on the way, in one transaction: a crash between the two
    /// can neither lose nor double-count a fire time.
    async fn advance_cursor(
        &self,
        schedule: &str,
        t: DateTime<Utc>,
        deltas: Vec<(&'static str, u64)>,
    ) {
        let record = (cursor_key(schedule), Some(millis_value(t)));
        self.commit_state(schedule, vec![record], deltas).await;
    }

    /// Write or delete state records and add to counters of a schedule in one transaction.
    async fn commit_state(
        &self,
        schedule: &str,
        records: Vec<(String, Option<Vec<u8>>)>,
        mut deltas: Vec<(&'static str, u64)>,
    ) {
        deltas.retain(|(_, by)| *by > 0);
        let s = schedule.to_string();
        if let Err(e) = store::blocking(&self.fleet.store, move |st| {
            st.commit_schedule_state(&s, &records, &deltas)
        })
        .await
        {
            tracing::error!(schedule, error = %e, "cannot store the schedule's state");
        }
    }

    /// A catch-up decided by a start of an earlier controller process that did not get to
    /// evaluate it (it crashed while waiting for the agents, or just before).
    async fn pending_catchup(&self, schedule: &str) -> Option<DateTime<Utc>> {
        let k = catchup_key(schedule);
        match store::blocking(&self.fleet.store, move |s| s.get_state(&k)).await {
            Ok(raw) => raw.as_deref().and_then(parse_millis),
            Err(e) => {
                tracing::error!(schedule, error = %e, "cannot read the pending catch-up");
                None
            }
        }
    }

    /// Evaluate a catch-up fire time and forget it (its record is kept until then).
    async fn fire_catchup(&self, name: &str, nominal: DateTime<Utc>) {
        self.fire(name, nominal, "catch-up").await;
        self.commit_state(name, vec![(catchup_key(name), None)], Vec::new())
            .await;
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut updates = self.fleet.subscribe();
        self.load(true).await;
        loop {
            let (next, deferred) = {
                let st = self.state.lock().await;
                (st.queue.first().map(|(t, _)| *t), !st.deferred.is_empty())
            };
            let mut sleep = match next {
                Some(t) => self.clock.until(t),
                None => Duration::from_secs(3600),
            };
            if deferred {
                sleep = sleep.min(Duration::from_millis(500));
                self.fire_deferred().await;
            }
            tokio::select! {
                () = tokio::time::sleep(sleep) => self.fire_due().await,
                () = self.reload.notified() => self.load(false).await,
                r = updates.recv() => match r {
                    Ok(run) => self.on_run_update(run).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "scheduler missed run updates");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// (Re)load documents. At startup, apply the catch-up policy to fire times missed while no
    /// controller ran.
    async fn load(&self, startup: bool) {
        let docs = match store::blocking(&self.fleet.store, |s| s.list_documents(None)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot read documents");
                return;
            }
        };
        let mut schedules = Vec::new();
        let mut sequences = HashMap::new();
        for d in docs {
            match fleetfile::from_json(&d.kind, &d.json) {
                Ok(Document::Schedule(s)) => schedules.push(s),
                Ok(Document::Sequence(s)) => {
                    sequences.insert(s.name.clone(), s);
                }
                Err(e) => {
                    tracing::error!(kind = %d.kind, name = %d.name, error = %e, "stored document unreadable")
                }
            }
        }
        let now = self.clock.now();
        let mut catchups = Vec::new();
        {
            let mut st = self.state.lock().await;
            st.sequences = sequences;
            let mut entries = HashMap::new();
            for doc in schedules {
                let trigger = match Trigger::compile(&doc) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(schedule = %doc.name, error = %e, "stored schedule does not compile");
                        continue;
                    }
                };
                let unchanged = st.entries.get(&doc.name).is_some_and(|e| e.doc == doc);
                let next = if unchanged {
                    st.entries.get(&doc.name).and_then(|e| e.next)
                } else {
                    None
                };
                entries.insert(doc.name.clone(), Entry { doc, trigger, next });
            }
            st.entries = entries;
        }
        // Cursors and catch-up (store calls outside the lock).
        let names: Vec<String> = self.state.lock().await.entries.keys().cloned().collect();
        for name in names {
            let cursor = match self.cursor(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(schedule = %name, error = %e, "cannot read cursor");
                    None
                }
            };
            let pending = if startup {
                self.pending_catchup(&name).await
            } else {
                None
            };
            let mut st = self.state.lock().await;
            let Some(entry) = st.entries.get_mut(&name) else {
                continue;
            };
            if entry.next.is_some() {
                continue;
            }
            match cursor {
                None => {
                    // New schedule: no fire times before it existed.
                    drop(st);
                    self.set_cursor(&name, now).await;
                    st = self.state.lock().await;
                    if let Some(entry) = st.entries.get_mut(&name) {
                        entry.next = entry.trigger.next_candidate_after(now);
                    }
                }
                Some(c) if startup && (c < now || pending.is_some()) => {
                    let missed = entry.trigger.missed_between(c, now);
                    let window = entry.doc.catchup_window.unwrap_or(Duration::ZERO);
                    let in_window = |t: DateTime<Utc>| {
                        window > Duration::ZERO
                            && (now - t).to_std().unwrap_or(Duration::MAX) <= window
                    };
                    let mut dropped = missed.count;
                    let mut chosen = None;
                    if let Some(latest) = missed.latest
                        && in_window(latest)
                    {
                        chosen = Some(latest);
                        dropped = dropped.saturating_sub(1);
                    }
                    // A catch-up an earlier start decided and never evaluated is one more missed
                    // time: it runs if nothing newer does and it is still within the window.
                    if let Some(p) = pending {
                        if chosen.is_none() && in_window(p) {
                            chosen = Some(p);
                        } else {
                            dropped += 1;
                        }
                    }
                    if let Some(t) = chosen {
                        catchups.push((name.clone(), t));
                    }
                    let blacked = entry.trigger.blacked_out_between(c, now);
                    entry.next = entry.trigger.next_candidate_after(now);
                    drop(st);
                    if missed.count > 0 {
                        tracing::info!(schedule = %name, missed = missed.count, catchup = dropped < missed.count, "fire times missed while the controller was down");
                    }
                    // The cursor moves past the missed times and the chosen catch-up is
                    // recorded in the same transaction: a crash before it is evaluated leaves
                    // it for the next start instead of losing it.
                    self.commit_state(
                        &name,
                        vec![
                            (cursor_key(&name), Some(millis_value(now.max(c)))),
                            (catchup_key(&name), chosen.map(millis_value)),
                        ],
                        vec![
                            (counters::MISSED_CATCHUP, dropped),
                            (counters::SKIPPED_BLACKOUT, blacked),
                        ],
                    )
                    .await;
                    st = self.state.lock().await;
                }
                Some(c) => {
                    entry.next = entry.trigger.next_candidate_after(c.max(now));
                }
            }
            drop(st);
        }
        self.rebuild_queue().await;
        if startup {
            self.restore_buffered().await;
        }
        for (name, nominal) in catchups {
            if self.schedule_has_active_runs(&name).await {
                // A run of this schedule was in flight when the last controller stopped: whether
                // it still runs is known only once its agent has reconnected and replayed its
                // outbox. Wait for that (bounded), then apply the overlap policy to the
                // catch-up (Nomad #11052).
                let deadline = tokio::time::Instant::now() + self.fleet.settings.agent_lost_after;
                self.state
                    .lock()
                    .await
                    .deferred
                    .push((name, nominal, deadline));
            } else {
                self.fire_catchup(&name, nominal).await;
            }
        }
    }

    /// Whether the store holds a non-terminal run of this schedule on any agent.
    async fn schedule_has_active_runs(&self, schedule: &str) -> bool {
        let s = schedule.to_string();
        match store::blocking(&self.fleet.store, move |st| {
            st.runs_in_states(
                None,
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
        })
        .await
        {
            Ok(runs) => runs.iter().any(|r| r.schedule == s),
            Err(_) => true,
        }
    }

    /// Fire deferred catch-ups whose target agents are all back (or whose deadline passed).
    async fn fire_deferred(&self) {
        let pending: Vec<(String, DateTime<Utc>, tokio::time::Instant)> =
            self.state.lock().await.deferred.clone();
        if pending.is_empty() {
            return;
        }
        let agents = match store::blocking(&self.fleet.store, |s| s.list_agents()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list agents");
                return;
            }
        };
        for (name, nominal, deadline) in pending {
            let targets = {
                let st = self.state.lock().await;
                st.entries.get(&name).map(|e| e.doc.targets.clone())
            };
            let ready = match &targets {
                None => true,
                Some(t) => {
                    tokio::time::Instant::now() >= deadline
                        || agents
                            .iter()
                            .filter(|a| t.matches(&a.name, &a.labels.clone().into_iter().collect()))
                            .all(|a| {
                                self.fleet
                                    .connected_for(&a.name)
                                    .is_some_and(|d| d >= REPLAY_SETTLE)
                            })
                }
            };
            if !ready {
                continue;
            }
            self.state
                .lock()
                .await
                .deferred
                .retain(|(n, t, _)| !(n == &name && *t == nominal));
            if targets.is_some() {
                self.fire_catchup(&name, nominal).await;
            } else {
                self.commit_state(&name, vec![(catchup_key(&name), None)], Vec::new())
                    .await;
            }
        }
    }

    async fn rebuild_queue(&self) {
        let mut st = self.state.lock().await;
        let queue = st
            .entries
            .iter()
            .filter_map(|(n, e)| e.next.map(|t| (t, n.clone())))
            .collect();
        st.queue = queue;
    }

    /// Fire every schedule whose time has come.
    async fn fire_due(&self) {
        loop {
            let now = self.clock.now();
            let due = {
                let mut st = self.state.lock().await;
                match st.queue.first().cloned() {
                    Some((t, name)) if t <= now => {
                        st.queue.remove(&(t, name.clone()));
                        Some((t, name))
                    }
                    _ => None,
                }
            };
            let Some((nominal, name)) = due else {
                return;
            };
            let blacked_out = {
                let st = self.state.lock().await;
                st.entries
                    .get(&name)
                    .is_some_and(|e| e.trigger.is_blacked_out(nominal))
            };
            if blacked_out {
                tracing::debug!(schedule = %name, %nominal, "fire time inside a blackout window; skipped");
                self.advance_cursor(&name, nominal, vec![(counters::SKIPPED_BLACKOUT, 1)])
                    .await;
            } else {
                self.fire(&name, nominal, "schedule").await;
                self.set_cursor(&name, nominal).await;
            }
            let now = self.clock.now();
            let mut late = None;
            {
                let mut st = self.state.lock().await;
                if let Some(entry) = st.entries.get_mut(&name) {
                    let mut next = entry.trigger.next_candidate_after(nominal);
                    if let Some(n) = next
                        && n <= now
                    {
                        // The loop fell behind (machine suspended, long stall): like a restart,
                        // keep at most the latest missed time.
                        let missed = entry.trigger.missed_between(nominal, now);
                        let blacked = entry.trigger.blacked_out_between(nominal, now);
                        late = Some((
                            missed,
                            blacked,
                            entry.doc.catchup_window.unwrap_or(Duration::ZERO),
                        ));
                        next = entry.trigger.next_candidate_after(now);
                    }
                    entry.next = next;
                    if let Some(n) = next {
                        st.queue.insert((n, name.clone()));
                    }
                }
            }
            if let Some((missed, blacked, window)) = late {
                let mut dropped = missed.count;
                if let Some(latest) = missed.latest
                    && (now - latest).to_std().unwrap_or(Duration::MAX) <= window
                    && window > Duration::ZERO
                {
                    dropped = dropped.saturating_sub(1);
                    self.fire(&name, latest, "catch-up").await;
                }
                self.advance_cursor(
                    &name,
                    now,
                    vec![
                        (counters::MISSED_CATCHUP, dropped),
                        (counters::SKIPPED_BLACKOUT, blacked),
                    ],
                )
                .await;
            }
        }
    }

    /// Evaluate one fire time of a schedule on every target agent.
    async fn fire(&self, name: &str, nominal: DateTime<Utc>, origin: &str) {
        let (doc, seq, trigger) = {
            let st = self.state.lock().await;
            let Some(e) = st.entries.get(name) else {
                return;
            };
            (
                e.doc.clone(),
                st.sequences.get(&e.doc.sequence).cloned(),
                e.trigger.clone(),
            )
        };
        let Some(seq) = seq else {
            tracing::error!(schedule = name, sequence = %doc.sequence, "sequence missing; fire time skipped");
            return;
        };
        let agents = match store::blocking(&self.fleet.store, |s| s.list_agents()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list agents");
                return;
            }
        };
        let mut targets: Vec<v1::Agent> = Vec::new();
        for a in agents {
            if !doc
                .targets
                .matches(&a.name, &a.labels.clone().into_iter().collect())
            {
                continue;
            }
            // A revoked agent is no target until it enrols again.
            match self.fleet.revocation(&a.name).await {
                Ok(None) => targets.push(a),
                Ok(Some(_)) => {
                    tracing::debug!(schedule = name, agent = %a.name, "agent revoked; not a target");
                }
                Err(e) => tracing::error!(error = %e, "cannot read the revocation of {}", a.name),
            }
        }
        if targets.is_empty() {
            return self.bump(name, counters::SKIPPED_NO_TARGET, 1).await;
        }
        for agent in targets {
            match self.fleet.run_blocked(&agent.name, Some(name)).await {
                Ok(Some(blocked)) => {
                    tracing::debug!(schedule = name, agent = %agent.name, %nominal, reason = %blocked, "fire time skipped");
                    self.bump(name, blocked_counter(&blocked), 1).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(schedule = name, agent = %agent.name, error = %e, "cannot read pauses; fire time skipped");
                    continue;
                }
            }
            let active = self.active_runs(name, &agent.name).await;
            if !active.is_empty() {
                match doc.overlap {
                    Overlap::Skip => {
                        tracing::info!(schedule = name, agent = %agent.name, %nominal, "previous run still active; fire time skipped");
                        self.bump(name, counters::SKIPPED_OVERLAP, 1).await;
                        continue;
                    }
                    Overlap::BufferOne => {
                        let key = (name.to_string(), agent.name.clone());
                        let occupied = self.state.lock().await.buffered.contains_key(&key);
                        if occupied {
                            self.bump(name, counters::BUFFER_DROPPED, 1).await;
                        } else {
                            // Stored with its counter before anything else happens, so a crash
                            // from here on cannot lose it.
                            self.commit_buffered(
                                name,
                                &agent.name,
                                Some(nominal),
                                vec![(counters::BUFFERED, 1)],
                            )
                            .await;
                        }
                        continue;
                    }
                    Overlap::CancelOther => {
                        for run in &active {
                            if let Err(e) = self
                                .fleet
                                .cancel_run(
                                    &run.id,
                                    "replaced by the next fire time (overlap: cancel_other)",
                                    &format!("schedule/{name}"),
                                )
                                .await
                            {
                                tracing::warn!(run_id = %run.id, error = %e.message(), "cannot cancel the previous run");
                            }
                        }
                        self.bump(name, counters::CANCELLED_OTHER, active.len() as u64)
                            .await;
                    }
                }
            }
            self.create(name, &doc, &seq, &trigger, &agent.name, nominal, origin)
                .await;
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one fire: schedule, sequence, trigger, agent, nominal time and origin"
    )]
    async fn create(
        &self,
        name: &str,
        doc: &ScheduleDoc,
        seq: &SequenceDoc,
        trigger: &Trigger,
        agent: &str,
        nominal: DateTime<Utc>,
        origin: &str,
    ) {
        let jitter = doc
            .jitter
            .filter(|j| !j.is_zero())
            .map(|j| trigger.jitter_for(nominal, j, &format!("{name}/{agent}")))
            .unwrap_or(Duration::ZERO);
        let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
        let new = NewRun {
            id: Some(run_id_for(name, agent, nominal)),
            agent: agent.to_string(),
            steps: steps_of(seq),
            origin: origin.to_string(),
            requested_by: format!("schedule/{name}"),
            schedule: name.to_string(),
            sequence: seq.name.clone(),
            nominal_time: Some(syncfleet_proto::time::to_proto(nominal)),
            on_failure: seq.on_failure_proto(),
            jitter_ms,
            ..NewRun::default()
        };
        match self.fleet.create_run(new, false).await {
            Ok((run, true)) => {
                self.bump(name, counters::FIRED, 1).await;
                if origin == "catch-up" {
                    self.bump(name, counters::CATCHUP, 1).await;
                }
                // Wall clock, not the scheduler clock: dispatch compares with real time.
                let due =
                    nominal + chrono::Duration::milliseconds(i64::try_from(jitter_ms).unwrap_or(0));
                let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if !wait.is_zero() {
                    let fleet = Arc::clone(&self.fleet);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        fleet.dispatch_run(&run.id).await;
                    });
                }
            }
            Ok((_, false)) => {
                tracing::debug!(schedule = name, agent, %nominal, "run for this fire time exists already");
            }
            Err(e) => {
                tracing::error!(schedule = name, agent, error = %e.message(), "cannot create scheduled run")
            }
        }
    }

    async fn active_runs(&self, schedule: &str, agent: &str) -> Vec<v1::Run> {
        let a = agent.to_string();
        match store::blocking(&self.fleet.store, move |s| {
            s.runs_in_states(
                Some(&a),
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
        })
        .await
        {
            Ok(runs) => runs
                .into_iter()
                .filter(|r| r.schedule == schedule)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list active runs");
                Vec::new()
            }
        }
    }

    /// React to a run that ended: start a buffered fire time; pause the schedule of a held run.
    async fn on_run_update(&self, run: v1::Run) {
        let state = v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified);
        if run.schedule.is_empty() || !state.is_terminal() {
            return;
        }
        if state == v1::RunState::Held && run.continued_in.is_empty() {
            let already = matches!(self.fleet.schedule_pause(&run.schedule).await, Ok(Some(_)));
            if !already {
                let held = run
                    .steps
                    .iter()
                    .find(|s| s.state == v1::StepState::Held as i32);
                let note = match held {
                    Some(s) => format!(
                        "run {} on {} held before step {} ({}: {}): {}; approve it with 'syncfleet runs approve {}' or resume the schedule",
                        run.id,
                        run.agent,
                        s.index + 1,
                        s.ma,
                        s.profile,
                        s.detail,
                        run.id
                    ),
                    None => format!("run {} on {} held by a guard rail", run.id, run.agent),
                };
                let pause = v1::Pause {
                    paused: true,
                    note,
                    by: "syncfleet (guard rail)".into(),
                    at: Some(syncfleet_proto::time::now()),
                };
                if let Err(e) = self.fleet.set_schedule_pause(&run.schedule, &pause).await {
                    tracing::error!(error = %e, "cannot pause the schedule of a held run");
                }
                tracing::warn!(schedule = %run.schedule, run_id = %run.id, "guard rail held a run; schedule paused");
                self.bump(&run.schedule, counters::HELD, 1).await;
            }
        }
        self.release_buffered(&run.schedule, &run.agent).await;
    }

    /// Next `n` fire times of a stored schedule.
    pub async fn upcoming(&self, schedule: &str, n: usize) -> Option<(String, Vec<DateTime<Utc>>)> {
        let st = self.state.lock().await;
        let e = st.entries.get(schedule)?;
        Some((
            e.trigger.time_zone_name().to_string(),
            e.trigger.upcoming(self.clock.now(), n),
        ))
    }

    /// Typical interval of a schedule (for saturation).
    pub async fn interval(&self, schedule: &str) -> Option<Duration> {
        let st = self.state.lock().await;
        st.entries
            .get(schedule)
            .and_then(|e| e.trigger.interval_hint(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Settings;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{RunQuery, Store, StoredDocument, keys};
    use std::collections::HashMap as Map;
    use syncfleet_proto::v1::agent_event::Kind;

    struct World {
        _dir: tempfile::TempDir,
        fleet: Arc<Fleet>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        start: DateTime<Utc>,
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    async fn world(yaml: &str, agents: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        for a in agents {
            store
                .put_agent(&v1::Agent {
                    name: (*a).to_string(),
                    labels: [("env".to_string(), "prod".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .unwrap();
        }
        let docs = fleetfile::parse_str("test.yaml", yaml).unwrap();
        let stored: Vec<StoredDocument> = docs
            .iter()
            .map(|d| StoredDocument {
                kind: d.doc.kind().to_string(),
                name: d.doc.name().to_string(),
                json: fleetfile::canonical_json(&d.doc),
            })
            .collect();
        store.write_documents(&stored, &[]).unwrap();
        let fleet = Fleet::new(
            Arc::clone(&store),
            Settings {
                heartbeat_interval: Duration::from_secs(1),
                agent_lost_after: Duration::from_secs(5),
                pending_deadline: Duration::from_secs(3600),
            },
        );
        World {
            _dir: dir,
            fleet,
            store,
            shutdown: CancellationToken::new(),
            start: t0(),
        }
    }

    fn start_scheduler(w: &World, wall: DateTime<Utc>) -> (Arc<Scheduler>, CancellationToken) {
        let s = Scheduler::new(Arc::clone(&w.fleet), Clock::tokio_from(wall));
        let stop = w.shutdown.child_token();
        tokio::spawn(Arc::clone(&s).run(stop.clone()));
        (s, stop)
    }

    /// A stand-in agent: every new run of its agents starts at once and finishes after
    /// `duration` (tokio time), through the same event path real agents use. `final_state`
    /// decides how runs end.
    fn fake_agents(w: &World, duration: Duration, held: bool) {
        let fleet = Arc::clone(&w.fleet);
        let mut rx = fleet.subscribe();
        let stop = w.shutdown.clone();
        tokio::spawn(async move {
            let seqs = Arc::new(Mutex::new(Map::<String, u64>::new()));
            loop {
                let run = tokio::select! {
                    r = rx.recv() => match r { Ok(r) => r, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                if run.state != v1::RunState::Pending as i32 {
                    continue;
                }
                let fleet = Arc::clone(&fleet);
                let seqs = Arc::clone(&seqs);
                tokio::spawn(async move {
                    let send = |kind: Kind| {
                        let fleet = Arc::clone(&fleet);
                        let seqs = Arc::clone(&seqs);
                        let run = run.clone();
                        async move {
                            let mut s = seqs.lock().await;
                            let seq = s.entry(run.agent.clone()).or_default();
                            let stored = *seq;
                            *seq += 1;
                            let ev = v1::AgentEvent {
                                seq: *seq,
                                at: Some(syncfleet_proto::time::now()),
                                run_id: run.id.clone(),
                                kind: Some(kind),
                            };
                            fleet
                                .apply_events(&run.agent, vec![ev], stored)
                                .await
                                .unwrap();
                        }
                    };
                    send(Kind::RunStarted(v1::RunStarted {})).await;
                    tokio::time::sleep(duration).await;
                    if held {
                        send(Kind::StepHeld(v1::StepHeld {
                            index: 0,
                            reason: "812 pending export deletes exceed max_pending_deletes 500"
                                .into(),
                            pending: None,
                        }))
                        .await;
                    }
                    send(Kind::RunFinished(v1::RunFinished {
                        state: if held {
                            v1::RunState::Held
                        } else {
                            v1::RunState::Succeeded
                        } as i32,
                        result: String::new(),
                        message: String::new(),
                    }))
                    .await;
                });
            }
        });
    }

    fn runs(w: &World) -> Vec<v1::Run> {
        let mut r = w
            .store
            .list_runs(&RunQuery {
                limit: 1000,
                ..RunQuery::default()
            })
            .unwrap()
            .runs;
        r.sort_by_key(|r| (r.agent.clone(), r.nominal_time.map(|t| t.seconds)));
        r
    }

    fn counters(w: &World, s: &str) -> Map<String, u64> {
        w.store.counters(s).unwrap().into_iter().collect()
    }

    async fn advance(d: Duration) {
        // Small steps so the scheduler, the store's blocking pool and the fake agents keep up.
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            let s = step.min(left);
            tokio::time::sleep(s).await;
            tokio::task::yield_now().await;
            left -= s;
        }
        // Let blocking store calls settle.
        for _ in 0..20 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    const SEQ: &str =
        "kind: Sequence\nname: s\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\n";

    #[tokio::test(start_paused = true)]
    async fn fires_on_every_target_with_derived_ids_and_nominal_times() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: fast\nsequence: s\ntargets: {{selector: env=prod}}\ntrigger: {{cron: [\"*/2 * * * * *\"]}}\n"),
            &["a1", "a2"],
        )
        .await;
        fake_agents(&w, Duration::from_millis(300), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(20)).await;
        let all = runs(&w);
        for agent in ["a1", "a2"] {
            let mine: Vec<&v1::Run> = all.iter().filter(|r| r.agent == agent).collect();
            assert!(
                (9..=11).contains(&mine.len()),
                "{agent}: {} runs",
                mine.len()
            );
            for pair in mine.windows(2) {
                let a = pair[0].nominal_time.unwrap().seconds;
                let b = pair[1].nominal_time.unwrap().seconds;
                assert_eq!(b - a, 2, "nominal times 2 s apart");
            }
            for r in &mine {
                let nominal = syncfleet_proto::time::from_proto(&r.nominal_time.unwrap()).unwrap();
                assert_eq!(r.id, run_id_for("fast", agent, nominal));
                assert_eq!(r.schedule, "fast");
                assert_eq!(r.origin, "schedule");
            }
        }
        assert!(counters(&w, "fast")["fired"] >= 18);
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn skip_never_overlaps_and_counts_skips() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: slow\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\noverlap: skip\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(95)).await;
        let all = runs(&w);
        // Fire times at 10, 20, ... 90: runs at 10 (to 35), 40 (to 65), 70 (to 95).
        assert_eq!(
            all.len(),
            3,
            "{:?}",
            all.iter().map(|r| r.nominal_time).collect::<Vec<_>>()
        );
        let c = counters(&w, "slow");
        assert_eq!(c.get("skipped_overlap"), Some(&6), "{c:?}");
        // Never two active at once.
        let mut spans: Vec<(i64, i64)> = all
            .iter()
            .map(|r| {
                (
                    syncfleet_proto::time::to_millis(&r.started_at.unwrap()),
                    r.finished_at
                        .map_or(i64::MAX, |t| syncfleet_proto::time::to_millis(&t)),
                )
            })
            .collect();
        spans.sort();
        for p in spans.windows(2) {
            assert!(p[0].1 <= p[1].0, "overlap: {p:?}");
        }
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn buffer_one_keeps_one_and_drops_the_rest() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: b\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\noverlap: buffer_one\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(38)).await;
        // 10: run (to 35); 20: buffered; 30: dropped; 35: the buffered 20 starts.
        let all = runs(&w);
        let nominal: Vec<i64> = all
            .iter()
            .map(|r| r.nominal_time.unwrap().seconds - w.start.timestamp())
            .collect();
        assert_eq!(nominal, [10, 20], "{nominal:?}");
        let c = counters(&w, "b");
        assert_eq!(c.get("buffer_dropped"), Some(&1), "{c:?}");
        assert_eq!(c.get("buffered"), Some(&1), "{c:?}");
        w.shutdown.cancel();
    }

    fn nominal_secs(w: &World) -> Vec<i64> {
        runs(w)
            .iter()
            .map(|r| r.nominal_time.unwrap().seconds - w.start.timestamp())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_fire_time_survives_a_scheduler_restart() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: b\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\noverlap: buffer_one\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(25), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        // 10: run (to 35); 20: buffered. Then the controller dies and a new one starts.
        advance(Duration::from_secs(22)).await;
        stop.cancel();
        advance(Duration::from_millis(200)).await;
        let _s2 = start_scheduler(&w, w.start + chrono::Duration::milliseconds(22_200));
        advance(Duration::from_secs(16)).await;
        // 30: dropped (20 is still kept); 35: the restored 20 starts.
        assert_eq!(nominal_secs(&w), [10, 20]);
        let c = counters(&w, "b");
        assert_eq!(c.get("buffered"), Some(&1), "{c:?}");
        assert_eq!(c.get("buffer_dropped"), Some(&1), "{c:?}");
        assert!(
            w.store.list_state(keys::BUFFERED_ALL).unwrap().is_empty(),
            "released, so no longer stored"
        );
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_fire_time_is_not_released_into_a_pause() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: b\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\noverlap: buffer_one\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(22)).await;
        let pause = v1::Pause {
            paused: true,
            note: "MIM hotfix".into(),
            by: "operator/admin".into(),
            at: None,
        };
        w.fleet.set_fleet_pause(&pause).await.unwrap();
        // 30: skipped (paused); 35: the run ends, the buffered 20 is skipped, not started.
        advance(Duration::from_secs(16)).await;
        assert_eq!(nominal_secs(&w), [10]);
        let c = counters(&w, "b");
        assert_eq!(c.get("skipped_paused"), Some(&2), "{c:?}");
        assert!(w.store.list_state(keys::BUFFERED_ALL).unwrap().is_empty());
        // Resumed: the next fire runs; nothing kept from before the pause runs.
        w.fleet
            .set_fleet_pause(&v1::Pause::default())
            .await
            .unwrap();
        advance(Duration::from_secs(5)).await;
        assert_eq!(nominal_secs(&w), [10, 40]);
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn blacked_out_fire_times_are_counted_as_they_pass_and_across_a_restart() {
        // Windows [0 s, 15 s) and [30 s, 45 s) of every minute; fire times every 10 s.
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: d\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\nblackout: [{{cron: \"*/30 * * * * *\", duration: 15s}}]\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_millis(500), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(55)).await;
        // 10, 30, 40 blacked out; 20 and 50 run.
        assert_eq!(nominal_secs(&w), [20, 50]);
        let c = counters(&w, "d");
        assert_eq!(c.get("skipped_blackout"), Some(&3), "{c:?}");
        // Down from 55 s to 95 s: 60, 70 and 90 were blacked out, 80 missed.
        stop.cancel();
        advance(Duration::from_millis(200)).await;
        let _s2 = start_scheduler(&w, w.start + chrono::Duration::seconds(95));
        advance(Duration::from_millis(500)).await;
        let c = counters(&w, "d");
        assert_eq!(c.get("skipped_blackout"), Some(&6), "{c:?}");
        assert_eq!(c.get("missed_catchup"), Some(&1), "{c:?}");
        assert_eq!(c.get("fired"), Some(&2), "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_other_asks_the_running_run_to_stop() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: c\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\noverlap: cancel_other\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(21)).await;
        let all = runs(&w);
        assert_eq!(all.len(), 2);
        assert!(all[0].cancel_requested, "{:?}", all[0]);
        assert_eq!(counters(&w, "c").get("cancelled_other"), Some(&1));
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn restart_catches_up_once_within_the_window_and_counts_the_rest() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: k\nsequence: s\ntargets: {{agents: [a1, a2]}}\ntrigger: {{every: 10s}}\ncatchup_window: 15s\n"),
            &["a1", "a2"],
        )
        .await;
        fake_agents(&w, Duration::from_millis(500), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        assert_eq!(runs(&w).len(), 2, "one fire at 10 s on both agents");
        // The controller dies; 45 s pass (fire times 20, 30, 40, 50 missed); a new one starts.
        stop.cancel();
        advance(Duration::from_millis(200)).await;
        let restart_wall = w.start + chrono::Duration::seconds(57);
        let _s2 = start_scheduler(&w, restart_wall);
        advance(Duration::from_millis(500)).await;
        // Nothing of this schedule was in flight at the "crash": the catch-up runs at once.
        let all = runs(&w);
        let catchups: Vec<&v1::Run> = all.iter().filter(|r| r.origin == "catch-up").collect();
        assert_eq!(catchups.len(), 2, "one catch-up per agent");
        for r in &catchups {
            assert_eq!(r.nominal_time.unwrap().seconds - w.start.timestamp(), 50);
        }
        let c = counters(&w, "k");
        // 20, 30, 40 are older than the window's reach or superseded: counted, not run.
        assert_eq!(c.get("missed_catchup"), Some(&3), "{c:?}");
        // A catch-up outside the window does not run at all.
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_waits_for_runs_in_flight_at_the_crash_then_honours_overlap() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: f\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\ncatchup_window: 15s\n"),
            &["a1"],
        )
        .await;
        // Runs never end here: the one started at 10 s is still in flight at the crash.
        fake_agents(&w, Duration::from_secs(1000), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        stop.cancel();
        advance(Duration::from_millis(200)).await;
        let _s2 = start_scheduler(&w, w.start + chrono::Duration::seconds(57));
        advance(Duration::from_secs(1)).await;
        assert!(
            runs(&w).iter().all(|r| r.origin != "catch-up"),
            "deferred while its agent has not reported"
        );
        // After the settle deadline (agent_lost_after = 5 s) the overlap policy decides: the
        // run from before the crash is still active, so the catch-up is skipped and counted.
        advance(Duration::from_secs(6)).await;
        assert!(runs(&w).iter().all(|r| r.origin != "catch-up"));
        let c = counters(&w, "f");
        assert!(c.get("skipped_overlap").copied().unwrap_or(0) >= 1, "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_catch_up_survives_a_second_crash() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: f\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\ncatchup_window: 30s\n"),
            &["a1"],
        )
        .await;
        // The run started at 10 s never ends: every later fire time meets it.
        fake_agents(&w, Duration::from_secs(1000), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        stop.cancel();
        advance(Duration::from_millis(200)).await;
        // Restart at 57 s: 20, 30, 40 counted missed; the catch-up of 50 waits for the agent.
        let (_s2, stop2) = start_scheduler(&w, w.start + chrono::Duration::seconds(57));
        advance(Duration::from_millis(500)).await;
        // Crash again before it was evaluated; restart at 58 s.
        stop2.cancel();
        advance(Duration::from_millis(200)).await;
        let _s3 = start_scheduler(&w, w.start + chrono::Duration::seconds(58));
        // 60 is skipped (overlap); after the settle deadline the catch-up of 50 is too.
        advance(Duration::from_secs(8)).await;
        let c = counters(&w, "f");
        assert_eq!(c.get("missed_catchup"), Some(&3), "{c:?}");
        assert_eq!(
            c.get("skipped_overlap"),
            Some(&2),
            "the fire at 60 and the catch-up of 50: {c:?}"
        );
        assert!(w.store.get_state(&keys::catchup("f")).unwrap().is_none());
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn held_run_pauses_its_schedule_with_a_note() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: h\nsequence: s\ntargets: {{agents: [a1]}}\ntrigger: {{every: 10s}}\n"),
            &["a1"],
        )
        .await;
        fake_agents(&w, Duration::from_secs(1), true);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(35)).await;
        let all = runs(&w);
        assert_eq!(all.len(), 1, "nothing runs after the hold");
        let pause = w.fleet.schedule_pause("h").await.unwrap().unwrap();
        assert!(
            pause.note.contains("812 pending export deletes"),
            "{}",
            pause.note
        );
        assert!(
            pause.note.contains("syncfleet runs approve"),
            "{}",
            pause.note
        );
        let c = counters(&w, "h");
        assert_eq!(c.get("held"), Some(&1));
        assert_eq!(c.get("skipped_paused"), Some(&2), "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_below_its_bound_and_the_interval() {
        let w = world(
            &format!("{SEQ}kind: Schedule\nname: j\nsequence: s\ntargets: {{agents: [a1, a2]}}\ntrigger: {{every: 10s}}\njitter: 4s\n"),
            &["a1", "a2"],
        )
        .await;
        fake_agents(&w, Duration::from_millis(100), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(60)).await;
        let all = runs(&w);
        assert!(all.len() >= 10);
        assert!(
            all.iter().all(|r| r.jitter_ms < 4000),
            "{:?}",
            all.iter().map(|r| r.jitter_ms).collect::<Vec<_>>()
        );
        assert!(all.iter().any(|r| r.jitter_ms > 0));
        w.shutdown.cancel();
    }
}
