//! Executes runs against the engine while enforcing the engine's concurrency rules locally
//! (design decision 3: the agent is the last line of defence).
//!
//! Rules, from the domain brief §6:
//! - one run profile per management agent at a time (§6.3): a per-MA lock;
//! - never two synchronizations at once (§6.1, §6.2), and a MIM Service MA delta import counts
//!   as a synchronization (§6.4 rule 2). How much else may overlap depends on the [`RunMode`]
//!   (§6.4, Lithnet AutoSync's modes): `supported` (default: while a synchronization runs
//!   nothing else runs; imports and exports may overlap each other), `unsupported`
//!   (imports/exports may overlap a synchronization) and `exclusive` (one step at a time). The
//!   gate is write-preferring, so a waiting synchronization drains running imports and holds new
//!   ones back instead of starving;
//! - at least `stagger` between two starts on one server (§6.5, AutoSync's 1 s);
//! - runs started outside syncfleet are detected before each step and waited for (§6.8): a run
//!   in progress on *any* MA that this process did not start holds the locks its step would
//!   hold (its MA; the gate when it is sync-class, a MIM Service MA import included), and the
//!   waiting step says which run it waits for;
//! - the engine's busy refusals (`no-start-ma-already-running`, 0x8023063d) are waited out and
//!   retried, never reported as failures; results listed in the retry policy (default
//!   `stopped-deadlocked`, 5 retries, 5 s × attempt with jitter, as AutoSync) are retried;
//!   guard-rail stops never are (§3.5);
//! - a watchdog stops a step that outlives its maximum duration through the engine and reports a
//!   clear result; if the engine does not stop it, the agent reports the engine unhealthy
//!   instead of waiting forever (AutoSync issues #157, #186 in §7.4).
//!
//! Every state change becomes an [`v1::AgentEvent`] in the journal's outbox before anything else
//! learns of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backlog::{JournalOp, JournalWriter};
use crate::engine::runhistory;
use crate::engine::{EngineHealth, EngineProgress, ExecuteOutcome, MaInfo, MaStatus, SyncEngine};
use crate::journal::Journal;

/// How much may run beside a synchronization on one server (domain brief §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// While a synchronization runs nothing else runs; imports and exports may overlap.
    #[default]
    Supported,
    /// Imports and exports may overlap a synchronization; never two synchronizations, never a
    /// MIM Service MA delta import during one.
    Unsupported,
    /// One step at a time on the whole server.
    Exclusive,
}

/// Which results are retried, how often and how far apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Result strings retried (AutoSync `RetryCodes`).
    pub results: Vec<String>,
    /// Retries after the first attempt (AutoSync `RetryCount`).
    pub attempts: u32,
    /// Base delay; retry n waits `delay × n` with ±50 % jitter (AutoSync `RetrySleepInterval`).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            results: vec!["stopped-deadlocked".into()],
            attempts: 5,
            delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A result string that must never be retried automatically, if the policy lists one.
    pub fn forbidden_entry(&self) -> Option<&str> {
        self.results.iter().map(String::as_str).find(|r| {
            matches!(
                vocab::classify(r),
                ResultClass::GuardRail
                    | ResultClass::Success
                    | ResultClass::Warning
                    | ResultClass::Busy
                    | ResultClass::Transitional
                    | ResultClass::Intentional
            )
        })
    }

    fn retries(&self, result: &str) -> bool {
        self.results
            .iter()
            .any(|r| r.eq_ignore_ascii_case(result.trim()))
    }
}

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
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // These mutexes guard plain values updated in single statements; a poisoned one is
    // consistent.
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
    let mut errors: u64 = 0;
    let mut connection = None;
    for step in &details.steps {
        for (k, v) in &step.counters {
            let e = counters.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
        for (ma, set) in &step.outbound {
            let target = outbound.entry(ma.clone()).or_default();
            for (k, v) in set {
                let e = target.entry(k.clone()).or_default();
                *e = e.saturating_add(*v);
            }
        }
        errors = errors.saturating_add(step.errors.count);
        if step.connection_result.is_some() {
            connection.clone_from(&step.connection_result);
        }
    }
    (to_proto_counters(&counters, &outbound), connection, errors)
}

/// Marks an MA as executing a step of this process until dropped (also when the step's future
/// is dropped half-way).
struct OursOn {
    set: Arc<Mutex<HashSet<String>>>,
    ma: String,
}

impl OursOn {
    fn new(set: &Arc<Mutex<HashSet<String>>>, ma: &str) -> Self {
        lock(set).insert(ma.to_string());
        Self {
            set: Arc::clone(set),
            ma: ma.to_string(),
        }
    }
}

impl Drop for OursOn {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.ma);
    }
}

/// Why a step on `ma` may not start beside a run in progress on `other`, by the locks each
/// holds (per-MA lock; the server's gate under `mode`), or `None` when they may overlap.
fn conflict(
    mode: RunMode,
    ma: &str,
    sync_class: bool,
    other: &str,
    other_sync_class: bool,
) -> Option<&'static str> {
    if ma == other {
        return Some("a management agent runs one run profile at a time");
    }
    match (mode, sync_class, other_sync_class) {
        (RunMode::Exclusive, _, _) => Some("run mode exclusive runs one step at a time"),
        (_, true, true) => Some("two synchronizations never run at once"),
        (RunMode::Supported, false, true) => {
            Some("nothing else runs while a synchronization runs (run mode supported)")
        }
        (RunMode::Supported, true, false) => Some(
            "a synchronization starts only when every other run has ended (run mode supported)",
        ),
        _ => None,
    }
}

enum Gate<'a> {
    Read(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Write(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
    Sync(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>),
    Open,
}

/// How one call of `Execute` ended.
enum Attempt {
    Returned {
        outcome: Result<ExecuteOutcome, crate::engine::EngineError>,
        stop_sent: bool,
    },
    Watchdog {
        returned: Option<String>,
        stop: String,
    },
    /// Cancelled, and the engine did not end the step within `stop_timeout` of `Stop`: the
    /// step is given up (the engine is marked unhealthy) instead of keeping the run open.
    Abandoned,
}

enum StepOutcome {
    /// The engine (or the driver, or the watchdog) produced a result; counters when known.
    Finished(String, Option<v1::StepCounters>),
    /// The only_if condition was false.
    Skipped,
    /// The guard rail tripped.
    Held,
    Cancelled,
}

/// One step of a run's plan, with its flattened index.
#[derive(Debug, Clone)]
struct PlannedStep {
    index: u32,
    spec: v1::StepSpec,
    only_if: v1::Condition,
    guard: Option<v1::Guard>,
    approved: bool,
}

/// The plan of a run: stages in order, each a set of steps that may run in parallel. Ad-hoc
/// runs (`steps`) become one stage per step.
fn plan_of(run: &v1::StartRun) -> Vec<Vec<PlannedStep>> {
    let mut index = 0u32;
    let mut next = |spec: v1::StepSpec, only_if: i32, guard: Option<v1::Guard>| {
        let step = PlannedStep {
            index,
            spec,
            only_if: v1::Condition::try_from(only_if).unwrap_or(v1::Condition::Always),
            guard,
            approved: run.approved_steps.contains(&index),
        };
        index += 1;
        step
    };
    if run.stages.is_empty() {
        run.steps
            .iter()
            .map(|s| vec![next(s.clone(), 0, None)])
            .collect()
    } else {
        run.stages
            .iter()
            .map(|st| {
                st.steps
                    .iter()
                    .map(|p| {
                        next(
                            v1::StepSpec {
                                ma: p.ma.clone(),
                                profile: p.profile.clone(),
                            },
                            p.only_if,
                            p.guard,
                        )
                    })
                    .collect()
            })
            .collect()
    }
}

/// What earlier steps of a run did, per MA (for `only_if` conditions).
#[derive(Default)]
struct RunMemory {
    staged: HashMap<String, bool>,
    exported: HashMap<String, bool>,
}

fn counter_sum(c: &v1::StepCounters, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| c.counters.get(*n))
        .fold(0u64, |a, v| a.saturating_add(*v))
}

const STAGED: &[&str] = &[
    "stage-add",
    "stage-update",
    "stage-rename",
    "stage-delete",
    "stage-delete-add",
];
const EXPORTED: &[&str] = &[
    "export-add",
    "export-update",
    "export-rename",
    "export-delete",
    "export-delete-add",
];

/// The limit in objects: a count, or a percentage of the MA's connectors.
fn limit_objects(limit: &v1::Limit, connectors: u64) -> Option<(u64, String)> {
    match limit.kind? {
        v1::limit::Kind::Count(n) => Some((n, format!("{n}"))),
        v1::limit::Kind::Percent(p) => {
            let n = (connectors as f64 * p / 100.0).floor() as u64;
            Some((n, format!("{p}% of {connectors} connectors = {n}")))
        }
    }
}

