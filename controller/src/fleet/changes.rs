//! Changes the agents report for schedules with `trigger.on_change`, kept until a run takes
//! them.
//!
//! An agent polls the sources next to it and reports what it saw as `ChangeDetected` events
//! through its outbox. Each report is added to the record of its (schedule, agent) in the same
//! transaction that stores the event and moves the agent's acknowledged seq
//! ([`Fleet::change_records`] feeds `apply_events`), so an acknowledged change is never lost and
//! a replayed one never counted twice. The scheduler then decides when to run (quiet period,
//! minimum interval, pauses, drains, blackouts, overlap) and takes the changes with a run in two
//! steps that survive a crash between them: [`Fleet::claim_changes`] writes the run it is about
//! to create (its id derives from the decision's instant) into the record, the run is created,
//! and [`Fleet::finish_change_claim`] subtracts what the run took. A controller that restarts
//! with a claim in a record creates the same run id again (a no-op if it exists) and finishes the
//! claim: one run per decision, exactly.
//!
//! Changes that arrive while a claim is open stay in the record for the next run.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use syncfleet_proto::names::valid_name;
use syncfleet_proto::schedule_model::Clock;
use syncfleet_proto::sync::lock;
use syncfleet_proto::v1::{self, agent_event::Kind};
use tokio::sync::Notify;

use super::Fleet;
use crate::store::{StoreError, keys};

/// Longest cursor or example kept from a report, in bytes.
const MAX_REPORT_TEXT: usize = 256;
/// Examples kept per source.
const MAX_EXAMPLES: usize = 5;
/// Sources remembered per record (a schedule has at most 16).
const MAX_SOURCES: usize = 32;

/// Schedule counter: changes the agents reported.
pub const CHANGES_DETECTED: &str = "changes_detected";
/// Schedule counter: runs started by changes.
pub const CHANGE_RUNS: &str = "change_runs";

/// What one source of one agent last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSeen {
    /// When the controller received the last report with changes (Unix ms).
    pub at_ms: i64,
    /// The source's cursor after that report.
    pub cursor: String,
    /// What changed in that report (DNs, a watermark).
    pub examples: Vec<String>,
    /// Changes reported by this source since the record was created.
    pub total: u64,
}

/// A run created for changes, or about to be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRun {
    pub run_id: String,
    /// The decision's instant (Unix ms): the run's nominal time.
    pub nominal_ms: i64,
    /// Changes the run takes.
    pub changes: u64,
    pub sources: Vec<String>,
}

/// The changes of one schedule on one agent (stored as JSON under [`keys::changes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChanges {
    /// Changes reported and not taken by a run yet.
    #[serde(default)]
    pub changes: u64,
    /// When the controller received the first and the latest of them (Unix ms; 0: none).
    #[serde(default)]
    pub first_ms: i64,
    #[serde(default)]
    pub last_ms: i64,
    /// Sources those changes came from.
    #[serde(default)]
    pub sources: BTreeSet<String>,
    /// Per source, its last report.
    #[serde(default)]
    pub seen: BTreeMap<String, SourceSeen>,
    /// The last run changes started on this agent.
    #[serde(default)]
    pub last_run: Option<ChangeRun>,
    /// A run being created for these changes; finished by [`Fleet::finish_change_claim`].
    #[serde(default)]
    pub claim: Option<ChangeRun>,
}

impl PendingChanges {
    fn decode(bytes: &[u8]) -> PendingChanges {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            tracing::error!(error = %e, "unreadable change record; starting it again");
            PendingChanges::default()
        })
    }

    fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds one report received at `now_ms`.
    fn add(&mut self, c: &v1::ChangeDetected, now_ms: i64) {
        if c.changes == 0 {
            return;
        }
        self.changes = self.changes.saturating_add(c.changes);
        if self.first_ms == 0 {
            self.first_ms = now_ms;
        }
        self.last_ms = self.last_ms.max(now_ms);
        if self.sources.len() < MAX_SOURCES || self.sources.contains(&c.source) {
            self.sources.insert(c.source.clone());
        }
        if self.seen.len() < MAX_SOURCES || self.seen.contains_key(&c.source) {
            let seen = self.seen.entry(c.source.clone()).or_default();
            seen.at_ms = now_ms;
            seen.cursor = crate::limits::cut_to(&c.cursor, MAX_REPORT_TEXT).to_string();
            seen.examples = c
                .examples
                .iter()
                .take(MAX_EXAMPLES)
                .map(|e| crate::limits::cut_to(e, MAX_REPORT_TEXT).to_string())
                .collect();
            seen.total = seen.total.saturating_add(c.changes);
        }
    }

    /// Takes the claimed run's changes out of the record and makes it the last run.
    fn finish(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        self.changes = self.changes.saturating_sub(claim.changes);
        if self.changes == 0 {
            self.sources.clear();
            self.first_ms = 0;
            self.last_ms = 0;
        } else {
            // What is left arrived after the decision.
            self.first_ms = self.first_ms.max(claim.nominal_ms);
        }
        self.last_run = Some(claim);
    }
}

