//! A simulated MIM synchronization engine: the `sim` driver for Linux development, demos, tests
//! and benchmarks.
//!
//! # Contract
//!
//! The simulator behaves like the engine *as seen through its WMI interface*:
//! it returns the engine's raw result strings and writes run-history XML in the engine's format,
//! so everything above the driver (executor, lock manager, [`crate::engine::runhistory`] parser, UI) is
//! exercised exactly as against a real server. It is deterministic: the same [`SimConfig::seed`]
//! and the same sequence of calls at the same (tokio) times give the same counters, run numbers,
//! ids, injected failures and unmanaged runs, so tests may run under paused tokio time. All
//! durations use `tokio::time` only.
//!
//! A server is described in code ([`SimConfig::example`]), in the agent configuration
//! (`[engine.sim]`), or in a server file ([`SimConfig::from_toml_file`]; example:
//! `agent/tests/data/sim/server.toml`) with MAs of any kind: `AD`, `MSSQL` (an HR database),
//! `FIM` (the MIM Service MA), `Extensible2` (e.g. Entra ID).
//!
//! # Model
//!
//! Per MA: a connector space of `connectors` objects; *source changes* that accumulate at
//! `change_rate_per_hour` of simulated time; *staged* pending imports; *pending exports*; and
//! *unconfirmed exports* that the next import confirms (the normal cycle: delta
//! import → delta sync → export → confirming import).
//!
//! | Step | Claims at step start | Reports | Commits at step end |
//! |---|---|---|---|
//! | Delta Import (`delta-import`/`to-cs`) | source changes + unconfirmed exports | `stage-add/update/delete` (`completed-no-objects` when nothing) | staged pending imports |
//! | Full Import (`full-import`/`to-cs`) | the same, reads every object | as delta + `stage-no-change` ≈ connectors; deletions (objects missing from the source) are obsoleted only when the step completes without discovery errors | the same |
//! | Delta Sync (`apply-rules`/`apply-pending`) | staged imports | inbound-flow counters; outbound-flow counters per target MA, zeros omitted | connector changes; pending exports on the *other* MAs |
//! | Full Sync (`apply-rules`/`reevaluate-flow-connectors`) | the same, re-evaluates every connector | as delta + `connector-no-flow` for the rest | the same |
//! | Export (`export`) | pending exports | `export-add/update/delete/failure`; [`SimMaConfig::export_error_rate`] of them fail (`<export-error>`, `completed-export-errors`) | unconfirmed exports (seen as `stage-update`/`stage-delete` by the next import); failed ones stay pending |
//!
//! Confirming imports never cause outbound flows, so a delta cycle converges. A stopped step
//! commits the fraction of its claim that it processed and hands the rest back.
//!
//! # Engine rules reproduced
//!
//! - One run per MA: a second `Execute` returns `no-start-ma-already-running`.
//! - One synchronization at a time: a profile with a sync-class step ([`RunStepInfo::is_sync`])
//!   while another MA runs one returns [`CONCURRENT_SYNC_REFUSAL`], which contains `0x8023063d`
//!   (how the refusal reaches a WMI caller is unconfirmed, so the string carries both the
//!   HRESULT and the event text). Imports and exports on different MAs may overlap.
//! - **Freeze** (Lithnet's rule set: "the sync service will become frozen, and you
//!   will have to kill the service and restart it"): an import (delta or full) on a MIM Service
//!   MA (type `FIM`) that starts while another MA synchronizes freezes the whole engine. See
//!   [`SimEngine::restart`] for what a frozen engine does and does not answer.
//! - Unknown profile → `no-start-unknown-profile-name`; unknown MA → [`EngineError::NoSuchMa`].
//! - `Stop()` ends the run promptly with `stopped-user-termination-from-wmi-or-ui` and, like the
//!   real method, returns only once the run has stopped; `ma-not-running` when idle.
//! - Runs execute in their own task: if the caller of `execute` goes away, the run carries on and
//!   stays visible through `status` and `run_details`, as a real engine run does when the agent dies
//!   (Dropping the `execute` future does not stop a real run either.)
//! - Run history by run number (`MIIS_RunHistory`), kept across restarts of the hosting process
//!   when [`SimConfig::state_file`] is set, as the engine keeps it in its database while the
//!   agent restarts.
//! - Runs nobody asked for through `execute` ("unmanaged runs": someone clicked Run in Sync
//!   Service Manager): [`SimEngine::start_unmanaged`] and [`SimConfig::unmanaged`]. They obey
//!   the same rules, get run numbers and history, and show in `status` like any run.
//!
//! # Failure injection
//!
//! By script ([`SimConfig::script`], [`SimEngine::inject_failure`]), consulted first, then by
//! rate ([`SimMaConfig::failure_rate`] picking from [`SimMaConfig::failure_results`]): one seeded
//! draw per execution that passes the start checks. [`ScriptedFailure`] describes what each
//! kind of result does (`no-start-*`: no run; `stopped-*`: partial work; `completed-*-errors`:
//! full work plus error entries; `completed-discovery-errors`: discovery errors, no obsoletion;
//! [`FREEZE`]: the engine freezes). [`SimConfig::error_rate`] additionally makes a few objects
//! of a sync or export fail.
//!
//! # Time
//!
//! A step lasts `time_scale × (step_base_secs + objects × secs_per_object)` of tokio time
//! (`tokio::time::sleep`, so paused-time tests work); the defaults are 2 s and 2 ms, so at
//! `time_scale` 1.0 a full import of 25,000 objects takes ~52 s and at the dev scale of 0.05 ~2.6 s
//! (a small delta import is dominated by the 2 s base: ~0.1 s at 0.05). Source changes
//! accrue per *simulated* hour, i.e. tokio time divided by `time_scale`. Timestamps in the XML are
//! wall-clock times (construction time plus tokio time elapsed), so they agree with what the agent
//! observes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::{
    BoxFuture, EngineError, EngineHealth, EngineInfo, EngineProgress, ExecuteOutcome, MaInfo,
    MaStatus, PendingCounters, ProgressSink, RunProfileInfo, RunStepInfo, SyncEngine,
};