/// Why a guard rail holds the step, if it does (domain brief §8: pending export deletes as a
/// count or % of connectors, staged deletes).
fn guard_trips(guard: &v1::Guard, pending: &v1::PendingCounters) -> Option<String> {
    if let Some(l) = &guard.max_pending_deletes
        && let Some((max, text)) = limit_objects(l, pending.total_connectors)
        && pending.export_delete > max
    {
        return Some(format!(
            "{} pending export deletes exceed max_pending_deletes {text}",
            pending.export_delete
        ));
    }
    if let Some(l) = &guard.max_staged_deletes
        && let Some((max, text)) = limit_objects(l, pending.total_connectors)
        && pending.import_delete > max
    {
        return Some(format!(
            "{} staged deletes exceed max_staged_deletes {text}",
            pending.import_delete
        ));
    }
    None
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
        }
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
    /// watchdog could not stop.
    pub async fn health(&self) -> EngineHealth {
        if let Some(detail) = lock(&self.stuck).clone() {
            return EngineHealth {
                healthy: false,
                detail,
            };
        }
        self.engine.health().await
    }

    /// Journal an event and wake the session sender. An event the journal refuses is held in
    /// memory, in order, and written when it can be ([`JournalWriter`]); execution goes on
    /// (the engine is already acting).
    fn emit(&self, run_id: &str, kind: Kind) {
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

    fn waiting(&self, run_id: &str, index: u32, reason: String) {
        self.emit(run_id, Kind::StepWaiting(v1::StepWaiting { index, reason }));
    }

    /// Complete every run a previous agent process accepted and did not finish. Its execution
    /// ended with that process and it is never started again; what the engine did is read back
    /// from the engine's run history: a step whose engine run number was journaled gets the
    /// engine's result and counters (after the engine finishes it, if it still runs; it holds
    /// its locks meanwhile, as any run this process did not start). The run is `unknown` only
    /// when a step's outcome cannot be learnt: its run number was never journaled, or the
    /// engine no longer has that run. Runs with something to read from the engine are
    /// completed in the background (and show as in flight); returns how many runs there were.
    pub fn recover_interrupted(self: &Arc<Self>) -> Result<usize, crate::journal::JournalError> {
        let runs = self.journal.unfinished_runs()?;
        for run in &runs {
            let steps = self.journal.steps_of(&run.run_id)?;
            let from_engine: Vec<crate::journal::StepRecord> = steps
                .iter()
                .filter(|s| s.result.is_none() && s.run_number > 0)
                .cloned()
                .collect();
            tracing::warn!(run_id = %run.run_id, steps_to_read = from_engine.len(), "run was interrupted by an agent restart");
            if from_engine.is_empty() {
                let total = plan_of(run).iter().map(Vec::len).sum::<usize>();
                self.finish_recovered(&run.run_id, &steps, Vec::new(), total);
                continue;
            }
            for step in &from_engine {
                lock(&self.recovering)
                    .insert((step.ma.clone(), step.run_number), run.run_id.clone());
            }
            let cancel = CancellationToken::new();
            lock(&self.runs).insert(
                run.run_id.clone(),
                RunHandle {
                    cancel: cancel.clone(),
                },
            );
            let this = Arc::clone(self);
            let run = run.clone();
            tokio::spawn(async move {
                let total = plan_of(&run).iter().map(Vec::len).sum::<usize>();
                let mut read = Vec::new();
                for step in &from_engine {
                    read.push(this.read_back(&run.run_id, step, &cancel).await);
                    lock(&this.recovering).remove(&(step.ma.clone(), step.run_number));
                }
                this.finish_recovered(&run.run_id, &steps, read, total);
                lock(&this.runs).remove(&run.run_id);
            });
        }
        Ok(runs.len())
    }

    /// The result of an interrupted step from the engine's run history: waits while the engine
    /// still runs it (a cancellation stops it through the engine), then emits its
    /// `StepFinished`. `None` when the engine does not have the run.
    async fn read_back(
        &self,
        run_id: &str,
        step: &crate::journal::StepRecord,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let n = step.run_number;
        let since = tokio::time::Instant::now();
        let mut stop_sent = false;
        let mut stopped_at: Option<tokio::time::Instant> = None;
        let mut told = false;
        loop {
            // An engine that does not end a stopped run: its result cannot be learnt.
            if stopped_at.is_some_and(|t| t.elapsed() > self.opts.stop_timeout) {
                break;
            }
            match self.engine.status(&step.ma).await {
                Ok(MaStatus::InProgress { run_number, .. }) if run_number == n => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(run_id, ma = %step.ma, error = %e, "cannot read the status of an interrupted step's run");
                    if since.elapsed() > self.opts.busy_timeout {
                        break;
                    }
                }
            }
            if since.elapsed() > self.opts.watchdog && !stop_sent {
                stop_sent = true;
                stopped_at = Some(tokio::time::Instant::now());
                let s = self.stop(&step.ma).await;
                tracing::warn!(run_id, ma = %step.ma, result = %s, "interrupted step exceeded the watchdog; stop requested");
            }
            if !told {
                told = true;
                self.waiting(
                    run_id,
                    step.index,
                    format!(
                        "the agent restarted while this step ran; the engine is still running it (MA {}, run {n}); waiting for its result",
                        step.ma
                    ),
                );
            }
            if !stop_sent && !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                stop_sent = true;
                stopped_at = Some(tokio::time::Instant::now());
                let s = self.stop(&step.ma).await;
                tracing::info!(run_id, ma = %step.ma, result = %s, "stop requested");
            } else if stop_sent {
                tokio::time::sleep(self.opts.busy_poll).await;
            }
        }
        let (counters, connection_result, error_count, detail, settled) =
            self.details(&step.ma, Some(n)).await;
        let result = settled
            .filter(|r| vocab::classify(r) != ResultClass::Transitional && r != "in-progress");
        let Some(result) = result else {
            tracing::warn!(run_id, ma = %step.ma, run_number = n, %detail, "interrupted step's result not in the engine's run history");
            return None;
        };
        let mut note = format!(
            "the agent restarted while this step ran; result read from the engine's run history (MA {}, run {n})",
            step.ma
        );
        if !detail.is_empty() {
            note.push_str("; ");
            note.push_str(&detail);
        }
        self.emit(
            run_id,
            Kind::StepFinished(v1::StepFinished {
                index: step.index,
                result: result.clone(),
                started_at: None,
                finished_at: Some(syncfleet_proto::time::now()),
                counters: Some(counters),
                run_number: n,
                connection_result,
                error_count,
                detail: note,
            }),
        );
        Some(result)
    }

    /// The `RunFinished` of a run interrupted by a restart, from the results the journal kept
    /// and those read back from the engine (`None`: not available).
    fn finish_recovered(
        &self,
        run_id: &str,
        journaled: &[crate::journal::StepRecord],
        read: Vec<Option<String>>,
        total: usize,
    ) {
        let known: Vec<String> = journaled
            .iter()
            .filter_map(|s| s.result.clone())
            .chain(read.iter().flatten().cloned())
            .collect();
        let lost = read.iter().any(Option::is_none);
        let results: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|r| !r.is_empty())
            .collect();
        let (state, message) = if lost {
            (
                v1::RunState::Unknown,
                "the agent restarted while this run was in progress and the engine's run history no longer has the interrupted step's run; its outcome is unknown and the run will not be started again".to_string(),
            )
        } else if read.is_empty() && known.len() < total {
            (
                v1::RunState::Unknown,
                "the agent restarted while this run was in progress; its outcome was not observed and it will not be started again".to_string(),
            )
        } else if known.len() < total {
            (
                vocab::run_state_for(&results, false),
                format!(
                    "the agent restarted during this run; the interrupted step's result was read from the engine's run history; {} later step(s) were not run and the run will not be started again",
                    total - known.len()
                ),
            )
        } else if results.is_empty() {
            (
                v1::RunState::Succeeded,
                "nothing to do: no step's condition held".to_string(),
            )
        } else {
            (
                vocab::run_state_for(&results, true),
                "the agent restarted before it reported this run's end; step results were read from its journal and the engine's run history".to_string(),
            )
        };
        let result = vocab::most_severe(results.iter().copied())
            .unwrap_or_default()
            .to_string();
        self.emit(
            run_id,
            Kind::RunFinished(v1::RunFinished {
                state: state as i32,
                result,
                message,
            }),
        );
        self.writer.write(JournalOp::FinishRun(run_id.to_string()));
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

    /// Whether a run profile synchronizes (or is a MIM Service MA delta import, §6.4 rule 2).
    pub fn is_sync_class(&self, ma: &str, profile: &str) -> bool {
        let inv = lock(&self.inventory);
        let Some(info) = inv.iter().find(|m| m.name == ma) else {
            return false;
        };
        let Some(p) = info.profile(profile) else {
            return false;
        };
        p.steps.iter().any(|s| {
            s.is_sync()
                || (info.is_mim_service()
                    && matches!(s.step_type.as_str(), "delta-import" | "full-import"))
        })
    }

    /// Why a step on `ma` must wait for a run in progress that this process did not start, or
    /// `None` when none is in its way. Every MA of the inventory is asked: a run started in Sync
    /// Service Manager, by a script or by an earlier agent process holds the same locks a step
    /// of ours would (its MA; the gate when it is sync-class, a MIM Service MA import
    /// included). A status error of the step's own MA is returned; one of another MA is logged
    /// and that MA ignored (the engine refuses a conflicting start itself).
    async fn foreign_blocker(
        &self,
        ma: &str,
        step_profile: &str,
        sync_class: bool,
    ) -> Result<Option<String>, crate::engine::EngineError> {
        let mut names: Vec<String> = lock(&self.inventory)
            .iter()
            .map(|m| m.name.clone())
            .collect();
        // The step's own MA first, and even when the inventory is not known.
        names.retain(|n| n != ma);
        names.insert(0, ma.to_string());
        for other in names {
            let status = match self.engine.status(&other).await {
                Ok(s) => s,
                Err(e) if other == ma => return Err(e),
                Err(e) => {
                    tracing::warn!(ma = %other, error = %e, "cannot read the status of a management agent");
                    continue;
                }
            };
            let MaStatus::InProgress {
                profile,
                run_number,
            } = status
            else {
                continue;
            };
            if other != ma && lock(&self.executing).contains(&other) {
                continue;
            }
            let other_sync = self.is_sync_class(&other, &profile);
            if let Some(rule) = conflict(self.opts.run_mode, ma, sync_class, &other, other_sync) {
                let kind = if !other_sync {
                    "not a synchronization"
                } else if self.mim_service_import(&other, &profile) {
                    "a MIM Service MA import, which counts as a synchronization"
                } else {
                    "a synchronization"
                };
                let mine = if sync_class && self.mim_service_import(ma, step_profile) {
                    " (this MIM Service MA import counts as a synchronization)"
                } else {
                    ""
                };
                let origin = match lock(&self.recovering).get(&(other.clone(), run_number)) {
                    Some(run_id) => {
                        format!("started for syncfleet run {run_id} before the agent restarted")
                    }
                    None => "started outside syncfleet".to_string(),
                };
                return Ok(Some(format!(
                    "MA {other} is running {profile:?} (run {run_number}, {kind}), {origin}; {rule}{mine}; waiting for it to end"
                )));
            }
        }
        Ok(None)
    }

    /// A MIM Service MA import that is sync-class only by that rule (for wording reasons).
    fn mim_service_import(&self, ma: &str, profile: &str) -> bool {
        let inv = lock(&self.inventory);
        inv.iter()
            .find(|m| m.name == ma && m.is_mim_service())
            .and_then(|m| m.profile(profile))
            .is_some_and(|p| {
                !p.steps.iter().any(crate::engine::RunStepInfo::is_sync)
                    && p.steps
                        .iter()
                        .any(|s| matches!(s.step_type.as_str(), "delta-import" | "full-import"))
            })
    }

    fn ma_lock(&self, ma: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.ma_locks).entry(ma.to_string()).or_default())
    }

    async fn gate(&self, sync_class: bool) -> Gate<'_> {
        match (self.opts.run_mode, sync_class) {
            (RunMode::Exclusive, _) | (RunMode::Supported, true) => {
                Gate::Write(self.gate.write().await)
            }
            (RunMode::Supported, false) => Gate::Read(self.gate.read().await),
            (RunMode::Unsupported, true) => Gate::Sync(self.sync_only.lock().await),
            (RunMode::Unsupported, false) => Gate::Open,
        }
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
        let plan = plan_of(&run);
        let total: usize = plan.iter().map(Vec::len).sum();
        let on_failure = v1::OnFailure::try_from(run.on_failure).unwrap_or_default();
        let memory = Mutex::new(RunMemory::default());
        let mut results: Vec<String> = Vec::new();
        let mut ran = 0usize;
        let mut stopped: Option<String> = None;
        let mut held: Option<PlannedStep> = None;
        let mut cancelled = false;
        for stage in &plan {
            if cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            let outcomes = futures::future::join_all(
                stage
                    .iter()
                    .map(|ps| self.plan_step(&run_id, ps, &run, &cancel, &memory)),
            )
            .await;
            for (ps, outcome) in stage.iter().zip(outcomes) {
                ran += 1;
                match outcome {
                    StepOutcome::Finished(result, counters) => {
                        if let Some(c) = &counters {
                            let mut m = lock(&memory);
                            if counter_sum(c, STAGED) > 0 {
                                m.staged.insert(ps.spec.ma.clone(), true);
                            }
                            if counter_sum(c, EXPORTED) > 0 {
                                m.exported.insert(ps.spec.ma.clone(), true);
                            }
                        }
                        let class = vocab::classify(&result);
                        if !class.lets_next_step_run() {
                            let always = class == ResultClass::DiscoveryErrors;
                            if stopped.is_none() && (always || on_failure == v1::OnFailure::Stop) {
                                stopped = Some(format!(
                                    "step {} ({}: {}) ended with {result}{}",
                                    ps.index + 1,
                                    ps.spec.ma,
                                    ps.spec.profile,
                                    if always {
                                        "; discovery errors always stop the run"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                        }
                        results.push(result);
                    }
                    StepOutcome::Skipped => {}
                    StepOutcome::Held => {
                        if held.is_none() {
                            held = Some(ps.clone());
                        }
                    }
                    StepOutcome::Cancelled => cancelled = true,
                }
            }
            if cancelled || held.is_some() || stopped.is_some() {
                break;
            }
        }
        let refs: Vec<&str> = results.iter().map(String::as_str).collect();
        let result = vocab::most_severe(refs.iter().copied())
            .unwrap_or_default()
            .to_string();
        let (state, message) = if cancelled || cancel.is_cancelled() {
            (v1::RunState::Cancelled, "cancelled on request".to_string())
        } else if let Some(h) = held {
            (
                v1::RunState::Held,
                format!(
                    "held before step {} ({}: {}) by its guard rail; approve it with 'syncfleet runs approve {run_id}'",
                    h.index + 1,
                    h.spec.ma,
                    h.spec.profile
                ),
            )
        } else if results.is_empty() {
            (
                v1::RunState::Succeeded,
                "nothing to do: no step's condition held".to_string(),
            )
        } else {
            let all_ran = stopped.is_none() || ran == total;
            let state = vocab::run_state_for(&refs, all_ran);
            let message = match &stopped {
                Some(why) if ran < total => format!("{why}; later steps were not run"),
                Some(why) => why.clone(),
                None => String::new(),
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
        self.writer.write(JournalOp::FinishRun(run_id));
    }

    /// One planned step: skipped when the continued run already executed it, else executed
    /// with its condition and guard checked under the engine locks.
    async fn plan_step(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        run: &v1::StartRun,
        cancel: &CancellationToken,
        memory: &Mutex<RunMemory>,
    ) -> StepOutcome {
        if run.skip_steps.contains(&ps.index) {
            self.emit(
                run_id,
                Kind::StepSkipped(v1::StepSkipped {
                    index: ps.index,
                    reason: "executed by the held run this one continues".into(),
                }),
            );
            return StepOutcome::Skipped;
        }
        let step = self.execute_step(run_id, ps, cancel, memory);
        crate::telemetry::in_step(run_id, ps.index, &ps.spec, step).await
    }

    /// Evaluate a step's condition and guard against the MA's pending counters (read under the
    /// engine locks, just before Execute). `Err` carries the outcome when the step must not run.
    fn pre_check(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        pending: Option<&v1::PendingCounters>,
        memory: &Mutex<RunMemory>,
    ) -> Result<(), StepOutcome> {
        let ma = &ps.spec.ma;
        let skip = |reason: String| {
            self.emit(
                run_id,
                Kind::StepSkipped(v1::StepSkipped {
                    index: ps.index,
                    reason,
                }),
            );
            Err(StepOutcome::Skipped)
        };
        match ps.only_if {
            v1::Condition::Always => {}
            v1::Condition::StagedChanges => {
                let staged = match pending {
                    Some(p) => p.import_add + p.import_update + p.import_delete > 0,
                    None => lock(memory).staged.get(ma).copied().unwrap_or(true),
                };
                if !staged {
                    return skip(format!("no staged changes on {ma}"));
                }
            }
            v1::Condition::PendingExports => {
                // Unknown counters: run the step (a condition saves time, it is not a guard).
                let exports =
                    pending.is_none_or(|p| p.export_add + p.export_update + p.export_delete > 0);
                if !exports {
                    return skip(format!("no pending exports on {ma}"));
                }
            }
            v1::Condition::Exported => {
                if !lock(memory).exported.get(ma).copied().unwrap_or(false) {
                    return skip(format!("nothing was exported on {ma} earlier in this run"));
                }
            }
        }
        if let Some(guard) = &ps.guard
            && !ps.approved
        {
            let reason = match pending {
                // Guard rails fail closed: without counters nothing proves the step is safe.
                None => Some(format!(
                    "the pending counters of {ma} could not be read, so its guard rail cannot be checked"
                )),
                Some(p) => guard_trips(guard, p),
            };
            if let Some(reason) = reason {
                tracing::warn!(run_id, ma = %ma, %reason, "guard rail holds the run");
                self.emit(
                    run_id,
                    Kind::StepHeld(v1::StepHeld {
                        index: ps.index,
                        reason,
                        pending: pending.copied(),
                    }),
                );
                return Err(StepOutcome::Held);
            }
        }
        Ok(())
    }

    async fn sleep_or_cancel(&self, d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = cancel.cancelled() => false,
        }
    }

    async fn execute_step(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        cancel: &CancellationToken,
        memory: &Mutex<RunMemory>,
    ) -> StepOutcome {
        let index = ps.index;
        let step = &ps.spec;
        let sync_class = self.is_sync_class(&step.ma, &step.profile);
        let ma_lock = self.ma_lock(&step.ma);
        let busy_since = tokio::time::Instant::now();
        let mut attempt: u32 = 1;
        let mut earlier: Vec<String> = Vec::new();
        // The last waiting reason reported: a step waits silently while the reason stays.
        let mut last_reason: Option<String> = None;
        loop {
            // Per-MA exclusivity first, then the server-wide gate (always in this order, so two
            // runs can never wait on each other).
            let ma_guard = tokio::select! {
                g = ma_lock.lock() => g,
                () = cancel.cancelled() => return StepOutcome::Cancelled,
            };
            let gate = tokio::select! {
                g = self.gate(sync_class) => g,
                () = cancel.cancelled() => return StepOutcome::Cancelled,
            };
            // A run started outside syncfleet (Sync Service Manager, a script, a run of an
            // earlier agent process) holds the same locks as one of ours.
            match self
                .foreign_blocker(&step.ma, &step.profile, sync_class)
                .await
            {
                Ok(Some(reason)) => {
                    drop((gate, ma_guard));
                    if busy_since.elapsed() > self.opts.busy_timeout {
                        return self.finish_without_engine(
                            run_id,
                            index,
                            "no-start-ma-already-running",
                            format!(
                                "still waiting after {}: {reason}",
                                humantime::format_duration(self.opts.busy_timeout)
                            ),
                        );
                    }
                    if last_reason.as_deref() != Some(reason.as_str()) {
                        self.waiting(run_id, index, reason.clone());
                        last_reason = Some(reason);
                    }
                    if !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                        return StepOutcome::Cancelled;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    return self.finish_without_engine(
                        run_id,
                        index,
                        engine_error_result(&e),
                        e.to_string(),
                    );
                }
            }
            let pending = self
                .engine
                .pending(&step.ma)
                .await
                .ok()
                .map(|p| v1::PendingCounters {
                    import_add: p.import_add,
                    import_update: p.import_update,
                    import_delete: p.import_delete,
                    export_add: p.export_add,
                    export_update: p.export_update,
                    export_delete: p.export_delete,
                    total_connectors: p.total_connectors,
                    cs_objects: p.cs_objects,
                });
            if let Err(outcome) = self.pre_check(run_id, ps, pending.as_ref(), memory) {
                return outcome;
            }
            self.stagger().await;
            // From here until the step's result is read, a run on this MA is ours.
            let _ours = OursOn::new(&self.executing, &step.ma);
            let started_at = syncfleet_proto::time::now();
            self.emit(
                run_id,
                Kind::StepStarted(v1::StepStarted {
                    index,
                    ma: step.ma.clone(),
                    profile: step.profile.clone(),
                    run_number: 0,
                    pending,
                    attempt,
                }),
            );
            let outcome = match self.attempt(run_id, index, step, cancel).await {
                Attempt::Returned { outcome, stop_sent } => match outcome {
                    Ok(o) => {
                        if !stop_sent
                            && vocab::classify(&o.result) == ResultClass::Busy
                            && busy_since.elapsed() < self.opts.busy_timeout
                        {
                            // The engine's own refusal: wait and retry, never a failure.
                            drop((gate, ma_guard));
                            self.waiting(
                                run_id,
                                index,
                                format!(
                                    "engine refused to start ({}); waiting and retrying",
                                    o.result
                                ),
                            );
                            last_reason = None;
                            if !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                                return StepOutcome::Cancelled;
                            }
                            continue;
                        }
                        o
                    }
                    Err(e) => {
                        return self.finish_without_engine(
                            run_id,
                            index,
                            engine_error_result(&e),
                            e.to_string(),
                        );
                    }
                },
                Attempt::Abandoned => return StepOutcome::Cancelled,
                Attempt::Watchdog { returned, stop } => {
                    drop((gate, ma_guard));
                    let detail = match &returned {
                        Some(r) => format!(
                            "stopped by the watchdog after {}: Stop() returned {stop:?}, the engine then reported {r:?}",
                            humantime::format_duration(self.opts.watchdog)
                        ),
                        None => {
                            let msg = format!(
                                "sync engine not responding: {} {:?} exceeded the {} watchdog and did not stop within {} of Stop() ({stop:?}); check the sync service",
                                step.ma,
                                step.profile,
                                humantime::format_duration(self.opts.watchdog),
                                humantime::format_duration(self.opts.stop_timeout)
                            );
                            self.mark_stuck(&step.ma, msg.clone());
                            msg
                        }
                    };
                    tracing::error!(run_id, ma = %step.ma, profile = %step.profile, %detail, "watchdog");
                    return self.finish_without_engine(
                        run_id,
                        index,
                        vocab::WATCHDOG_STOPPED,
                        detail,
                    );
                }
            };
            let mut result = outcome.result.clone();
            if vocab::classify(&result) == ResultClass::Transitional {
                // Execute can return while the engine is still completing (§3.2): wait for idle.
                while let Ok(MaStatus::InProgress { .. }) = self.engine.status(&step.ma).await {
                    tokio::time::sleep(self.opts.busy_poll).await;
                }
            }
            let (counters, connection_result, error_count, detail, settled) =
                self.details(&step.ma, outcome.run_number).await;
            if vocab::classify(&result) == ResultClass::Transitional
                && let Some(r) = settled
            {
                result = r;
            }
            if self.opts.retry.retries(&result)
                && attempt <= self.opts.retry.attempts
                && !cancel.is_cancelled()
            {
                drop((gate, ma_guard));
                earlier.push(result.clone());
                let factor = rand::rng().random_range(0.5..1.5);
                let delay = self.opts.retry.delay.mul_f64(f64::from(attempt) * factor);
                self.waiting(
                    run_id,
                    index,
                    format!(
                        "engine returned {result}; retry {attempt} of {} in {}",
                        self.opts.retry.attempts,
                        humantime::format_duration(Duration::from_millis(
                            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
                        ))
                    ),
                );
                if !self.sleep_or_cancel(delay, cancel).await {
                    return StepOutcome::Cancelled;
                }
                attempt += 1;
                continue;
            }
            let detail = if earlier.is_empty() {
                detail
            } else {
                let mut d = format!(
                    "attempt {attempt}; earlier attempts: {}",
                    earlier.join(", ")
                );
                if !detail.is_empty() {
                    d.push_str("; ");
                    d.push_str(&detail);
                }
                d
            };
            self.emit(
                run_id,
                Kind::StepFinished(v1::StepFinished {
                    index,
                    result: result.clone(),
                    started_at: Some(started_at),
                    finished_at: Some(syncfleet_proto::time::now()),
                    counters: Some(counters.clone()),
                    run_number: outcome.run_number.unwrap_or(0),
                    connection_result,
                    error_count,
                    detail,
                }),
            );
            drop((gate, ma_guard));
            return StepOutcome::Finished(result, Some(counters));
        }
    }

    /// One call of `Execute`, with progress forwarding, cancellation (→ `Stop`) and the
    /// watchdog.
    async fn attempt(
        &self,
        run_id: &str,
        index: u32,
        step: &v1::StepSpec,
        cancel: &CancellationToken,
    ) -> Attempt {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = self.engine.execute(&step.ma, &step.profile, tx);
        let forward = self.forward_progress(run_id, index, rx);
        let watchdog = tokio::time::sleep(self.opts.watchdog);
        // The engine run number, journaled as soon as the run shows: an agent restart then
        // learns the step's outcome from the engine's run history.
        let discover = async {
            let every = self.opts.busy_poll.min(Duration::from_millis(250));
            loop {
                if let Ok(MaStatus::InProgress {
                    profile,
                    run_number,
                }) = self.engine.status(&step.ma).await
                    && profile == step.profile
                {
                    return run_number;
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::pin!(exec);
        tokio::pin!(forward);
        tokio::pin!(watchdog);
        tokio::pin!(discover);
        // Armed when a cancellation sent Stop.
        let stop_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(stop_deadline);
        let mut stop_sent = false;
        let mut stop_result = String::new();
        let mut recorded = false;
        loop {
            tokio::select! {
                out = &mut exec => return Attempt::Returned { outcome: out, stop_sent },
                () = &mut forward => {}
                run_number = &mut discover, if !recorded => {
                    recorded = true;
                    self.writer.write(JournalOp::StepRun {
                        run_id: run_id.to_string(),
                        index,
                        ma: step.ma.clone(),
                        run_number,
                    });
                }
                () = cancel.cancelled(), if !stop_sent => {
                    stop_sent = true;
                    let s = self.stop(&step.ma).await;
                    tracing::info!(run_id, ma = %step.ma, result = %s, "stop requested");
                    stop_result = s;
                    stop_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.opts.stop_timeout);
                }
                () = &mut stop_deadline, if stop_sent => {
                    let msg = format!(
                        "sync engine not responding: {} {:?} was cancelled and did not stop within {} of Stop() ({stop_result:?}); check the sync service",
                        step.ma,
                        step.profile,
                        humantime::format_duration(self.opts.stop_timeout)
                    );
                    tracing::error!(run_id, ma = %step.ma, profile = %step.profile, detail = %msg, "cancelled step abandoned");
                    self.mark_stuck(&step.ma, msg);
                    return Attempt::Abandoned;
                }
                () = &mut watchdog => {
                    let stop = self.stop(&step.ma).await;
                    let returned = tokio::time::timeout(self.opts.stop_timeout, &mut exec)
                        .await
                        .ok()
                        .map(|o| o.map_or_else(|e| e.to_string(), |o| o.result));
                    return Attempt::Watchdog { returned, stop };
                }
            }
        }
    }

    /// `Stop` through the engine, bounded by `stop_timeout`.
    async fn stop(&self, ma: &str) -> String {
        match tokio::time::timeout(self.opts.stop_timeout, self.engine.stop(ma)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(self.opts.stop_timeout)
            ),
        }
    }

    /// Mark the engine unhealthy until the MA is idle and the engine's probe is good again.
    fn mark_stuck(&self, ma: &str, detail: String) {
        *lock(&self.stuck) = Some(detail);
        let engine = Arc::clone(&self.engine);
        let stuck = Arc::clone(&self.stuck);
        let ma = ma.to_string();
        let poll = self.opts.busy_poll;
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            loop {
                tokio::time::sleep(poll).await;
                let idle = matches!(engine.status(&ma).await, Ok(MaStatus::Idle));
                if idle && engine.health().await.healthy {
                    *lock(&stuck) = None;
                    tracing::info!(ma, "sync engine responsive again");
                    return;
                }
            }
        }));
    }

    /// Counters of a finished execution from its run history.
    async fn details(
        &self,
        ma: &str,
        run_number: Option<u64>,
    ) -> (v1::StepCounters, String, u64, String, Option<String>) {
        let Some(n) = run_number else {
            return (
                v1::StepCounters::default(),
                String::new(),
                0,
                String::new(),
                None,
            );
        };
        match self.engine.run_details(ma, n).await {
            Ok(xml) => match runhistory::parse_one(&xml) {
                Ok(d) => {
                    let (c, conn, errs) = summarize(&d);
                    let settled = d.result().map(str::to_string);
                    (c, conn.unwrap_or_default(), errs, String::new(), settled)
                }
                Err(e) => (
                    v1::StepCounters::default(),
                    String::new(),
                    0,
                    format!("run history of run {n} unreadable: {e}"),
                    None,
                ),
            },
            Err(e) => (
                v1::StepCounters::default(),
                String::new(),
                0,
                format!("run history of run {n} unavailable: {e}"),
                None,
            ),
        }
    }

    fn finish_without_engine(
        &self,
        run_id: &str,
        index: u32,
        result: impl Into<String>,
        detail: String,
    ) -> StepOutcome {
        let result = result.into();
        let now = syncfleet_proto::time::now();
        self.emit(
            run_id,
            Kind::StepFinished(v1::StepFinished {
                index,
                result: result.clone(),
                started_at: Some(now),
                finished_at: Some(now),
                counters: None,
                run_number: 0,
                connection_result: String::new(),
                error_count: 0,
                detail,
            }),
        );
        StepOutcome::Finished(result, None)
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
        std::future::pending::<()>().await;
    }
}

