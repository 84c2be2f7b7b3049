//! Scheduled runs that ended, for the scheduler: lossless, whatever the fleet size.
//!
//! The scheduler acts on every scheduled run that ends: a run a guard rail held pauses its
//! schedule, and any ended run releases the fire time `overlap: buffer_one` kept for its
//! agent. The broadcast of run updates cannot carry that: its buffer is bounded, and one fire on
//! thousands of agents ends more runs at once than it holds, so a slow reader silently misses
//! some. Here each ended run is recorded under its (schedule, agent) until the scheduler takes
//! it: nothing is dropped, and the memory held is bounded by the number of (schedule, agent)
//! pairs, not by the rate of updates. Recording never waits, so the path that stores agents'
//! events is never held up by the scheduler.
//!
//! Coalescing keeps what the scheduler needs: for one (schedule, agent), a later update of the
//! same run replaces the earlier one (an approval after a hold); otherwise a hold is kept over
//! a run that merely ended, because the hold must pause the schedule and releases the agent's
//! kept fire time just the same.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use syncfleet_proto::sync::lock;
use syncfleet_proto::v1;
use tokio::sync::Notify;

use super::state_of;

/// Ended scheduled runs waiting for the scheduler, one per (schedule, agent).
#[derive(Debug, Default)]
pub struct Outcomes {
    pending: Mutex<HashMap<(String, String), v1::Run>>,
    ready: Notify,
}

/// A run a guard rail held that no operator has decided on.
fn undecided_hold(run: &v1::Run) -> bool {
    state_of(run) == v1::RunState::Held && run.continued_in.is_empty()
}

impl Outcomes {
    /// Record `run` if it is a scheduled run that has ended; other updates are ignored.
    pub fn record(&self, run: &v1::Run) {
        if run.schedule.is_empty() || !state_of(run).is_terminal() {
            return;
        }
        let mut pending = lock(&self.pending);
        match pending.entry((run.schedule.clone(), run.agent.clone())) {
            Entry::Occupied(mut e) => {
                if e.get().id == run.id || !undecided_hold(e.get()) {
                    e.insert(run.clone());
                }
            }
            Entry::Vacant(e) => {
                e.insert(run.clone());
            }
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// Resolves once something has been recorded since the last [`Self::take`] (a recording
    /// made while nobody waits is not lost: the next wait returns at once).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Everything recorded so far, in no particular order.
    pub fn take(&self) -> Vec<v1::Run> {
        let mut pending = lock(&self.pending);
        pending.drain().map(|(_, run)| run).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, schedule: &str, agent: &str, state: v1::RunState) -> v1::Run {
        v1::Run {
            id: id.into(),
            schedule: schedule.into(),
            agent: agent.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_one_outcome_per_schedule_and_agent_however_many_arrive() {
        let o = Outcomes::default();
        for i in 0..20_000 {
            o.record(&run(
                &format!("r{i}"),
                "s",
                &format!("a{}", i % 5000),
                v1::RunState::Succeeded,
            ));
        }
        assert_eq!(o.take().len(), 5000);
        assert!(o.take().is_empty());
    }

    #[test]
    fn ignores_runs_that_have_not_ended_or_belong_to_no_schedule() {
        let o = Outcomes::default();
        o.record(&run("r1", "s", "a", v1::RunState::Running));
        o.record(&run("r2", "", "a", v1::RunState::Held));
        assert!(o.take().is_empty());
    }

    #[test]
    fn a_hold_is_kept_over_other_runs_but_replaced_by_its_own_later_update() {
        let o = Outcomes::default();
        o.record(&run("held", "s", "a", v1::RunState::Held));
        o.record(&run("later", "s", "a", v1::RunState::Succeeded));
        let taken = o.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, "held");

        o.record(&run("held", "s", "a", v1::RunState::Held));
        let mut approved = run("held", "s", "a", v1::RunState::Held);
        approved.continued_in = "next".into();
        o.record(&approved);
        o.record(&run("later", "s", "a", v1::RunState::Succeeded));
        let taken = o.take();
        assert_eq!(
            taken[0].id, "later",
            "the approved hold no longer needs acting on"
        );

        o.record(&run("done", "s", "a", v1::RunState::Succeeded));
        o.record(&run("held2", "s", "a", v1::RunState::Held));
        assert_eq!(o.take()[0].id, "held2");
    }

    #[tokio::test]
    async fn a_recording_made_before_anyone_waits_is_not_lost() {
        let o = Outcomes::default();
        o.record(&run("r", "s", "a", v1::RunState::Failed));
        tokio::time::timeout(std::time::Duration::from_secs(5), o.ready())
            .await
            .unwrap();
        assert_eq!(o.take().len(), 1);
    }
}