mod config;
mod fault;
mod model;
mod xml;

#[cfg(test)]
mod tests;

pub use config::{ScriptedFailure, SimConfig, SimMaConfig, SourceEvent, UnmanagedRun};

use fault::{Fault, ScriptEntry};
#[cfg(test)]
use model::part;
use model::{
    Delta, Effects, Finish, MaSim, Running, StepKind, TargetFlow, Work, connection_error_for,
    connection_server, export_error_for, guid, pair_ratio, step_duration,
};
use xml::{ConnectionFailure, ConnectionRecord, RunHeader, StepRecord};

/// Result of a run stopped through [`SyncEngine::stop`].
pub const STOPPED_BY_USER: &str = "stopped-user-termination-from-wmi-or-ui";

/// What `Execute` returns when another MA already synchronizes (event 6309).
pub const CONCURRENT_SYNC_REFUSAL: &str = "call-failure: 0x8023063d The operation cannot be \
     performed because other synchronization run profile is already running.";

/// Result of the runs a service restart ends ([`SimEngine::restart`]).
pub const SERVICE_SHUTDOWN: &str = "stopped-service-shutdown";

/// A [`ScriptedFailure::result`] (or [`SimMaConfig::failure_results`] entry) that freezes the
/// engine as a MIM Service MA import during a synchronization does,
/// so tests can freeze it without breaking the agent's own locking.
pub const FREEZE: &str = "freeze";

/// [`EngineHealth::detail`] of an engine frozen by a MIM Service MA delta import during a
/// synchronization.
pub const FROZEN_DETAIL: &str = "sync engine frozen: MIM Service MA delta import during a synchronization (restart the service)";

/// What [`SyncEngine::stop`] returns while the engine is frozen: the service does not answer.
pub const FROZEN_STOP_RESULT: &str = "call-failure";

/// Run profiles every simulated MA has: (name, step type, sub-type), the five standard
/// single-step profiles (`docs/engine.md`, "Run profiles and step types").
pub const STANDARD_PROFILES: [(&str, &str, &str); 5] = [
    ("Full Import", "full-import", "to-cs"),
    ("Delta Import", "delta-import", "to-cs"),
    ("Full Sync", "apply-rules", "reevaluate-flow-connectors"),
    ("Delta Sync", "apply-rules", "apply-pending"),
    ("Export", "export", ""),
];

/// Progress is reported this many times per step (every 10 % of its duration).
const PROGRESS_TICKS: u32 = 10;
/// Default fixed cost of a step at `time_scale` 1.0 ([`SimConfig::step_base_secs`]).
const STEP_BASE_SECS: f64 = 2.0;
/// Default cost per processed object at `time_scale` 1.0 ([`SimConfig::secs_per_object`]).
const SECS_PER_OBJECT: f64 = 0.002;
/// No simulated step lasts longer than a day, whatever the configuration says.
const MAX_STEP_SECS: f64 = 86_400.0;
/// At most this many object errors are drawn for one step when `error_rate` hits, or injected by
/// a `completed-*-errors` failure.
const MAX_FAILURES_PER_STEP: u64 = 5;
/// Unmanaged runs further in the future than this (tokio time) are never started.
const MAX_UNMANAGED_DELAY_SECS: f64 = 1e9;

// ---------------------------------------------------------------------------------------------
// Engine state
// ---------------------------------------------------------------------------------------------

/// The simulated engine. Cheap to clone (shared state behind an `Arc`); a std `Mutex` guards
/// the state and is never held across an `.await`.
#[derive(Debug, Clone)]
pub struct SimEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: SimConfig,
    /// Tokio time and wall-clock time at construction: XML timestamps are `epoch_wall` plus the
    /// tokio time elapsed since `epoch`.
    epoch: Instant,
    epoch_wall: DateTime<Utc>,
    state: Mutex<State>,
    /// Broadcasts freezes and restarts to runs and parked callers. Only written with `state`
    /// locked, so it always agrees with [`State::frozen`] and [`State::restarts`].
    mode: watch::Sender<Mode>,
    /// The unmanaged-run scheduler task was spawned.
    scheduler_started: AtomicBool,
}

#[derive(Debug)]
struct State {
    mas: Vec<MaSim>,
    script: Vec<ScriptEntry>,
    /// Why the engine is frozen (the health detail); `None` when it answers.
    frozen: Option<String>,
    /// Service restarts so far: runs begun before a restart are ended by it.
    restarts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    frozen: bool,
    restarts: u64,
}

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `Execute` through the driver.
    Execute,
    /// Someone else (Sync Service Manager, a script on the server).
    Unmanaged,
}

/// A run that passed the engine's start checks.
#[derive(Debug)]
struct StartedRun {
    ma: usize,
    header: RunHeader,
    steps: Vec<RunStepInfo>,
    stop: Arc<Notify>,
    done: watch::Sender<bool>,
    /// Injected failure of the first step.
    fault: Option<Fault>,
    /// [`State::restarts`] when the run began.
    generation: u64,
    /// The first step, planned (and its in-progress history stored) as the run began, so the
    /// run shows in `run_details` as soon as it shows in `status`.
    first: Option<Planned>,
}

