//! Engine run-history housekeeping (`engine.clear_runs_older_than`): the agent calls the
//! engine's `ClearRuns` (`docs/engine.md`, "Run history housekeeping") so that the engine's
//! run history does not grow without bound, the way MIM administrators clear it by hand.
//!
//! The one rule: never clear a run whose details the controller has not stored. The agent
//! reads a step's run-history details into its `StepFinished` event, which stays in the
//! journal's outbox until the controller acknowledges it; the journal therefore knows the
//! oldest run whose details are not stored yet ([`Journal::oldest_unstored_run_ms`]). The
//! cutoff is the earlier of "now − `clear_runs_older_than`" and a second before that run was
//! accepted ([`cutoff`]), so a controller outage only delays clearing. Off by default:
//! clearing is permanent, and many sites keep the engine's history for their own audits.
//!
//! What was cleared is reported in every heartbeat ([`Status`]) and exported by the
//! controller's `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::SyncEngine;
use crate::journal::Journal;

/// What the heartbeat reports about housekeeping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Cutoff of the last successful ClearRuns.
    pub cleared_before: Option<DateTime<Utc>>,
    /// Successful ClearRuns calls since the agent started.
    pub total: u64,
    /// Why the last call failed; empty after a success.
    pub problem: String,
}

/// The cutoff for `ClearRuns`: runs that ended at or before it may go. `oldest_unstored_ms`
/// is [`Journal::oldest_unstored_run_ms`]: the cutoff stays a second before that run was
/// accepted, so none of its engine runs (which started after) can be removed.
pub fn cutoff(
    now: DateTime<Utc>,
    older_than: Duration,
    oldest_unstored_ms: Option<i64>,
) -> DateTime<Utc> {
    let by_age = now - TimeDelta::from_std(older_than).unwrap_or(TimeDelta::MAX);
    match oldest_unstored_ms.and_then(DateTime::<Utc>::from_timestamp_millis) {
        Some(accepted) => by_age.min(accepted - TimeDelta::seconds(1)),
        None => by_age,
    }
}

/// Most history one ClearRuns removes after the first: the cutoff advances by at most this
/// from the previous one, because clearing very many runs at once can make Sync Service
/// Manager unresponsive (`docs/engine.md`). After a controller outage held the cutoff back,
/// the agent catches up in steps, [`CATCH_UP_PAUSE`] apart.
pub const MAX_STEP: TimeDelta = TimeDelta::hours(6);
/// Pause between two catch-up steps.
pub const CATCH_UP_PAUSE: Duration = Duration::from_secs(10);

/// The cutoff of the next call: `target`, but at most [`MAX_STEP`] past the previous
/// successful cutoff (the first call goes to `target` at once: how old the oldest run is, is
/// not known without enumerating the history, which is slow).
pub fn next_step(previous: Option<DateTime<Utc>>, target: DateTime<Utc>) -> DateTime<Utc> {
    match previous {
        Some(p) if target - p > MAX_STEP => p + MAX_STEP,
        _ => target,
    }
}

/// A successful ClearRuns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    /// Its cutoff.
    pub before: DateTime<Utc>,
    /// Whether [`MAX_STEP`] held it back from the cutoff wanted (more is left to clear).
    pub capped: bool,
}

/// The housekeeping task of one agent.
pub struct Housekeeping {
    engine: Arc<dyn SyncEngine>,
    journal: Arc<Journal>,
    /// `None`: off.
    older_than: Option<Duration>,
    every: Duration,
    status: Mutex<Status>,
}