/// (schedule, agent) pairs whose change record moved, for the scheduler. Recording never
/// waits; the set is bounded by the pairs, not by the rate of reports.
#[derive(Debug, Default)]
pub struct ChangeReports {
    pending: Mutex<HashSet<(String, String)>>,
    ready: Notify,
    /// Schedules with `trigger.on_change`, once the scheduler has read the documents
    /// (`None` before: every well-formed report is kept).
    schedules: Mutex<Option<HashSet<String>>>,
    /// The scheduler's clock: arrival times are compared with its idea of now (`None`: the
    /// system clock).
    clock: Mutex<Option<Clock>>,
}

impl ChangeReports {
    fn record(&self, schedule: &str, agent: &str) {
        lock(&self.pending).insert((schedule.to_string(), agent.to_string()));
        self.ready.notify_one();
    }

    /// Resolves once a record moved since the last [`Self::take`].
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// The pairs recorded so far.
    pub fn take(&self) -> Vec<(String, String)> {
        lock(&self.pending).drain().collect()
    }

    /// The schedules that watch for changes now (the scheduler, after every load).
    pub fn set_schedules(&self, names: HashSet<String>) {
        *lock(&self.schedules) = Some(names);
    }

    /// Arrival times follow `clock` from now on (the scheduler's, which tests pause).
    pub fn use_clock(&self, clock: Clock) {
        *lock(&self.clock) = Some(clock);
    }

    fn now_ms(&self) -> i64 {
        lock(&self.clock)
            .map_or_else(chrono::Utc::now, |c| c.now())
            .timestamp_millis()
    }

    fn accepts(&self, schedule: &str) -> bool {
        lock(&self.schedules)
            .as_ref()
            .is_none_or(|s| s.contains(schedule))
    }
}

/// What a batch of agent events does to change records: the records to write and the counters
/// to add, committed with the events.
#[derive(Debug, Default)]
pub(super) struct ChangeEffects {
    pub(super) states: Vec<(String, Vec<u8>)>,
    pub(super) counters: Vec<(String, String, u64)>,
    /// (schedule, agent) pairs to tell the scheduler about after the commit.
    pub(super) moved: Vec<(String, String)>,
}

