//! Runs started by changes (`trigger.on_change`): when the changes an agent reported for a
//! schedule have been quiet for `quiet_for`, and at least `min_interval` has passed since the
//! schedule's previous change-triggered run on that agent, one run takes all of them.
//!
//! Every rule of a fire time applies ([`super::fire::decide`]): a paused fleet or schedule, a
//! draining agent, a blackout window or a run of the schedule still active on the agent holds the
//! changes back; they are not dropped, and the run starts once nothing stands in the way (the
//! scheduler looks again every [`RECHECK`], at once on a reload, and when the schedule's run on
//! the agent ends). Changes are per agent: each target runs the sequence for what its own
//! sources saw.
//!
//! The run's nominal time is the decision's instant (to the millisecond), so its id derives
//! from (schedule, agent, instant) like every scheduled run's, and the claim written before it
//! is created (`fleet/changes.rs`) makes a restart create that same run, never a second one.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use syncfleet_proto::schedule_model::run_id_for;

use super::fire::{Decision, decide};
use super::scheduler::Scheduler;
use crate::fleet::changes::ChangeRun;
use crate::fleet::{NewRun, steps_of};

/// How soon held-back changes are looked at again.
pub(super) const RECHECK: Duration = Duration::from_secs(15);

/// Origin of runs started by changes.
pub const CHANGE_ORIGIN: &str = "change";

