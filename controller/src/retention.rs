//! Store retention: ended runs, the agents' stored events and audit entries older than their
//! `retention.*` setting are deleted by the leader, in small batches.
//!
//! Why batches: a delete of a month of runs in one transaction would hold the SQLite writer
//! (every agent event waits behind it) or PostgreSQL row locks for as long as it takes. Each
//! batch deletes at most `retention.batch` rows in its own short transaction
//! ([`Store::prune`]), and the pruner sleeps [`BATCH_PAUSE`] between batches, so writers wait
//! for at most one batch. Only the leader prunes (it runs inside the term's fence, so a
//! deposed leader's batch is refused by the database); a follower never deletes.
//!
//! What each setting governs:
//! - `retention.runs` (default 90 days): ended runs (succeeded, completed with errors,
//!   failed, skipped, cancelled, unknown) by creation time, with their steps. Pending,
//!   dispatched, running and held runs are kept whatever their age.
//! - `retention.events` (default 30 days): the agents' events as the controller stored them
//!   on arrival (`run_events`), by the agent's event time. Runs keep their own state and
//!   statistics; the events are only the raw record of how a run got there.
//! - `retention.audit` (default 400 days): audit entries by their time.
//!
//! `0s` keeps that kind forever. What was pruned, per kind, and when the last pass ended are
//! in [`RetentionStats`], exported by `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::store::{PruneKind, Store, StoreError};

/// Pause between two batches of one kind: writers queued behind a batch go first.
pub const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What one kind's pruning did since this controller started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Rows deleted.
    pub pruned: u64,
    /// When the last complete pass over this kind ended (Unix ms; 0: never).
    pub last_prune_ms: i64,
}

/// Pruning figures per kind, for `/metrics`.
#[derive(Debug, Default)]
pub struct RetentionStats {
    kinds: std::sync::Mutex<BTreeMap<PruneKind, KindStats>>,
}

impl RetentionStats {
    fn update(&self, kind: PruneKind, f: impl FnOnce(&mut KindStats)) {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(kinds.entry(kind).or_default());
    }

    /// Every kind with its figures (kinds never pruned: zeros).
    pub fn snapshot(&self) -> Vec<(PruneKind, KindStats)> {
        let kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        PruneKind::ALL
            .iter()
            .map(|k| (*k, kinds.get(k).copied().unwrap_or_default()))
            .collect()
    }
}

/// How long `kind` is kept (`None`: forever).
fn keep(settings: &RetentionSettings, kind: PruneKind) -> Option<Duration> {
    let d = match kind {
        PruneKind::Runs => settings.runs,
        PruneKind::Events => settings.events,
        PruneKind::Audit => settings.audit,
    };
    (!d.is_zero()).then_some(d)
}

