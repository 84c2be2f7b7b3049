//! Executes runs against the engine while enforcing the engine's concurrency rules locally
//! (design decision 3: the agent is the last line of defence).
//!
//! Rules, from the domain brief §6:
//! - one run profile per management agent at a time (§6.3): a per-MA lock;
//! - never two synchronizations at once, and in the default *supported* mode nothing else runs
//!   while a synchronization runs (§6.1, §6.4): a write-preferring read/write gate, where
//!   sync-class steps take the write side and imports/exports the read side, so a waiting
//!   synchronization drains running imports and holds back new ones;
//! - a MIM Service MA delta import counts as sync-class (§6.4 rule 2);
//! - at least `stagger` between two starts on one server (§6.5);
//! - runs started outside syncfleet are detected before each step and waited for (§6.8);
//! - the engine's own busy refusals (`no-start-ma-already-running`, 0x8023063d) are waited out
//!   and retried, never reported as failures (§3.5).
//!
//! Every state change becomes an [`v1::AgentEvent`] in the journal's outbox before anything else
//! learns of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineProgress, MaInfo, MaStatus, SyncEngine};
use crate::journal::Journal;
use crate::runhistory;

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Minimum time between two step starts on this server (AutoSync: 1 s).
    pub stagger: Duration,
    /// How often to re-check an MA busy with a run started outside syncfleet.
    pub busy_poll: Duration,
    /// How long to keep retrying an engine busy refusal before giving up on the step.
    pub busy_timeout: Duration,
    /// Minimum interval between two progress events of one step.
    pub progress_interval: Duration,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            stagger: Duration::from_secs(1),
            busy_poll: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(3600),
            progress_interval: Duration::from_secs(1),
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
    outbox: Arc<Notify>,
    opts: ExecutorOptions,
    inventory: Mutex<Vec<MaInfo>>,
    ma_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    sync_gate: tokio::sync::RwLock<()>,
    last_start: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    runs: Mutex<HashMap<String, RunHandle>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // These mutexes guard plain maps updated in single statements; a poisoned one is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Convert parsed run-history counters to the protocol's form.
pub fn to_proto_counters(
    counters: &BTreeMap<String, u64>,
    outbound: &BTreeMap<String, BTreeMap<String, u64>>,
) -> v1::StepCounters {
    v1::StepCounters {
        counters: counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        outbound: outbound
            .iter()
            .map(|(ma, set)| {
                (
                    ma.clone(),
                    v1::CounterSet {
                        values: set.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    },
                )
            })
            .collect(),
    }
}