/// The result string recorded when the driver itself failed (no engine string exists).
fn engine_error_result(e: &crate::engine::EngineError) -> &'static str {
    match e {
        crate::engine::EngineError::NoSuchMa(_) => "no-start-ma",
        crate::engine::EngineError::Unavailable(_) => "connection-failure",
        _ => "call-failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sim::{SimConfig, SimEngine};

    struct Harness {
        _dir: tempfile::TempDir,
        journal: Arc<Journal>,
        exec: Arc<Executor>,
    }

    /// An executor on a simulated server with its journal in a temporary folder.
    async fn build(cfg: SimConfig, opts: ExecutorOptions) -> (Harness, Arc<SimEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let sim = Arc::new(SimEngine::new(cfg));
        let engine: Arc<dyn SyncEngine> = sim.clone();
        let exec = Arc::new(Executor::new(
            engine,
            Arc::clone(&journal),
            Arc::new(Notify::new()),
            opts,
        ));
        exec.refresh_inventory().await.unwrap();
        (
            Harness {
                _dir: dir,
                journal,
                exec,
            },
            sim,
        )
    }

    async fn harness(mode: RunMode) -> Harness {
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 0.002;
        let opts = ExecutorOptions {
            run_mode: mode,
            stagger: Duration::from_millis(1),
            busy_poll: Duration::from_millis(5),
            ..ExecutorOptions::default()
        };
        build(cfg, opts).await.0
    }

    fn start(h: &Harness, id: &str, steps: &[(&str, &str)]) {
        let run = v1::StartRun {
            run_id: id.into(),
            steps: steps
                .iter()
                .map(|(ma, p)| v1::StepSpec {
                    ma: (*ma).into(),
                    profile: (*p).into(),
                })
                .collect(),
            ..Default::default()
        };
        h.journal.accept_run(&run).unwrap();
        h.exec.start(run);
    }

    async fn wait_all(h: &Harness) -> Vec<v1::AgentEvent> {
        for _ in 0..6000 {
            if h.exec.runs_in_flight().is_empty() && h.journal.unfinished_runs().unwrap().is_empty()
            {
                return h.journal.events_after(0, 100_000).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("runs did not finish");
    }

    /// Replay the events in seq order and check the concurrency invariants of `mode`.
    fn check_overlaps(h: &Harness, events: &[v1::AgentEvent], mode: RunMode) -> usize {
        let mut specs: HashMap<(String, u32), (String, String)> = HashMap::new();
        let mut active: Vec<(String, u32, bool)> = Vec::new();
        let mut max_parallel = 0;
        for ev in events {
            match &ev.kind {
                Some(Kind::StepStarted(s)) => {
                    let sync = h.exec.is_sync_class(&s.ma, &s.profile);
                    let key = (ev.run_id.clone(), s.index);
                    specs.insert(key, (s.ma.clone(), s.profile.clone()));
                    for (rid, idx, other_sync) in &active {
                        let (oma, _) = &specs[&(rid.clone(), *idx)];
                        assert_ne!(oma, &s.ma, "two runs on MA {} at once", s.ma);
                        match mode {
                            RunMode::Exclusive => panic!("exclusive mode ran two steps at once"),
                            RunMode::Supported => assert!(
                                !sync && !other_sync,
                                "supported mode: a synchronization overlapped another step"
                            ),
                            RunMode::Unsupported => {
                                assert!(!(sync && *other_sync), "two synchronizations at once")
                            }
                        }
                    }
                    active.push((ev.run_id.clone(), s.index, sync));
                    max_parallel = max_parallel.max(active.len());
                }
                Some(Kind::StepFinished(f)) => {
                    assert_ne!(
                        vocab::classify(&f.result),
                        ResultClass::Busy,
                        "a busy refusal leaked out as a result: {}",
                        f.result
                    );
                    active.retain(|(rid, idx, _)| !(rid == &ev.run_id && *idx == f.index));
                }
                _ => {}
            }
        }
        max_parallel
    }

    fn mixed_runs(h: &Harness) {
        let shapes: [&[(&str, &str)]; 4] = [
            &[("AD", "Delta Import"), ("AD", "Delta Sync")],
            &[("HR", "Delta Import"), ("HR", "Delta Sync")],
            &[("MIM Service", "Delta Import"), ("Entra ID", "Export")],
            &[
                ("Entra ID", "Delta Import"),
                ("AD", "Export"),
                ("Entra ID", "Delta Sync"),
            ],
        ];
        for i in 0..20 {
            start(h, &format!("r{i:02}"), shapes[i % shapes.len()]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supported_mode_never_overlaps_a_synchronization() {
        let h = harness(RunMode::Supported).await;
        mixed_runs(&h);
        let events = wait_all(&h).await;
        let max = check_overlaps(&h, &events, RunMode::Supported);
        assert!(
            max >= 2,
            "imports should have overlapped at least once (max {max})"
        );
        let finished = events
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::RunFinished(_))))
            .count();
        assert_eq!(finished, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsupported_and_exclusive_modes_keep_their_rules() {
        for mode in [RunMode::Unsupported, RunMode::Exclusive] {
            let h = harness(mode).await;
            mixed_runs(&h);
            let events = wait_all(&h).await;
            let max = check_overlaps(&h, &events, mode);
            if mode == RunMode::Exclusive {
                assert_eq!(max, 1);
            }
        }
    }

    #[test]
    fn mim_service_delta_import_is_sync_class() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = rt.block_on(harness(RunMode::Supported));
        assert!(h.exec.is_sync_class("MIM Service", "Delta Import"));
        assert!(h.exec.is_sync_class("AD", "Delta Sync"));
        assert!(!h.exec.is_sync_class("AD", "Delta Import"));
        assert!(!h.exec.is_sync_class("AD", "Export"));
    }

    /// A quiet server (no source changes by themselves) with a handle on the sim engine.
    async fn quiet() -> (Harness, Arc<SimEngine>) {
        quiet_with(ExecutorOptions {
            stagger: Duration::from_millis(1),
            busy_poll: Duration::from_millis(5),
            ..ExecutorOptions::default()
        })
        .await
    }

    async fn quiet_with(opts: ExecutorOptions) -> (Harness, Arc<SimEngine>) {
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 0.001;
        for m in &mut cfg.mas {
            m.change_rate_per_hour = 0.0;
        }
        build(cfg, opts).await
    }

    fn step(
        ma: &str,
        profile: &str,
        only_if: v1::Condition,
        guard: Option<v1::Guard>,
    ) -> v1::PlanStep {
        v1::PlanStep {
            ma: ma.into(),
            profile: profile.into(),
            only_if: only_if as i32,
            guard,
        }
    }

    fn start_plan(
        h: &Harness,
        id: &str,
        stages: Vec<Vec<v1::PlanStep>>,
        tweak: impl FnOnce(&mut v1::StartRun),
    ) {
        let mut run = v1::StartRun {
            run_id: id.into(),
            stages: stages
                .into_iter()
                .map(|steps| v1::PlanStage { steps })
                .collect(),
            ..Default::default()
        };
        tweak(&mut run);
        h.journal.accept_run(&run).unwrap();
        h.exec.start(run);
    }

    fn finished(events: &[v1::AgentEvent], id: &str) -> v1::RunFinished {
        events
            .iter()
            .filter(|e| e.run_id == id)
            .find_map(|e| match &e.kind {
                Some(Kind::RunFinished(f)) => Some(f.clone()),
                _ => None,
            })
            .unwrap()
    }

    fn skipped(events: &[v1::AgentEvent], id: &str) -> Vec<u32> {
        events
            .iter()
            .filter(|e| e.run_id == id)
            .filter_map(|e| match &e.kind {
                Some(Kind::StepSkipped(s)) => Some(s.index),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conditions_skip_steps_with_nothing_to_do() {
        let (h, sim) = quiet().await;
        use v1::Condition as C;
        let cycle = || {
            vec![
                vec![step("HR", "Delta Import", C::Always, None)],
                vec![step("HR", "Delta Sync", C::StagedChanges, None)],
                vec![step("AD", "Export", C::PendingExports, None)],
                vec![step("AD", "Delta Import", C::Exported, None)],
            ]
        };
        // Nothing changed at the source: import, then every conditional step is skipped.
        start_plan(&h, "quiet", cycle(), |_| {});
        let events = wait_all(&h).await;
        assert_eq!(skipped(&events, "quiet"), [1, 2, 3]);
        let f = finished(&events, "quiet");
        assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
        // Source changes: the sync, the export and the confirming import all run.
        sim.inject_source_changes("HR", 5, 3, 0).unwrap();
        start_plan(&h, "busy", cycle(), |_| {});
        let events = wait_all(&h).await;
        let f = finished(&events, "busy");
        assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
        assert_eq!(skipped(&events, "busy"), Vec::<u32>::new(), "{events:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guard_rail_holds_and_approval_lets_the_step_through_once() {
        let (h, sim) = quiet().await;
        use v1::Condition as C;
        sim.inject_source_changes("AD", 0, 0, 100).unwrap();
        let guard = v1::Guard {
            max_pending_deletes: None,
            max_staged_deletes: Some(v1::Limit {
                kind: Some(v1::limit::Kind::Count(10)),
            }),
        };
        let plan = || {
            vec![
                vec![step("AD", "Delta Import", C::Always, None)],
                vec![step("AD", "Delta Sync", C::Always, Some(guard))],
            ]
        };
        start_plan(&h, "r1", plan(), |_| {});
        let events = wait_all(&h).await;
        let f = finished(&events, "r1");
        assert_eq!(f.state, v1::RunState::Held as i32, "{f:?}");
        let held: Vec<&v1::StepHeld> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::StepHeld(s)) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].index, 1);
        assert!(
            held[0].reason.contains("100 staged deletes"),
            "{}",
            held[0].reason
        );
        // The sync never started.
        assert!(
            !events.iter().any(|e| e.run_id == "r1"
                && matches!(&e.kind, Some(Kind::StepStarted(s)) if s.index == 1))
        );
        // Approved continuation: step 0 is not repeated, step 1 runs past its guard.
        start_plan(&h, "r2", plan(), |r| {
            r.skip_steps = vec![0];
            r.approved_steps = vec![1];
        });
        let events = wait_all(&h).await;
        let f = finished(&events, "r2");
        assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
        assert_eq!(skipped(&events, "r2"), [0]);
        assert!(events.iter().any(|e| e.run_id == "r2"
            && matches!(&e.kind, Some(Kind::StepFinished(s)) if s.index == 1 && s.result == "success")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_errors_stop_even_when_failures_continue() {
        let (h, sim) = quiet().await;
        use v1::Condition as C;
        sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
            "HR",
            "completed-discovery-errors",
        ))
        .unwrap();
        sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
            "AD",
            "stopped-connectivity",
        ))
        .unwrap();
        // on_failure continue: a stopped-connectivity import does not stop the run ...
        start_plan(
            &h,
            "cont",
            vec![
                vec![step("AD", "Delta Import", C::Always, None)],
                vec![step("HR", "Delta Import", C::Always, None)],
                vec![step("HR", "Delta Sync", C::Always, None)],
            ],
            |r| r.on_failure = v1::OnFailure::Continue as i32,
        );
        let events = wait_all(&h).await;
        let f = finished(&events, "cont");
        // ... but discovery errors on HR always stop before HR's sync.
        assert_eq!(f.state, v1::RunState::Failed as i32, "{f:?}");
        assert!(f.message.contains("discovery errors"), "{}", f.message);
        let started: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::StepStarted(s)) => Some(s.index),
                _ => None,
            })
            .collect();
        assert_eq!(started, [0, 1]);
    }

    fn step_finished(events: &[v1::AgentEvent], id: &str, index: u32) -> v1::StepFinished {
        events
            .iter()
            .filter(|e| e.run_id == id)
            .find_map(|e| match &e.kind {
                Some(Kind::StepFinished(s)) if s.index == index => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlocks_are_retried_then_succeed() {
        let (h, sim) = quiet_with(ExecutorOptions {
            stagger: Duration::from_millis(1),
            busy_poll: Duration::from_millis(5),
            retry: RetryPolicy {
                delay: Duration::from_millis(5),
                ..RetryPolicy::default()
            },
            ..ExecutorOptions::default()
        })
        .await;
        sim.inject_failure(
            crate::engine::sim::ScriptedFailure::new("AD", "stopped-deadlocked").with_times(2),
        )
        .unwrap();
        start(&h, "r", &[("AD", "Delta Import")]);
        let events = wait_all(&h).await;
        let f = step_finished(&events, "r", 0);
        assert_eq!(vocab::classify(&f.result), ResultClass::Success, "{f:?}");
        assert!(f.detail.contains("attempt 3"), "{}", f.detail);
        let attempts: Vec<u32> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::StepStarted(s)) => Some(s.attempt),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
        // A guard-rail stop is never retried.
        sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
            "AD",
            "stopped-deletion-limit",
        ))
        .unwrap();
        start(&h, "g", &[("AD", "Delta Import")]);
        let events = wait_all(&h).await;
        assert_eq!(
            step_finished(&events, "g", 0).result,
            "stopped-deletion-limit"
        );
        assert_eq!(finished(&events, "g").state, v1::RunState::Failed as i32);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchdog_ends_a_frozen_step_and_reports_the_engine_unhealthy() {
        let (h, sim) = quiet_with(ExecutorOptions {
            stagger: Duration::from_millis(1),
            busy_poll: Duration::from_millis(20),
            watchdog: Duration::from_millis(300),
            stop_timeout: Duration::from_millis(100),
            ..ExecutorOptions::default()
        })
        .await;
        sim.inject_failure(crate::engine::sim::ScriptedFailure::new(
            "AD",
            crate::engine::sim::FREEZE,
        ))
        .unwrap();
        start(
            &h,
            "frozen",
            &[("AD", "Delta Import"), ("AD", "Delta Sync")],
        );
        let events = wait_all(&h).await;
        let f = step_finished(&events, "frozen", 0);
        assert_eq!(f.result, vocab::WATCHDOG_STOPPED);
        assert!(f.detail.contains("not responding"), "{}", f.detail);
        assert_eq!(
            finished(&events, "frozen").state,
            v1::RunState::Failed as i32
        );
        let health = h.exec.health().await;
        assert!(!health.healthy);
        assert!(health.detail.contains("watchdog"), "{}", health.detail);
        // After the service is restarted the agent sees a healthy engine again.
        sim.restart().await;
        for _ in 0..200 {
            if h.exec.health().await.healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("engine still reported unhealthy after restart");
    }

    #[test]
    fn retry_policy_refuses_guard_rail_results() {
        let mut p = RetryPolicy::default();
        assert_eq!(p.forbidden_entry(), None);
        p.results.push("stopped-deletion-threshold-exceeded".into());
        assert_eq!(
            p.forbidden_entry(),
            Some("stopped-deletion-threshold-exceeded")
        );
    }
}

/// Runs started outside syncfleet hold the same locks as runs the agent started, under paused
/// tokio time (the simulated runs last their realistic durations).
#[cfg(test)]
mod foreign_tests {
    use super::*;
    use crate::engine::sim::{SimConfig, SimEngine};

    struct Setup {
        _dir: tempfile::TempDir,
        journal: Arc<Journal>,
        exec: Arc<Executor>,
        sim: Arc<SimEngine>,
    }

    async fn setup(mode: RunMode) -> Setup {
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 1.0;
        for m in &mut cfg.mas {
            m.change_rate_per_hour = 0.0;
        }
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let sim = Arc::new(SimEngine::new(cfg));
        let engine: Arc<dyn SyncEngine> = sim.clone();
        let exec = Arc::new(Executor::new(
            engine,
            Arc::clone(&journal),
            Arc::new(Notify::new()),
            ExecutorOptions {
                run_mode: mode,
                stagger: Duration::from_millis(10),
                busy_poll: Duration::from_millis(500),
                ..ExecutorOptions::default()
            },
        ));
        exec.refresh_inventory().await.unwrap();
        Setup {
            _dir: dir,
            journal,
            exec,
            sim,
        }
    }

    fn start(s: &Setup, id: &str, ma: &str, profile: &str) {
        let run = v1::StartRun {
            run_id: id.into(),
            steps: vec![v1::StepSpec {
                ma: ma.into(),
                profile: profile.into(),
            }],
            ..Default::default()
        };
        s.journal.accept_run(&run).unwrap();
        s.exec.start(run);
    }

    fn events(s: &Setup, id: &str) -> Vec<Kind> {
        s.journal
            .events_after(0, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.run_id == id)
            .filter_map(|e| e.kind)
            .collect()
    }

    /// Wait (in paused time) until `f` holds, at most `limit` of tokio time.
    async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let t0 = tokio::time::Instant::now();
        while !f() {
            assert!(t0.elapsed() < limit, "condition not met within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t0.elapsed()
    }

    fn waiting_reasons(evs: &[Kind]) -> Vec<String> {
        evs.iter()
            .filter_map(|k| match k {
                Kind::StepWaiting(w) => Some(w.reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn run_finished(evs: &[Kind]) -> Option<v1::RunFinished> {
        evs.iter().find_map(|k| match k {
            Kind::RunFinished(f) => Some(f.clone()),
            _ => None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreign_sync_holds_the_sync_gate_against_a_mim_service_delta_import() {
        let s = setup(RunMode::Unsupported).await;
        let n = s.sim.start_unmanaged("AD", "Full Sync").unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        start(&s, "r", "MIM Service", "Delta Import");
        until(Duration::from_secs(30), || {
            !waiting_reasons(&events(&s, "r")).is_empty()
        })
        .await;
        let reason = waiting_reasons(&events(&s, "r")).remove(0);
        for part in [
            "AD",
            "Full Sync",
            &format!("run {n}"),
            "started outside syncfleet",
        ] {
            assert!(reason.contains(part), "{part:?} missing in {reason:?}");
        }
        assert!(s.sim.health().await.healthy, "the engine froze");
        // Once the foreign synchronization ends, the import runs and succeeds.
        until(Duration::from_secs(600), || {
            run_finished(&events(&s, "r")).is_some()
        })
        .await;
        let f = run_finished(&events(&s, "r")).unwrap();
        assert_eq!(f.state, v1::RunState::Succeeded as i32, "{f:?}");
        assert!(s.sim.health().await.healthy, "the engine froze");
        let foreign = runhistory::parse_one(&s.sim.run_details("AD", n).await.unwrap()).unwrap();
        assert_eq!(foreign.result(), Some("success"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreign_sync_holds_back_an_import_in_supported_mode_and_cancel_is_prompt() {
        let s = setup(RunMode::Supported).await;
        let n = s.sim.start_unmanaged("AD", "Full Sync").unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        start(&s, "imp", "HR", "Delta Import");
        until(Duration::from_secs(30), || {
            !waiting_reasons(&events(&s, "imp")).is_empty()
        })
        .await;
        let reason = waiting_reasons(&events(&s, "imp")).remove(0);
        assert!(
            reason.contains("started outside syncfleet") && reason.contains("AD"),
            "{reason}"
        );
        assert!(
            !events(&s, "imp")
                .iter()
                .any(|k| matches!(k, Kind::StepStarted(_))),
            "the import started beside a synchronization"
        );
        // Cancelling a waiting step ends the run at once, not when the foreign run ends.
        assert!(s.exec.cancel("imp"));
        let took = until(Duration::from_secs(5), || {
            run_finished(&events(&s, "imp")).is_some()
        })
        .await;
        assert!(took < Duration::from_secs(2), "cancel took {took:?}");
        let f = run_finished(&events(&s, "imp")).unwrap();
        assert_eq!(f.state, v1::RunState::Cancelled as i32, "{f:?}");
        assert!(matches!(
            s.sim.status("AD").await.unwrap(),
            MaStatus::InProgress { run_number, .. } if run_number == n
        ));
    }
}

/// A journal that cannot be written (its SQLite file capped at its size, so writes fail with
/// SQLite's own "database or disk is full") loses no run result: held events are written when
/// space returns, and a restart completes the run from the engine's run history.
#[cfg(test)]
mod journal_failure_tests {
    use super::*;
    use crate::engine::sim::{SimConfig, SimEngine};
    use crate::journal::Accept;

    fn sim() -> Arc<SimEngine> {
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 0.02;
        for m in &mut cfg.mas {
            m.change_rate_per_hour = 0.0;
        }
        Arc::new(SimEngine::new(cfg))
    }

    fn executor(journal: &Arc<Journal>, sim: &Arc<SimEngine>) -> Arc<Executor> {
        let engine: Arc<dyn SyncEngine> = sim.clone();
        Arc::new(Executor::new(
            engine,
            Arc::clone(journal),
            Arc::new(Notify::new()),
            ExecutorOptions {
                stagger: Duration::from_millis(1),
                busy_poll: Duration::from_millis(20),
                progress_interval: Duration::from_millis(1),
                ..ExecutorOptions::default()
            },
        ))
    }

    fn start_run(journal: &Journal, exec: &Arc<Executor>, id: &str, ma: &str, profile: &str) {
        let run = v1::StartRun {
            run_id: id.into(),
            steps: vec![v1::StepSpec {
                ma: ma.into(),
                profile: profile.into(),
            }],
            ..Default::default()
        };
        assert_eq!(journal.accept_run(&run).unwrap(), Accept::New);
        exec.start(run);
    }

    fn events(journal: &Journal, id: &str) -> Vec<v1::AgentEvent> {
        journal
            .events_after(0, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.run_id == id)
            .collect()
    }

    fn run_finished(evs: &[v1::AgentEvent]) -> Option<v1::RunFinished> {
        evs.iter().find_map(|e| match &e.kind {
            Some(Kind::RunFinished(f)) => Some(f.clone()),
            _ => None,
        })
    }

    fn step_finished(evs: &[v1::AgentEvent]) -> Option<v1::StepFinished> {
        evs.iter().find_map(|e| match &e.kind {
            Some(Kind::StepFinished(f)) => Some(f.clone()),
            _ => None,
        })
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..1500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn engine_idle(sim: &SimEngine, ma: &str) {
        for _ in 0..1500 {
            if sim.status(ma).await.unwrap() == MaStatus::Idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{ma} still running");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_the_journal_refuses_are_held_in_order_and_written_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let sim = sim();
        sim.inject_source_changes("AD", 30_000, 0, 0).unwrap();
        let exec = executor(&journal, &sim);
        exec.refresh_inventory().await.unwrap();
        start_run(&journal, &exec, "r1", "AD", "Delta Import");
        until("the step to start", || {
            events(&journal, "r1")
                .iter()
                .any(|e| matches!(e.kind, Some(Kind::StepStarted(_))))
        })
        .await;
        journal.fill_disk();
        // The engine finishes the step while the disk is full.
        engine_idle(&sim, "AD").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(run_finished(&events(&journal, "r1")), None);
        assert_eq!(journal.unfinished_runs().unwrap().len(), 1);
        // Space returns: everything held reaches the journal, in order.
        journal.free_disk();
        until("the held events to be journaled", || {
            run_finished(&events(&journal, "r1")).is_some()
        })
        .await;
        let evs = events(&journal, "r1");
        let kinds: Vec<&str> = evs
            .iter()
            .map(|e| match e.kind {
                Some(Kind::RunStarted(_)) => "run-started",
                Some(Kind::StepStarted(_)) => "step-started",
                Some(Kind::StepProgress(_)) => "progress",
                Some(Kind::StepFinished(_)) => "step-finished",
                Some(Kind::RunFinished(_)) => "run-finished",
                _ => "other",
            })
            .filter(|k| *k != "progress")
            .collect();
        assert_eq!(
            kinds,
            [
                "run-started",
                "step-started",
                "step-finished",
                "run-finished"
            ]
        );
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let f = step_finished(&evs).unwrap();
        assert_eq!(f.result, "success", "{f:?}");
        assert_eq!(
            f.counters.as_ref().unwrap().counters.get("stage-add"),
            Some(&30_000)
        );
        let rf = run_finished(&evs).unwrap();
        assert_eq!(rf.state, v1::RunState::Succeeded as i32, "{rf:?}");
        until("the run to be marked finished", || {
            journal.unfinished_runs().unwrap().is_empty()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_the_journal_fails_new_runs_are_refused_and_the_agent_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let sim = sim();
        let exec = executor(&journal, &sim);
        exec.refresh_inventory().await.unwrap();
        assert_eq!(exec.journal_problem(), None);
        journal.fill_disk();
        start_run(
            &Journal::open(&dir.path().join("other.db")).unwrap(),
            &exec,
            "r1",
            "HR",
            "Delta Import",
        );
        until("the journal failure to be reported", || {
            exec.journal_problem().is_some()
        })
        .await;
        let problem = exec.journal_problem().unwrap();
        assert!(
            problem.contains("database or disk is full") && problem.contains("refused"),
            "{problem}"
        );
        let cmd = |id: &str| v1::Command {
            command_id: format!("c-{id}"),
            kind: Some(v1::command::Kind::StartRun(v1::StartRun {
                run_id: id.into(),
                steps: vec![v1::StepSpec {
                    ma: "HR".into(),
                    profile: "Delta Import".into(),
                }],
                ..Default::default()
            })),
        };
        let ack = crate::session::handle_command(cmd("r2"), &journal, &exec);
        assert!(!ack.accepted);
        assert!(
            ack.reason.contains("journal cannot be written"),
            "{}",
            ack.reason
        );
        // Writes succeed again: the agent recovers by itself and accepts runs.
        journal.free_disk();
        until("the journal to recover", || {
            exec.journal_problem().is_none()
        })
        .await;
        let ack = crate::session::handle_command(cmd("r3"), &journal, &exec);
        assert!(ack.accepted, "{}", ack.reason);
        until("r1's events to be journaled", || {
            run_finished(&events(&journal, "r1")).is_some()
        })
        .await;
    }

    /// An agent process that dies: its runtime, with every task of the executor, goes away.
    fn first_process(
        path: &std::path::Path,
        sim: &Arc<SimEngine>,
        then: impl FnOnce(&Arc<Journal>),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let journal = Arc::new(Journal::open(path).unwrap());
            let exec = executor(&journal, sim);
            exec.refresh_inventory().await.unwrap();
            start_run(&journal, &exec, "r1", "AD", "Delta Import");
            until("the step's run number to be journaled", || {
                journal
                    .steps_of("r1")
                    .unwrap()
                    .first()
                    .is_some_and(|s| s.run_number > 0)
            })
            .await;
            then(&journal);
            engine_idle(sim, "AD").await;
        });
        rt.shutdown_background();
    }

    #[test]
    fn after_a_restart_a_run_gets_its_result_from_the_engines_run_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let sim = sim();
        sim.inject_source_changes("AD", 20_000, 0, 0).unwrap();
        // The disk fills while the step runs; the engine finishes it; the agent is restarted.
        first_process(&path, &sim, |j| j.fill_disk());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let journal = Arc::new(Journal::open(&path).unwrap());
            journal.free_disk();
            let exec = executor(&journal, &sim);
            exec.refresh_inventory().await.unwrap();
            assert_eq!(exec.recover_interrupted().unwrap(), 1);
            until("the run to be completed", || {
                run_finished(&events(&journal, "r1")).is_some()
            })
            .await;
            let evs = events(&journal, "r1");
            let rf = run_finished(&evs).unwrap();
            assert_eq!(rf.state, v1::RunState::Succeeded as i32, "{rf:?}");
            let f = step_finished(&evs).unwrap();
            assert_eq!(f.result, "success");
            assert!(f.run_number > 0);
            assert_eq!(
                f.counters.as_ref().unwrap().counters.get("stage-add"),
                Some(&20_000),
                "{f:?}"
            );
            assert!(f.detail.contains("run history"), "{}", f.detail);
            until("the run to be marked finished", || {
                journal.unfinished_runs().unwrap().is_empty()
            })
            .await;
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_the_engine_still_runs_after_a_restart_is_waited_for_and_unknown_only_without_history()
     {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let sim = sim();
        // What a previous agent process left: a run whose step is run n, still running.
        let n = sim.start_unmanaged("AD", "Full Import").unwrap();
        for (id, run_number) in [("live", n), ("gone", 999)] {
            journal
                .accept_run(&v1::StartRun {
                    run_id: id.into(),
                    steps: vec![v1::StepSpec {
                        ma: "AD".into(),
                        profile: "Full Import".into(),
                    }],
                    ..Default::default()
                })
                .unwrap();
            journal.record_step_run(id, 0, "AD", run_number).unwrap();
        }
        let exec = executor(&journal, &sim);
        exec.refresh_inventory().await.unwrap();
        assert_eq!(exec.recover_interrupted().unwrap(), 2);
        assert!(exec.runs_in_flight().contains(&"live".to_string()));
        // A new run on the same MA waits for the engine run of the interrupted step.
        start_run(&journal, &exec, "next", "AD", "Delta Import");
        until("the new run to wait", || {
            events(&journal, "next").iter().any(|e| {
                matches!(&e.kind, Some(Kind::StepWaiting(w))
                    if w.reason.contains("started for syncfleet run live before the agent restarted"))
            })
        })
        .await;
        until("both runs to be completed", || {
            run_finished(&events(&journal, "live")).is_some()
                && run_finished(&events(&journal, "gone")).is_some()
        })
        .await;
        let live = events(&journal, "live");
        assert!(
            live.iter()
                .any(|e| matches!(&e.kind, Some(Kind::StepWaiting(w)) if w.reason.contains("still running"))),
            "{live:#?}"
        );
        assert_eq!(step_finished(&live).unwrap().run_number, n);
        assert_eq!(
            run_finished(&live).unwrap().state,
            v1::RunState::Succeeded as i32
        );
        until("the new run to be completed", || {
            run_finished(&events(&journal, "next")).is_some()
        })
        .await;
        assert_eq!(
            run_finished(&events(&journal, "next")).unwrap().state,
            v1::RunState::Succeeded as i32
        );
        let gone = run_finished(&events(&journal, "gone")).unwrap();
        assert_eq!(gone.state, v1::RunState::Unknown as i32, "{gone:?}");
        assert!(gone.message.contains("run history"), "{}", gone.message);
    }
}

/// Cancelling a step the engine does not stop (a frozen engine) ends the run after
/// `stop_timeout`, not when the watchdog fires hours later.
#[cfg(test)]
mod cancel_tests {
    use super::*;
    use crate::engine::sim::{FREEZE, ScriptedFailure, SimConfig, SimEngine};

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_step_the_engine_does_not_stop_is_abandoned_after_the_stop_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 1.0;
        let sim = Arc::new(SimEngine::new(cfg));
        sim.inject_failure(ScriptedFailure::new("AD", FREEZE))
            .unwrap();
        let engine: Arc<dyn SyncEngine> = sim.clone();
        let exec = Arc::new(Executor::new(
            engine,
            Arc::clone(&journal),
            Arc::new(Notify::new()),
            ExecutorOptions {
                stop_timeout: Duration::from_secs(30),
                ..ExecutorOptions::default()
            },
        ));
        exec.refresh_inventory().await.unwrap();
        let run = v1::StartRun {
            run_id: "r".into(),
            steps: vec![v1::StepSpec {
                ma: "AD".into(),
                profile: "Delta Import".into(),
            }],
            ..Default::default()
        };
        journal.accept_run(&run).unwrap();
        exec.start(run);
        let finished = || {
            journal
                .events_after(0, 1000)
                .unwrap()
                .into_iter()
                .find_map(|e| match e.kind {
                    Some(Kind::RunFinished(f)) => Some(f),
                    _ => None,
                })
        };
        while !journal
            .events_after(0, 1000)
            .unwrap()
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::StepStarted(_))))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(exec.cancel("r"));
        let t0 = tokio::time::Instant::now();
        while finished().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the cancelled run is still open"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(finished().unwrap().state, v1::RunState::Cancelled as i32);
        let health = exec.health().await;
        assert!(!health.healthy);
        assert!(health.detail.contains("did not stop"), "{}", health.detail);
    }
}
