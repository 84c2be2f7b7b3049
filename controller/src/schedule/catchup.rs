//! Catch-up after downtime (Kubernetes CronJob v2 / Nomad): the fire times missed since the
//! schedule's cursor are computed, not looped; at most one catch-up run per schedule and agent
//! for the most recent missed time if it is within `catchup_window`; the rest are counted
//! `missed_catchup`. A catch-up decided at a start is stored until it is evaluated, so a second
//! crash does not lose it. What is still running is checked first: while runs from before the
//! crash are active, the catch-up waits (bounded) for their agents to reconnect and replay their
//! outboxes, then the overlap policy applies to it (Nomad #11052).

use std::time::Duration;

use chrono::{DateTime, Utc};
use syncfleet_proto::v1;

use super::records::{catchup_key, cursor_key, millis_value, parse_millis};
use super::scheduler::{Scheduler, counters};
use crate::documents::trigger::Missed;

/// How long a reconnected agent gets to replay its outbox before its runs are trusted.
const REPLAY_SETTLE: Duration = Duration::from_secs(2);

/// What to do with the fire times missed in a span: run at most one (`chosen`), count the
/// rest (`dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CatchUp {
    pub(super) chosen: Option<DateTime<Utc>>,
    pub(super) dropped: u64,
}

/// The catch-up decision at `now` for the fire times `missed` in a span, with `pending` a
/// catch-up an earlier start decided and never evaluated: the latest missed time runs if it is
/// within `window` of `now` (a zero window runs nothing); a pending one is one more missed time
/// and runs if nothing newer does and it is still within the window.
pub(super) fn decide(
    missed: Missed,
    pending: Option<DateTime<Utc>>,
    window: Duration,
    now: DateTime<Utc>,
) -> CatchUp {
    let in_window = |t: DateTime<Utc>| {
        window > Duration::ZERO && (now - t).to_std().unwrap_or(Duration::MAX) <= window
    };
    let mut dropped = missed.count;
    let mut chosen = None;
    if let Some(latest) = missed.latest
        && in_window(latest)
    {
        chosen = Some(latest);
        dropped = dropped.saturating_sub(1);
    }
    if let Some(p) = pending {
        if chosen.is_none() && in_window(p) {
            chosen = Some(p);
        } else {
            dropped += 1;
        }
    }
    CatchUp { chosen, dropped }
}

impl Scheduler {
    /// At a start: move the cursor of `name` from `cursor` past the missed fire times, record
    /// the chosen catch-up and count the rest (`missed_count` of them were missed, `blacked`
    /// were blacked out).
    pub(super) async fn record_missed_at_start(
        &self,
        name: &str,
        cursor: DateTime<Utc>,
        now: DateTime<Utc>,
        missed_count: u64,
        decision: CatchUp,
        blacked: u64,
    ) {
        let CatchUp { chosen, dropped } = decision;
        if missed_count > 0 {
            tracing::info!(schedule = %name, missed = missed_count, catchup = dropped < missed_count, "fire times missed while the controller was down");
        }
        // The cursor moves past the missed times and the chosen catch-up is
        // recorded in the same transaction: a crash before it is evaluated leaves
        // it for the next start instead of losing it.
        self.commit_state(
            name,
            vec![
                (cursor_key(name), Some(millis_value(now.max(cursor)))),
                (catchup_key(name), chosen.map(millis_value)),
            ],
            vec![
                (counters::MISSED_CATCHUP, dropped),
                (counters::SKIPPED_BLACKOUT, blacked),
            ],
        )
        .await;
    }