enum Begin {
    /// The engine is frozen: the call is not answered until the service restarts (generation).
    Frozen(u64),
    /// `no-start-*`, the concurrent-sync refusal, or an injected refusal: no run number.
    Refused(String),
    Started(Box<StartedRun>),
}

/// A planned step: its claimed work and the in-progress record.
#[derive(Debug)]
struct Planned {
    work: Work,
    record: StepRecord,
    duration: Duration,
    objects: u64,
    /// Result an injected `completed-*`/`success` failure reports when the step completes.
    forced: Option<String>,
}

/// How a step's tick loop ended.
#[derive(Debug, Clone, Copy)]
enum StepEnd<'a> {
    Done,
    /// `Stop()` after this much of the step.
    User(Duration),
    /// Frozen or restarted after this much of the step.
    Shutdown(Duration),
    /// An injected `stopped-*` failure after this fraction of the work.
    Fault(&'a str, f64),
}

/// Marks the MA idle and wakes `stop` callers when the run ends — also if the run task is
/// dropped half-way (runtime shutdown), so an MA can never stay "running" forever.
struct RunGuard {
    inner: Arc<Inner>,
    ma: usize,
    run_number: u64,
    done: watch::Sender<bool>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            if let Some(m) = st.mas.get_mut(self.ma)
                && m.running
                    .as_ref()
                    .is_some_and(|r| r.run_number == self.run_number)
            {
                m.running = None;
            }
        }
        self.done.send_replace(true);
    }
}

/// `DOMAIN\mim-admin` for the service account's domain: who clicked Run in the UI.
fn unmanaged_security_id(service_account: &str) -> String {
    match service_account.split_once('\\') {
        Some((domain, _)) => format!("{domain}\\mim-admin"),
        None => "mim-admin".to_owned(),
    }
}

