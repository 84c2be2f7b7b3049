//! One fire time of a schedule on every target agent, as one batch.
//!
//! What the decision needs is read once per fire, not once per agent: the agents (their labels
//! and drains), the revocations (one prefix listing), the fleet and schedule pauses, and the
//! schedule's active runs (one query). Each target is then decided in memory by the rules of
//! [`decide`], in this order: a fire time the agent covered on its own is not fired; a paused
//! fleet or schedule or a draining agent is a counted skip; a still active run of the schedule
//! goes to the overlap policy; otherwise a run is created. The new runs are stored in one
//! transaction and dispatched concurrently ([`Fleet::create_runs`]), and the counters of the
//! whole fire are added in one write (with the cursor, when the caller moves it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use syncfleet_proto::v1;

use super::scheduler::{Scheduler, blocked_counter, counters, run_id_for};
use crate::documents::model::{ScheduleDoc, SequenceDoc};
use crate::documents::trigger::Trigger;
use crate::fleet::{NewRun, RunBlocked, steps_of};
use crate::store::StoreError;

/// Counter deltas of one schedule, added in one store write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Deltas(pub(super) Vec<(&'static str, u64)>);

impl Deltas {
    pub(super) fn add(&mut self, counter: &'static str, by: u64) {
        if by == 0 {
            return;
        }
        match self.0.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, n)) => *n += by,
            None => self.0.push((counter, by)),
        }
    }

    pub(super) fn extend(&mut self, other: Deltas) {
        for (c, n) in other.0 {
            self.add(c, n);
        }
    }
}

/// The fleet as one fire time sees it, read once.
#[derive(Debug, Default)]
pub(super) struct FireView {
    pub(super) fleet_pause: Option<v1::Pause>,
    pub(super) schedule_pause: Option<v1::Pause>,
    /// Agents revoked and not enrolled again: no targets.
    pub(super) revoked: HashSet<String>,
    /// The schedule's runs not ended yet, by agent.
    pub(super) active: HashMap<String, Vec<v1::Run>>,
}

/// What a fire time does on one target agent.
#[derive(Debug, PartialEq)]
pub(super) enum Decision {
    /// The agent ran (or accounted for) this nominal time on its own while no controller was
    /// reachable and handed it back when it reconnected: nothing to do.
    Covered,
    /// Fleet or schedule paused, agent draining: counted as skipped.
    Blocked(RunBlocked),
    /// The schedule's previous run(s) on the agent are still active: the overlap policy says.
    Overlap(Vec<v1::Run>),
    /// Create the run.
    Create,
}

/// The decision for `agent` (one of the schedule's targets, not revoked) at `nominal`; the same
/// rules, in the same order, as every other path that creates a scheduled run.
pub(super) fn decide(
    schedule: &str,
    agent: &v1::Agent,
    nominal: DateTime<Utc>,
    covered_until: Option<DateTime<Utc>>,
    view: &FireView,
) -> Decision {
    if covered_until.is_some_and(|c| nominal <= c) {
        return Decision::Covered;
    }
    if let Some(p) = &view.fleet_pause {
        return Decision::Blocked(RunBlocked::FleetPaused(p.clone()));
    }
    if let Some(p) = &view.schedule_pause {
        return Decision::Blocked(RunBlocked::SchedulePaused(schedule.to_string(), p.clone()));
    }
    if let Some(d) = agent.drain.as_ref().filter(|d| d.paused) {
        return Decision::Blocked(RunBlocked::AgentDraining(agent.name.clone(), d.clone()));
    }
    match view.active.get(&agent.name) {
        Some(active) if !active.is_empty() => Decision::Overlap(active.clone()),
        _ => Decision::Create,
    }
}

/// The states of a run that has not ended.
const ACTIVE: [v1::RunState; 3] = [
    v1::RunState::Pending,
    v1::RunState::Dispatched,
    v1::RunState::Running,
];

impl Scheduler {
    /// Evaluate one fire time of a schedule on every target agent and count what happened.
    pub(super) async fn fire(&self, name: &str, nominal: DateTime<Utc>, origin: &str) {
        let deltas = self.fire_batch(name, nominal, origin).await;
        self.bump_all(name, deltas).await;
    }

