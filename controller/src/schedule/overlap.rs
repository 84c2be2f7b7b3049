//! Overlap policies: what a fire time does when the schedule's previous run on that agent is
//! still active. `skip` (default) counts it `skipped_overlap`; `buffer_one` keeps one fire time
//! until the running run ends (stored, so it survives a controller crash, and restored at start;
//! newer ones are counted `buffer_dropped`); `cancel_other` asks the running run to stop through
//! its agent and starts the new one, which queues behind it on the agent's MA locks.

use chrono::{DateTime, Utc};
use syncfleet_proto::v1;

use super::fire::Deltas;
use super::records::{buffered_key, buffered_prefix, millis_value, parse_millis};
use super::scheduler::{Scheduler, blocked_counter, counters};
use crate::documents::model::Overlap;

impl Scheduler {
    /// Apply the schedule's overlap policy to a fire time on `agent`, where the schedule's runs
    /// `active` have not ended. True when the fire time goes on to create its run
    /// (`cancel_other`); false when it was skipped or buffered. The counter deltas are returned
    /// for the fire to add with the rest of its counts (a buffered fire time is stored with its
    /// counter here, in one transaction).
    pub(super) async fn overlap(
        &self,
        name: &str,
        agent: &str,
        nominal: DateTime<Utc>,
        policy: Overlap,
        active: &[v1::Run],
    ) -> (bool, Deltas) {
        let mut deltas = Deltas::default();
        match policy {
            Overlap::Skip => {
                tracing::info!(schedule = name, agent, %nominal, "previous run still active; fire time skipped");
                deltas.add(counters::SKIPPED_OVERLAP, 1);
                (false, deltas)
            }
            Overlap::BufferOne => {
                let key = (name.to_string(), agent.to_string());
                let occupied = self.state.lock().await.buffered.contains_key(&key);
                if occupied {
                    deltas.add(counters::BUFFER_DROPPED, 1);
                } else {
                    // Stored with its counter before anything else happens, so a crash
                    // from here on cannot lose it.
                    self.commit_buffered(name, agent, Some(nominal), vec![(counters::BUFFERED, 1)])
                        .await;
                }
                (false, deltas)
            }
            Overlap::CancelOther => {
                for run in active {
                    if let Err(e) = self
                        .fleet
                        .cancel_run(
                            &run.id,
                            "replaced by the next fire time (overlap: cancel_other)",
                            &format!("schedule/{name}"),
                        )
                        .await
                    {
                        tracing::warn!(run_id = %run.id, error = %e, "cannot cancel the previous run");
                    }
                }
                deltas.add(counters::CANCELLED_OTHER, active.len() as u64);
                (true, deltas)
            }
        }
    }

    /// Store (`Some`) or forget (`None`) the buffered fire time of (schedule, agent) together
    /// with counter deltas, in one transaction; then mirror it in memory.
    pub(super) async fn commit_buffered(
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
    pub(super) async fn restore_buffered(&self) {
        let names: Vec<String> = self.state.lock().await.entries.keys().cloned().collect();
        let mut restored = Vec::new();
        for name in names {
            let prefix = buffered_prefix(&name);
            let p = prefix.clone();
            match self.fleet.store.list_state(&p).await {
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
    pub(super) async fn release_buffered(&self, schedule: &str, agent: &str) {
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
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;

    #[tokio::test(start_paused = true)]
    async fn skip_never_overlaps_and_counts_skips() {
        let w = every_10s("slow", &["a1"], "overlap: skip\n").await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(95)).await;
        let all = runs(&w).await;
        // Fire times at 10, 20, ... 90: runs at 10 (to 35), 40 (to 65), 70 (to 95).
        assert_eq!(
            all.len(),
            3,
            "{:?}",
            all.iter().map(|r| r.nominal_time).collect::<Vec<_>>()
        );
        let c = counters(&w, "slow").await;
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
        let w = every_10s("b", &["a1"], "overlap: buffer_one\n").await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(38)).await;
        // 10: run (to 35); 20: buffered; 30: dropped; 35: the buffered 20 starts.
        let all = runs(&w).await;
        let nominal: Vec<i64> = all
            .iter()
            .map(|r| r.nominal_time.unwrap().seconds - w.start.timestamp())
            .collect();
        assert_eq!(nominal, [10, 20], "{nominal:?}");
        let c = counters(&w, "b").await;
        assert_eq!(c.get("buffer_dropped"), Some(&1), "{c:?}");
        assert_eq!(c.get("buffered"), Some(&1), "{c:?}");
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_fire_time_survives_a_scheduler_restart() {
        let w = every_10s("b", &["a1"], "overlap: buffer_one\n").await;
        fake_agents(&w, Duration::from_secs(25), false);
        let (_s, stop) = start_scheduler(&w, w.start);
        // 10: run (to 35); 20: buffered. Then the controller dies and a new one starts.
        advance(Duration::from_secs(22)).await;
        let _s2 = restart(&w, &stop, w.start + chrono::Duration::milliseconds(22_200)).await;
        advance(Duration::from_secs(16)).await;
        // 30: dropped (20 is still kept); 35: the restored 20 starts.
        assert_eq!(nominal_secs(&w).await, [10, 20]);
        let c = counters(&w, "b").await;
        assert_eq!(c.get("buffered"), Some(&1), "{c:?}");
        assert_eq!(c.get("buffer_dropped"), Some(&1), "{c:?}");
        assert!(
            w.store
                .list_state(crate::store::keys::BUFFERED_ALL)
                .await
                .unwrap()
                .is_empty(),
            "released, so no longer stored"
        );
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_fire_time_is_not_released_into_a_pause() {
        let w = every_10s("b", &["a1"], "overlap: buffer_one\n").await;
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
        assert_eq!(nominal_secs(&w).await, [10]);
        let c = counters(&w, "b").await;
        assert_eq!(c.get("skipped_paused"), Some(&2), "{c:?}");
        assert!(
            w.store
                .list_state(crate::store::keys::BUFFERED_ALL)
                .await
                .unwrap()
                .is_empty()
        );
        // Resumed: the next fire runs; nothing kept from before the pause runs.
        w.fleet
            .set_fleet_pause(&v1::Pause::default())
            .await
            .unwrap();
        advance(Duration::from_secs(5)).await;
        assert_eq!(nominal_secs(&w).await, [10, 40]);
        w.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_other_asks_the_running_run_to_stop() {
        let w = every_10s("c", &["a1"], "overlap: cancel_other\n").await;
        fake_agents(&w, Duration::from_secs(25), false);
        let _s = start_scheduler(&w, w.start);
        advance(Duration::from_secs(21)).await;
        let all = runs(&w).await;
        assert_eq!(all.len(), 2);
        assert!(all[0].cancel_requested, "{:?}", all[0]);
        assert_eq!(counters(&w, "c").await.get("cancelled_other"), Some(&1));
        w.shutdown.cancel();
    }
}
