//! The engine's concurrency rules, enforced before every step: the per-MA lock, the server-wide
//! gate for synchronizations (under the [`RunMode`]), the stagger between two starts, and runs
//! in progress that this process did not start (started in Sync Service Manager, by a script or
//! by an earlier agent process), which hold the same locks a step of ours would.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Executor, lock};
use crate::engine::MaStatus;

/// How much may run beside a synchronization on one server (`docs/engine.md`, "Concurrency
/// rules").
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

/// Marks an MA as executing a step of this process until dropped (also when the step's future
/// is dropped half-way).
pub(super) struct OursOn {
    set: Arc<Mutex<HashSet<String>>>,
    ma: String,
}

impl OursOn {
    pub(super) fn new(set: &Arc<Mutex<HashSet<String>>>, ma: &str) -> Self {
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
pub(super) fn conflict(
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

pub(super) enum Gate<'a> {
    Read(
        #[allow(dead_code, reason = "held only to release the lock when dropped")]
        tokio::sync::RwLockReadGuard<'a, ()>,
    ),
    Write(
        #[allow(dead_code, reason = "held only to release the lock when dropped")]
        tokio::sync::RwLockWriteGuard<'a, ()>,
    ),
    Sync(
        #[allow(dead_code, reason = "held only to release the lock when dropped")]
        tokio::sync::MutexGuard<'a, ()>,
    ),
    Open,
}

impl Executor {
    /// Whether a run profile synchronizes, or is a MIM Service MA import: one of those running
    /// beside a synchronization can freeze the sync service, so it takes the synchronization
    /// gate.
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
    pub(super) async fn foreign_blocker(
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

    /// Runs in progress in the engine that this process did not start, one per MA of the
    /// inventory (the heartbeat reports them, so the controller can show what a server runs
    /// now, including runs started in Sync Service Manager or by a script). An MA whose status
    /// cannot be read is left out (logged at debug level: the heartbeat must not fail for it).
    pub async fn foreign_runs(&self) -> Vec<(String, String, u64, String)> {
        let names: Vec<String> = lock(&self.inventory)
            .iter()
            .map(|m| m.name.clone())
            .collect();
        let mut out = Vec::new();
        for ma in names {
            if lock(&self.executing).contains(&ma) {
                continue;
            }
            match self.engine.status(&ma).await {
                Ok(MaStatus::InProgress {
                    profile,
                    run_number,
                }) => {
                    // Re-check: a step of ours may have started while the status was read.
                    if lock(&self.executing).contains(&ma) {
                        continue;
                    }
                    let origin = match lock(&self.recovering).get(&(ma.clone(), run_number)) {
                        Some(run_id) => {
                            format!("syncfleet run {run_id} before the agent restarted")
                        }
                        None => "outside syncfleet".to_string(),
                    };
                    out.push((ma, profile, run_number, origin));
                }
                Ok(MaStatus::Idle) => {}
                Err(e) => {
                    tracing::debug!(ma = %ma, error = %e, "cannot read the status of a management agent");
                }
            }
        }
        out
    }

    /// A MIM Service MA import that is sync-class only by that rule (for wording reasons).
    pub(super) fn mim_service_import(&self, ma: &str, profile: &str) -> bool {
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

    pub(super) fn ma_lock(&self, ma: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.ma_locks).entry(ma.to_string()).or_default())
    }

    pub(super) async fn gate(&self, sync_class: bool) -> Gate<'_> {
        match (self.opts.run_mode, sync_class) {
            (RunMode::Exclusive, _) | (RunMode::Supported, true) => {
                Gate::Write(self.gate.write().await)
            }
            (RunMode::Supported, false) => Gate::Read(self.gate.read().await),
            (RunMode::Unsupported, true) => Gate::Sync(self.sync_only.lock().await),
            (RunMode::Unsupported, false) => Gate::Open,
        }
    }

    /// The gate without waiting, or `None` with the reason it is taken: the step then says
    /// what it waits for before it queues for the gate (a wait behind another step of ours is
    /// as visible as one behind a run started outside syncfleet).
    pub(super) fn try_gate(&self, sync_class: bool) -> Result<Gate<'_>, &'static str> {
        match (self.opts.run_mode, sync_class) {
            (RunMode::Exclusive, _) => self.gate.try_write().map(Gate::Write).map_err(|_| {
                "another step is running on this server (run_mode exclusive: one step at a time); waiting for it to end"
            }),
            (RunMode::Supported, true) => self.gate.try_write().map(Gate::Write).map_err(|_| {
                "steps of other syncfleet runs are running on this server and a synchronization runs alone; waiting for them to end"
            }),
            (RunMode::Supported, false) => self.gate.try_read().map(Gate::Read).map_err(|_| {
                "a synchronization of another syncfleet run is running on this server; waiting for it to end"
            }),
            (RunMode::Unsupported, true) => {
                self.sync_only.try_lock().map(Gate::Sync).map_err(|_| {
                    "a synchronization of another syncfleet run is running on this server; waiting for it to end"
                })
            }
            (RunMode::Unsupported, false) => Ok(Gate::Open),
        }
    }

    pub(super) async fn stagger(&self) {
        let mut last = self.last_start.lock().await;
        if let Some(t) = *last {
            tokio::time::sleep_until(t + self.opts.stagger).await;
        }
        *last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod foreign_tests;
#[cfg(test)]
mod tests;