/// Sum the counters of every step of a run (a run profile may have several steps).
fn summarize(details: &runhistory::RunDetails) -> (v1::StepCounters, Option<String>, u64) {
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut outbound: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut errors = 0;
    let mut connection = None;
    for step in &details.steps {
        for (k, v) in &step.counters {
            *counters.entry(k.clone()).or_default() += v;
        }
        for (ma, set) in &step.outbound {
            let target = outbound.entry(ma.clone()).or_default();
            for (k, v) in set {
                *target.entry(k.clone()).or_default() += v;
            }
        }
        errors += step.errors.count;
        if step.connection_result.is_some() {
            connection.clone_from(&step.connection_result);
        }
    }
    (to_proto_counters(&counters, &outbound), connection, errors)
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
            journal,
            outbox,
            opts,
            inventory: Mutex::new(Vec::new()),
            ma_locks: Mutex::new(HashMap::new()),
            sync_gate: tokio::sync::RwLock::new(()),
            last_start: tokio::sync::Mutex::new(None),
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// Refresh the engine inventory used to classify steps; returns it.
    pub async fn refresh_inventory(&self) -> Result<Vec<MaInfo>, crate::engine::EngineError> {
        let inv = self.engine.inventory().await?;
        *lock(&self.inventory) = inv.clone();
        Ok(inv)
    }

    /// Run ids executing now.
    pub fn runs_in_flight(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.runs).keys().cloned().collect();
        v.sort();
        v
    }

    /// Journal an event and wake the session sender. A journal failure is logged: the event
    /// cannot be delivered, but execution goes on (the engine is already acting).
    fn emit(&self, run_id: &str, kind: Kind) {
        match self.journal.append(run_id, kind) {
            Ok(_) => self.outbox.notify_one(),
            Err(e) => tracing::error!(run_id, error = %e, "cannot journal a run event"),
        }
    }

    /// Record as `unknown` every run a previous agent process accepted and did not finish: its
    /// execution ended with that process, and the engine's outcome was not observed.
    pub fn recover_interrupted(&self) -> Result<usize, crate::journal::JournalError> {
        let runs = self.journal.unfinished_runs()?;
        for run in &runs {
            tracing::warn!(run_id = %run.run_id, "run was interrupted by an agent restart");
            self.emit(
                &run.run_id,
                Kind::RunFinished(v1::RunFinished {
                    state: v1::RunState::Unknown as i32,
                    result: String::new(),
                    message: "the agent restarted while this run was in progress; its outcome was not observed and it will not be started again".into(),
                }),
            );
            self.journal.finish_run(&run.run_id)?;
        }
        Ok(runs.len())
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
        tokio::spawn(async move {
            let run_id = run.run_id.clone();
            this.execute_run(run, cancel).await;
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

    fn is_sync_class(&self, ma: &str, profile: &str) -> bool {
        let inv = lock(&self.inventory);
        let Some(info) = inv.iter().find(|m| m.name == ma) else {
            return false;
        };
        let Some(p) = info.profile(profile) else {
            return false;
        };
        p.steps
            .iter()
            .any(|s| s.is_sync() || (info.is_mim_service() && s.step_type == "delta-import"))
    }

    fn ma_lock(&self, ma: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.ma_locks).entry(ma.to_string()).or_default())
    }

    async fn stagger(&self) {
        let mut last = self.last_start.lock().await;
        if let Some(t) = *last {
            tokio::time::sleep_until(t + self.opts.stagger).await;
        }
        *last = Some(tokio::time::Instant::now());
    }

    async fn execute_run(&self, run: v1::StartRun, cancel: CancellationToken) {
        let run_id = run.run_id.clone();
        self.emit(&run_id, Kind::RunStarted(v1::RunStarted {}));
        let mut results: Vec<String> = Vec::new();
        let mut stopped_early = false;
        let mut cancelled = false;
        for (i, step) in run.steps.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            if cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            let outcome = self.execute_step(&run_id, index, step, &cancel).await;
            match outcome {
                StepOutcome::Finished(result) => {
                    let class = vocab::classify(&result);
                    results.push(result);
                    if cancel.is_cancelled() {
                        cancelled = true;
                        break;
                    }
                    if !class.lets_next_step_run() {
                        stopped_early = i + 1 < run.steps.len();
                        break;
                    }
                }
                StepOutcome::Cancelled => {
                    cancelled = true;
                    break;
                }
            }
        }
        let refs: Vec<&str> = results.iter().map(String::as_str).collect();
        let result = vocab::most_severe(refs.iter().copied())
            .unwrap_or_default()
            .to_string();
        let (state, message) = if cancelled {
            (v1::RunState::Cancelled, "cancelled on request".to_string())
        } else {
            let all_ran = results.len() == run.steps.len();
            let state = vocab::run_state_for(&refs, all_ran);
            let message = if stopped_early {
                let last = results.len();
                format!(
                    "step {last} ended with {:?}; later steps were not run",
                    results.last().map(String::as_str).unwrap_or_default()
                )
            } else {
                String::new()
            };
            (state, message)
        };
        self.emit(
            &run_id,
            Kind::RunFinished(v1::RunFinished {
                state: state as i32,
                result,
                message,
            }),
        );
        if let Err(e) = self.journal.finish_run(&run_id) {
            tracing::error!(run_id, error = %e, "cannot mark run finished in the journal");
        }
    }

    async fn wait_or_cancel(&self, d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = cancel.cancelled() => false,
        }
    }

    async fn execute_step(
        &self,
        run_id: &str,
        index: u32,
        step: &v1::StepSpec,
        cancel: &CancellationToken,
    ) -> StepOutcome {
        let sync_class = self.is_sync_class(&step.ma, &step.profile);
        let ma_lock = self.ma_lock(&step.ma);
        let busy_since = tokio::time::Instant::now();
        loop {
            // Per-MA exclusivity first, then the server-wide synchronization gate (always in this
            // order, so two runs can never wait on each other).
            let guard = tokio::select! {
                g = ma_lock.lock() => g,
                () = cancel.cancelled() => return StepOutcome::Cancelled,
            };
            let (_read, _write);
            if sync_class {
                _write = tokio::select! {
                    g = self.sync_gate.write() => g,
                    () = cancel.cancelled() => return StepOutcome::Cancelled,
                };
            } else {
                _read = tokio::select! {
                    g = self.sync_gate.read() => g,
                    () = cancel.cancelled() => return StepOutcome::Cancelled,
                };
            }
            // A run started outside syncfleet (Sync Service Manager, a script) holds the MA.
            match self.engine.status(&step.ma).await {
                Ok(MaStatus::InProgress { profile, .. }) => {
                    drop(guard);
                    self.emit(
                        run_id,
                        Kind::StepWaiting(v1::StepWaiting {
                            index,
                            reason: format!(
                                "MA {} is running {profile:?}, started outside syncfleet; waiting for it to end",
                                step.ma
                            ),
                        }),
                    );
                    if !self.wait_or_cancel(self.opts.busy_poll, cancel).await {
                        return StepOutcome::Cancelled;
                    }
                    continue;
                }
                Ok(MaStatus::Idle) => {}
                Err(e) => {
                    return self.finish_step(
                        run_id,
                        index,
                        step,
                        engine_error_result(&e),
                        None,
                        e.to_string(),
                    );
                }
            }
            self.stagger().await;
            let started_at = syncfleet_proto::time::now();
            self.emit(
                run_id,
                Kind::StepStarted(v1::StepStarted {
                    index,
                    ma: step.ma.clone(),
                    profile: step.profile.clone(),
                    run_number: 0,
                }),
            );
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let exec = self.engine.execute(&step.ma, &step.profile, tx);
            let forward = self.forward_progress(run_id, index, rx);
            tokio::pin!(exec);
            tokio::pin!(forward);
            let mut stop_sent = false;
            let outcome = loop {
                tokio::select! {
                    out = &mut exec => break out,
                    () = &mut forward => {}
                    () = cancel.cancelled(), if !stop_sent => {
                        stop_sent = true;
                        match self.engine.stop(&step.ma).await {
                            Ok(s) => tracing::info!(run_id, ma = %step.ma, result = %s, "stop requested"),
                            Err(e) => tracing::warn!(run_id, ma = %step.ma, error = %e, "stop failed"),
                        }
                    }
                }
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    return self.finish_step(
                        run_id,
                        index,
                        step,
                        engine_error_result(&e),
                        None,
                        e.to_string(),
                    );
                }
            };
            match vocab::classify(&outcome.result) {
                ResultClass::Busy
                    if !stop_sent && busy_since.elapsed() < self.opts.busy_timeout =>
                {
                    drop(guard);
                    self.emit(
                        run_id,
                        Kind::StepWaiting(v1::StepWaiting {
                            index,
                            reason: format!(
                                "engine refused to start ({}); waiting and retrying",
                                outcome.result
                            ),
                        }),
                    );
                    if !self.wait_or_cancel(self.opts.busy_poll, cancel).await {
                        return StepOutcome::Cancelled;
                    }
                    continue;
                }
                _ => {}
            }
            let mut result = outcome.result.clone();
            if vocab::classify(&result) == ResultClass::Transitional {
                // Execute can return while the engine is still completing (§3.2): wait for idle.
                while let Ok(MaStatus::InProgress { .. }) = self.engine.status(&step.ma).await {
                    tokio::time::sleep(self.opts.busy_poll).await;
                }
            }
            let mut counters = v1::StepCounters::default();
            let mut connection_result = String::new();
            let mut error_count = 0;
            let mut detail = String::new();
            if let Some(n) = outcome.run_number {
                match self.engine.run_details(&step.ma, n).await {
                    Ok(xml) => match runhistory::parse_one(&xml) {
                        Ok(details) => {
                            let (c, conn, errs) = summarize(&details);
                            counters = c;
                            connection_result = conn.unwrap_or_default();
                            error_count = errs;
                            if vocab::classify(&result) == ResultClass::Transitional
                                && let Some(r) = details.result()
                            {
                                result = r.to_string();
                            }
                        }
                        Err(e) => detail = format!("run history of run {n} unreadable: {e}"),
                    },
                    Err(e) => detail = format!("run history of run {n} unavailable: {e}"),
                }
            }
            self.emit(
                run_id,
                Kind::StepFinished(v1::StepFinished {
                    index,
                    result: result.clone(),
                    started_at: Some(started_at),
                    finished_at: Some(syncfleet_proto::time::now()),
                    counters: Some(counters),
                    run_number: outcome.run_number.unwrap_or(0),
                    connection_result,
                    error_count,
                    detail,
                }),
            );
            drop(guard);
            return StepOutcome::Finished(result);
        }
    }

    fn finish_step(
        &self,
        run_id: &str,
        index: u32,
        _step: &v1::StepSpec,
        result: String,
        run_number: Option<u64>,
        detail: String,
    ) -> StepOutcome {
        let now = syncfleet_proto::time::now();
        self.emit(
            run_id,
            Kind::StepFinished(v1::StepFinished {
                index,
                result: result.clone(),
                started_at: Some(now),
                finished_at: Some(now),
                counters: None,
                run_number: run_number.unwrap_or(0),
                connection_result: String::new(),
                error_count: 0,
                detail,
            }),
        );
        StepOutcome::Finished(result)
    }

    /// Forward engine progress as throttled StepProgress events. Never completes: the caller
    /// stops polling it when the engine's execute returns.
    async fn forward_progress(
        &self,
        run_id: &str,
        index: u32,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<EngineProgress>,
    ) {
        let mut last: Option<tokio::time::Instant> = None;
        while let Some(p) = rx.recv().await {
            if last.is_some_and(|t| t.elapsed() < self.opts.progress_interval) {
                continue;
            }
            last = Some(tokio::time::Instant::now());
            let counters = p
                .details_xml
                .as_deref()
                .and_then(|x| runhistory::parse_one(x).ok())
                .map(|d| summarize(&d).0);
            self.emit(
                run_id,
                Kind::StepProgress(v1::StepProgress {
                    index,
                    progress: p.progress.unwrap_or_default(),
                    counters,
                }),
            );
        }
        // The engine is done with this step; park until the select above sees its result.
        std::future::pending::<()>().await;
    }
}

/// The result string recorded when the driver itself failed (no engine string exists).
fn engine_error_result(e: &crate::engine::EngineError) -> String {
    match e {
        crate::engine::EngineError::NoSuchMa(_) => "no-start-ma".into(),
        crate::engine::EngineError::Unavailable(_) => "connection-failure".into(),
        _ => "call-failure".into(),
    }
}

enum StepOutcome {
    Finished(String),
    Cancelled,
}
