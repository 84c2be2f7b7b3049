//! Executes runs against the engine while enforcing the engine's concurrency rules locally: the
//! agent is the last line of defence, whatever the controller asks (the rules are in
//! `docs/engine.md`, "Concurrency rules").
//!
//! The rules, and the file that keeps each:
//! - one run profile per management agent at a time: a per-MA lock (`locks.rs`);
//! - never two synchronizations at once, and a MIM Service MA delta import counts as a
//!   synchronization. How much else may overlap depends on the [`RunMode`] (Lithnet AutoSync's
//!   modes): `supported` (default: while a synchronization runs nothing else runs; imports and
//!   exports may overlap each other), `unsupported` (imports/exports may overlap a
//!   synchronization) and `exclusive` (one step at a time). The gate is write-preferring, so a
//!   waiting synchronization drains running imports and holds new ones back instead of starving
//!   (`locks.rs`);
//! - at least `stagger` between two starts on one server (AutoSync's 1 s, `locks.rs`);
//! - runs started outside syncfleet are detected before each step and waited for: a run in
//!   progress on *any* MA that this process did not start holds the locks its step would hold
//!   (its MA; the gate when it is sync-class, a MIM Service MA import included), and the waiting
//!   step says which run it waits for (`locks.rs`);
//! - the engine's busy refusals (`no-start-ma-already-running`, 0x8023063d) are waited out and
//!   retried, never reported as failures (`step.rs`); results listed in the retry policy (default
//!   `stopped-deadlocked`, 5 retries, 5 s × attempt with jitter, as AutoSync) are retried;
//!   guard-rail stops never are: they exist to stop a dangerous change (`retry.rs`);
//! - a watchdog stops a step that outlives its maximum duration through the engine and reports a
//!   clear result; if the engine does not stop it, the agent reports the engine unhealthy
//!   instead of waiting forever: a frozen engine can keep a run "in progress" indefinitely
//!   (`step.rs`).
//!
//! A run's plan and its `only_if` conditions are in `plan.rs`, guard rails in `guard.rs`, the run
//! as a whole in `run.rs`, runs interrupted by an agent restart in `recover.rs`.
//!
//! Every state change becomes an [`v1::AgentEvent`] in the journal's outbox before anything else
//! learns of it.

mod counters;
mod guard;
mod locks;
mod plan;
mod recover;
mod retry;
mod run;
mod step;

#[cfg(test)]
mod journal_failure_tests;
#[cfg(test)]
pub(crate) mod testkit;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncfleet_proto::sync::lock;

use serde::{Deserialize, Serialize};
use syncfleet_proto::v1::{self, agent_event::Kind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backlog::{JournalOp, JournalWriter};
use crate::engine::{EngineHealth, MaInfo, SyncEngine};
use crate::journal::Journal;

pub use counters::{pending_to_proto, to_proto_counters};
pub use locks::RunMode;
pub use retry::RetryPolicy;

/// Tunables of the executor (the agent configuration's `[executor]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorOptions {
    pub run_mode: RunMode,
    /// Minimum time between two step starts on this server.
    #[serde(with = "humantime_serde")]
    pub stagger: Duration,
    /// How often to re-check an MA busy with a run started elsewhere, or a busy engine.
    #[serde(with = "humantime_serde")]
    pub busy_poll: Duration,
    /// How long a step keeps waiting for a busy MA or engine before it gives up.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Longest a step may run before the watchdog stops it.
    #[serde(with = "humantime_serde")]
    pub watchdog: Duration,
    /// How long the engine gets to end a step after `Stop`.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Minimum interval between two progress events of one step.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    pub retry: RetryPolicy,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            run_mode: RunMode::Supported,
            stagger: Duration::from_secs(1),
            busy_poll: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(3600),
            watchdog: Duration::from_secs(4 * 3600),
            stop_timeout: Duration::from_secs(60),
            progress_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        }
    }
}

struct RunHandle {
    cancel: CancellationToken,
}

