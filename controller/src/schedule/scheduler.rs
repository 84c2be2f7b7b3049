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
//!
//! The pieces: overlap policies and buffered fire times (`overlap.rs`), catch-up after downtime
//! or a stall (`catchup.rs`), the scheduler's records in the store (cursors, buffered fire
//! times, pending catch-ups, counters: `records.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use syncfleet_proto::v1;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use futures::StreamExt as _;

use super::catchup;
use crate::documents;
use crate::documents::model::{Document, ScheduleDoc, SequenceDoc};
use crate::documents::trigger::Trigger;
use crate::fleet::{Fleet, RunBlocked};

/// Ended runs acted on at once (see [`Scheduler::on_outcomes`]).
const OUTCOME_CONCURRENCY: usize = 64;

// The clock and the run-id derivation are shared with the agents, which fire schedules on their
// own while no controller is reachable and must derive the same run ids.
pub use syncfleet_proto::schedule_model::{Clock, run_id_for};

pub(super) struct Entry {
    pub(super) doc: ScheduleDoc,
    pub(super) trigger: Trigger,
    pub(super) next: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) entries: HashMap<String, Entry>,
    pub(super) queue: BTreeSet<(DateTime<Utc>, String)>,
    pub(super) sequences: HashMap<String, SequenceDoc>,
    /// buffer_one: the fire time kept per (schedule, agent); a copy of the store's
    /// `buffered/SCHEDULE/AGENT` records.
    pub(super) buffered: HashMap<(String, String), DateTime<Utc>>,
    /// Catch-up fire times decided at startup, waiting for their agents to reconnect and report
    /// what ran while no controller listened (or for the deadline).
    pub(super) deferred: Vec<(String, DateTime<Utc>, tokio::time::Instant)>,
    /// What the agents' schedule sets are cut from, as of the last load
    /// (`autonomy.rs`, `SetParts`).
    pub(super) set_parts: Option<Arc<super::autonomy::SetParts>>,
    /// Change records waiting for their time (quiet period, spacing, or held back), by
    /// (schedule, agent) (`on_change.rs`).
    pub(super) change_due: HashMap<(String, String), DateTime<Utc>>,
}

/// The scheduler of one controller.
pub struct Scheduler {
    pub(super) fleet: Arc<Fleet>,
    pub(super) clock: Clock,
    pub(super) reload: Notify,
    pub(super) state: Mutex<State>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// The counter of a fire time skipped because of `blocked`.
pub(super) fn blocked_counter(blocked: &RunBlocked) -> &'static str {
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
        // Change reports are stamped with the time the scheduler compares them to.
        fleet.change_reports().use_clock(clock);
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

