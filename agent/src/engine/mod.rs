//! Engine drivers behind one trait, so the executor above them is the same for every engine
//! (`ARCHITECTURE.md`).
//!
//! A driver speaks to one synchronization engine the way the engine's real interface allows
//! (`docs/engine.md`, "WMI interface"): start a run profile and wait for its result string, stop it, read the
//! status of an MA, its pending counters and the run-history XML of a run. Drivers report the
//! engine's **raw** strings and **raw** run-history XML; [`crate::engine::runhistory`] is the one parser
//! that turns XML into counters for every driver.
//!
//! - [`sim`]: a simulated MIM engine for Linux development, demos, tests and benchmarks.
//! - `mim-wmi` (Windows only): the real engine through WMI.
//! - [`adsync`]: Entra Connect Sync / Azure AD Connect through the ADSync PowerShell module.

use std::future::Future;
use std::pin::Pin;

pub mod adsync;
pub mod runhistory;
pub mod sim;
pub mod wmi;

/// A boxed, sendable future: keeps [`SyncEngine`] object-safe (`Arc<dyn SyncEngine>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which engine a driver talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// Driver name: `sim` or `mim-wmi`.
    pub kind: String,
    /// Product and build, e.g. `MIM 2016 4.6.607.0`.
    pub version: String,
}

/// One run step of a run profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStepInfo {
    /// The engine's `step-type/@type`: `full-import`, `delta-import`, `apply-rules`, `export`,
    /// `full-import-reevaluate-rules`.
    pub step_type: String,
    /// Sub-type, e.g. `to-cs` (stage only) for imports, `apply-pending` (delta sync) or
    /// `reevaluate-flow-connectors` (full sync) for `apply-rules`. Empty when none.
    pub subtype: String,
    /// Partition the step targets (e.g. `DC=contoso,DC=com`); empty for single-partition MAs.
    pub partition: String,
}

impl RunStepInfo {
    /// True when the step synchronizes (touches the metaverse): `apply-rules`, and imports
    /// without the `to-cs` (stage only) sub-type, which are combined import+sync steps. Several
    /// sub-types are joined with `,` (e.g. `to-file, to-cs` is still stage only).
    pub fn is_sync(&self) -> bool {
        match self.step_type.as_str() {
            "apply-rules" | "full-import-reevaluate-rules" => true,
            "full-import" | "delta-import" => !self.subtype.split(',').any(|s| s.trim() == "to-cs"),
            _ => false,
        }
    }
}

/// A run profile as configured in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProfileInfo {
    /// Display name passed to `Execute`, e.g. `Delta Import`.
    pub name: String,
    pub steps: Vec<RunStepInfo>,
}

/// A management agent as configured in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaInfo {
    pub name: String,
    /// GUID in braces, upper case, as the engine prints it.
    pub guid: String,
    /// `MIIS_ManagementAgent.Type`, e.g. `AD`, `FIM`, `MSSQL`, `Extensible2`.
    pub ma_type: String,
    pub run_profiles: Vec<RunProfileInfo>,
}

impl MaInfo {
    /// The MIM Service MA (type `FIM`): its delta import counts as sync-class.
    pub fn is_mim_service(&self) -> bool {
        self.ma_type.eq_ignore_ascii_case("FIM")
    }

    pub fn profile(&self, name: &str) -> Option<&RunProfileInfo> {
        self.run_profiles.iter().find(|p| p.name == name)
    }
}

/// Whether an MA is running something right now (`RunStatus()` = `in-progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaStatus {
    Idle,
    /// A run is in progress: started by us or by someone else (Sync Service Manager, a script).
    InProgress {
        profile: String,
        run_number: u64,
    },
}

/// Pending counters of an MA (`NumImport*`, `NumExport*`, `NumTotalConnectors`, `NumCSObjects`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingCounters {
    pub import_add: u64,
    pub import_update: u64,
    pub import_delete: u64,
    pub export_add: u64,
    pub export_update: u64,
    pub export_delete: u64,
    pub total_connectors: u64,
    pub cs_objects: u64,
}

/// Progress of a running step, as the driver observes it while `Execute` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineProgress {
    /// Engine run number of the execution in progress.
    pub run_number: u64,
    /// The `progress="x/y"` attribute of `step-result`, when the engine gives one.
    pub progress: Option<String>,
    /// Run-history XML of the run so far, when available.
    pub details_xml: Option<String>,
}

/// What `Execute` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteOutcome {
    /// The engine's raw result string, verbatim (may be `completing-*`: see the WMI driver).
    pub result: String,
    /// Run number given to this execution; `None` when the run did not start (`no-start-*`).
    pub run_number: Option<u64>,
}

/// Engine health as last probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHealth {
    pub healthy: bool,
    /// Why not healthy; empty when healthy.
    pub detail: String,
}

/// Failures of the driver itself (not engine result strings, which are data).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("management agent {0:?} does not exist in the engine")]
    NoSuchMa(String),
    #[error("no run {run_number} in the run history of management agent {ma:?}")]
    NoSuchRun { ma: String, run_number: u64 },
    #[error("the sync engine is not reachable: {0}")]
    Unavailable(String),
    #[error("engine configuration: {0}")]
    Config(String),
}

/// Where a driver sends progress while `execute` runs. Sending never blocks.
pub type ProgressSink = tokio::sync::mpsc::UnboundedSender<EngineProgress>;

/// One synchronization engine. Implementations must be cheap to share (`Arc<dyn SyncEngine>`)
/// and safe to call concurrently: the agent's executor, not the driver, enforces the engine's
/// concurrency rules, but a driver must report the engine's own refusals verbatim.
pub trait SyncEngine: Send + Sync + 'static {
    /// Driver kind and engine build.
    fn info(&self) -> EngineInfo;

    /// Management agents with their run profiles.
    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>>;

    /// Run a run profile and wait for the engine's result (`MIIS_ManagementAgent.Execute`).
    /// Blocks (asynchronously) for as long as the run takes. Progress goes to `progress`.
    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>>;

    /// Stop the MA's current run (`MIIS_ManagementAgent.Stop`): returns the engine's string
    /// (`success`, `ma-not-running`, ...). The pending `execute` then returns a
    /// `stopped-user-termination-*` result.
    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>>;

    /// Whether the MA runs something now, including runs started outside syncfleet.
    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>>;

    /// Pending import/export counters of an MA.
    fn pending<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>>;

    /// Run-history XML of one run (`MIIS_RunHistory.RunDetails()`), raw.
    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>>;

    /// Probe the engine.
    fn health(&self) -> BoxFuture<'_, EngineHealth>;

    /// Remove from the engine's run history every run that ended at or before `ending_before`
    /// (`MIIS_Server.ClearRuns(EndingBefore)`, `docs/engine.md`). Returns the engine's string
    /// (`success`, `access-denied`, ...); removal is permanent. Drivers that cannot clear run
    /// history return [`EngineError::Config`] saying so.
    fn clear_runs(
        &self,
        ending_before: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<String, EngineError>> {
        let _ = ending_before;
        let kind = self.info().kind;
        Box::pin(async move {
            Err(EngineError::Config(format!(
                "the {kind} engine driver cannot clear run history; unset engine.clear_runs_older_than"
            )))
        })
    }
}