/// Shared executor of one agent.
pub struct Executor {
    engine: Arc<dyn SyncEngine>,
    journal: Arc<Journal>,
    /// Every write to the journal goes through it: what the journal refuses is held in order.
    writer: Arc<JournalWriter>,
    opts: ExecutorOptions,
    inventory: Mutex<Vec<MaInfo>>,
    ma_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Supported/exclusive modes: synchronizations write, others read.
    gate: tokio::sync::RwLock<()>,
    /// Unsupported mode: only synchronizations (and MIM Service delta imports) take it.
    sync_only: tokio::sync::Mutex<()>,
    last_start: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    runs: Mutex<HashMap<String, RunHandle>>,
    /// Engine runs (MA, run number) of steps started by an earlier agent process that is being
    /// completed ([`Executor::recover_interrupted`]), with their run ids: they hold their locks
    /// like a run started outside syncfleet, and a waiting step names them.
    recovering: Mutex<HashMap<(String, u64), String>>,
    /// MAs on which a step of this process has called (or is about to call) `Execute`: a run
    /// in progress on any other MA was started outside syncfleet (or by an earlier agent
    /// process) and holds the locks its step would hold.
    executing: Arc<Mutex<HashSet<String>>>,
    /// Set when a step could not be stopped: the engine is considered frozen until it is idle.
    stuck: Arc<Mutex<Option<String>>>,
    /// Whether the last [`Executor::health`] found the engine unhealthy: the change is logged
    /// once each way, not at every probe.
    unhealthy: std::sync::atomic::AtomicBool,
    /// Every run that ends, with its state: the autonomy task pauses a schedule locally when
    /// one of its runs ends `held`.
    ended: tokio::sync::broadcast::Sender<(String, v1::RunState)>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    pub fn new(
        engine: Arc<dyn SyncEngine>,
        journal: Arc<Journal>,
        outbox: Arc<Notify>,
        opts: ExecutorOptions,
    ) -> Self {
        Self {
            engine,
            writer: JournalWriter::new(Arc::clone(&journal), outbox),
            journal,
            opts,
            inventory: Mutex::new(Vec::new()),
            ma_locks: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            sync_only: tokio::sync::Mutex::new(()),
            last_start: tokio::sync::Mutex::new(None),
            runs: Mutex::new(HashMap::new()),
            executing: Arc::new(Mutex::new(HashSet::new())),
            recovering: Mutex::new(HashMap::new()),
            stuck: Arc::new(Mutex::new(None)),
            unhealthy: std::sync::atomic::AtomicBool::new(false),
            ended: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Runs ending from now on, with their final state.
    pub fn subscribe_ended(&self) -> tokio::sync::broadcast::Receiver<(String, v1::RunState)> {
        self.ended.subscribe()
    }

    /// Refresh the engine inventory used to classify steps; returns it.
    pub async fn refresh_inventory(&self) -> Result<Vec<MaInfo>, crate::engine::EngineError> {
        let inv = self.engine.inventory().await?;
        lock(&self.inventory).clone_from(&inv);
        Ok(inv)
    }

    /// The inventory read by the last [`refresh_inventory`](Self::refresh_inventory) (empty
    /// before the first one, or when the engine could not be asked).
    pub fn inventory(&self) -> Vec<MaInfo> {
        lock(&self.inventory).clone()
    }

    /// Run ids executing now.
    pub fn runs_in_flight(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.runs).keys().cloned().collect();
        v.sort();
        v
    }

    /// Engine health as the agent sees it: the engine's own probe, overridden by a step the
    /// watchdog could not stop. A change to unhealthy is logged as an error (event id
    /// [`EngineUnhealthy`](crate::event_ids::EventId::EngineUnhealthy)), the way back once.
    pub async fn health(&self) -> EngineHealth {
        let stuck = lock(&self.stuck).clone();
        let health = match stuck {
            Some(detail) => EngineHealth {
                healthy: false,
                detail,
            },
            None => self.engine.health().await,
        };
        let was_unhealthy = self
            .unhealthy
            .swap(!health.healthy, std::sync::atomic::Ordering::Relaxed);
        if !health.healthy && !was_unhealthy {
            tracing::error!(
                event_id = crate::event_ids::EventId::EngineUnhealthy.code(),
                detail = %health.detail,
                "sync engine unhealthy"
            );
        } else if health.healthy && was_unhealthy {
            tracing::info!("sync engine healthy again");
        }
        health
    }

    /// Journal an event and wake the session sender. An event the journal refuses is held in
    /// memory, in order, and written when it can be ([`JournalWriter`]); execution goes on
    /// (the engine is already acting).
    pub(super) fn emit(&self, run_id: &str, kind: Kind) {
        crate::telemetry::on_event(run_id, &kind);
        self.writer.write(JournalOp::Event {
            run_id: run_id.to_string(),
            kind: Box::new(kind),
            at: syncfleet_proto::time::now(),
        });
    }

    /// Why the agent cannot record runs now (its journal cannot be written), or `None`. While
    /// this is `Some`, new runs must be refused and the agent reported unhealthy.
    pub fn journal_problem(&self) -> Option<String> {
        self.writer.problem()
    }

    pub(super) fn waiting(&self, run_id: &str, index: u32, reason: String) {
        self.emit(run_id, Kind::StepWaiting(v1::StepWaiting { index, reason }));
    }

    /// Start executing an accepted run in the background.
    pub fn start(self: &Arc<Self>, run: v1::StartRun) {
        let cancel = CancellationToken::new();
        lock(&self.runs).insert(
            run.run_id.clone(),
            RunHandle {
                cancel: cancel.clone(),
            },
        );
        let this = Arc::clone(self);
        let span = crate::telemetry::run_span(&run);
        tokio::spawn(async move {
            let run_id = run.run_id.clone();
            tracing::Instrument::instrument(this.execute_run(run, cancel), span).await;
            lock(&this.runs).remove(&run_id);
        });
    }

    /// Cancel a run: returns false when it is not executing here.
    pub fn cancel(&self, run_id: &str) -> bool {
        match lock(&self.runs).get(run_id) {
            Some(h) => {
                h.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub(super) async fn sleep_or_cancel(&self, d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = cancel.cancelled() => false,
        }
    }
}