/// Resolves when the engine freezes (`true`) or restarts (`false`) after `generation`.
async fn disturbed(mode: &mut watch::Receiver<Mode>, generation: u64) -> bool {
    let seen = mode
        .wait_for(|m| m.frozen || m.restarts != generation)
        .await
        .map(|m| m.restarts == generation);
    match seen {
        Ok(frozen) => frozen,
        // The sender lives in `Inner`, which the caller keeps alive: never happens.
        Err(_) => std::future::pending().await,
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; should one ever, the counters stay usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let elapsed = at.saturating_duration_since(self.epoch);
        self.epoch_wall + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::zero())
    }

    fn ma_index(st: &State, ma: &str) -> Result<usize, EngineError> {
        st.mas
            .iter()
            .position(|m| m.cfg.name == ma)
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))
    }

    /// Wait until the service restarts after `generation`.
    async fn wait_restart(&self, generation: u64) {
        let mut rx = self.mode.subscribe();
        let _restarted = rx.wait_for(|m| m.restarts != generation).await.is_ok();
    }

    /// The engine's start checks, then injected failures, atomically with marking
    /// the MA running.
    fn begin(&self, ma: &str, profile: &str, origin: Origin) -> Result<Begin, EngineError> {
        let mut st = self.lock();
        if st.frozen.is_some() {
            return Ok(Begin::Frozen(st.restarts));
        }
        let idx = Self::ma_index(&st, ma)?;
        let Some(prof) = st.mas[idx].info.profile(profile).cloned() else {
            return Ok(Begin::Refused("no-start-unknown-profile-name".to_owned()));
        };
        if st.mas[idx].running.is_some() {
            return Ok(Begin::Refused("no-start-ma-already-running".to_owned()));
        }
        let synchronizes = prof.steps.iter().any(RunStepInfo::is_sync);
        let other_syncs = st
            .mas
            .iter()
            .any(|m| m.running.as_ref().is_some_and(|r| r.synchronizes));
        if synchronizes && other_syncs {
            return Ok(Begin::Refused(CONCURRENT_SYNC_REFUSAL.to_owned()));
        }
        let import = prof.steps.iter().find_map(|s| match StepKind::of(s) {
            StepKind::Import { full } => Some(full),
            _ => None,
        });
        let (fault, freeze_reason) = match import {
            // A MIM Service MA import during a synchronization freezes the engine.
            Some(full) if other_syncs && st.mas[idx].info.is_mim_service() => {
                let reason = if full {
                    FROZEN_DETAIL.replace("delta import", "full import")
                } else {
                    FROZEN_DETAIL.to_owned()
                };
                (Some(Fault::Freeze), reason)
            }
            _ => {
                let State { script, mas, .. } = &mut *st;
                let fault = fault::draw(script, &mut mas[idx], &prof.name);
                let reason = format!(
                    "sync engine frozen: injected {FREEZE:?} on {ma:?} {:?} (restart the service)",
                    prof.name
                );
                (fault, reason)
            }
        };
        if let Some(Fault::NotStarted(result)) = fault {
            return Ok(Begin::Refused(result));
        }
        let generation = st.restarts;
        let m = &mut st.mas[idx];
        let run_number = m.next_run_number;
        m.next_run_number = m.next_run_number.saturating_add(1);
        let stop = Arc::new(Notify::new());
        let (done, done_rx) = watch::channel(false);
        m.running = Some(Running {
            profile: prof.name.clone(),
            run_number,
            synchronizes,
            stop: stop.clone(),
            done: done_rx,
        });
        let header = RunHeader {
            ma_id: m.info.guid.clone(),
            ma_name: m.cfg.name.clone(),
            run_number,
            profile: prof.name,
            security_id: match origin {
                Origin::Execute => self.cfg.security_id.clone(),
                Origin::Unmanaged => unmanaged_security_id(&self.cfg.security_id),
            },
        };
        if fault == Some(Fault::Freeze) {
            st.frozen = Some(freeze_reason);
            self.mode.send_replace(Mode {
                frozen: true,
                restarts: generation,
            });
        }
        let first = prof.steps.first().map(|step| {
            let planned = self.plan_step_locked(&mut st, idx, step, 1, fault.as_ref());
            let xml = xml::render(&header, &[], Some(&planned.record));
            Self::store_history_locked(&mut st, self.cfg.history_limit, idx, run_number, xml);
            planned
        });
        Ok(Begin::Started(Box::new(StartedRun {
            ma: idx,
            header,
            steps: prof.steps,
            stop,
            done,
            fault,
            generation,
            first,
        })))
    }

    /// Claim the step's work from the MA state.
    fn plan_step(
        &self,
        ma: usize,
        step: &RunStepInfo,
        number: u32,
        fault: Option<&Fault>,
    ) -> Planned {
        let mut st = self.lock();
        self.plan_step_locked(&mut st, ma, step, number, fault)
    }

    fn plan_step_locked(
        &self,
        st: &mut State,
        ma: usize,
        step: &RunStepInfo,
        number: u32,
        fault: Option<&Fault>,
    ) -> Planned {
        let now = Instant::now();
        let started = self.wall(now);
        let seed = self.cfg.seed;
        // Injected `completed-*` result and how many object errors it brings.
        let (forced, forced_errors) = match fault {
            Some(Fault::Completed { result, errors }) => (Some(result.clone()), *errors),
            _ => (None, 0),
        };
        let targets: Vec<(usize, String, String)> = st
            .mas
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != ma && m.cfg.receives_exports)
            .map(|(i, m)| (i, m.cfg.name.clone(), m.info.guid.clone()))
            .collect();
        let m = &mut st.mas[ma];
        let kind = StepKind::of(step);
        let (work, objects) = match kind {
            StepKind::Import { full } => {
                m.accrue(now, self.cfg.time_scale);
                let source = std::mem::take(&mut m.source);
                let confirm = std::mem::take(&mut m.unconfirmed);
                let changed = source
                    .update
                    .saturating_add(source.delete)
                    .saturating_add(confirm.total());
                let (no_change, objects) = if full {
                    (
                        m.connectors.saturating_sub(changed),
                        m.connectors.saturating_add(source.add),
                    )
                } else {
                    (0, source.total().saturating_add(confirm.total()))
                };
                let failed = m.failed_objects(forced_errors);
                let (discovery, staging) =
                    if forced.as_deref() == Some("completed-discovery-errors") {
                        (failed, Vec::new())
                    } else {
                        (Vec::new(), failed)
                    };
                (
                    Work::Import {
                        source,
                        confirm,
                        no_change,
                        full,
                        discovery,
                        staging,
                    },
                    objects,
                )
            }
            StepKind::Sync { full } => {
                let staged = std::mem::take(&mut m.staged);
                let confirm = std::mem::take(&mut m.staged_confirm);
                let touched = staged
                    .update
                    .saturating_add(staged.delete)
                    .saturating_add(confirm.total());
                let (others, objects) = if full {
                    (
                        m.connectors.saturating_sub(touched),
                        m.connectors.saturating_add(staged.add),
                    )
                } else {
                    (0, staged.total().saturating_add(confirm.total()))
                };
                let join_ratio = m.rng.random_range(0.2..0.6);
                let no_flow_ratio = m.rng.random_range(0.05..0.2);
                let forced_failures = forced_errors > 0;
                let failures = if forced_failures {
                    m.failed_objects(forced_errors)
                } else {
                    let k = m.draw_failure_count(self.cfg.error_rate, staged.update);
                    m.failed_objects(k)
                };
                let from = m.cfg.name.clone();
                let targets = targets
                    .into_iter()
                    .map(|(index, name, guid)| TargetFlow {
                        add_ratio: pair_ratio(seed, &from, &name, 11, 0.6, 1.0),
                        update_ratio: pair_ratio(seed, &from, &name, 12, 0.3, 0.9),
                        delete_ratio: pair_ratio(seed, &from, &name, 13, 0.5, 1.0),
                        index,
                        name,
                        guid,
                    })
                    .collect();
                (
                    Work::Sync {
                        staged,
                        confirm,
                        others,
                        join_ratio,
                        no_flow_ratio,
                        failures,
                        forced_failures,
                        targets,
                    },
                    objects,
                )
            }
            StepKind::Export => {
                let pending = std::mem::take(&mut m.pending_export);
                m.export_batch = m.export_batch.saturating_add(1);
                let rate = m.cfg.export_error_rate;
                let mut failed = Delta {
                    add: m.draw_fraction(pending.add, rate),
                    update: m.draw_fraction(pending.update, rate),
                    delete: m.draw_fraction(pending.delete, rate),
                };
                let dice = m.draw_failure_count(
                    self.cfg.error_rate,
                    pending.update.saturating_sub(failed.update),
                );
                failed.update = failed.update.saturating_add(dice);
                // Injected errors fail pending updates first, then count earlier failures that
                // are retried (always at least `forced_errors` errors).
                let need = forced_errors.saturating_sub(failed.total());
                let from_updates = need.min(pending.update.saturating_sub(failed.update));
                failed.update = failed.update.saturating_add(from_updates);
                let extra = need - from_updates;
                let failures = m.failed_objects(failed.total().saturating_add(extra));
                let (error_type, error_code, error_literal) = export_error_for(&m.cfg.ma_type);
                (
                    Work::Export {
                        pending,
                        failed,
                        failures,
                        error_type,
                        error_code,
                        error_literal,
                    },
                    pending.total(),
                )
            }
        };
        let connects = !matches!(kind, StepKind::Sync { .. });
        let record = StepRecord {
            number,
            id: guid(&mut m.id_rng),
            step: step.clone(),
            started,
            ended: None,
            result: "in-progress".to_owned(),
            progress: Some(format!("0/{objects}")),
            connection: connects.then(|| ConnectionRecord {
                server: connection_server(&m.cfg),
                failure: None,
            }),
            custom_data: (connects && m.cfg.ma_type == "AD").then_some(
                "<adma-step-data><batch-size>100</batch-size><page-size>500</page-size>\
                 <time-limit>120</time-limit></adma-step-data>",
            ),
            current_export_batch: m.export_batch,
            last_successful_export_batch: m.last_successful_export_batch,
            report: work.evaluate(0.0, Finish::InProgress).report,
        };
        Planned {
            work,
            record,
            duration: step_duration(&self.cfg, objects),
            objects,
            forced,
        }
    }

    /// Commit the processed fraction of a step and finish its record.
    fn complete_step(
        &self,
        ma: usize,
        work: &Work,
        fraction: f64,
        finish: Finish<'_>,
        forced: Option<&str>,
        record: &mut StepRecord,
    ) {
        let now = Instant::now();
        let mut eval = work.evaluate(fraction, finish);
        if finish == Finish::Completed
            && let Some(result) = forced
        {
            eval.result = result.to_owned();
        }
        let mut st = self.lock();
        let ma_type = st.mas[ma].cfg.ma_type.clone();
        match eval.effects {
            Effects::Import {
                staged,
                confirm,
                back_source,
                back_confirm,
            } => {
                let m = &mut st.mas[ma];
                m.staged = m.staged.plus(staged);
                m.staged_confirm = m.staged_confirm.plus(confirm);
                m.source = m.source.plus(back_source);
                m.unconfirmed = m.unconfirmed.plus(back_confirm);
            }
            Effects::Sync {
                joined_or_projected,
                deleted,
                back_staged,
                back_confirm,
                exports,
            } => {
                {
                    let m = &mut st.mas[ma];
                    m.connectors = m
                        .connectors
                        .saturating_add(joined_or_projected)
                        .saturating_sub(deleted);
                    m.staged = m.staged.plus(back_staged);
                    m.staged_confirm = m.staged_confirm.plus(back_confirm);
                }
                for (target, out) in exports {
                    if let Some(t) = st.mas.get_mut(target) {
                        // Provisioning creates the target connector now, with a pending export.
                        t.connectors = t.connectors.saturating_add(out.add);
                        t.pending_export = t.pending_export.plus(out);
                    }
                }
            }
            Effects::Export {
                exported,
                back_pending,
            } => {
                let m = &mut st.mas[ma];
                m.unconfirmed = m.unconfirmed.plus(Delta {
                    add: 0,
                    update: exported.add.saturating_add(exported.update),
                    delete: exported.delete,
                });
                m.connectors = m.connectors.saturating_sub(exported.delete);
                m.pending_export = m.pending_export.plus(back_pending);
                if finish == Finish::Completed {
                    m.last_successful_export_batch = m.export_batch;
                    record.last_successful_export_batch = m.export_batch;
                }
            }
        }
        drop(st);
        let ended = self.wall(now);
        if eval.result == "stopped-connectivity"
            && let Some(connection) = &mut record.connection
        {
            let (error_code, error_literal) = connection_error_for(&ma_type);
            connection.failure = Some(ConnectionFailure {
                result: "dropped-connection",
                at: ended,
                error_code,
                error_literal,
            });
        }
        record.ended = Some(ended);
        record.result = eval.result;
        record.progress = None;
        record.report = eval.report;
    }

    fn store_history(&self, ma: usize, run_number: u64, xml: String) {
        let mut st = self.lock();
        Self::store_history_locked(&mut st, self.cfg.history_limit, ma, run_number, xml);
    }

    fn store_history_locked(st: &mut State, limit: usize, ma: usize, run_number: u64, xml: String) {
        if let Some(m) = st.mas.get_mut(ma) {
            m.history.insert(run_number, xml);
            while m.history.len() > limit {
                m.history.pop_first();
            }
        }
    }

    /// The body of a run, in its own task.
    async fn run(self: Arc<Self>, run: Box<StartedRun>, progress: ProgressSink) -> ExecuteOutcome {
        let StartedRun {
            ma,
            header,
            steps,
            stop,
            done,
            fault,
            generation,
            mut first,
        } = *run;
        let guard = RunGuard {
            inner: self.clone(),
            ma,
            run_number: header.run_number,
            done,
        };
        self.persist();
        let mut mode = self.mode.subscribe();
        let mut records: Vec<StepRecord> = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let step_fault = if i == 0 { fault.as_ref() } else { None };
            let Planned {
                work,
                mut record,
                duration,
                objects,
                forced,
            } = match first.take() {
                Some(planned) if i == 0 => planned,
                _ => self.plan_step(ma, step, number, step_fault),
            };
            let stop_at = match step_fault {
                Some(Fault::Stopped { result, at }) => Some((result.as_str(), *at)),
                _ => None,
            };
            self.store_history(
                ma,
                header.run_number,
                xml::render(&header, &records, Some(&record)),
            );
            let t0 = Instant::now();
            let mut end = StepEnd::Done;
            for tick in 1..=PROGRESS_TICKS {
                let tick_end = f64::from(tick) / f64::from(PROGRESS_TICKS);
                let fault_now = stop_at.filter(|(_, at)| *at <= tick_end);
                let deadline = match fault_now {
                    Some((_, at)) => t0 + duration.mul_f64(at),
                    None => t0 + duration * tick / PROGRESS_TICKS,
                };
                // `biased`: the same order every time, so runs stay deterministic.
                tokio::select! {
                    biased;
                    frozen = disturbed(&mut mode, generation) => {
                        let processed = t0.elapsed();
                        if frozen {
                            // The whole engine hangs: no progress, no stop, until a restart.
                            self.wait_restart(generation).await;
                        }
                        end = StepEnd::Shutdown(processed);
                        break;
                    }
                    () = stop.notified() => {
                        end = StepEnd::User(t0.elapsed());
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {}
                }
                if let Some((result, at)) = fault_now {
                    end = StepEnd::Fault(result, at);
                    break;
                }
                if tick < PROGRESS_TICKS {
                    record.report = work.evaluate(tick_end, Finish::InProgress).report;
                    let progress_text = format!(
                        "{}/{objects}",
                        objects.saturating_mul(u64::from(tick)) / u64::from(PROGRESS_TICKS)
                    );
                    record.progress = Some(progress_text.clone());
                    let details = xml::render(&header, &records, Some(&record));
                    self.store_history(ma, header.run_number, details.clone());
                    // The receiver may be gone (caller not interested): the run goes on.
                    let _ = progress.send(EngineProgress {
                        run_number: header.run_number,
                        progress: Some(progress_text),
                        details_xml: Some(details),
                    });
                }
            }
            let processed = |elapsed: Duration| {
                if duration.is_zero() {
                    1.0
                } else {
                    (elapsed.as_secs_f64() / duration.as_secs_f64()).clamp(0.0, 1.0)
                }
            };
            let (fraction, finish) = match end {
                StepEnd::Done => (1.0, Finish::Completed),
                StepEnd::User(elapsed) => (processed(elapsed), Finish::Stopped(STOPPED_BY_USER)),
                StepEnd::Shutdown(elapsed) => {
                    (processed(elapsed), Finish::Stopped(SERVICE_SHUTDOWN))
                }
                StepEnd::Fault(result, at) => (at, Finish::Stopped(result)),
            };
            self.complete_step(ma, &work, fraction, finish, forced.as_deref(), &mut record);
            let lets_next_run =
                syncfleet_proto::vocab::classify(&record.result).lets_next_step_run();
            records.push(record);
            if finish != Finish::Completed || !lets_next_run {
                // A stopped (or discovery-error) step ends the run.
                break;
            }
        }
        self.store_history(ma, header.run_number, xml::render(&header, &records, None));
        let result = syncfleet_proto::vocab::most_severe(records.iter().map(|r| r.result.as_str()))
            .unwrap_or("no-start-no-steps-in-profile")
            .to_owned();
        drop(guard);
        self.persist();
        ExecuteOutcome {
            result,
            run_number: Some(header.run_number),
        }
    }
}