/// The record keys the change reports of `events` touch (to lock them before reading).
pub(super) fn change_keys(agent: &str, events: &[v1::AgentEvent]) -> Vec<String> {
    let mut keys: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::ChangeDetected(c)) if valid_name(&c.schedule) => {
                Some(keys::changes(&c.schedule, agent))
            }
            _ => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Fleet {
    /// The scheduler's view of change reports.
    pub fn change_reports(&self) -> &ChangeReports {
        &self.changes
    }

    /// What the change reports among `events` of `agent` do to the stored records. The caller
    /// holds the locks of [`change_keys`] until it has committed the result.
    pub(super) async fn change_records(
        &self,
        agent: &str,
        events: &[v1::AgentEvent],
    ) -> Result<ChangeEffects, StoreError> {
        let now_ms = self.changes.now_ms();
        let mut records: BTreeMap<String, PendingChanges> = BTreeMap::new();
        let mut effects = ChangeEffects::default();
        for ev in events {
            let Some(Kind::ChangeDetected(c)) = &ev.kind else {
                continue;
            };
            if !valid_name(&c.schedule) || !valid_name(&c.source) {
                tracing::warn!(agent, schedule = %crate::limits::cut_to(&c.schedule, 64), "change report with an invalid schedule or source name ignored");
                continue;
            }
            if !self.changes.accepts(&c.schedule) {
                tracing::warn!(agent, schedule = %c.schedule, "change report for a schedule that does not watch for changes ignored");
                continue;
            }
            let key = keys::changes(&c.schedule, agent);
            if !records.contains_key(&key) {
                let current = self
                    .store
                    .get_state(&key)
                    .await?
                    .map(|b| PendingChanges::decode(&b))
                    .unwrap_or_default();
                records.insert(key.clone(), current);
            }
            if let Some(r) = records.get_mut(&key) {
                r.add(c, now_ms);
            }
            effects
                .counters
                .push((c.schedule.clone(), CHANGES_DETECTED.to_string(), c.changes));
            effects.moved.push((c.schedule.clone(), agent.to_string()));
        }
        effects.states = records.into_iter().map(|(k, r)| (k, r.encode())).collect();
        effects.moved.sort_unstable();
        effects.moved.dedup();
        Ok(effects)
    }

    /// Tells the scheduler that the records of `moved` changed (after their commit).
    pub(super) fn changes_moved(&self, moved: &[(String, String)]) {
        for (schedule, agent) in moved {
            self.changes.record(schedule, agent);
        }
    }

    /// The change record of `schedule` on `agent`.
    pub async fn changes_of(
        &self,
        schedule: &str,
        agent: &str,
    ) -> Result<Option<PendingChanges>, StoreError> {
        Ok(self
            .store
            .get_state(&keys::changes(schedule, agent))
            .await?
            .map(|b| PendingChanges::decode(&b)))
    }

    /// Every change record (`schedule`, `agent`, record), or those of one schedule.
    pub async fn all_changes(
        &self,
        schedule: Option<&str>,
    ) -> Result<Vec<(String, String, PendingChanges)>, StoreError> {
        let prefix = match schedule {
            Some(s) => format!("{}{s}/", keys::CHANGES_ALL),
            None => keys::CHANGES_ALL.to_string(),
        };
        Ok(self
            .store
            .list_state(&prefix)
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                let (s, a) = keys::changes_of(&k)?;
                Some((s.to_string(), a.to_string(), PendingChanges::decode(&v)))
            })
            .collect())
    }

    /// Claims the changes of `schedule` on `agent` for a run: an open claim is returned as it
    /// is (a crash left it; its run must be created again); otherwise `decide` sees the record
    /// and returns the run to claim, or `None` to leave the record alone.
    pub async fn claim_changes(
        &self,
        schedule: &str,
        agent: &str,
        decide: impl FnOnce(&PendingChanges) -> Option<ChangeRun>,
    ) -> Result<Option<ChangeRun>, StoreError> {
        let key = keys::changes(schedule, agent);
        let _guard = self.run_locks.lock(&key).await;
        let Some(mut record) = self.changes_of(schedule, agent).await? else {
            return Ok(None);
        };
        if let Some(open) = &record.claim {
            return Ok(Some(open.clone()));
        }
        let Some(claim) = decide(&record) else {
            return Ok(None);
        };
        record.claim = Some(claim.clone());
        self.store.put_state(&key, &record.encode()).await?;
        Ok(Some(claim))
    }

    /// The claimed run exists: its changes leave the record and it becomes the last run; the
    /// schedule's `change_runs` counter grows by one, in the same transaction.
    pub async fn finish_change_claim(&self, schedule: &str, agent: &str) -> Result<(), StoreError> {
        let key = keys::changes(schedule, agent);
        let _guard = self.run_locks.lock(&key).await;
        let Some(mut record) = self.changes_of(schedule, agent).await? else {
            return Ok(());
        };
        if record.claim.is_none() {
            return Ok(());
        }
        record.finish();
        self.store
            .commit_schedule_state(
                schedule,
                &[(key, Some(record.encode()))],
                &[(CHANGE_RUNS, 1)],
                None,
            )
            .await
    }

    /// Forgets the change record of `schedule` on `agent` (its schedule no longer watches for
    /// changes, or the agent is no longer a target).
    pub async fn forget_changes(&self, schedule: &str, agent: &str) -> Result<(), StoreError> {
        let key = keys::changes(schedule, agent);
        let _guard = self.run_locks.lock(&key).await;
        self.store
            .commit_schedule_state(schedule, &[(key, None)], &[], None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(source: &str, n: u64, cursor: &str) -> v1::ChangeDetected {
        v1::ChangeDetected {
            schedule: "s".into(),
            source: source.into(),
            changes: n,
            cursor: cursor.into(),
            examples: (0..8).map(|i| format!("uid=u{i},ou=People")).collect(),
        }
    }

    #[test]
    fn reports_add_up_and_a_finished_claim_takes_only_what_it_claimed() {
        let mut r = PendingChanges::default();
        r.add(&report("people", 3, "csn-1"), 1_000);
        r.add(&report("people", 0, "csn-1"), 1_500);
        r.add(&report("groups", 2, "usn 9"), 2_000);
        assert_eq!(r.changes, 5);
        assert_eq!((r.first_ms, r.last_ms), (1_000, 2_000));
        assert_eq!(r.seen["people"].examples.len(), MAX_EXAMPLES);
        assert_eq!(r.seen["groups"].cursor, "usn 9");
        r.claim = Some(ChangeRun {
            run_id: "r1".into(),
            nominal_ms: 12_000,
            changes: 5,
            sources: vec!["groups".into(), "people".into()],
        });
        // A report during the claim stays for the next run.
        r.add(&report("people", 1, "csn-2"), 12_500);
        r.finish();
        assert_eq!(r.changes, 1);
        assert_eq!(r.first_ms, 12_000);
        assert_eq!(r.last_run.as_ref().map(|c| c.changes), Some(5));
        assert!(r.claim.is_none());
        // Finishing again does nothing.
        r.finish();
        assert_eq!(r.changes, 1);
        r.claim = Some(ChangeRun {
            changes: 1,
            ..ChangeRun::default()
        });
        r.finish();
        assert_eq!((r.changes, r.first_ms, r.last_ms), (0, 0, 0));
        assert!(r.sources.is_empty());
        assert_eq!(r.seen["people"].total, 4);
    }

    #[test]
    fn a_record_round_trips_and_garbage_starts_empty() {
        let mut r = PendingChanges::default();
        r.add(&report("people", 50, "20261207101502Z"), 7);
        assert_eq!(PendingChanges::decode(&r.encode()), r);
        assert_eq!(
            PendingChanges::decode(b"not json"),
            PendingChanges::default()
        );
    }
}
