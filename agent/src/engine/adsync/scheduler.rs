//! The built-in scheduler of Entra Connect Sync: switched off while syncfleet drives the
//! server, and switched back on by [`restore_builtin_scheduler`].
//!
//! Two schedulers starting run profiles on one server collide (a run refused as busy, or a cycle
//! of the built-in scheduler exporting between syncfleet's steps), so the agent does not run next
//! to the built-in sync cycle: it switches the cycle off at start or refuses to start.
//! The built-in scheduler's maintenance task (keys, certificates, log purge) is left running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::AdsyncConfig;
use super::driver::read_scheduler;
use super::runner::{AdsyncError, PowerShellRunner, ProcessRunner};
use crate::engine::EngineError;

/// File in the agent's data folder recording that syncfleet switched the sync cycle off.
pub const STATE_FILE: &str = "adsync-scheduler.json";

/// How often `SyncCycleInProgress` is read while waiting for a cycle to finish.
pub const CYCLE_POLL: Duration = Duration::from_secs(10);

/// What to do instead, printed with every refusal.
const HOW_TO_FIX: &str = "run the agent as a member of ADSyncAdmins so that it can switch the \
built-in sync cycle off, or switch it off by hand with 'Set-ADSyncScheduler -SyncCycleEnabled \
$false' (then syncfleet will not switch it back on). syncfleet does not run next to the built-in \
sync cycle: both would start run profiles and collide";

/// Why the built-in scheduler could not be taken over or restored.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(
        "the Entra Connect built-in sync cycle is on and could not be switched off: {reason}. To fix: {HOW_TO_FIX}"
    )]
    Refused { reason: String },
    #[error("the Entra Connect built-in scheduler could not be read: {0}")]
    Engine(#[from] EngineError),
    #[error("{path}: {problem}")]
    StateFile { path: PathBuf, problem: String },
    #[error(
        "the Entra Connect built-in sync cycle could not be switched back on: {0}. Run 'Set-ADSyncScheduler -SyncCycleEnabled $true' as a member of ADSyncAdmins"
    )]
    Restore(String),
}

/// The record written before the sync cycle is switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerRecord {
    /// Always true: the sync cycle was on before syncfleet switched it off.
    pub sync_cycle_enabled_before: bool,
    /// When syncfleet switched it off (RFC 3339, UTC).
    pub disabled_at: String,
}

/// What [`take_over_builtin_scheduler`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The sync cycle was on; syncfleet recorded that and switched it off.
    SwitchedOff,
    /// The sync cycle was already off (by hand, or by syncfleet earlier: the record is kept).
    AlreadyOff { recorded: bool },
}

