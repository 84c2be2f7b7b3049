//! The stream behind `WatchRuns`: the fleet's run updates, filtered for one watcher.
//!
//! Updates reach a watcher through the fleet's broadcast, which holds a bounded number of them:
//! a watcher that reads slower than runs change (a slow network, a fan-out to thousands of
//! agents) falls behind and the oldest updates are dropped for it. It is never left unaware: a
//! watcher of one run gets that run re-read from the store; any other watcher gets an update
//! with no run and `missed` set to the number dropped, so that it re-reads what it follows
//! (`GetRun`, `ListRuns`) and carries on with the stream.

use std::sync::Arc;

use syncfleet_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::store::Store;

fn terminal(r: &v1::Run) -> bool {
    v1::RunState::try_from(r.state).is_ok_and(v1::RunState::is_terminal)
}

/// Send `snapshot` (the watched run as it was when the watch opened, if one run is watched),
/// then every update of `rx` that `req` selects, into `tx`, until the watched run ends or the
/// watcher goes away.
pub async fn forward(
    mut rx: broadcast::Receiver<v1::Run>,
    store: Arc<dyn Store>,
    req: v1::WatchRunsRequest,
    snapshot: Option<v1::Run>,
    tx: mpsc::Sender<Result<v1::RunUpdate, Status>>,
) {
    let update = |run: v1::Run| v1::RunUpdate {
        run: Some(run),
        missed: 0,
    };
    if let Some(run) = snapshot {
        let done = terminal(&run);
        if tx.send(Ok(update(run))).await.is_err() || done {
            return;
        }
    }
    loop {
        let run = match rx.recv().await {
            Ok(r) => r,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "run watcher fell behind");
                if req.run_id.is_empty() {
                    let notice = v1::RunUpdate {
                        run: None,
                        missed: n,
                    };
                    if tx.send(Ok(notice)).await.is_err() {
                        return;
                    }
                    continue;
                }
                match store.get_run(&req.run_id).await {
                    Ok(Some(r)) => r,
                    _ => continue,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if (!req.run_id.is_empty() && run.id != req.run_id)
            || (!req.agent.is_empty() && run.agent != req.agent)
        {
            continue;
        }
        let done = !req.run_id.is_empty() && terminal(&run);
        if tx.send(Ok(update(run))).await.is_err() || done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, state: v1::RunState) -> v1::Run {
        v1::Run {
            id: id.into(),
            agent: "a".into(),
            state: state as i32,
            ..Default::default()
        }
    }

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap());
        (dir, store)
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_how_many_updates_it_missed() {
        let (_dir, store) = store().await;
        let (updates, rx) = broadcast::channel(16);
        // Published before the watcher reads any: more than the broadcast holds.
        for i in 0..100 {
            updates
                .send(run(&format!("r{i}"), v1::RunState::Running))
                .unwrap();
        }
        let (tx, mut out) = mpsc::channel(256);
        let watcher = tokio::spawn(forward(
            rx,
            store,
            v1::WatchRunsRequest::default(),
            None,
            tx,
        ));
        let first = out.recv().await.unwrap().unwrap();
        assert!(first.run.is_none());
        assert_eq!(first.missed, 84, "100 sent, the 16 newest kept");
        let next = out.recv().await.unwrap().unwrap();
        assert_eq!(next.run.unwrap().id, "r84");
        assert_eq!(next.missed, 0);
        drop(updates);
        for _ in 0..15 {
            out.recv().await.unwrap().unwrap();
        }
        assert!(out.recv().await.is_none(), "the stream ends with the fleet");
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_watcher_of_one_run_that_falls_behind_gets_the_run_as_stored() {
        let (_dir, store) = store().await;
        store
            .insert_run(&run("mine", v1::RunState::Succeeded))
            .await
            .unwrap();
        let (updates, rx) = broadcast::channel(16);
        updates.send(run("mine", v1::RunState::Running)).unwrap();
        for i in 0..100 {
            updates
                .send(run(&format!("other{i}"), v1::RunState::Running))
                .unwrap();
        }
        let (tx, mut out) = mpsc::channel(256);
        let req = v1::WatchRunsRequest {
            run_id: "mine".into(),
            ..Default::default()
        };
        tokio::spawn(forward(rx, store, req, None, tx));
        let got = out.recv().await.unwrap().unwrap().run.unwrap();
        assert_eq!(got.id, "mine");
        assert_eq!(
            got.state,
            v1::RunState::Succeeded as i32,
            "its end was not missed"
        );
        assert!(out.recv().await.is_none(), "the watch ends with the run");
    }
}