/// When the changes of a record may run: `quiet_for` after the last one arrived, and
/// `min_interval` after the previous change-triggered run.
fn due(
    last_ms: i64,
    previous_run_ms: Option<i64>,
    quiet_for: Duration,
    min_interval: Duration,
) -> DateTime<Utc> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let quiet = last_ms.saturating_add(ms(quiet_for));
    let spaced = previous_run_ms.map_or(i64::MIN, |p| p.saturating_add(ms(min_interval)));
    DateTime::from_timestamp_millis(quiet.max(spaced)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Scheduler {
    /// After a load: the schedules that watch for changes are told to the fleet (reports for
    /// others are refused), and every stored record is looked at soon.
    pub(super) async fn load_changes(&self) {
        let names: HashSet<String> = {
            let st = self.state.lock().await;
            st.entries
                .iter()
                .filter(|(_, e)| e.doc.trigger.on_change.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        self.fleet.change_reports().set_schedules(names);
        match self.fleet.all_changes(None).await {
            Ok(records) => {
                let now = self.clock.now();
                let mut st = self.state.lock().await;
                for (schedule, agent, r) in records {
                    if r.changes > 0 || r.claim.is_some() {
                        st.change_due.insert((schedule, agent), now);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the agents' change records"),
        }
    }

    /// Reports moved these records: look at them now.
    pub(super) async fn on_change_reports(&self, moved: Vec<(String, String)>) {
        for key in moved {
            self.evaluate_change(&key.0, &key.1).await;
        }
    }

    /// A run of `schedule` on `agent` ended: changes held back by it may go now.
    pub(super) async fn change_run_ended(&self, schedule: &str, agent: &str) {
        let waiting = self
            .state
            .lock()
            .await
            .change_due
            .contains_key(&(schedule.to_string(), agent.to_string()));
        if waiting {
            self.evaluate_change(schedule, agent).await;
        }
    }

    /// Look at every change record whose time has come.
    pub(super) async fn fire_due_changes(&self) {
        let now = self.clock.now();
        let due: Vec<(String, String)> = self
            .state
            .lock()
            .await
            .change_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (schedule, agent) in due {
            self.evaluate_change(&schedule, &agent).await;
        }
    }

    async fn set_change_due(&self, schedule: &str, agent: &str, at: Option<DateTime<Utc>>) {
        let key = (schedule.to_string(), agent.to_string());
        let mut st = self.state.lock().await;
        match at {
            Some(t) => {
                st.change_due.insert(key, t);
            }
            None => {
                st.change_due.remove(&key);
            }
        }
    }

    /// Decide about the changes of `schedule` on `agent`: wait, hold back, or run.
    pub(super) async fn evaluate_change(&self, schedule: &str, agent: &str) {
        let entry = {
            let st = self.state.lock().await;
            st.entries.get(schedule).and_then(|e| {
                let on_change = e.doc.trigger.on_change.clone()?;
                let seq = st.sequences.get(&e.doc.sequence).cloned();
                Some((e.doc.clone(), e.trigger.clone(), on_change, seq))
            })
        };
        let Some((doc, trigger, on_change, seq)) = entry else {
            // The schedule is gone or no longer watches for changes.
            self.set_change_due(schedule, agent, None).await;
            if let Err(e) = self.fleet.forget_changes(schedule, agent).await {
                tracing::error!(schedule, agent, error = %e, "cannot forget a change record");
            }
            return;
        };
        let Some(seq) = seq else {
            tracing::error!(schedule, sequence = %doc.sequence, "sequence missing; changes held back");
            self.set_change_due(schedule, agent, Some(self.clock.now() + RECHECK))
                .await;
            return;
        };
        let record = match self.fleet.changes_of(schedule, agent).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.set_change_due(schedule, agent, None).await;
                return;
            }
            Err(e) => {
                tracing::error!(schedule, agent, error = %e, "cannot read a change record");
                self.set_change_due(schedule, agent, Some(self.clock.now() + RECHECK))
                    .await;
                return;
            }
        };
        let now = self.clock.now();
        if record.claim.is_none() {
            if record.changes == 0 {
                self.set_change_due(schedule, agent, None).await;
                return;
            }
            let at = due(
                record.last_ms,
                record.last_run.as_ref().map(|r| r.nominal_ms),
                on_change.quiet_for(),
                on_change.min_interval(),
            );
            if now < at {
                self.set_change_due(schedule, agent, Some(at)).await;
                return;
            }
            if let Some(why) = self.change_held_back(&doc, &trigger, agent, now).await {
                tracing::debug!(schedule, agent, reason = %why, changes = record.changes, "changes held back");
                self.set_change_due(schedule, agent, Some(now + RECHECK))
                    .await;
                return;
            }
        }
        // Millisecond precision: the id derivation and the stored nominal time agree.
        let nominal = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let claim = self
            .fleet
            .claim_changes(schedule, agent, |r| {
                (r.changes > 0).then(|| ChangeRun {
                    run_id: run_id_for(schedule, agent, nominal),
                    nominal_ms: nominal.timestamp_millis(),
                    changes: r.changes,
                    sources: r.sources.iter().cloned().collect(),
                })
            })
            .await;
        let claim = match claim {
            Ok(Some(c)) => c,
            Ok(None) => {
                self.set_change_due(schedule, agent, None).await;
                return;
            }
            Err(e) => {
                tracing::error!(schedule, agent, error = %e, "cannot claim changes for a run");
                self.set_change_due(schedule, agent, Some(now + RECHECK))
                    .await;
                return;
            }
        };
        let new = NewRun {
            id: Some(claim.run_id.clone()),
            agent: agent.to_string(),
            steps: steps_of(&seq),
            origin: CHANGE_ORIGIN.to_string(),
            requested_by: format!("schedule/{schedule}"),
            schedule: schedule.to_string(),
            sequence: seq.name.clone(),
            nominal_time: DateTime::from_timestamp_millis(claim.nominal_ms)
                .map(syncfleet_proto::time::to_proto),
            on_failure: seq.on_failure_proto(),
            coalesced_changes: claim.changes,
            change_sources: claim.sources.clone(),
            ..NewRun::default()
        };
        if let Err(e) = self.fleet.create_runs(vec![new]).await {
            tracing::error!(schedule, agent, error = %e, "cannot create the run for changes; trying again");
            self.set_change_due(schedule, agent, Some(now + RECHECK))
                .await;
            return;
        }
        tracing::info!(schedule, agent, run_id = %claim.run_id, changes = claim.changes, sources = ?claim.sources, "changes started a run");
        if let Err(e) = self.fleet.finish_change_claim(schedule, agent).await {
            tracing::error!(schedule, agent, error = %e, "cannot finish the change claim; it is finished at the next look");
            self.set_change_due(schedule, agent, Some(now + RECHECK))
                .await;
            return;
        }
        // Changes that arrived meanwhile wait for the next decision.
        self.set_change_due(schedule, agent, Some(now)).await;
    }

    /// Why a change-triggered run of `doc` on `agent` cannot start now, if anything stands in
    /// the way: the rules of a fire time, and the schedule's blackout windows.
    async fn change_held_back(
        &self,
        doc: &crate::documents::model::ScheduleDoc,
        trigger: &crate::documents::trigger::Trigger,
        agent: &str,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if trigger.is_blacked_out(now) {
            return Some("inside a blackout window".into());
        }
        let stored = match self.fleet.store.get_agent(agent).await {
            Ok(Some(a)) => a.agent,
            Ok(None) => return Some("the agent is not known".into()),
            Err(e) => return Some(format!("cannot read the agent: {e}")),
        };
        let labels = stored.labels.clone().into_iter().collect();
        if !doc.targets.matches(agent, &labels) {
            return Some("the agent is no longer a target".into());
        }
        let view = match self.fire_view(&doc.name).await {
            Ok(v) => v,
            Err(e) => return Some(format!("cannot read pauses or active runs: {e}")),
        };
        if view.revoked.contains(agent) {
            return Some("the agent is revoked".into());
        }
        match decide(&doc.name, &stored, now, None, &view) {
            Decision::Create => None,
            Decision::Blocked(b) => Some(b.to_string()),
            Decision::Overlap(active) => Some(format!(
                "run {} of the schedule is still active on the agent",
                active.first().map(|r| r.id.as_str()).unwrap_or("")
            )),
            Decision::Covered => Some("covered by the agent".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_waits_for_quiet_and_spacing() {
        let s = Duration::from_secs;
        // Quiet for 10 s after the last change.
        assert_eq!(due(100_000, None, s(10), s(60)).timestamp_millis(), 110_000);
        // The previous run was recent: a minute after it.
        assert_eq!(
            due(100_000, Some(80_000), s(10), s(60)).timestamp_millis(),
            140_000
        );
        // The previous run long ago: the quiet period decides.
        assert_eq!(
            due(100_000, Some(1_000), s(10), s(60)).timestamp_millis(),
            110_000
        );
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::super::testkit::*;
    use syncfleet_proto::v1::agent_event::Kind;

    const CHANGE_ONLY: &str = "kind: Schedule\nname: c\nsequence: s\ntargets: {agents: [a1, a2]}\n\
        trigger:\n  on_change:\n    quiet_for: 10s\n    min_interval: 1m\n    sources:\n      - name: people\n        ldap: {url: ldap://dc01, base: ou=People}\n";

    /// Agent `agent` reports `n` changes of source `people` as its event `seq`.
    async fn report(w: &World, agent: &str, seq: u64, n: u64) {
        let ev = v1::AgentEvent {
            seq,
            at: Some(syncfleet_proto::time::now()),
            run_id: String::new(),
            kind: Some(Kind::ChangeDetected(v1::ChangeDetected {
                schedule: "c".into(),
                source: "people".into(),
                changes: n,
                cursor: format!("csn-{seq}"),
                examples: vec![format!("uid=u{seq},ou=People")],
            })),
        };
        let stored = w
            .fleet
            .apply_events(agent, vec![ev], seq - 1)
            .await
            .unwrap();
        assert_eq!(stored, seq);
    }

    fn change_runs(runs: &[v1::Run]) -> Vec<(String, u64)> {
        runs.iter()
            .filter(|r| r.origin == super::CHANGE_ORIGIN)
            .map(|r| (r.agent.clone(), r.coalesced_changes))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn changes_wait_for_quiet_then_one_run_coalesces_them_and_runs_are_spaced() {
        let w = world(&format!("{SEQ}{CHANGE_ONLY}"), &["a1", "a2"]).await;
        fake_agents(&w, Duration::from_secs(2), false);
        let (_s, _stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(1)).await;
        // A change-only schedule has no fire times: nothing runs on its own.
        advance(Duration::from_secs(30)).await;
        assert!(runs(&w).await.is_empty());

        // 30 + 20 changes 5 s apart: the quiet period starts again with the second report.
        report(&w, "a1", 1, 30).await;
        advance(Duration::from_secs(5)).await;
        report(&w, "a1", 2, 20).await;
        advance(Duration::from_secs(8)).await;
        assert!(runs(&w).await.is_empty(), "ran before 10 s of quiet");
        advance(Duration::from_secs(4)).await;
        let r = runs(&w).await;
        assert_eq!(change_runs(&r), vec![("a1".to_string(), 50)]);
        assert_eq!(r[0].change_sources, vec!["people".to_string()]);
        assert_eq!(r[0].schedule, "c");
        // Only the agent that saw changes runs.
        assert!(r.iter().all(|r| r.agent == "a1"));

        // A change right after: it waits for min_interval (1 min after the first run).
        advance(Duration::from_secs(5)).await;
        report(&w, "a1", 3, 1).await;
        advance(Duration::from_secs(30)).await;
        assert_eq!(
            change_runs(&runs(&w).await).len(),
            1,
            "min_interval not kept"
        );
        advance(Duration::from_secs(30)).await;
        assert_eq!(
            change_runs(&runs(&w).await),
            vec![("a1".to_string(), 50), ("a1".to_string(), 1)]
        );
        let c = counters(&w, "c").await;
        assert_eq!(c.get("changes_detected"), Some(&51));
        assert_eq!(c.get("change_runs"), Some(&2));
        // A replayed report (same seq) is not counted again.
        let stored = w
            .fleet
            .apply_events(
                "a1",
                vec![v1::AgentEvent {
                    seq: 3,
                    at: None,
                    run_id: String::new(),
                    kind: Some(Kind::ChangeDetected(v1::ChangeDetected {
                        schedule: "c".into(),
                        source: "people".into(),
                        changes: 1,
                        ..Default::default()
                    })),
                }],
                3,
            )
            .await
            .unwrap();
        assert_eq!(stored, 3);
        assert_eq!(counters(&w, "c").await.get("changes_detected"), Some(&51));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_or_a_running_run_holds_changes_back_without_losing_them() {
        let w = world(&format!("{SEQ}{CHANGE_ONLY}"), &["a1", "a2"]).await;
        // Runs take 40 s.
        fake_agents(&w, Duration::from_secs(40), false);
        let (_s, _stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(1)).await;
        w.fleet
            .set_schedule_pause(
                "c",
                &v1::Pause {
                    paused: true,
                    note: "maintenance".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        report(&w, "a2", 1, 7).await;
        advance(Duration::from_secs(60)).await;
        assert!(runs(&w).await.is_empty(), "ran while paused");
        w.fleet
            .set_schedule_pause("c", &v1::Pause::default())
            .await
            .unwrap();
        _s.reload();
        advance(Duration::from_secs(2)).await;
        assert_eq!(change_runs(&runs(&w).await), vec![("a2".to_string(), 7)]);
        // While that run is active (40 s), more changes wait for it, then run after
        // min_interval.
        report(&w, "a2", 2, 3).await;
        advance(Duration::from_secs(30)).await;
        assert_eq!(change_runs(&runs(&w).await).len(), 1);
        advance(Duration::from_secs(40)).await;
        assert_eq!(
            change_runs(&runs(&w).await),
            vec![("a2".to_string(), 7), ("a2".to_string(), 3)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_left_by_a_crash_creates_the_same_run_once_after_a_restart() {
        let w = world(&format!("{SEQ}{CHANGE_ONLY}"), &["a1", "a2"]).await;
        let nominal = w.start + chrono::Duration::seconds(42);
        let id = run_id_for("c", "a1", nominal);
        report(&w, "a1", 1, 4).await;
        // The claim was written, the controller died before creating the run.
        let claim = w
            .fleet
            .claim_changes("c", "a1", |r| {
                Some(crate::fleet::changes::ChangeRun {
                    run_id: id.clone(),
                    nominal_ms: nominal.timestamp_millis(),
                    changes: r.changes,
                    sources: vec!["people".into()],
                })
            })
            .await
            .unwrap();
        assert_eq!(claim.map(|c| c.changes), Some(4));
        let (_s, _stop) = start_scheduler(&w, w.start + chrono::Duration::seconds(60));
        advance(Duration::from_secs(2)).await;
        let r = runs(&w).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].id, id);
        assert_eq!(r[0].coalesced_changes, 4);
        let record = w.fleet.changes_of("c", "a1").await.unwrap().unwrap();
        assert_eq!(record.changes, 0);
        assert!(record.claim.is_none());
        assert_eq!(record.last_run.map(|l| l.run_id), Some(id));
        advance(Duration::from_secs(120)).await;
        assert_eq!(runs(&w).await.len(), 1);
    }
}
