//! The `adsync` driver: Entra Connect Sync / Azure AD Connect through the ADSync PowerShell
//! module (`docs/engine.md`, "Entra Connect Sync (ADSync)"). Portable code: it only starts a
//! process, so it builds and is tested on every OS; `powershell.exe` is the default program,
//! which exists only on Windows.
//!
//! # Layers and files
//!
//! - [`PowerShellRunner`]: one cmdlet call in, output objects as JSON out (`runner.rs`).
//!   [`ProcessRunner`] runs the calls in long-lived PowerShell processes started with the host
//!   loop [`HOST_SCRIPT`] (`host.ps1`): a control process for short calls, one process per run in
//!   progress because `Invoke-ADSyncRunProfile` holds its process for the whole run. The tests
//!   use a scripted fake (`fake.rs`) and, for the process runner itself, a Python stand-in
//!   speaking the same protocol (`stand_in.py`).
//! - [`AdsyncEngine`]: [`SyncEngine`](crate::engine::SyncEngine) over any runner (`driver.rs`);
//!   what the cmdlets' objects mean (`model.rs`).
//! - The built-in scheduler: [`take_over_builtin_scheduler`] at start,
//!   [`restore_builtin_scheduler`] on uninstall (`scheduler.rs`).
//!
//! # Rules implemented
//!
//! - `Invoke-ADSyncRunProfile -ConnectorName -RunProfileName` is synchronous; the `Result` of its
//!   output is the engine's result string, reported verbatim. A cmdlet error during it becomes
//!   `call-failure: <message>` (the WMI provider's string for an unexpected error; a message
//!   with `0x8023063d` classifies as busy).
//! - When the PowerShell process of a run dies (or breaks the protocol), the engine may still run
//!   the profile: the driver waits until the connector is idle and reports the result of the run
//!   that started after the snapshot; with no such run it reports the failure.
//! - Run numbers: the connector's newest run (`Get-ADSyncRunProfileResult -ConnectorId
//!   -NumberRequested 1`) is read before the run; while it executes the newest run is read every
//!   [`AdsyncConfig::poll_interval`] and a greater run number is reported as progress (so the
//!   executor journals it); a run that did not start has no run number.
//! - Status: `Get-ADSyncConnectorRunStatus` lists running connectors (empty when idle); for a
//!   running connector the run profile and run number come from its newest, incomplete run.
//! - Run details: `Get-ADSyncRunProfileResult -RunNumber -RunStepDetails` turned into
//!   run-history XML for the agent's one parser ([`crate::engine::runhistory`]).
//! - Stop: `Stop-ADSyncRunProfile -ConnectorName`; `ma-not-running` when the connector is idle.
//! - Staging mode (`StagingModeEnabled`): a run profile with an export step, or whose steps
//!   cannot be read, is not started; the result is
//!   [`syncfleet_proto::vocab::STAGING_MODE_REFUSED`] (a guard rail: never retried). Staging mode
//!   is read before every run, because an operator may switch it at any time.
//! - Pending counters are not read (no documented cmdlet): `pending` is unavailable, and the
//!   executor's pre-run checks see no counters.

mod config;
mod driver;
#[cfg(test)]
mod fake;
mod model;
mod runner;
mod scheduler;
#[cfg(test)]
mod tests;

pub use config::*;
pub use driver::*;
pub use model::{STANDARD_PROFILES, SchedulerState, run_history_xml, step_of};
pub use runner::*;
pub use scheduler::*;

use std::sync::Arc;

/// The driver with a [`ProcessRunner`].
pub fn build(
    cfg: AdsyncConfig,
) -> Result<Arc<AdsyncEngine<ProcessRunner>>, crate::engine::EngineError> {
    let runner = Arc::new(ProcessRunner::new(cfg.clone()));
    Ok(Arc::new(AdsyncEngine::new(runner, cfg)?))
}