/// What [`SimConfig::state_file`] holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    mas: std::collections::BTreeMap<String, PersistedMa>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PersistedMa {
    next_run_number: u64,
    history: std::collections::BTreeMap<u64, String>,
}

/// When a run in run-history XML ended: its latest `end-date`; `None` while a step has none
/// (in progress).
fn run_ended(xml: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if xml.matches("<end-date>").count() < xml.matches("<step-details").count() {
        return None;
    }
    xml.split("<end-date>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</end-date>"))
        .filter_map(|(value, _)| crate::engine::runhistory::parse_engine_timestamp(value))
        .max()
}

/// Read a state file; `None` when it does not exist yet.
fn load_state(path: &std::path::Path) -> Result<Option<Persisted>, EngineError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EngineError::Config(format!(
                "cannot read the simulated engine's state file {}: {e}",
                path.display()
            )));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        EngineError::Config(format!(
            "the simulated engine's state file {} is not valid: {e}; delete it to start with an empty run history",
            path.display()
        ))
    })
}

impl Inner {
    /// Write the run histories and run numbers to [`SimConfig::state_file`], if set (write to
    /// a temporary file, then rename: a crash never leaves half a file).
    fn persist(&self) {
        let Some(path) = &self.cfg.state_file else {
            return;
        };
        let state = {
            let st = self.lock();
            Persisted {
                mas: st
                    .mas
                    .iter()
                    .map(|m| {
                        (
                            m.cfg.name.clone(),
                            PersistedMa {
                                next_run_number: m.next_run_number,
                                history: m.history.clone(),
                            },
                        )
                    })
                    .collect(),
            }
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "sim: cannot write the engine state file");
        }
    }
}