impl std::fmt::Debug for Housekeeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Housekeeping")
            .field("older_than", &self.older_than)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Housekeeping {
    pub fn new(
        engine: Arc<dyn SyncEngine>,
        journal: Arc<Journal>,
        older_than: Option<Duration>,
        every: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            journal,
            older_than: older_than.filter(|d| !d.is_zero()),
            every,
            status: Mutex::new(Status::default()),
        })
    }

    /// What the next heartbeat reports.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// One ClearRuns with the cutoff of now (capped by [`next_step`]); returns what was
    /// cleared when the engine answered `success`.
    pub async fn clear_once(&self, now: DateTime<Utc>) -> Option<Cleared> {
        let older_than = self.older_than?;
        let oldest = match self.journal.oldest_unstored_run_ms() {
            Ok(o) => o,
            Err(e) => {
                // Without the journal's answer nothing is known to be stored: clear nothing.
                let problem = format!("not cleared: the journal cannot be read: {e}");
                tracing::warn!("{problem}");
                self.set(|s| s.problem = problem);
                return None;
            }
        };
        let previous = self.status().cleared_before;
        let target = cutoff(now, older_than, oldest);
        if previous.is_some_and(|c| c >= target) {
            // Nothing new can have ended before the same cutoff.
            return None;
        }
        let before = next_step(previous, target);
        match self.engine.clear_runs(before).await {
            Ok(answer) if answer == "success" => {
                tracing::info!(ending_before = %before, "engine run history cleared");
                self.set(|s| {
                    s.cleared_before = Some(before);
                    s.total += 1;
                    s.problem.clear();
                });
                Some(Cleared {
                    before,
                    capped: before < target,
                })
            }
            Ok(answer) => {
                let problem = format!("ClearRuns answered {answer:?}");
                tracing::warn!(ending_before = %before, "{problem}");
                self.set(|s| s.problem = problem);
                None
            }
            Err(e) => {
                let problem = format!("ClearRuns failed: {e}");
                tracing::warn!(ending_before = %before, "{problem}");
                self.set(|s| s.problem = problem);
                None
            }
        }
    }

    /// Clear every `every` until `shutdown` (nothing when off). The first call waits one
    /// interval, so that an agent's start (recovery, the session) goes first.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.older_than.is_none() {
            return;
        }
        let mut wait = self.every;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            // A capped step leaves more to clear: the next step follows soon.
            wait = match self.clear_once(Utc::now()).await {
                Some(c) if c.capped => CATCH_UP_PAUSE.min(self.every),
                _ => self.every,
            };
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::engine::sim::{SimConfig, SimEngine};
    use syncfleet_proto::v1;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_cutoff_never_passes_a_run_the_controller_has_not_stored() {
        let now = t("2026-06-10T12:00:00Z");
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(cutoff(now, 7 * day, None), t("2026-06-03T12:00:00Z"));
        // A run accepted 10 days ago is not acknowledged: stay before it.
        let accepted = t("2026-05-31T08:00:00Z").timestamp_millis();
        assert_eq!(
            cutoff(now, 7 * day, Some(accepted)),
            t("2026-05-31T07:59:59Z")
        );
        // A newer unacknowledged run does not move an age cutoff that is earlier anyway.
        let recent = t("2026-06-10T11:00:00Z").timestamp_millis();
        assert_eq!(
            cutoff(now, 7 * day, Some(recent)),
            t("2026-06-03T12:00:00Z")
        );
    }

    #[test]
    fn after_the_first_call_the_cutoff_advances_in_bounded_steps() {
        let target = t("2026-06-10T12:00:00Z");
        assert_eq!(next_step(None, target), target);
        assert_eq!(
            next_step(Some(t("2026-06-10T09:00:00Z")), target),
            target,
            "within a step"
        );
        // Three days behind (a controller outage held the cutoff back): six hours at a time.
        assert_eq!(
            next_step(Some(t("2026-06-07T12:00:00Z")), target),
            t("2026-06-07T18:00:00Z")
        );
    }

    /// Through the simulated engine and a real journal: a finished, acknowledged run's history
    /// is cleared; while a run's events wait in the outbox, its history stays.
    #[tokio::test]
    async fn clearing_waits_for_the_controller_to_store_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let mut cfg = SimConfig::example(0);
        cfg.time_scale = 1e-4;
        let sim = Arc::new(SimEngine::new(cfg));
        let engine: Arc<dyn SyncEngine> = sim.clone();
        let hk = Housekeeping::new(
            Arc::clone(&engine),
            Arc::clone(&journal),
            Some(Duration::from_millis(1)),
            Duration::from_secs(3600),
        );
        let spec = v1::StartRun {
            run_id: "r1".into(),
            ..Default::default()
        };
        journal.accept_run(&spec).unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let sink = tokio::sync::mpsc::unbounded_channel().0;
        let out = engine.execute("HR", "Delta Import", sink).await.unwrap();
        let n = out.run_number.unwrap();
        let ev = journal
            .append(
                "r1",
                v1::agent_event::Kind::RunFinished(v1::RunFinished::default()),
            )
            .unwrap();
        journal.finish_run("r1").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;

        // Not acknowledged: the cutoff stays before the run was accepted; its history stays.
        let first = hk.clear_once(Utc::now()).await.unwrap();
        assert!(!first.capped);
        assert!(engine.run_details("HR", n).await.is_ok());
        assert!(
            first.before.timestamp_millis() < journal.oldest_unstored_run_ms().unwrap().unwrap()
        );
        assert_eq!(hk.status().total, 1);

        // Acknowledged: the next call clears it.
        journal.ack(ev.seq).unwrap();
        assert_eq!(journal.oldest_unstored_run_ms().unwrap(), None);
        hk.clear_once(Utc::now()).await.unwrap();
        assert!(engine.run_details("HR", n).await.is_err());
        let st = hk.status();
        assert_eq!((st.total, st.problem.as_str()), (2, ""));
    }

    #[tokio::test]
    async fn off_means_no_call_and_nothing_reported() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let engine: Arc<dyn SyncEngine> = Arc::new(SimEngine::new(SimConfig::example(0)));
        let off = Housekeeping::new(engine, journal, None, Duration::from_secs(1));
        assert_eq!(off.clear_once(Utc::now()).await, None);
        assert_eq!(off.status(), Status::default());
    }
}
