//! Leadership among controllers that share one store.
//!
//! With the SQLite store there is one controller, always the leader with epoch 1
//! ([`Leadership::single`]). With PostgreSQL, controllers compete for one lease row
//! ([`Leadership::start`]): the holder is the leader and runs the leader-only work (the
//! scheduler, dispatch, the sweeper, agent sessions); the others are followers that serve the
//! operator API from the store. The lease loop renews every `lease_ttl / 3`; a follower takes
//! the lease once it has expired (database clock), with a new epoch. The leader steps down at
//! once when the lease is gone, when one of its fenced writes is refused
//! ([`crate::store::fence`]), or when it could not renew for a whole `lease_ttl`.
//!
//! Followers wake the leader after a mutation it has to act on ([`Wake`], PostgreSQL
//! `LISTEN`/`NOTIFY`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::postgres::PgStore;

/// Where this controller stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    /// This controller holds the lease.
    pub leader: bool,
    /// The lease's epoch as last seen (this controller's own when leader; 0 never held).
    pub epoch: i64,
    /// The leader's address for agents (`advertise_url`); empty when no leader is known.
    pub leader_url: String,
}

impl LeaderState {
    /// `leader` or `follower`.
    pub fn role(&self) -> &'static str {
        if self.leader { "leader" } else { "follower" }
    }
}

/// Settings of the lease loop.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Unique per controller process.
    pub holder: String,
    /// Stored in the lease for followers to send agents to.
    pub advertise_url: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
}

/// What a follower asks the leader to do after storing a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Re-read schedules (documents applied or deleted, a schedule paused or resumed).
    Reload,
    /// Dispatch due pending runs now (a run started or approved on a follower; the leader's
    /// sweeper would within a second anyway).
    Dispatch,
    /// Send the cancel command of this run (its cancellation is stored).
    Cancel(String),
}

impl Wake {
    /// The `NOTIFY` payload.
    pub fn payload(&self) -> String {
        match self {
            Wake::Reload => "reload".into(),
            Wake::Dispatch => "dispatch".into(),
            Wake::Cancel(id) => format!("cancel:{id}"),
        }
    }

    /// A payload of [`Wake::payload`]; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Wake> {
        match payload.split_once(':') {
            None if payload == "reload" => Some(Wake::Reload),
            None if payload == "dispatch" => Some(Wake::Dispatch),
            Some(("cancel", id)) if !id.is_empty() => Some(Wake::Cancel(id.into())),
            _ => None,
        }
    }
}

/// A controller's view of its leadership: a watch of [`LeaderState`].
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<LeaderState>,
    /// Keeps the channel open for [`Leadership::single`].
    _tx: Option<Arc<watch::Sender<LeaderState>>>,
    pg: Option<PgStore>,
}

impl Leadership {
    /// The only controller of its store: leader with epoch 1, for good.
    pub fn single() -> Self {
        let (tx, rx) = watch::channel(LeaderState {
            leader: true,
            epoch: 1,
            leader_url: String::new(),
        });
        Self {
            rx,
            _tx: Some(Arc::new(tx)),
            pg: None,
        }
    }

    /// Compete for the lease of `store` until `shutdown` (then a held lease is released, so
    /// that another controller takes over without waiting for the TTL).
    pub fn start(store: PgStore, settings: LeaseSettings, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(LeaderState {
            leader: false,
            epoch: 0,
            leader_url: String::new(),
        });
        tokio::spawn(lease_loop(store.clone(), settings, tx, shutdown));
        Self {
            rx,
            _tx: None,
            pg: Some(store),
        }
    }

    pub fn state(&self) -> LeaderState {
        self.rx.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.rx.borrow().leader
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.rx.clone()
    }

    /// The shared store, when there can be other controllers.
    pub fn shared_store(&self) -> Option<&PgStore> {
        self.pg.as_ref()
    }

    /// After a follower stored a mutation: wake the leader (nothing to do on the leader or a
    /// single controller). A failed notification is logged: the leader's periodic work (the
    /// sweeper each second) still picks up pending runs.
    pub async fn wake_leader(&self, wake: Wake) {
        if self.is_leader() {
            return;
        }
        if let Some(pg) = &self.pg
            && let Err(e) = pg.notify_leader(&wake.payload()).await
        {
            tracing::warn!(error = %e, wake = %wake.payload(), "cannot wake the leader");
        }
    }
}