impl SimEngine {
    /// Build a simulated server. Out-of-range values are clamped and duplicate MA names dropped
    /// (see [`SimConfig::validate`] to reject them instead).
    ///
    /// Configured [`SimConfig::unmanaged`] runs are scheduled by a task spawned here when a tokio
    /// runtime is present (`Handle::try_current()`), otherwise lazily on the first async call
    /// of the engine (or [`SimEngine::start_unmanaged`]); their times count from this call
    /// either way.
    pub fn new(cfg: SimConfig) -> SimEngine {
        let cfg = cfg.sanitized();
        let epoch = Instant::now();
        let mut mas: Vec<MaSim> = cfg
            .mas
            .iter()
            .map(|ma| MaSim::new(ma.clone(), cfg.seed, epoch))
            .collect();
        if let Some(path) = &cfg.state_file {
            match load_state(path) {
                Ok(Some(saved)) => {
                    for m in &mut mas {
                        if let Some(p) = saved.mas.get(&m.cfg.name) {
                            m.history.clone_from(&p.history);
                            let after_last = p
                                .history
                                .last_key_value()
                                .map_or(0, |(n, _)| n.saturating_add(1));
                            m.next_run_number = p.next_run_number.max(after_last);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "sim: starting with an empty run history"),
            }
        }
        let script = cfg.script.iter().cloned().map(ScriptEntry::new).collect();
        let (mode, _) = watch::channel(Mode {
            frozen: false,
            restarts: 0,
        });
        let engine = SimEngine {
            inner: Arc::new(Inner {
                epoch,
                epoch_wall: Utc::now(),
                state: Mutex::new(State {
                    mas,
                    script,
                    frozen: None,
                    restarts: 0,
                }),
                mode,
                scheduler_started: AtomicBool::new(false),
                cfg,
            }),
        };
        engine.ensure_scheduler();
        engine
    }

    /// [`SimConfig::validate`], then [`SimEngine::new`].
    pub fn try_new(cfg: SimConfig) -> Result<SimEngine, EngineError> {
        cfg.validate()?;
        if let Some(path) = &cfg.state_file {
            load_state(path)?;
        }
        Ok(SimEngine::new(cfg))
    }

    /// The effective (sanitized) configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Simulate changes in the MA's connected data source (picked up by the next import), on top
    /// of the configured change rate. For tests and demos.
    pub fn inject_source_changes(
        &self,
        ma: &str,
        add: u64,
        update: u64,
        delete: u64,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.lock();
        let idx = Inner::ma_index(&st, ma)?;
        let m = &mut st.mas[idx];
        m.source = m.source.plus(Delta {
            add,
            update,
            delete,
        });
        Ok(())
    }

    /// Add a scripted failure at runtime, after those of [`SimConfig::script`] (same semantics:
    /// [`ScriptedFailure`]). Unknown MA → [`EngineError::NoSuchMa`]; an unknown profile never
    /// matches.
    pub fn inject_failure(&self, failure: ScriptedFailure) -> Result<(), EngineError> {
        let mut st = self.inner.lock();
        Inner::ma_index(&st, &failure.ma)?;
        st.script.push(ScriptEntry::new(failure));
        Ok(())
    }

    /// Start a run nobody asked for through `execute`, as an administrator clicking Run in Sync
    /// Service Manager does. The engine's rules apply as to `execute`
    /// (including injected failures); on success the run gets a run number and history, shows
    /// in `status` until it ends, and is written with the `security-id` `DOMAIN\mim-admin`.
    ///
    /// Returns the run number, or the engine's refusal string (`no-start-ma-already-running`,
    /// [`CONCURRENT_SYNC_REFUSAL`], `no-start-unknown-profile-name`, an injected `no-start-*`;
    /// `no-start-ma` for an unknown MA; `call-failure` while the engine is frozen or outside a
    /// tokio runtime).
    pub fn start_unmanaged(&self, ma: &str, profile: &str) -> Result<u64, String> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err("call-failure".to_owned());
        };
        self.ensure_scheduler();
        match self.inner.begin(ma, profile, Origin::Unmanaged) {
            Err(_) => Err("no-start-ma".to_owned()),
            Ok(Begin::Frozen(_)) => Err(FROZEN_STOP_RESULT.to_owned()),
            Ok(Begin::Refused(result)) => Err(result),
            Ok(Begin::Started(run)) => {
                let run_number = run.header.run_number;
                let inner = self.inner.clone();
                // Nobody listens to the progress of a run started in the UI.
                let progress = tokio::sync::mpsc::unbounded_channel().0;
                handle.spawn(async move {
                    let _outcome = inner.run(run, progress).await;
                });
                Ok(run_number)
            }
        }
    }

