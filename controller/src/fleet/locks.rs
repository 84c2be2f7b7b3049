//! Per-run locking: every read-modify-write of a stored run (agent events, cancels, the
//! sweeper, marking a run dispatched, approvals) holds the lock of that run, so two of them
//! never overwrite each other's change, while changes to different runs proceed in parallel
//! (agents' sessions do not wait for each other).
//!
//! The locks are a fixed array of stripes indexed by a hash of the key (a run id, or an
//! agent's record key); two keys may share a stripe, which only costs parallelism. A caller
//! that needs several runs at once (a batch of agent events) takes [`RunLocks::lock_many`],
//! which locks the stripes in ascending order: no two callers can wait for each other in a
//! cycle, so there is no deadlock. Nobody takes a second lock while holding one otherwise.

use std::hash::{Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

/// Number of stripes: far more than the runs changing at one instant on a 2-core controller,
/// few enough that the array is a few KiB.
const STRIPES: usize = 512;

/// The striped locks of the fleet's runs.
pub(super) struct RunLocks {
    stripes: Box<[Mutex<()>]>,
}

impl Default for RunLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl RunLocks {
    fn stripe(key: &str) -> usize {
        // SipHash with fixed keys: the same key always maps to the same stripe.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0)
    }

    /// Lock the run (or record) `key`.
    pub(super) async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        self.stripes[Self::stripe(key)].lock().await
    }

    /// Lock every key of `keys` (duplicates and shared stripes are locked once), in ascending
    /// stripe order.
    pub(super) async fn lock_many<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = keys.into_iter().map(Self::stripe).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn different_runs_do_not_wait_for_each_other_and_one_run_does() {
        let locks = Arc::new(RunLocks::default());
        // Two keys on different stripes.
        let a = "run-a".to_string();
        let b = (0..)
            .map(|i| format!("run-b{i}"))
            .find(|k| RunLocks::stripe(k) != RunLocks::stripe(&a))
            .unwrap();
        let held = locks.lock(&a).await;
        // Another run: at once.
        let _other = tokio::time::timeout(Duration::from_millis(1), locks.lock(&b))
            .await
            .expect("a different run is not blocked");
        // The same run waits until the holder lets go.
        let l = Arc::clone(&locks);
        let a2 = a.clone();
        let waiter = tokio::spawn(async move {
            let _g = l.lock(&a2).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "the same run must wait");
        drop(held);
        waiter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn batches_in_opposite_orders_do_not_deadlock() {
        let locks = Arc::new(RunLocks::default());
        let keys: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let l = Arc::clone(&locks);
            let mut mine = keys.clone();
            if t % 2 == 1 {
                mine.reverse();
            }
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let _g = l.lock_many(mine.iter().map(String::as_str)).await;
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("no deadlock")
                .unwrap();
        }
    }
}