/// `syncfleet-controller status`: the store, the leader lease as stored, and this controller's
/// role (it leads when the live lease carries its `advertise_url`). Read from the store, so it
/// works whether or not this controller runs.
pub async fn status_report(cfg: &crate::config::ControllerConfig) -> Result<String, StatusError> {
    use crate::config::StoreLocation;
    match cfg.store_location()? {
        StoreLocation::Sqlite(path) => Ok(format!(
            "store: sqlite:{}\nleader: this controller (epoch 1; a controller on SQLite is the only one)\nrole: leader\n",
            path.display()
        )),
        StoreLocation::Postgres(url) => {
            let store = PgStore::connect(&url).await?;
            let row = store.lease_read().await?;
            let me = cfg.advertise_url();
            let leads = row.live && row.advertise_url == me;
            let leader = if row.live {
                format!("{} (epoch {})", row.advertise_url, row.epoch)
            } else if row.epoch == 0 {
                "none yet (no controller has held the lease)".to_string()
            } else {
                format!(
                    "none (the lease of epoch {} expired; a running controller takes it within lease_ttl / 3)",
                    row.epoch
                )
            };
            Ok(format!(
                "store: {}\nleader: {leader}\nthis controller: {me}\nrole: {}\n",
                crate::store::postgres::redact_url(&url),
                if leads { "leader" } else { "follower" }
            ))
        }
    }
}

/// Why `syncfleet-controller status` could not tell.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn step_down(tx: &watch::Sender<LeaderState>, epoch: i64, reason: &str) {
    tracing::warn!(
        epoch,
        reason,
        "stepping down to follower: {reason}; leader-only work (scheduler, dispatch, sweeper, agent sessions) stops"
    );
    tx.send_modify(|s| {
        s.leader = false;
        s.leader_url.clear();
    });
}