    /// Restart the simulated sync service (`miiserver`), the only way out of a freeze.
    ///
    /// # Frozen engine
    ///
    /// The real engine freezes when a MIM Service MA delta import runs during a
    /// synchronization on another MA: "the sync service will become frozen, and you will have
    /// to kill the service and restart it" (Lithnet's rule set). The simulator freezes on an
    /// import (delta or full) of a `FIM` MA that starts while another MA synchronizes, and on an
    /// injected [`FREEZE`]. While frozen:
    /// - the freezing run and every run in progress stop making progress; their `execute`
    ///   calls do not return;
    /// - every later `execute` does not return either; when the service restarts it fails with
    ///   [`EngineError::Unavailable`] (the broken call of a killed service) without starting a
    ///   run;
    /// - `stop` returns [`FROZEN_STOP_RESULT`] (`call-failure`) at once: the service does not
    ///   answer the call (chosen over hanging, so a caller's stop path stays usable);
    /// - `status` still answers (`InProgress` for the frozen runs), as do `pending`,
    ///   `run_details` and `inventory`;
    /// - `health` reports `healthy: false` with [`FROZEN_DETAIL`] — a real driver detects this
    ///   with a probe that times out.
    ///
    /// A restart clears the freeze and ends every run in progress (frozen or not) with
    /// [`SERVICE_SHUTDOWN`], committing the work processed before the freeze; their `execute`
    /// calls then return that result with their run numbers. Returns once those runs have
    /// ended, with how many there were. State (connector spaces, pending changes, history, run
    /// numbers) survives, as it does in the engine's database.
    pub async fn restart(&self) -> usize {
        self.ensure_scheduler();
        let running: Vec<watch::Receiver<bool>> = {
            let mut st = self.inner.lock();
            st.frozen = None;
            st.restarts = st.restarts.saturating_add(1);
            self.inner.mode.send_replace(Mode {
                frozen: false,
                restarts: st.restarts,
            });
            st.mas
                .iter()
                .filter_map(|m| m.running.as_ref().map(|r| r.done.clone()))
                .collect()
        };
        let ended = running.len();
        for mut done in running {
            // An error means the run task is gone, which also means it ended.
            let _ended = done.wait_for(|d| *d).await.is_ok();
        }
        ended
    }