    /// Run until `shutdown`. Every run starts from the store alone (a controller that becomes
    /// leader again must not keep fire times from its previous term): catch-up of the fire
    /// times missed meanwhile happens here, once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        *self.state.lock().await = State::default();
        let mut connected = self.fleet.subscribe_connected();
        self.load(true).await;
        loop {
            let (next, deferred) = {
                let st = self.state.lock().await;
                let fire = st.queue.first().map(|(t, _)| *t);
                let change = st.change_due.values().min().copied();
                (
                    fire.into_iter().chain(change).min(),
                    !st.deferred.is_empty(),
                )
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
                () = tokio::time::sleep(sleep) => {
                    self.fire_due().await;
                    self.fire_due_changes().await;
                }
                () = self.fleet.change_reports().ready() => {
                    self.on_change_reports(self.fleet.change_reports().take()).await;
                }
                () = self.reload.notified() => self.load(false).await,
                r = connected.recv() => match r {
                    Ok(agent) => self.push_schedule_set(&agent).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.push_schedule_sets().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = self.fleet.outcomes().ready() => {
                    self.on_outcomes(self.fleet.outcomes().take()).await;
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// (Re)load documents. At startup, apply the catch-up policy to fire times missed while no
    /// controller ran.
    pub(super) async fn load(&self, startup: bool) {
        let docs = match self.fleet.store.list_documents(None).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "scheduler cannot read documents");
                return;
            }
        };
        let mut schedules = Vec::new();
        let mut sequences = HashMap::new();
        for d in docs {
            match documents::from_json(&d.kind, &d.json) {
                Ok(Document::Schedule(s)) => schedules.push(s),
                Ok(Document::Sequence(s)) => {
                    sequences.insert(s.name.clone(), s);
                }
                Ok(Document::Notifier(_)) => {}
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
                    let decision = catchup::decide(missed, pending, window, now);
                    if let Some(t) = decision.chosen {
                        catchups.push((name.clone(), t));
                    }
                    let blacked = entry.trigger.blacked_out_between(c, now);
                    entry.next = entry.trigger.next_candidate_after(now);
                    drop(st);
                    self.record_missed_at_start(&name, c, now, missed.count, decision, blacked)
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
        self.start_catchups(catchups).await;
        // Pauses lifted, schedules changed: held-back changes are looked at again.
        self.load_changes().await;
        // Whatever changed (documents, pauses, a drain) changes the agents' schedule sets.
        self.refresh_set_parts().await;
        self.push_schedule_sets().await;
    }

    pub(super) async fn rebuild_queue(&self) {
        let mut st = self.state.lock().await;
        let queue = st
            .entries
            .iter()
            .filter_map(|(n, e)| e.next.map(|t| (t, n.clone())))
            .collect();
        st.queue = queue;
    }

    /// Fire every schedule whose time has come.
    pub(super) async fn fire_due(&self) {
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
                // The fire's counters and the cursor in one transaction.
                let deltas = self.fire_batch(&name, nominal, "schedule").await;
                self.advance_cursor(&name, nominal, deltas.0).await;
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
                self.catch_up_after_stall(&name, missed, blacked, window, now)
                    .await;
            }
        }
    }

    /// Create the run of one fire time on one agent (decided already: a buffered fire time
    /// released) and count it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one fire: schedule, sequence, trigger, agent, nominal time and origin"
    )]
    pub(super) async fn create(
        &self,
        name: &str,
        doc: &ScheduleDoc,
        seq: &SequenceDoc,
        trigger: &Trigger,
        agent: &str,
        nominal: DateTime<Utc>,
        origin: &str,
    ) {
        let deltas = self
            .create_batch(
                name,
                doc,
                seq,
                trigger,
                &[agent.to_string()],
                nominal,
                origin,
            )
            .await;
        self.bump_all(name, deltas).await;
    }

    pub(super) async fn active_runs(&self, schedule: &str, agent: &str) -> Vec<v1::Run> {
        let a = agent.to_string();
        match self
            .fleet
            .store
            .runs_in_states(
                Some(&a),
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
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

    /// React to the scheduled runs that ended since the last call (one per schedule and agent):
    /// holds first, one by one, so that the schedules they pause stay paused for the rest;
    /// then the others, [`OUTCOME_CONCURRENCY`] at once, so that releasing thousands of kept
    /// fire times costs group commits of the store rather than one commit each.
    async fn on_outcomes(&self, runs: Vec<v1::Run>) {
        let (holds, ended): (Vec<v1::Run>, Vec<v1::Run>) = runs
            .into_iter()
            .partition(|r| r.state == v1::RunState::Held as i32 && r.continued_in.is_empty());
        for run in holds {
            self.on_run_update(run).await;
        }
        futures::stream::iter(ended)
            .for_each_concurrent(OUTCOME_CONCURRENCY, |run| self.on_run_update(run))
            .await;
    }

    /// React to a scheduled run that ended (taken from the fleet's `Outcomes`, which loses none):
    /// start a buffered fire time; pause the schedule of a held run.
    pub(super) async fn on_run_update(&self, run: v1::Run) {
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
                        "run {} on {} held before step {} ({}: {}): {}; approve it with 'syncfleet runs approve {}', or reject it with 'syncfleet runs reject {} --note ...' and resume the schedule when the cause is fixed",
                        run.id,
                        run.agent,
                        s.index + 1,
                        s.ma,
                        s.profile,
                        s.detail,
                        run.id,
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
                // The agents' schedule sets carry the pause.
                self.reload();
                self.bump(&run.schedule, counters::HELD, 1).await;
            }
        }
        self.release_buffered(&run.schedule, &run.agent).await;
        self.change_run_ended(&run.schedule, &run.agent).await;
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
    use super::super::testkit::*;

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
        let all = runs(&w).await;
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
        assert!(counters(&w, "fast").await["fired"] >= 18);
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn blacked_out_fire_times_are_counted_as_they_pass_and_across_a_restart() {
        // Windows [0 s, 15 s) and [30 s, 45 s) of every minute; fire times every 10 s.
        let w = every_10s(
            "d",
            &["a1"],
            "blackout: [{cron: \"*/30 * * * * *\", duration: 15s}]\n",
        )
        .await;
        fake_agents(&w, Duration::from_millis(500), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(55)).await;
        // 10, 30, 40 blacked out; 20 and 50 run.
        assert_eq!(nominal_secs(&w).await, [20, 50]);
        let c = counters(&w, "d").await;
        assert_eq!(c.get("skipped_blackout"), Some(&3), "{c:?}");
        // Down from 55 s to 95 s: 60, 70 and 90 were blacked out, 80 missed.
        let _s2 = restart(&w, &stop, w.start + chrono::Duration::seconds(95)).await;
        advance(Duration::from_millis(500)).await;
        let c = counters(&w, "d").await;
        assert_eq!(c.get("skipped_blackout"), Some(&6), "{c:?}");
        assert_eq!(c.get("missed_catchup"), Some(&1), "{c:?}");
        assert_eq!(c.get("fired"), Some(&2), "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn held_run_pauses_its_schedule_with_a_note() {
        let w = every_10s("h", &["a1"], "").await;
        fake_agents(&w, Duration::from_secs(1), true);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(35)).await;
        let all = runs(&w).await;
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
        let c = counters(&w, "h").await;
        assert_eq!(c.get("held"), Some(&1));
        assert_eq!(c.get("skipped_paused"), Some(&2), "{c:?}");
        w.shutdown.cancel();
    }

    /// Schedule `name` of [`SEQ`] every 10 s on 5,000 agents (`extra`: more lines of it).
    async fn on_5000_agents(name: &str, extra: &str) -> (World, Vec<String>) {
        let agents = many_agents(5000);
        let names: Vec<&str> = agents.iter().map(String::as_str).collect();
        let yaml = format!(
            "{SEQ}kind: Schedule\nname: {name}\nsequence: s\ntargets: {{selector: env=prod}}\ntrigger: {{every: 10s}}\n{extra}"
        );
        (world(&yaml, &names).await, agents)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_among_5000_runs_ending_at_once_pauses_its_schedule() {
        let (w, agents) = on_5000_agents("g", "").await;
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_millis(10_500)).await;
        assert_eq!(runs(&w).await.len(), 5000);
        // Far more run updates at once than any in-memory buffer of them holds.
        let held = &agents[2500];
        assert_eq!(finish_all(&w, Some(held)).await, 5000);
        advance(Duration::from_secs(1)).await;
        let pause = w.fleet.schedule_pause("g").await.unwrap();
        let pause = pause.expect("the hold paused the schedule");
        assert!(pause.note.contains(held.as_str()), "{}", pause.note);
        assert_eq!(counters(&w, "g").await.get("held"), Some(&1));
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_is_acted_on_however_many_run_updates_follow_it() {
        let w = every_10s("h", &["a1"], "").await;
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_millis(100)).await;
        let held = v1::Run {
            id: "held-1".into(),
            agent: "a1".into(),
            schedule: "h".into(),
            state: v1::RunState::Held as i32,
            ..Default::default()
        };
        // Published back to back, before the scheduler can look: the hold first, then 10,000
        // updates of other schedules' runs.
        w.fleet.publish(&held);
        for i in 0..10_000 {
            w.fleet.publish(&v1::Run {
                id: format!("other-{i}"),
                agent: format!("b{i}"),
                schedule: "other".into(),
                state: v1::RunState::Succeeded as i32,
                ..Default::default()
            });
        }
        advance(Duration::from_millis(500)).await;
        let pause = w.fleet.schedule_pause("h").await.unwrap();
        assert!(pause.is_some(), "the hold paused its schedule");
        assert_eq!(counters(&w, "h").await.get("held"), Some(&1));
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn buffer_one_releases_every_buffered_run_when_5000_runs_end_at_once() {
        let (w, _) = on_5000_agents("b", "overlap: buffer_one\n").await;
        let _s = start_scheduler(&w, w.start);
        // 10: a run on every agent; 20: each agent's fire time is kept (its run is active).
        advance(Duration::from_millis(20_500)).await;
        assert_eq!(counters(&w, "b").await.get("buffered"), Some(&5000));
        assert_eq!(finish_all(&w, None).await, 5000);
        advance(Duration::from_secs(1)).await;
        let released = nominal_secs(&w).await.iter().filter(|t| **t == 20).count();
        assert_eq!(
            released, 5000,
            "every agent's kept fire time runs once its run ended"
        );
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_below_its_bound_and_the_interval() {
        let w = every_10s("j", &["a1", "a2"], "jitter: 4s\n").await;
        fake_agents(&w, Duration::from_millis(100), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(60)).await;
        let all = runs(&w).await;
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