    /// Evaluate the catch-ups decided at a start, or defer those of schedules with runs from
    /// before the crash still active.
    pub(super) async fn start_catchups(&self, catchups: Vec<(String, DateTime<Utc>)>) {
        for (name, nominal) in catchups {
            // Agents may have fired the schedule on their own while no controller ran: what
            // they covered is known only once they have reconnected (their Hello reports it).
            let autonomous = self
                .state
                .lock()
                .await
                .entries
                .get(&name)
                .is_some_and(|e| e.doc.autonomy != Some(false));
            if autonomous || self.schedule_has_active_runs(&name).await {
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

    /// The loop fell behind (machine suspended, long stall): like a restart, run at most the
    /// latest missed time within `window`, count the rest, and move the cursor to `now`.
    pub(super) async fn catch_up_after_stall(
        &self,
        name: &str,
        missed: Missed,
        blacked: u64,
        window: Duration,
        now: DateTime<Utc>,
    ) {
        let CatchUp { chosen, dropped } = decide(missed, None, window, now);
        if let Some(latest) = chosen {
            self.fire(name, latest, "catch-up").await;
        }
        self.advance_cursor(
            name,
            now,
            vec![
                (counters::MISSED_CATCHUP, dropped),
                (counters::SKIPPED_BLACKOUT, blacked),
            ],
        )
        .await;
    }

    /// A catch-up decided by a start of an earlier controller process that did not get to
    /// evaluate it (it crashed while waiting for the agents, or just before).
    pub(super) async fn pending_catchup(&self, schedule: &str) -> Option<DateTime<Utc>> {
        let k = catchup_key(schedule);
        match self.fleet.store.get_state(&k).await {
            Ok(raw) => raw.as_deref().and_then(parse_millis),
            Err(e) => {
                tracing::error!(schedule, error = %e, "cannot read the pending catch-up");
                None
            }
        }
    }

    /// Evaluate a catch-up fire time and forget it (its record is kept until then).
    pub(super) async fn fire_catchup(&self, name: &str, nominal: DateTime<Utc>) {
        self.fire(name, nominal, "catch-up").await;
        self.commit_state(name, vec![(catchup_key(name), None)], Vec::new())
            .await;
    }

    /// Whether the store holds a non-terminal run of this schedule on any agent.
    pub(super) async fn schedule_has_active_runs(&self, schedule: &str) -> bool {
        let s = schedule.to_string();
        match self
            .fleet
            .store
            .runs_in_states(
                None,
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
            .await
        {
            Ok(runs) => runs.iter().any(|r| r.schedule == s),
            Err(_) => true,
        }
    }

    /// Fire deferred catch-ups whose target agents are all back (or whose deadline passed).
    pub(super) async fn fire_deferred(&self) {
        let pending: Vec<(String, DateTime<Utc>, tokio::time::Instant)> =
            self.state.lock().await.deferred.clone();
        if pending.is_empty() {
            return;
        }
        let agents = match self.fleet.store.list_agents().await {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    #[tokio::test(start_paused = true)]
    async fn restart_catches_up_once_within_the_window_and_counts_the_rest() {
        // `autonomy: false`: no agent can have fired it on its own, nothing to wait for.
        let w = every_10s("k", &["a1", "a2"], "catchup_window: 15s\nautonomy: false\n").await;
        fake_agents(&w, Duration::from_millis(500), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        assert_eq!(runs(&w).await.len(), 2, "one fire at 10 s on both agents");
        // The controller dies; 45 s pass (fire times 20, 30, 40, 50 missed); a new one starts.
        let _s2 = restart(&w, &stop, w.start + chrono::Duration::seconds(57)).await;
        advance(Duration::from_millis(500)).await;
        // Nothing of this schedule was in flight at the "crash": the catch-up runs at once.
        let all = runs(&w).await;
        let catchups: Vec<&v1::Run> = all.iter().filter(|r| r.origin == "catch-up").collect();
        assert_eq!(catchups.len(), 2, "one catch-up per agent");
        for r in &catchups {
            assert_eq!(r.nominal_time.unwrap().seconds - w.start.timestamp(), 50);
        }
        let c = counters(&w, "k").await;
        // 20, 30, 40 are older than the window's reach or superseded: counted, not run.
        assert_eq!(c.get("missed_catchup"), Some(&3), "{c:?}");
        // A catch-up outside the window does not run at all.
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_waits_for_the_agents_hand_over_and_skips_what_they_covered() {
        let w = every_10s("k", &["a1", "a2"], "catchup_window: 15s\n").await;
        fake_agents(&w, Duration::from_millis(500), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        // The controller dies; 45 s pass; a1 fired 20..50 on its own, a2 did not.
        let _s2 = restart(&w, &stop, w.start + chrono::Duration::seconds(57)).await;
        advance(Duration::from_millis(500)).await;
        assert!(
            runs(&w).await.iter().all(|r| r.origin != "catch-up"),
            "deferred until the agents have reported what they covered"
        );
        let covered = w.start + chrono::Duration::seconds(50);
        w.fleet
            .record_handover(&v1::Hello {
                name: "a1".into(),
                autonomy: vec![v1::AutonomyReport {
                    schedule: "k".into(),
                    last_nominal: Some(syncfleet_proto::time::to_proto(covered)),
                    counters: [("autonomous".to_string(), 4u64)].into_iter().collect(),
                }],
                ..Default::default()
            })
            .await;
        assert_eq!(w.fleet.covered_until("k", "a1"), Some(covered));
        // Past the settle deadline (agent_lost_after = 5 s): the catch-up of 50 runs on a2 only.
        advance(Duration::from_secs(6)).await;
        let all = runs(&w).await;
        let catchups: Vec<&v1::Run> = all.iter().filter(|r| r.origin == "catch-up").collect();
        assert_eq!(catchups.len(), 1, "{catchups:?}");
        assert_eq!(catchups[0].agent, "a2");
        let c = counters(&w, "k").await;
        assert_eq!(c.get("autonomous"), Some(&4), "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn catch_up_waits_for_runs_in_flight_at_the_crash_then_honours_overlap() {
        let w = every_10s("f", &["a1"], "catchup_window: 15s\n").await;
        // Runs never end here: the one started at 10 s is still in flight at the crash.
        fake_agents(&w, Duration::from_secs(1000), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        let _s2 = restart(&w, &stop, w.start + chrono::Duration::seconds(57)).await;
        advance(Duration::from_secs(1)).await;
        assert!(
            runs(&w).await.iter().all(|r| r.origin != "catch-up"),
            "deferred while its agent has not reported"
        );
        // After the settle deadline (agent_lost_after = 5 s) the overlap policy decides: the
        // run from before the crash is still active, so the catch-up is skipped and counted.
        advance(Duration::from_secs(6)).await;
        assert!(runs(&w).await.iter().all(|r| r.origin != "catch-up"));
        let c = counters(&w, "f").await;
        assert!(c.get("skipped_overlap").copied().unwrap_or(0) >= 1, "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_catch_up_survives_a_second_crash() {
        let w = every_10s("f", &["a1"], "catchup_window: 30s\n").await;
        // The run started at 10 s never ends: every later fire time meets it.
        fake_agents(&w, Duration::from_secs(1000), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        advance(Duration::from_secs(12)).await;
        // Restart at 57 s: 20, 30, 40 counted missed; the catch-up of 50 waits for the agent.
        let (_s2, stop2) = restart(&w, &stop, w.start + chrono::Duration::seconds(57)).await;
        advance(Duration::from_millis(500)).await;
        // Crash again before it was evaluated; restart at 58 s.
        let _s3 = restart(&w, &stop2, w.start + chrono::Duration::seconds(58)).await;
        // 60 is skipped (overlap); after the settle deadline the catch-up of 50 is too.
        advance(Duration::from_secs(8)).await;
        let c = counters(&w, "f").await;
        assert_eq!(c.get("missed_catchup"), Some(&3), "{c:?}");
        assert_eq!(
            c.get("skipped_overlap"),
            Some(&2),
            "the fire at 60 and the catch-up of 50: {c:?}"
        );
        assert!(
            w.store
                .get_state(&crate::store::keys::catchup("f"))
                .await
                .unwrap()
                .is_none()
        );
        w.shutdown.cancel();
    }
}