async fn lease_loop(
    store: PgStore,
    settings: LeaseSettings,
    tx: watch::Sender<LeaderState>,
    shutdown: CancellationToken,
) {
    let period = settings.ttl / 3;
    let mut fenced = store.fenced_out();
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        let state = tx.borrow().clone();
        let started = tokio::time::Instant::now();
        if state.leader {
            match store
                .lease_renew(&settings.holder, state.epoch, settings.ttl)
                .await
            {
                Ok(true) => last_renewed = started,
                Ok(false) => step_down(
                    &tx,
                    state.epoch,
                    "the lease was taken by another controller",
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    if started.duration_since(last_renewed) >= settings.ttl {
                        step_down(
                            &tx,
                            state.epoch,
                            "the lease could not be renewed for a whole lease_ttl",
                        );
                    }
                }
            }
        } else {
            match store
                .lease_acquire(&settings.holder, &settings.advertise_url, settings.ttl)
                .await
            {
                Ok(Some(epoch)) => {
                    last_renewed = started;
                    tracing::info!(
                        epoch,
                        advertise_url = %settings.advertise_url,
                        "leadership gained: this controller is the leader"
                    );
                    tx.send_replace(LeaderState {
                        leader: true,
                        epoch,
                        leader_url: settings.advertise_url.clone(),
                    });
                }
                Ok(None) => match store.lease_read().await {
                    Ok(row) => {
                        tx.send_if_modified(|s| {
                            // Never this controller itself (it stepped down while its
                            // lease had not yet expired): agents would come straight back.
                            let url = if row.live && row.holder != settings.holder {
                                row.advertise_url.clone()
                            } else {
                                String::new()
                            };
                            let changed = s.epoch != row.epoch || s.leader_url != url;
                            s.epoch = row.epoch;
                            s.leader_url = url;
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the leader lease"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot take the leader lease"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            changed = fenced.changed() => {
                let refused = *fenced.borrow_and_update();
                let state = tx.borrow().clone();
                if changed.is_ok() && state.leader && refused >= state.epoch {
                    step_down(&tx, state.epoch, "a write was refused because the lease moved on");
                }
            }
            () = shutdown.cancelled() => {
                let state = tx.borrow().clone();
                if state.leader
                    && let Err(e) = store.lease_release(&settings.holder, state.epoch).await
                {
                    tracing::warn!(error = %e, "cannot release the leader lease");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "tests: a failed call fails the test with its error"
    )]
    use super::*;
    use crate::store::{Store, StoreError, fence};
    use syncfleet_tests::postgres::TestPostgres;

    #[test]
    fn wake_payloads_round_trip() {
        for w in [Wake::Reload, Wake::Dispatch, Wake::Cancel("r:2".into())] {
            assert_eq!(Wake::parse(&w.payload()), Some(w));
        }
        assert_eq!(Wake::parse("cancel:"), None);
        assert_eq!(Wake::parse("nonsense"), None);
    }

    /// Acquire, renew, a second holder refused while the lease lives, takeover after expiry
    /// with the next epoch, the old holder's renewal refused, release.
    #[tokio::test]
    async fn lease_acquire_renew_expire_and_take_over() {
        let pg = TestPostgres::shared();
        let store = PgStore::connect(&pg.create_database("lease"))
            .await
            .unwrap();
        let ttl = Duration::from_millis(1500);
        let a = store
            .lease_acquire("a", "https://a:7443", ttl)
            .await
            .unwrap();
        assert_eq!(a, Some(1));
        assert_eq!(
            store
                .lease_acquire("b", "https://b:7443", ttl)
                .await
                .unwrap(),
            None
        );
        assert!(store.lease_renew("a", 1, ttl).await.unwrap());
        let row = store.lease_read().await.unwrap();
        assert_eq!(
            (
                row.holder.as_str(),
                row.epoch,
                row.advertise_url.as_str(),
                row.live
            ),
            ("a", 1, "https://a:7443", true)
        );
        // Not renewed: it expires, and b takes it with a new epoch.
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        assert_eq!(
            store
                .lease_acquire("b", "https://b:7443", ttl)
                .await
                .unwrap(),
            Some(2)
        );
        assert!(!store.lease_renew("a", 1, ttl).await.unwrap());
        assert_eq!(
            store
                .lease_acquire("a", "https://a:7443", ttl)
                .await
                .unwrap(),
            None
        );
        // A clean stop lets the next controller in at once.
        store.lease_release("b", 2).await.unwrap();
        assert_eq!(
            store
                .lease_acquire("a", "https://a:7443", ttl)
                .await
                .unwrap(),
            Some(3)
        );
    }

    /// A write of leader-only work under an epoch that is no longer the lease's is refused
    /// by the database, nothing of it is stored, and the refusal is reported.
    #[tokio::test]
    async fn fenced_write_is_refused_after_the_lease_moved_on() {
        let pg = TestPostgres::shared();
        let store = PgStore::connect(&pg.create_database("fence"))
            .await
            .unwrap();
        let ttl = Duration::from_millis(500);
        let epoch = store.lease_acquire("a", "", ttl).await.unwrap().unwrap();
        let mut refused = store.fenced_out();
        fence::with_epoch(epoch, store.put_state("k/1", b"one"))
            .await
            .unwrap();
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        let newer = store.lease_acquire("b", "", ttl).await.unwrap().unwrap();
        assert_eq!(newer, epoch + 1);
        let err = fence::with_epoch(epoch, store.put_state("k/2", b"two"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Fenced { mine, current } if mine == epoch && current == newer),
            "{err:?}"
        );
        assert!(err.to_string().contains("steps down"), "{err}");
        assert_eq!(store.get_state("k/2").await.unwrap(), None);
        assert!(refused.has_changed().unwrap());
        assert_eq!(*refused.borrow_and_update(), epoch);
        // The new leader's writes, and unfenced operator writes, go through.
        fence::with_epoch(newer, store.put_state("k/3", b"three"))
            .await
            .unwrap();
        store.put_state("k/4", b"four").await.unwrap();
        assert_eq!(
            store.get_state("k/3").await.unwrap(),
            Some(b"three".to_vec())
        );
    }

    /// A refused fenced write makes the leader step down at once, not at its next renewal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_write_steps_the_leader_down_at_once() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("stepdown");
        let store = PgStore::connect(&url).await.unwrap();
        let stop = CancellationToken::new();
        // A long TTL: the next renewal is 20 s away.
        let leadership = Leadership::start(
            store.clone(),
            LeaseSettings {
                holder: "a".into(),
                advertise_url: "https://a:7443".into(),
                ttl: Duration::from_secs(60),
            },
            stop.clone(),
        );
        let mut watch = leadership.subscribe();
        let epoch = watch.wait_for(|s| s.leader).await.unwrap().epoch;
        // Another controller took the lease (as after this one was paused past its TTL).
        pg.psql(
            &url,
            "UPDATE leases SET holder = 'b', epoch = epoch + 1 WHERE name = 'leader'",
        );
        let err = fence::with_epoch(epoch, store.put_state("k", b"v"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
        let stepped = tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|s| !s.leader))
            .await
            .expect("no step-down within 5 s of the refused write")
            .unwrap()
            .clone();
        assert!(!stepped.leader && stepped.epoch >= epoch, "{stepped:?}");
        stop.cancel();
    }

    /// Two lease loops on one database: one leads; when it stops (releasing), the other takes
    /// over with the next epoch; the follower knows the leader's address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_controllers_one_leader_and_takeover() {
        let pg = TestPostgres::shared();
        let url = pg.create_database("loops");
        let ttl = Duration::from_millis(900);
        let settings = |n: &str| LeaseSettings {
            holder: n.into(),
            advertise_url: format!("https://{n}:7443"),
            ttl,
        };
        let stop_a = CancellationToken::new();
        let a = Leadership::start(
            PgStore::connect(&url).await.unwrap(),
            settings("a"),
            stop_a.clone(),
        );
        let mut a_rx = a.subscribe();
        a_rx.wait_for(|s| s.leader).await.unwrap();
        let stop_b = CancellationToken::new();
        let b = Leadership::start(
            PgStore::connect(&url).await.unwrap(),
            settings("b"),
            stop_b.clone(),
        );
        let mut b_rx = b.subscribe();
        let seen = b_rx
            .wait_for(|s| s.leader_url == "https://a:7443")
            .await
            .unwrap()
            .clone();
        assert!(!seen.leader);
        assert_eq!(seen.epoch, a.state().epoch);
        let epoch_a = a.state().epoch;
        stop_a.cancel();
        let b_state = b_rx.wait_for(|s| s.leader).await.unwrap().clone();
        assert_eq!(b_state.epoch, epoch_a + 1);
        stop_b.cancel();
    }
}