    /// Spawn the scheduler of [`SimConfig::unmanaged`] runs once, when a runtime is present.
    fn ensure_scheduler(&self) {
        let inner = &self.inner;
        if inner.cfg.unmanaged.is_empty() || inner.scheduler_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner.scheduler_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut plan: Vec<(Instant, String, String)> = inner
            .cfg
            .unmanaged
            .iter()
            .filter_map(|u| {
                let secs = u.at_secs * inner.cfg.time_scale;
                if !(secs.is_finite() && (0.0..=MAX_UNMANAGED_DELAY_SECS).contains(&secs)) {
                    return None;
                }
                let at = inner
                    .epoch
                    .checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
                Some((at, u.ma.clone(), u.profile.clone()))
            })
            .collect();
        // Stable: runs due at the same time start in configuration order.
        plan.sort_by_key(|(at, _, _)| *at);
        let weak = Arc::downgrade(inner);
        handle.spawn(async move {
            for (at, ma, profile) in plan {
                tokio::time::sleep_until(at).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                match (SimEngine { inner }).start_unmanaged(&ma, &profile) {
                    Ok(run_number) => {
                        tracing::debug!(%ma, %profile, run_number, "sim: unmanaged run started");
                    }
                    Err(refusal) => {
                        tracing::debug!(%ma, %profile, %refusal, "sim: unmanaged run refused");
                    }
                }
            }
        });
    }
}

impl SyncEngine for SimEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: "sim".to_owned(),
            version: self.inner.cfg.version.clone(),
        }
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let st = self.inner.lock();
            Ok(st.mas.iter().map(|m| m.info.clone()).collect())
        })
    }

    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let run = match self.inner.begin(ma, profile, Origin::Execute)? {
                Begin::Frozen(generation) => {
                    // The frozen service does not answer: the call hangs until it restarts.
                    self.inner.wait_restart(generation).await;
                    return Err(EngineError::Unavailable(format!(
                        "the sync service was restarted while Execute({ma:?}, {profile:?}) \
                         waited for it; the run did not start"
                    )));
                }
                Begin::Refused(result) => {
                    return Ok(ExecuteOutcome {
                        result,
                        run_number: None,
                    });
                }
                Begin::Started(run) => run,
            };
            let run_number = run.header.run_number;
            let (tx, rx) = oneshot::channel();
            let inner = self.inner.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let outcome = inner.run(run, progress).await;
                let _ = tx.send(outcome);
            }));
            rx.await.map_err(|_| {
                EngineError::Unavailable(format!(
                    "simulated run {run_number} on {ma:?} ended without a result"
                ))
            })
        })
    }

    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let (stop, mut done) = {
                let st = self.inner.lock();
                if st.frozen.is_some() {
                    // A frozen service does not answer (see `SimEngine::restart`).
                    return Ok(FROZEN_STOP_RESULT.to_owned());
                }
                let idx = Inner::ma_index(&st, ma)?;
                match &st.mas[idx].running {
                    None => return Ok("ma-not-running".to_owned()),
                    Some(r) => (r.stop.clone(), r.done.clone()),
                }
            };
            stop.notify_one();
            // `Stop()` is synchronous: return once the run has ended. An error means the
            // run task is gone, which also means it ended.
            let _ = done.wait_for(|ended| *ended).await;
            Ok("success".to_owned())
        })
    }

    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            Ok(match &st.mas[idx].running {
                None => MaStatus::Idle,
                Some(r) => MaStatus::InProgress {
                    profile: r.profile.clone(),
                    run_number: r.run_number,
                },
            })
        })
    }

    fn pending<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            Ok(st.mas[idx].pending())
        })
    }

    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            st.mas[idx]
                .history
                .get(&run_number)
                .cloned()
                .ok_or_else(|| EngineError::NoSuchRun {
                    ma: ma.to_owned(),
                    run_number,
                })
        })
    }

    /// Like `MIIS_Server.ClearRuns`: every MA's runs whose last `end-date` is at or before
    /// `ending_before` leave the run history (runs in progress have none and stay); the state
    /// file is rewritten. Always `success`.
    fn clear_runs(
        &self,
        ending_before: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<String, EngineError>> {
        Box::pin(async move {
            self.ensure_scheduler();
            let removed = {
                let mut st = self.inner.lock();
                let mut removed = 0usize;
                for m in &mut st.mas {
                    let before = m.history.len();
                    m.history
                        .retain(|_, xml| run_ended(xml).is_none_or(|end| end > ending_before));
                    removed += before - m.history.len();
                }
                removed
            };
            if removed > 0 {
                self.inner.persist();
            }
            tracing::debug!(removed, %ending_before, "sim: ClearRuns");
            Ok("success".to_string())
        })
    }

    fn health(&self) -> BoxFuture<'_, EngineHealth> {
        Box::pin(async move {
            self.ensure_scheduler();
            match &self.inner.lock().frozen {
                Some(reason) => EngineHealth {
                    healthy: false,
                    detail: reason.clone(),
                },
                None => EngineHealth {
                    healthy: true,
                    detail: String::new(),
                },
            }
        })
    }
}