    /// Evaluate one fire time of a schedule on every target agent; the counter deltas are
    /// returned for the caller to store (with the cursor, in one transaction).
    pub(super) async fn fire_batch(
        &self,
        name: &str,
        nominal: DateTime<Utc>,
        origin: &str,
    ) -> Deltas {
        let mut deltas = Deltas::default();
        let (doc, seq, trigger) = {
            let st = self.state.lock().await;
            let Some(e) = st.entries.get(name) else {
                return deltas;
            };
            (
                e.doc.clone(),
                st.sequences.get(&e.doc.sequence).cloned(),
                e.trigger.clone(),
            )
        };
        let Some(seq) = seq else {
            tracing::error!(schedule = name, sequence = %doc.sequence, "sequence missing; fire time skipped");
            return deltas;
        };
        let agents = match self.fleet.store.list_agents().await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot list agents");
                return deltas;
            }
        };
        let view = match self.fire_view(name).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(schedule = name, error = %e, "cannot read pauses, revocations or active runs; fire time skipped");
                return deltas;
            }
        };
        let targets: Vec<v1::Agent> = agents
            .into_iter()
            .filter(|a| {
                doc.targets
                    .matches(&a.name, &a.labels.clone().into_iter().collect())
            })
            .filter(|a| {
                // A revoked agent is no target until it enrols again.
                let revoked = view.revoked.contains(&a.name);
                if revoked {
                    tracing::debug!(schedule = name, agent = %a.name, "agent revoked; not a target");
                }
                !revoked
            })
            .collect();
        if targets.is_empty() {
            deltas.add(counters::SKIPPED_NO_TARGET, 1);
            return deltas;
        }
        let mut create = Vec::with_capacity(targets.len());
        for agent in &targets {
            let covered = self.fleet.covered_until(name, &agent.name);
            match decide(name, agent, nominal, covered, &view) {
                Decision::Covered => {
                    tracing::debug!(schedule = name, agent = %agent.name, %nominal, "fire time covered by the agent's autonomy");
                }
                Decision::Blocked(blocked) => {
                    tracing::debug!(schedule = name, agent = %agent.name, %nominal, reason = %blocked, "fire time skipped");
                    deltas.add(blocked_counter(&blocked), 1);
                }
                Decision::Overlap(active) => {
                    let (goes_on, d) = self
                        .overlap(name, &agent.name, nominal, doc.overlap, &active)
                        .await;
                    deltas.extend(d);
                    if goes_on {
                        create.push(agent.name.clone());
                    }
                }
                Decision::Create => create.push(agent.name.clone()),
            }
        }
        deltas.extend(
            self.create_batch(name, &doc, &seq, &trigger, &create, nominal, origin)
                .await,
        );
        deltas
    }

    /// Read once what [`decide`] needs for a fire of `schedule`.
    pub(super) async fn fire_view(&self, schedule: &str) -> Result<FireView, StoreError> {
        let fleet_pause = self.fleet.fleet_pause().await?;
        let schedule_pause = self.fleet.schedule_pause(schedule).await?;
        let revoked = self.fleet.revoked_agents().await?;
        let mut active: HashMap<String, Vec<v1::Run>> = HashMap::new();
        for run in self.fleet.store.runs_in_states(None, &ACTIVE).await? {
            if run.schedule == schedule {
                active.entry(run.agent.clone()).or_default().push(run);
            }
        }
        Ok(FireView {
            fleet_pause,
            schedule_pause,
            revoked,
            active,
        })
    }

    /// Create the runs of one fire time on `agents` (decided already) in one store transaction
    /// and dispatch them; the counter deltas of the runs created (`fired`, `catchup`).
    #[allow(
        clippy::too_many_arguments,
        reason = "one fire: schedule, sequence, trigger, agents, nominal time and origin"
    )]
    pub(super) async fn create_batch(
        &self,
        name: &str,
        doc: &ScheduleDoc,
        seq: &SequenceDoc,
        trigger: &Trigger,
        agents: &[String],
        nominal: DateTime<Utc>,
        origin: &str,
    ) -> Deltas {
        let mut deltas = Deltas::default();
        if agents.is_empty() {
            return deltas;
        }
        let steps = steps_of(seq);
        let on_failure = seq.on_failure_proto();
        let nominal_proto = syncfleet_proto::time::to_proto(nominal);
        let news: Vec<NewRun> = agents
            .iter()
            .map(|agent| {
                let jitter = doc
                    .jitter
                    .filter(|j| !j.is_zero())
                    .map(|j| trigger.jitter_for(nominal, j, &format!("{name}/{agent}")))
                    .unwrap_or(Duration::ZERO);
                NewRun {
                    id: Some(run_id_for(name, agent, nominal)),
                    agent: agent.clone(),
                    steps: steps.clone(),
                    origin: origin.to_string(),
                    requested_by: format!("schedule/{name}"),
                    schedule: name.to_string(),
                    sequence: seq.name.clone(),
                    nominal_time: Some(nominal_proto),
                    on_failure,
                    jitter_ms: u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX),
                    ..NewRun::default()
                }
            })
            .collect();
        match self.fleet.create_runs(news).await {
            Ok(created) => {
                let mut fired = 0;
                for (run, new) in created {
                    if new {
                        fired += 1;
                    } else {
                        tracing::debug!(schedule = name, agent = %run.agent, %nominal, "run for this fire time exists already");
                    }
                }
                deltas.add(counters::FIRED, fired);
                if origin == "catch-up" {
                    deltas.add(counters::CATCHUP, fired);
                }
            }
            Err(e) => {
                tracing::error!(schedule = name, runs = agents.len(), error = %e, "cannot create scheduled runs")
            }
        }
        deltas
    }

    /// Add a schedule's counter deltas in one store write.
    pub(super) async fn bump_all(&self, schedule: &str, deltas: Deltas) {
        if deltas.0.is_empty() {
            return;
        }
        let s = schedule.to_string();
        if let Err(e) = self.fleet.store.bump_counters(&s, &deltas.0).await {
            tracing::error!(schedule, error = %e, "cannot count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn agent(name: &str, draining: bool) -> v1::Agent {
        v1::Agent {
            name: name.into(),
            drain: draining.then(|| v1::Pause {
                paused: true,
                note: "patching".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pause(note: &str) -> v1::Pause {
        v1::Pause {
            paused: true,
            note: note.into(),
            ..Default::default()
        }
    }

    #[test]
    fn covered_wins_over_everything_then_pauses_then_drain_then_overlap() {
        let mut view = FireView::default();
        view.active.insert(
            "a".into(),
            vec![v1::Run {
                id: "r".into(),
                ..Default::default()
            }],
        );
        view.fleet_pause = Some(pause("fleet"));
        view.schedule_pause = Some(pause("sched"));
        let a = agent("a", true);
        // Covered up to the nominal time: nothing else matters.
        assert_eq!(
            decide("s", &a, t(10), Some(t(10)), &view),
            Decision::Covered
        );
        // Covered only up to before: the fleet pause comes first.
        assert!(matches!(
            decide("s", &a, t(10), Some(t(9)), &view),
            Decision::Blocked(RunBlocked::FleetPaused(p)) if p.note == "fleet"
        ));
        view.fleet_pause = None;
        assert!(matches!(
            decide("s", &a, t(10), None, &view),
            Decision::Blocked(RunBlocked::SchedulePaused(s, _)) if s == "s"
        ));
        view.schedule_pause = None;
        assert!(matches!(
            decide("s", &a, t(10), None, &view),
            Decision::Blocked(RunBlocked::AgentDraining(n, d)) if n == "a" && d.note == "patching"
        ));
        let a = agent("a", false);
        assert!(matches!(
            decide("s", &a, t(10), None, &view),
            Decision::Overlap(runs) if runs.len() == 1
        ));
        assert_eq!(
            decide("s", &agent("b", false), t(10), None, &view),
            Decision::Create
        );
        // A drain record that was lifted does not block.
        let mut lifted = agent("b", true);
        if let Some(d) = lifted.drain.as_mut() {
            d.paused = false;
        }
        assert_eq!(decide("s", &lifted, t(10), None, &view), Decision::Create);
    }

    #[test]
    fn deltas_sum_per_counter_and_ignore_zero() {
        let mut d = Deltas::default();
        d.add(counters::FIRED, 2);
        d.add(counters::SKIPPED_DRAINED, 1);
        d.add(counters::FIRED, 3);
        d.add(counters::CATCHUP, 0);
        let mut other = Deltas::default();
        other.add(counters::SKIPPED_DRAINED, 4);
        d.extend(other);
        assert_eq!(
            d.0,
            vec![(counters::FIRED, 5), (counters::SKIPPED_DRAINED, 5)]
        );
    }
}