/// What [`restore_builtin_scheduler`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// syncfleet had switched the cycle off; it is on again and the record is deleted.
    SwitchedOn,
    /// No record: syncfleet did not switch the cycle off, nothing was changed.
    NothingRecorded,
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::StateFile {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Write the record durably (temporary file, flush to disk, rename) before the change it records.
fn write_record(path: &Path, record: &SchedulerRecord) -> Result<(), SchedulerError> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(record).map_err(|e| file_error(path, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| file_error(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// The record, if syncfleet switched the cycle off.
pub fn read_record(data_dir: &Path) -> Result<Option<SchedulerRecord>, SchedulerError> {
    let path = state_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            file_error(
                &path,
                format!("{e}; delete the file if the built-in sync cycle is in the state you want"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(&path, e)),
    }
}

/// At agent start: if the built-in sync cycle is on, wait (at most `cfg.scheduler_wait`) for a
/// cycle in progress to finish, record in `data_dir` that it was on, and switch it off; refuse
/// when that is not possible (suspended scheduler, no permission, a cycle that does not end).
pub async fn take_over_builtin_scheduler<R: PowerShellRunner + ?Sized>(
    runner: &R,
    cfg: &AdsyncConfig,
    data_dir: &Path,
) -> Result<Takeover, SchedulerError> {
    let mut state = read_scheduler(runner).await?;
    if state.staging_mode_enabled {
        tracing::warn!(
            "this Entra Connect server is in staging mode: run profiles with an export step are \
             refused ({})",
            syncfleet_proto::vocab::STAGING_MODE_REFUSED
        );
    }
    if !state.sync_cycle_enabled {
        return Ok(Takeover::AlreadyOff {
            recorded: read_record(data_dir)?.is_some(),
        });
    }
    if state.scheduler_suspended {
        return Err(SchedulerError::Refused {
            reason: "the scheduler is suspended (SchedulerSuspended: the Entra Connect wizard is \
                     open or an upgrade runs); close the wizard or let the upgrade finish, then \
                     start the agent again"
                .into(),
        });
    }
    let deadline = tokio::time::Instant::now() + cfg.scheduler_wait;
    while state.sync_cycle_in_progress {
        if tokio::time::Instant::now() >= deadline {
            return Err(SchedulerError::Refused {
                reason: format!(
                    "a sync cycle of the built-in scheduler was still in progress after {:?} \
                     (engine.scheduler_wait)",
                    cfg.scheduler_wait
                ),
            });
        }
        tracing::info!(
            "waiting for the built-in scheduler's sync cycle to finish before taking over"
        );
        tokio::time::sleep(CYCLE_POLL.min(cfg.scheduler_wait)).await;
        state = read_scheduler(runner).await?;
    }
    let path = state_path(data_dir);
    write_record(
        &path,
        &SchedulerRecord {
            sync_cycle_enabled_before: true,
            disabled_at: chrono::Utc::now().to_rfc3339(),
        },
    )?;
    let refused = |reason: String, definite: bool| {
        // A definite refusal changed nothing: the record would make a later restore switch on
        // a cycle someone else switched off. After an unclear failure it stays (harmless).
        if definite {
            let _ = std::fs::remove_file(&path);
        }
        SchedulerError::Refused { reason }
    };
    match runner
        .call("Set-ADSyncScheduler", json!({ "SyncCycleEnabled": false }))
        .await
    {
        Ok(_) => {}
        Err(e @ AdsyncError::PowerShell { .. }) => return Err(refused(e.to_string(), true)),
        Err(e) => return Err(refused(e.to_string(), false)),
    }
    let after = read_scheduler(runner).await?;
    if after.sync_cycle_enabled {
        return Err(refused(
            "Set-ADSyncScheduler -SyncCycleEnabled $false was accepted but SyncCycleEnabled is \
             still true (a policy or another tool switches it back on)"
                .into(),
            true,
        ));
    }
    tracing::warn!(
        record = %path.display(),
        "the Entra Connect built-in sync cycle is switched off while syncfleet drives this server; \
         'syncfleet-agent adsync restore-scheduler' switches it back on"
    );
    Ok(Takeover::SwitchedOff)
}

/// Switch the built-in sync cycle back on if syncfleet switched it off (the record in
/// `data_dir`), then delete the record.
pub async fn restore_with<R: PowerShellRunner + ?Sized>(
    runner: &R,
    data_dir: &Path,
) -> Result<Restore, SchedulerError> {
    if read_record(data_dir)?.is_none() {
        return Ok(Restore::NothingRecorded);
    }
    runner
        .call("Set-ADSyncScheduler", json!({ "SyncCycleEnabled": true }))
        .await
        .map_err(|e| SchedulerError::Restore(e.to_string()))?;
    let path = state_path(data_dir);
    std::fs::remove_file(&path).map_err(|e| file_error(&path, e))?;
    Ok(Restore::SwitchedOn)
}

/// For `service uninstall` and `syncfleet-agent adsync restore-scheduler`: switch the built-in
/// sync cycle back on if syncfleet switched it off on this server. Starts PowerShell only when
/// there is a record. Uses the configured `adsync` settings, or the defaults when the agent is
/// configured for another engine.
pub async fn restore_builtin_scheduler(
    cfg: &crate::config::AgentConfig,
) -> Result<Restore, SchedulerError> {
    if read_record(&cfg.data_dir)?.is_none() {
        return Ok(Restore::NothingRecorded);
    }
    let adsync = match &cfg.engine {
        crate::config::EngineConfig::Adsync(a) => a.clone(),
        _ => AdsyncConfig::default(),
    };
    restore_with(&ProcessRunner::new(adsync), &cfg.data_dir).await
}
