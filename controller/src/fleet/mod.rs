//! The controller's live view of the fleet: which agents hold a session, the runs they were
//! sent, and how agent events change those runs.
//!
//! Delivery (at least once; the agent executes a run id at most once): a run is stored before it
//! is sent; a `StartRun` is (re)sent whenever the agent's session (re)opens while the run is
//! `pending` or `dispatched`; the agent dedups by run id. Agent events are applied to runs and
//! stored in one transaction per batch, and only then acknowledged, so an acknowledged event is
//! never lost.
//!
//! The `impl Fleet` is split by concern: the session table and liveness (`sessions.rs`), sending
//! commands to agents (`dispatch.rs`), creating, approving and cancelling runs (`runs.rs`), agent
//! events and how runs end (`events.rs`), pauses and drains (`holds.rs`), periodic housekeeping
//! (`sweep.rs`). `session_protocol.rs` is the controller's half of an agent's session stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use syncfleet_proto::sync::lock;

use syncfleet_proto::v1;
use tokio::sync::broadcast;

use crate::store::Store;

mod autonomy;
mod batch;
pub mod changes;
mod dispatch;
mod error;
mod events;
mod fanout;
mod holds;
mod locks;
mod lost_watch;
mod outcomes;
mod runs;
pub mod session_protocol;
mod sessions;
mod sweep;

pub use batch::Created;
pub use error::FleetError;
pub use events::apply_event;
pub use fanout::{FanOut, MAX_AGENTS_PER_CALL, Plan, Refusal, Selection};
pub use holds::{RunBlocked, fleet_status, set_drain, set_fleet_pause};
pub use outcomes::Outcomes;
pub use runs::{NewRun, start_sequence, steps_of};
pub use sessions::{Housekeeping, SessionTx};
use sessions::{Live, Session};

/// Timing settings the fleet logic needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub agent_lost_after: Duration,
    pub pending_deadline: Duration,
}

/// Shared controller state.
pub struct Fleet {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    sessions: std::sync::Mutex<HashMap<String, Session>>,
    live: std::sync::Mutex<HashMap<String, Live>>,
    updates: broadcast::Sender<v1::Run>,
    /// Per-run locks for read-modify-write of runs (agent events, cancels, the sweeper,
    /// dispatch); runs of different agents do not wait for each other (`locks.rs`).
    run_locks: locks::RunLocks,
    next_session: AtomicU64,
    /// Pending export counters from the agents' heartbeats (for `/metrics`).
    pub pending_exports: crate::pending::HeartbeatPending,
    /// What store retention pruned (for `/metrics`; `crate::retention`).
    pub retention: crate::retention::RetentionStats,
    /// Agent autonomy: nominal times agents covered on their own, connected agents to send
    /// schedule sets to (`autonomy.rs`).
    autonomy: autonomy::Handover,
    /// Ended scheduled runs, kept until the scheduler acts on them (`outcomes.rs`).
    outcomes: Outcomes,
    /// Agents stored disconnected, in the order they become lost (`lost_watch.rs`).
    lost_watch: lost_watch::LostWatch,
    /// Change records that moved, for the scheduler (`changes.rs`).
    changes: changes::ChangeReports,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

fn state_of(run: &v1::Run) -> v1::RunState {
    v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified)
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Arc<Self> {
        let (updates, _) = broadcast::channel(4096);
        Arc::new(Self {
            store,
            settings,
            sessions: std::sync::Mutex::new(HashMap::new()),
            live: std::sync::Mutex::new(HashMap::new()),
            updates,
            run_locks: locks::RunLocks::default(),
            next_session: AtomicU64::new(1),
            pending_exports: crate::pending::HeartbeatPending::default(),
            retention: crate::retention::RetentionStats::default(),
            autonomy: autonomy::Handover::default(),
            outcomes: Outcomes::default(),
            lost_watch: lost_watch::LostWatch::default(),
            changes: changes::ChangeReports::default(),
        })
    }

    /// Subscribe to run changes (each message is the run as it is now).
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Run> {
        self.updates.subscribe()
    }

    /// Every change of a run is published here, as the run is now (stored first): to the
    /// broadcast (watchers, metrics, notifications; a reader that falls behind is told how
    /// many it missed) and, for an ended scheduled run, to the scheduler's [`Outcomes`], which
    /// loses nothing.
    pub(crate) fn publish(&self, run: &v1::Run) {
        self.outcomes.record(run);
        // No subscribers is fine.
        let _ = self.updates.send(run.clone());
    }

    /// Ended scheduled runs for the scheduler (`outcomes.rs`).
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }
}

#[cfg(test)]
mod fixtures {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use syncfleet_proto::v1;

    use super::{Fleet, Settings};
    use crate::store::Store;

    /// A fleet on a new SQLite store in `dir` that knows agent `a` (never connected); runs wait
    /// one second for their agent.
    pub(super) async fn fleet(dir: &Path) -> (Arc<Fleet>, Arc<dyn Store>) {
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.join("c.db")).unwrap());
        store
            .put_agent(&v1::Agent {
                name: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let fleet = Fleet::new(
            Arc::clone(&store),
            Settings {
                heartbeat_interval: Duration::from_secs(1),
                agent_lost_after: Duration::from_secs(60),
                pending_deadline: Duration::from_secs(1),
            },
        );
        (fleet, store)
    }

    /// A dispatched run of agent `a` with two waiting steps.
    pub(super) fn run() -> v1::Run {
        v1::Run {
            id: "r".into(),
            agent: "a".into(),
            state: v1::RunState::Dispatched as i32,
            steps: vec![
                v1::Step {
                    index: 0,
                    ma: "AD".into(),
                    profile: "Delta Import".into(),
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                },
                v1::Step {
                    index: 1,
                    ma: "AD".into(),
                    profile: "Delta Sync".into(),
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }
}
