//! The leader epoch that fences a task's writes.
//!
//! Leader-only work (the scheduler, dispatch, the sweeper, agent sessions) runs inside
//! [`with_epoch`]; every write a store makes on behalf of such a task checks, inside the
//! write's own transaction, that the leader lease still has that epoch, and is refused when
//! another controller has taken the lease since (`PgStore::begin_write`). Operator mutations
//! served by any controller run without an epoch and are not fenced. The SQLite store has a
//! single controller and ignores the epoch.
//!
//! The epoch is a tokio task-local value: a task spawned by fenced work must carry it over
//! with [`inherit`], or its writes would not be fenced.

use std::future::Future;

use futures::future::Either;

tokio::task_local! {
    static EPOCH: i64;
}

/// The epoch fencing the current task's writes, if it runs leader-only work.
pub fn current() -> Option<i64> {
    EPOCH.try_with(|e| *e).ok()
}

/// Run `fut` as leader-only work of leader epoch `epoch`.
pub async fn with_epoch<F: Future>(epoch: i64, fut: F) -> F::Output {
    EPOCH.scope(epoch, fut).await
}

/// `fut` with the current task's epoch (if any), for a task about to be spawned.
pub fn inherit<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    match current() {
        Some(epoch) => Either::Left(EPOCH.scope(epoch, fut)),
        None => Either::Right(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_epoch_is_scoped_and_inherited_by_spawned_tasks() {
        assert_eq!(current(), None);
        let seen = with_epoch(7, async {
            let inner = tokio::spawn(inherit(async { current() }));
            let bare = tokio::spawn(async { current() });
            (current(), inner.await.unwrap(), bare.await.unwrap())
        })
        .await;
        assert_eq!(seen, (Some(7), Some(7), None));
        assert_eq!(current(), None);
    }
}