/// One pass: every kind with a retention, batch after batch until nothing older than its
/// cutoff (`now_ms` − its setting) is left. Returns the rows deleted per kind. Stops at the
/// first store error (a fenced write included): the rows deleted so far stay deleted, the rest
/// waits for the next pass.
pub async fn prune_once(
    store: &dyn Store,
    settings: &RetentionSettings,
    now_ms: i64,
    stats: &RetentionStats,
) -> Result<BTreeMap<PruneKind, u64>, StoreError> {
    let mut done = BTreeMap::new();
    let batch = settings.batch.max(1);
    for kind in PruneKind::ALL {
        let Some(keep) = keep(settings, kind) else {
            continue;
        };
        let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let mut total = 0u64;
        loop {
            let n = store.prune(kind, cutoff, batch).await?;
            total += n;
            stats.update(kind, |s| s.pruned += n);
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
        let ended = chrono::Utc::now().timestamp_millis();
        stats.update(kind, |s| s.last_prune_ms = ended);
        if total > 0 {
            tracing::info!(
                kind = kind.name(),
                rows = total,
                older_than = %humantime::format_duration(keep),
                "retention: pruned"
            );
        }
        done.insert(kind, total);
    }
    Ok(done)
}

/// The leader's pruner: a pass soon after the term starts, then every `retention.interval`,
/// until `term` is cancelled.
pub async fn run(
    store: Arc<dyn Store>,
    settings: RetentionSettings,
    stats: &RetentionStats,
    term: CancellationToken,
) {
    if PruneKind::ALL.iter().all(|k| keep(&settings, *k).is_none()) {
        return;
    }
    // The first pass waits a moment so that the term's start (sessions, scheduler) goes first.
    let mut next = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = term.cancelled() => return,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        tokio::select! {
            r = prune_once(store.as_ref(), &settings, now_ms, stats) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "retention: pruning stopped; it is tried again at the next interval");
                }
            }
            () = term.cancelled() => return,
        }
        next = tokio::time::Instant::now() + settings.interval;
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    fn run(id: &str, created: i64) -> v1::Run {
        v1::Run {
            id: id.into(),
            agent: "a".into(),
            state: v1::RunState::Succeeded as i32,
            created_at: Some(from_millis(created)),
            ..Default::default()
        }
    }

    /// A pass deletes, batch by batch, what is older than each kind's setting, counts it, and
    /// leaves a kind set to `0s` alone.
    #[tokio::test]
    async fn a_pass_prunes_in_batches_by_each_setting() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("controller.db")).unwrap();
        let now = 1_000 * DAY_MS;
        let old: Vec<v1::Run> = (0..25)
            .map(|i| run(&format!("old-{i:02}"), now - 100 * DAY_MS + i))
            .collect();
        store.insert_runs(&old).await.unwrap();
        store
            .insert_runs(&[run("recent", now - 10 * DAY_MS)])
            .await
            .unwrap();
        store
            .append_audit(&v1::AuditEntry {
                who: "op".into(),
                at: Some(from_millis(now - 100 * DAY_MS)),
                ..Default::default()
            })
            .await
            .unwrap();
        let settings = RetentionSettings {
            audit: Duration::ZERO,
            batch: 10,
            ..RetentionSettings::default()
        };
        let stats = RetentionStats::default();
        let done = prune_once(&store, &settings, now, &stats).await.unwrap();
        assert_eq!(done.get(&PruneKind::Runs), Some(&25));
        assert_eq!(done.get(&PruneKind::Audit), None, "0s keeps audit forever");
        assert!(store.get_run("recent").await.unwrap().is_some());
        assert!(store.get_run("old-00").await.unwrap().is_none());
        assert_eq!(store.list_audit(None, None, 10).await.unwrap().len(), 1);
        let snap = stats.snapshot();
        assert_eq!(snap[0].0, PruneKind::Runs);
        assert_eq!(snap[0].1.pruned, 25);
        assert!(snap[0].1.last_prune_ms > 0);
        assert_eq!(snap[2].1, KindStats::default());
    }

    /// On a shared PostgreSQL store, a leader whose lease was taken over prunes nothing: its
    /// batch is refused inside its own transaction; the new leader's pass deletes the row.
    #[tokio::test]
    async fn a_deposed_leader_prunes_nothing() {
        use crate::store::fence;
        use crate::store::postgres::PgStore;
        let pg = syncfleet_tests::postgres::TestPostgres::shared();
        let store = PgStore::connect(&pg.create_database("retention"))
            .await
            .unwrap();
        let now = 1_000 * DAY_MS;
        store
            .insert_runs(&[run("old", now - 100 * DAY_MS)])
            .await
            .unwrap();
        let ttl = Duration::from_millis(500);
        let epoch = store.lease_acquire("a", "", ttl).await.unwrap().unwrap();
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        let newer = store.lease_acquire("b", "", ttl).await.unwrap().unwrap();
        let settings = RetentionSettings::default();
        let stats = RetentionStats::default();
        let err = fence::with_epoch(epoch, prune_once(&store, &settings, now, &stats))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
        assert!(store.get_run("old").await.unwrap().is_some());
        assert_eq!(stats.snapshot()[0].1, KindStats::default());
        let done = fence::with_epoch(newer, prune_once(&store, &settings, now, &stats))
            .await
            .unwrap();
        assert_eq!(done.get(&PruneKind::Runs), Some(&1));
        assert!(store.get_run("old").await.unwrap().is_none());
    }
}
