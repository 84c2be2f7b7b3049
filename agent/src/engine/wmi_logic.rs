//! The `mim-wmi` driver's decision logic, kept apart from the COM calls so that it runs and is
//! unit-tested on every platform (the COM side is `super::wmi`, Windows only).
//!
//! # Layers
//!
//! - [`WmiApi`]: the engine's WMI surface, one **blocking** method per WMI call
//!   (namespace [`NAMESPACE`], classes [`MA_CLASS`] and [`RUN_HISTORY_CLASS`], domain brief §2.1).
//!   Implementations return the provider's strings verbatim and report COM failures as
//!   [`WmiError::Com`] with the HRESULT. On Windows it is `super::wmi::ComWmi`; the tests use a
//!   scripted fake.
//! - [`WmiEngine`]: implements [`SyncEngine`] on top of any [`WmiApi`]. Every WMI call runs on a
//!   tokio blocking thread (`spawn_blocking`), because every WMI call may block; all but `Execute`
//!   are bounded by [`WmiConfig::blocking_timeout`] (`Stop` by [`WmiConfig::stop_timeout`]).
//!
//! # Rules implemented (domain brief)
//!
//! - `Execute` is synchronous and returns a status **string** (§2.1, §0.1): it runs on its own
//!   blocking thread for the whole run; meanwhile the driver polls `RunStatus()`/`RunNumber()`/
//!   `RunDetails()` every [`WmiConfig::poll_interval`] to detect the new run number and stream
//!   `step-result/@progress` (§9.2).
//! - `RunNumber()` is snapshot before `Execute`; a run number greater than the snapshot is the
//!   run's number (§9.2; only one run per MA at a time, §6.3). `no-start-*` and busy results have
//!   no run number ([`ExecuteOutcome::run_number`] is `None`).
//! - `Execute` may return `completing-*` (or, defensively, `in-progress`): the driver polls
//!   `RunStatus()` every [`WmiConfig::completing_poll`] until it is final (AutoSync
//!   `CompletingRefUpdatesSleepInterval`, 5 s, §3.2, §0.9) and reports that final string; if it
//!   cannot (timeout, WMI errors, history cleared) it returns the raw `completing-*` string, which
//!   the vocabulary classifies as `Transitional`.
//! - Dropping the `execute` future does not stop the run: the engine keeps running it (§9.5) and
//!   its blocking thread stays in `Execute` until the run ends. Stopping is [`SyncEngine::stop`].
//! - After a run, the driver waits [`WmiConfig::post_run_delay`] before returning so that the run
//!   history is complete when the caller reads it (AutoSync `PostRunInterval`, 2 s, §9.3).
//! - The provider strings `call-failure` and `connection-failure` (§2.1 "Common provider return
//!   strings") returned by `Execute` are passed through verbatim, like every engine string.
//! - The engine's refusal of a second concurrent synchronization, `0x8023063d` (§6.2), may reach
//!   the caller as a COM error or inside a string (UNCONFIRMED which, §6.2): a COM error with that
//!   HRESULT, or any error whose message contains it, becomes
//!   `call-failure: 0x8023063d <message>`, which [`syncfleet_proto::vocab::classify`] reads as
//!   `Busy`; a string containing it is passed through verbatim (also `Busy`).
//! - Other COM failures of `Execute` become `call-failure: 0x<hresult> <message>`; a lost
//!   connection to the service (RPC disconnect/unavailable, WMI transport failure, see
//!   [`WmiError::is_service_lost`]) becomes `connection-failure` (§3.5 Transient-external). When
//!   the connection drops mid-run the engine may still be running the profile (§9.5): the driver
//!   then follows the run through `RunStatus()` like a `completing-*` result.
//! - Run profiles: the WMI provider has no class or method that lists run profiles or their
//!   steps (§2.1 lists none; Lithnet reads them through the undocumented `GetMaData`, §2.2,
//!   §5). They come from the agent configuration ([`WmiConfig::profiles`]); an MA without
//!   declarations gets the five standard single-step profiles ([`STANDARD_PROFILES`]). Declare
//!   the real steps: the executor's synchronization lock (§6.1, §6.4) relies on them.
//!
//! # What is UNCONFIRMED about the real provider (verify on a server)
//!
//! - How `0x8023063d` surfaces through `Execute` (COM error or string), §6.2: both handled.
//! - The exact format of `MIIS_RunHistory.Key` ("MA GUID followed by run number", §2.1, S4):
//!   `ComWmi` tries `{GUID}<number>` and falls back to a WQL query on `MaGuid`/`RunNumber`.
//!   The driver reads the **last** run through `MIIS_ManagementAgent.RunDetails()` (documented)
//!   and uses `MIIS_RunHistory` only for older runs (enumerating run history is a known
//!   performance trap, §2.1).
//! - Whether `RunDetails()` returns the in-progress run while `Execute` blocks (progress events
//!   then carry no XML and no progress, only the run number), and whether `RunStatus()` reports
//!   `completing-*` or already the final string while the engine completes (§3.2).
//! - Whether run numbers restart after `ClearRuns` (§2.1 `RunNumber()` "empty if ... cleared";
//!   an empty snapshot counts as 0, so a restarted sequence is still detected).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use syncfleet_proto::vocab::{self, ResultClass};

use super::runhistory;
use super::{
    BoxFuture, EngineError, EngineHealth, EngineInfo, EngineProgress, ExecuteOutcome, MaInfo,
    MaStatus, PendingCounters, ProgressSink, RunProfileInfo, RunStepInfo, SyncEngine,
};

/// Driver kind reported by [`SyncEngine::info`].
pub const KIND: &str = "mim-wmi";

/// WMI namespace of the sync engine's provider (domain brief §2.1).
pub const NAMESPACE: &str = r"ROOT\MicrosoftIdentityIntegrationServer";

/// Class of management agents; key property `Name` (§2.1, `MIIS_ManagementAgent.Name='X'`, S3).
pub const MA_CLASS: &str = "MIIS_ManagementAgent";

/// Class of stored runs; key property `Key` = MA GUID followed by run number (§2.1, S4).
pub const RUN_HISTORY_CLASS: &str = "MIIS_RunHistory";

/// Windows service of FIM 2010 / MIM 2016 (domain brief §1).
pub const DEFAULT_SERVICE: &str = "FIMSynchronizationService";

/// Provider string: unexpected error, see the event log (§2.1, S21).
pub const CALL_FAILURE: &str = "call-failure";

/// Provider string: service stopped or caller removed from the groups (§2.1, S21).
pub const CONNECTION_FAILURE: &str = "connection-failure";

/// Returned by methods when the caller is not in the required group (§1, §2.1, S2).
pub const ACCESS_DENIED: &str = "access-denied";

/// The five standard single-step run profiles (name, steps as `type[/subtype]`, see
/// [`parse_step_spec`]) assumed for an MA that has no [`ProfileDecl`] (domain brief §5 table).
pub const STANDARD_PROFILES: [(&str, &str); 5] = [
    ("Full Import", "full-import/to-cs"),
    ("Delta Import", "delta-import/to-cs"),
    ("Full Sync", "apply-rules/reevaluate-flow-connectors"),
    ("Delta Sync", "apply-rules/apply-pending"),
    ("Export", "export"),
];

/// `step-type/@type` values the engine knows (domain brief §5 table).
pub const STEP_TYPES: [&str; 5] = [
    "full-import",
    "delta-import",
    "apply-rules",
    "export",
    "full-import-reevaluate-rules",
];

/// At most this many WMI calls (other than `Execute`) may be outstanding at once. Calls that time
/// out keep their blocking thread until WMI answers; past this many, the engine is treated as
/// frozen (§6.4) and further calls fail at once instead of piling up threads.
pub const MAX_OUTSTANDING_CALLS: usize = 16;

/// While settling a `completing-*` result, give up after this many consecutive failed polls.
pub const MAX_SETTLE_FAILURES: u32 = 3;

/// Smallest accepted [`WmiConfig::poll_interval`] / [`WmiConfig::completing_poll`].
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// HRESULTs the driver interprets. Values from `winerror.h` / `wbemcli.h`; `0x8023063D` from
/// event 6309 (domain brief §6.2, §2.5).
pub mod hresult {
    /// Second concurrent synchronization refused (§6.2).
    pub const CONCURRENT_SYNC: u32 = 0x8023_063D;
    pub const WBEM_E_NOT_FOUND: u32 = 0x8004_1002;
    pub const WBEM_E_ACCESS_DENIED: u32 = 0x8004_1003;
    pub const WBEM_E_TYPE_MISMATCH: u32 = 0x8004_1005;
    pub const WBEM_E_INVALID_NAMESPACE: u32 = 0x8004_100E;
    pub const WBEM_E_INVALID_CLASS: u32 = 0x8004_1010;
    pub const WBEM_E_PROVIDER_LOAD_FAILURE: u32 = 0x8004_1013;
    pub const WBEM_E_TRANSPORT_FAILURE: u32 = 0x8004_1015;
    pub const WBEM_E_INVALID_QUERY: u32 = 0x8004_1017;
    pub const WBEM_E_SHUTTING_DOWN: u32 = 0x8004_1033;
    pub const WBEM_E_INVALID_OBJECT_PATH: u32 = 0x8004_103A;
    pub const E_ACCESSDENIED: u32 = 0x8007_0005;
    pub const RPC_S_SERVER_UNAVAILABLE: u32 = 0x8007_06BA;
    pub const RPC_S_CALL_FAILED: u32 = 0x8007_06BE;
    pub const RPC_S_CALL_FAILED_DNE: u32 = 0x8007_06BF;
    pub const RPC_E_SERVER_DIED: u32 = 0x8001_0007;
    pub const RPC_E_SERVER_DIED_DNE: u32 = 0x8001_0012;
    pub const RPC_E_DISCONNECTED: u32 = 0x8001_0108;
}

/// A short name and meaning for the HRESULTs the driver knows; `None` for others.
pub fn describe_hresult(hr: u32) -> Option<&'static str> {
    use hresult::*;
    Some(match hr {
        CONCURRENT_SYNC => {
            "other synchronization run profile is already running (event 6309, domain brief §6.2)"
        }
        WBEM_E_NOT_FOUND => "WBEM_E_NOT_FOUND: object not found",
        WBEM_E_ACCESS_DENIED => "WBEM_E_ACCESS_DENIED: access denied",
        WBEM_E_TYPE_MISMATCH => "WBEM_E_TYPE_MISMATCH: type mismatch",
        WBEM_E_INVALID_NAMESPACE => "WBEM_E_INVALID_NAMESPACE: namespace not found",
        WBEM_E_INVALID_CLASS => "WBEM_E_INVALID_CLASS: class not found",
        WBEM_E_PROVIDER_LOAD_FAILURE => "WBEM_E_PROVIDER_LOAD_FAILURE: provider failed to load",
        WBEM_E_TRANSPORT_FAILURE => "WBEM_E_TRANSPORT_FAILURE: transport failure",
        WBEM_E_INVALID_QUERY => "WBEM_E_INVALID_QUERY: invalid query",
        WBEM_E_SHUTTING_DOWN => "WBEM_E_SHUTTING_DOWN: WMI is shutting down",
        WBEM_E_INVALID_OBJECT_PATH => "WBEM_E_INVALID_OBJECT_PATH: invalid object path",
        E_ACCESSDENIED => "E_ACCESSDENIED: access denied",
        RPC_S_SERVER_UNAVAILABLE => "RPC_S_SERVER_UNAVAILABLE: the RPC server is unavailable",
        RPC_S_CALL_FAILED => "RPC_S_CALL_FAILED: the remote procedure call failed",
        RPC_S_CALL_FAILED_DNE => "RPC_S_CALL_FAILED_DNE: the call failed and did not execute",
        RPC_E_SERVER_DIED => "RPC_E_SERVER_DIED: the server died",
        RPC_E_SERVER_DIED_DNE => "RPC_E_SERVER_DIED_DNE: the server died, call not executed",
        RPC_E_DISCONNECTED => "RPC_E_DISCONNECTED: the object disconnected from its clients",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The WMI surface
// ---------------------------------------------------------------------------------------------

/// A failed WMI call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WmiError {
    /// COM/WMI returned a failure HRESULT.
    #[error("COM error 0x{hresult:08x}: {message}")]
    Com { hresult: u32, message: String },
    /// Anything else: an unexpected value type, a missing `ReturnValue`, COM initialization, ...
    #[error("{0}")]
    Other(String),
}

impl WmiError {
    /// A COM error with the driver's description of the HRESULT as message.
    pub fn com(hresult: u32) -> WmiError {
        WmiError::Com {
            hresult,
            message: describe_hresult(hresult).unwrap_or_default().to_owned(),
        }
    }

    pub fn hresult(&self) -> Option<u32> {
        match self {
            WmiError::Com { hresult, .. } => Some(*hresult),
            WmiError::Other(_) => None,
        }
    }

    fn message(&self) -> &str {
        match self {
            WmiError::Com { message, .. } | WmiError::Other(message) => message,
        }
    }

    /// The engine refused a second concurrent synchronization (§6.2): HRESULT `0x8023063D`, or
    /// a message containing `0x8023063d` (any case).
    pub fn is_concurrent_sync_refusal(&self) -> bool {
        self.hresult() == Some(hresult::CONCURRENT_SYNC)
            || self
                .message()
                .to_ascii_lowercase()
                .contains(vocab::CONCURRENT_SYNC_HRESULT)
    }

    /// The object (an MA, a run) does not exist (`WBEM_E_NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        self.hresult() == Some(hresult::WBEM_E_NOT_FOUND)
    }

    /// The connection to WMI or to the sync service was lost: RPC disconnects, an unavailable
    /// RPC server, a WMI transport failure or shutdown. A cached connection must be dropped.
    pub fn is_service_lost(&self) -> bool {
        use hresult::*;
        matches!(
            self.hresult(),
            Some(
                RPC_S_SERVER_UNAVAILABLE
                    | RPC_S_CALL_FAILED
                    | RPC_S_CALL_FAILED_DNE
                    | RPC_E_SERVER_DIED
                    | RPC_E_SERVER_DIED_DNE
                    | RPC_E_DISCONNECTED
                    | WBEM_E_TRANSPORT_FAILURE
                    | WBEM_E_SHUTTING_DOWN
            )
        )
    }

    /// The caller lacks rights (FIMSyncOperators/FIMSyncAdmins, §1).
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.hresult(),
            Some(hresult::WBEM_E_ACCESS_DENIED | hresult::E_ACCESSDENIED)
        )
    }

    /// The provider is not installed on this machine (namespace or class missing).
    pub fn is_provider_missing(&self) -> bool {
        matches!(
            self.hresult(),
            Some(
                hresult::WBEM_E_INVALID_NAMESPACE
                    | hresult::WBEM_E_INVALID_CLASS
                    | hresult::WBEM_E_PROVIDER_LOAD_FAILURE
            )
        )
    }
}

/// One `MIIS_ManagementAgent` instance (properties `Name`, `Guid`, `Type`, §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaRecord {
    pub name: String,
    /// As the provider returns it; [`normalize_guid`] makes it `{UPPER-CASE}`.
    pub guid: String,
    pub ma_type: String,
}

/// The pending counters the driver reads: `MIIS_ManagementAgent.Num*()` methods (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PendingCounter {
    ImportAdd,
    ImportUpdate,
    ImportDelete,
    ExportAdd,
    ExportUpdate,
    ExportDelete,
    TotalConnectors,
    CsObjects,
}

impl PendingCounter {
    pub const ALL: [PendingCounter; 8] = [
        PendingCounter::ImportAdd,
        PendingCounter::ImportUpdate,
        PendingCounter::ImportDelete,
        PendingCounter::ExportAdd,
        PendingCounter::ExportUpdate,
        PendingCounter::ExportDelete,
        PendingCounter::TotalConnectors,
        PendingCounter::CsObjects,
    ];

    /// The WMI method name, e.g. `NumImportAdd`.
    pub fn method(self) -> &'static str {
        match self {
            PendingCounter::ImportAdd => "NumImportAdd",
            PendingCounter::ImportUpdate => "NumImportUpdate",
            PendingCounter::ImportDelete => "NumImportDelete",
            PendingCounter::ExportAdd => "NumExportAdd",
            PendingCounter::ExportUpdate => "NumExportUpdate",
            PendingCounter::ExportDelete => "NumExportDelete",
            PendingCounter::TotalConnectors => "NumTotalConnectors",
            PendingCounter::CsObjects => "NumCSObjects",
        }
    }

    fn slot(self, c: &mut PendingCounters) -> &mut u64 {
        match self {
            PendingCounter::ImportAdd => &mut c.import_add,
            PendingCounter::ImportUpdate => &mut c.import_update,
            PendingCounter::ImportDelete => &mut c.import_delete,
            PendingCounter::ExportAdd => &mut c.export_add,
            PendingCounter::ExportUpdate => &mut c.export_update,
            PendingCounter::ExportDelete => &mut c.export_delete,
            PendingCounter::TotalConnectors => &mut c.total_connectors,
            PendingCounter::CsObjects => &mut c.cs_objects,
        }
    }
}

/// The engine's WMI surface, one **blocking** method per WMI call (domain brief §2.1). Methods
/// return the provider's strings verbatim (they may be `call-failure`, `connection-failure`,
/// `access-denied` instead of the documented value); COM failures are [`WmiError::Com`].
///
/// Implementations are called from tokio blocking threads, several at once (an `Execute` blocks
/// one thread for the whole run while other calls poll), and must be safe for that.
pub trait WmiApi: Send + Sync + 'static {
    /// All `MIIS_ManagementAgent` instances.
    fn list_mas(&self) -> Result<Vec<MaRecord>, WmiError>;
    /// `Execute(RunProfileName)`: blocks until the run ends; returns the result string.
    fn execute(&self, ma: &str, profile: &str) -> Result<String, WmiError>;
    /// `Stop()`: `success`, `ma-not-running`, `access-denied` (§2.1, S6).
    fn stop(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunStatus()`: status of the current or last run; `in-progress` while running; empty if
    /// never run or history cleared (§2.1, S5).
    fn run_status(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunNumber()`: number of the current or last run as a decimal string; empty if never run
    /// or history cleared (§2.1, S5c).
    fn run_number(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunProfile()`: profile of the current or last run; empty if none (§2.1, S5b).
    fn run_profile(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunDetails()`: run-history XML of the last run (§2.1, S3).
    fn run_details(&self, ma: &str) -> Result<String, WmiError>;
    /// `MIIS_RunHistory.RunDetails()` of run `run_number` of the MA with GUID `ma_guid`
    /// (`{UPPER-CASE}` form); `Ok(None)` when no such run is stored (§2.1, S4, S4b).
    fn history_details(&self, ma_guid: &str, run_number: u64) -> Result<Option<String>, WmiError>;
    /// One `Num*()` counter method (§2.1): a decimal string, or a provider string.
    fn num(&self, ma: &str, counter: PendingCounter) -> Result<String, WmiError>;
    /// Whether the sync engine's Windows service is running (§1); `false` if not installed.
    fn service_running(&self) -> Result<bool, WmiError>;
    /// Product and build of the engine, e.g. `FIMSynchronizationService 4.6.607.0`.
    fn engine_version(&self) -> Result<String, WmiError>;
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A run profile of one MA, declared in the agent configuration because WMI cannot list them
/// (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDecl {
    /// MA name as in the engine.
    pub ma: String,
    /// Run profile display name passed to `Execute`.
    pub name: String,
    /// Steps in order, each `type[/subtype][@partition]` ([`parse_step_spec`]), e.g.
    /// `delta-import/to-cs`, `apply-rules/apply-pending`, `export@DC=contoso,DC=com`.
    pub step_types: Vec<String>,
}

/// Settings of the `mim-wmi` driver. Durations use humantime (`"2s"`, `"5m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WmiConfig {
    /// How often `RunStatus()`/`RunNumber()`/`RunDetails()` are polled while `Execute` blocks
    /// (§9.2: 1–5 s). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often `RunStatus()` is polled after `Execute` returned `completing-*` (AutoSync
    /// `CompletingRefUpdatesSleepInterval`, §3.2). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub completing_poll: Duration,
    /// Longest wait for a `completing-*` result to settle; afterwards the raw `completing-*`
    /// string is reported. Default 2 h.
    #[serde(with = "humantime_serde")]
    pub completing_timeout: Duration,
    /// Pause after a run before `execute` returns, so its history is complete (AutoSync
    /// `PostRunInterval`, §9.3). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub post_run_delay: Duration,
    /// Longest wait for any WMI call except `Execute` and `Stop`; a call that takes longer
    /// makes the operation fail with [`EngineError::Unavailable`] and health unhealthy (a frozen
    /// engine, §6.4). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub blocking_timeout: Duration,
    /// Longest wait for `Stop()`, which blocks until the run has stopped and may take long
    /// (§2.1, S6, §6.12). Default 10 min.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Windows service of the engine, probed by health checks (§1). Default
    /// `FIMSynchronizationService`.
    pub service_name: String,
    /// Declared run profiles. An MA with none gets [`STANDARD_PROFILES`].
    pub profiles: Vec<ProfileDecl>,
}

impl Default for WmiConfig {
    fn default() -> Self {
        WmiConfig {
            poll_interval: Duration::from_secs(2),
            completing_poll: Duration::from_secs(5),
            completing_timeout: Duration::from_secs(2 * 3600),
            post_run_delay: Duration::from_secs(2),
            blocking_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(600),
            service_name: DEFAULT_SERVICE.to_owned(),
            profiles: Vec::new(),
        }
    }
}

impl WmiConfig {
    /// Check the settings; errors name the key.
    pub fn validate(&self) -> Result<(), EngineError> {
        let cfg = |m: String| Err(EngineError::Config(m));
        for (key, d) in [
            ("poll_interval", self.poll_interval),
            ("completing_poll", self.completing_poll),
        ] {
            if d < MIN_POLL {
                return cfg(format!("{key} = {d:?} is shorter than {MIN_POLL:?}"));
            }
        }
        for (key, d) in [
            ("completing_timeout", self.completing_timeout),
            ("blocking_timeout", self.blocking_timeout),
            ("stop_timeout", self.stop_timeout),
        ] {
            if d.is_zero() {
                return cfg(format!("{key} must be longer than 0"));
            }
        }
        if self.service_name.trim().is_empty() {
            return cfg("service_name is empty".to_owned());
        }
        let mut seen = BTreeSet::new();
        for p in &self.profiles {
            if p.ma.trim().is_empty() || p.name.trim().is_empty() {
                return cfg(format!(
                    "profiles: entry with ma {:?} and name {:?}: both must be set",
                    p.ma, p.name
                ));
            }
            if !seen.insert((p.ma.as_str(), p.name.as_str())) {
                return cfg(format!(
                    "profiles: {:?} of MA {:?} is declared twice",
                    p.name, p.ma
                ));
            }
            if p.step_types.is_empty() {
                return cfg(format!(
                    "profiles: {:?} of MA {:?} has no step_types",
                    p.name, p.ma
                ));
            }
            for s in &p.step_types {
                parse_step_spec(s).map_err(|e| {
                    EngineError::Config(format!("profiles: {:?} of MA {:?}: {e}", p.name, p.ma))
                })?;
            }
        }
        Ok(())
    }

    /// The run profiles of an MA: its declarations, or [`STANDARD_PROFILES`] when it has none.
    pub fn profiles_for(&self, ma: &str) -> Result<Vec<RunProfileInfo>, EngineError> {
        let declared: Vec<(&str, Vec<&str>)> = self
            .profiles
            .iter()
            .filter(|p| p.ma == ma)
            .map(|p| {
                (
                    p.name.as_str(),
                    p.step_types.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let profiles = if declared.is_empty() {
            STANDARD_PROFILES
                .iter()
                .map(|(name, step)| (*name, vec![*step]))
                .collect()
        } else {
            declared
        };
        profiles
            .into_iter()
            .map(|(name, steps)| {
                Ok(RunProfileInfo {
                    name: name.to_owned(),
                    steps: steps
                        .into_iter()
                        .map(parse_step_spec)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(EngineError::Config)?,
                })
            })
            .collect()
    }
}

/// Parse a step declaration `type[/subtype][@partition]`: `type` is one of [`STEP_TYPES`]
/// (domain brief §5), `subtype` is free text (several sub-types as the engine joins them, e.g.
/// `to-file, resume-from-file`), `partition` is everything after the first `@`.
pub fn parse_step_spec(spec: &str) -> Result<RunStepInfo, String> {
    let (head, partition) = match spec.split_once('@') {
        Some((h, p)) => (h, p.trim()),
        None => (spec, ""),
    };
    let (step_type, subtype) = match head.split_once('/') {
        Some((t, s)) => (t.trim(), s.trim()),
        None => (head.trim(), ""),
    };
    if !STEP_TYPES.contains(&step_type) {
        return Err(format!(
            "step {spec:?}: type {step_type:?} is not one of {}",
            STEP_TYPES.join(", ")
        ));
    }
    Ok(RunStepInfo {
        step_type: step_type.to_owned(),
        subtype: subtype.to_owned(),
        partition: partition.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Pure helpers (used by both layers, unit-tested)
// ---------------------------------------------------------------------------------------------

/// A string literal for a WMI object path key or a WQL `WHERE` clause: double quotes, with `\`
/// and `"` escaped by a backslash.
pub fn quote_wmi_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Object path of an MA: `MIIS_ManagementAgent.Name="X"` (§2.1, S3).
pub fn ma_path(ma: &str) -> String {
    format!("{MA_CLASS}.Name={}", quote_wmi_string(ma))
}

/// Object path of a stored run: `MIIS_RunHistory.Key="{GUID}<number>"`. The key format is
/// UNCONFIRMED ("MA GUID followed by run number", §2.1, S4).
pub fn run_history_path(ma_guid: &str, run_number: u64) -> String {
    format!(
        "{RUN_HISTORY_CLASS}.Key={}",
        quote_wmi_string(&format!("{ma_guid}{run_number}"))
    )
}

/// A GUID as the engine prints it in run history: in braces, upper case.
pub fn normalize_guid(guid: &str) -> String {
    let g = guid.trim().trim_start_matches('{').trim_end_matches('}');
    format!("{{{}}}", g.to_ascii_uppercase())
}

/// The executable of a service `PathName` (`"C:\...\miiserver.exe" -arg` or unquoted).
pub fn exe_from_service_path(path_name: &str) -> Option<String> {
    let p = path_name.trim();
    let exe = if let Some(rest) = p.strip_prefix('"') {
        rest.split_once('"')?.0
    } else {
        let lower = p.to_ascii_lowercase();
        match lower.find(".exe") {
            Some(i) => &p[..i + 4],
            None => p,
        }
    };
    (!exe.is_empty()).then(|| exe.to_owned())
}

/// A `RunNumber()` string: `Ok(None)` when empty (never run / cleared), `Ok(Some(n))` for a
/// number, `Err` with the string otherwise (a provider string such as `connection-failure`).
pub fn parse_run_number(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<u64>().map(Some).map_err(|_| s.to_owned())
}

/// True for the provider's failure strings (§2.1, S21) and `access-denied`.
pub fn is_provider_failure(s: &str) -> bool {
    let t = s.trim();
    [CALL_FAILURE, CONNECTION_FAILURE, ACCESS_DENIED]
        .iter()
        .any(|p| t.eq_ignore_ascii_case(p))
}

/// The engine's own refusal to start: `no-start-*` or a busy result (§3.3, §3.5). Such a run
/// has no run number.
pub fn refused_to_start(result: &str) -> bool {
    result.trim().to_ascii_lowercase().starts_with("no-start-")
        || vocab::classify(result) == ResultClass::Busy
}

/// The result string recorded when `Execute` failed with a WMI error instead of a string:
/// the 0x8023063d refusal → `call-failure: 0x8023063d <message>` (Busy); a lost service →
/// `connection-failure`; another COM error → `call-failure: 0x<hresult> <message>`; anything
/// else → `call-failure: <message>`.
pub fn result_from_error(e: &WmiError) -> String {
    let msg = e.message().trim();
    let join = |head: String| {
        if msg.is_empty() {
            head
        } else {
            format!("{head} {msg}")
        }
    };
    if e.is_concurrent_sync_refusal() {
        join(format!(
            "{CALL_FAILURE}: {}",
            vocab::CONCURRENT_SYNC_HRESULT
        ))
    } else if e.is_service_lost() {
        CONNECTION_FAILURE.to_owned()
    } else if let Some(hr) = e.hresult() {
        join(format!("{CALL_FAILURE}: 0x{hr:08x}"))
    } else {
        join(format!("{CALL_FAILURE}:"))
    }
}

/// The driver error for a failed WMI call `method` (on MA `ma`, when it targets one).
pub fn engine_error(ma: Option<&str>, method: &str, e: &WmiError) -> EngineError {
    if e.is_not_found()
        && let Some(ma) = ma
    {
        return EngineError::NoSuchMa(ma.to_owned());
    }
    if e.is_access_denied() {
        return EngineError::Config(format!(
            "{method}: {e}; the agent's account must be in FIMSyncOperators or FIMSyncAdmins \
             (domain brief §1)"
        ));
    }
    if e.is_provider_missing() {
        return EngineError::Config(format!(
            "{method}: {e}; is the synchronization service installed on this machine \
             (namespace {NAMESPACE})?"
        ));
    }
    EngineError::Unavailable(format!("{method}: {e}"))
}

/// The driver error for a provider failure string returned instead of a value.
fn provider_string_error(method: &str, ma: &str, s: &str) -> EngineError {
    if s.trim().eq_ignore_ascii_case(ACCESS_DENIED) {
        EngineError::Config(format!(
            "{method}() of MA {ma:?} returned {ACCESS_DENIED}; the agent's account must be in \
             FIMSyncOperators or FIMSyncAdmins (domain brief §1)"
        ))
    } else {
        EngineError::Unavailable(format!("{method}() of MA {ma:?} returned {s:?}"))
    }
}

/// Parse a `Num*()` counter string (§2.1: counters are numeric strings).
pub fn parse_counter(ma: &str, counter: PendingCounter, s: &str) -> Result<u64, EngineError> {
    if is_provider_failure(s) {
        return Err(provider_string_error(counter.method(), ma, s));
    }
    s.trim().parse::<u64>().map_err(|_| {
        EngineError::Unavailable(format!(
            "{}() of MA {ma:?} returned {s:?}, not a number",
            counter.method()
        ))
    })
}

/// `step-result/@progress` of the running step in in-progress run-history XML, when the XML
/// is run `run_number`. `None` when the XML does not parse or is another run; `Some(None)` when
/// it is this run but gives no progress. The step running is the first without `end-date`,
/// else the last (§4: steps sorted by number, `end-date` only when completed).
pub fn progress_of(xml: &str, run_number: u64) -> Option<Option<String>> {
    let run = runhistory::parse_one(xml).ok()?;
    if run.run_number != run_number {
        return None;
    }
    let step = run
        .steps
        .iter()
        .find(|s| s.finished_at.is_none())
        .or_else(|| run.steps.last());
    Some(step.and_then(|s| s.progress.clone()))
}

/// What one poll during `Execute` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observation {
    run_number: Option<u64>,
    details: Option<String>,
}

/// Turns polls during `Execute` into progress events: detects the run number (first number
/// above the snapshot) and emits an event when what is known changed.
#[derive(Debug)]
struct ProgressTracker {
    before: u64,
    ours: Option<u64>,
    last: Option<EngineProgress>,
}

impl ProgressTracker {
    fn new(before: u64) -> Self {
        ProgressTracker {
            before,
            ours: None,
            last: None,
        }
    }

    fn update(&mut self, obs: Observation) -> Option<EngineProgress> {
        if self.ours.is_none()
            && let Some(n) = obs.run_number
            && n > self.before
        {
            self.ours = Some(n);
        }
        let ours = self.ours?;
        let (progress, details_xml) = match (obs.run_number, obs.details) {
            (Some(n), Some(xml)) if n == ours => match progress_of(&xml, ours) {
                Some(p) => (p, Some(xml)),
                None => (None, None),
            },
            _ => (None, None),
        };
        let event = EngineProgress {
            run_number: ours,
            progress,
            details_xml,
        };
        if self.last.as_ref() == Some(&event) {
            return None;
        }
        self.last = Some(event.clone());
        Some(event)
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Decrements the outstanding-call count when a blocking call ends (even if it panics).
struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `mim-wmi` engine driver over any [`WmiApi`] (see the module documentation for the
/// rules it implements).
pub struct WmiEngine<A: WmiApi> {
    api: Arc<A>,
    cfg: WmiConfig,
    /// MA name → `{GUID}`, from the last `list_mas`.
    guids: Mutex<HashMap<String, String>>,
    /// Engine version from the last successful probe.
    version: Mutex<Option<String>>,
    outstanding: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<A: WmiApi> WmiEngine<A> {
    /// A driver over `api`; fails when the configuration is invalid. Makes no WMI call.
    pub fn new(api: A, cfg: WmiConfig) -> Result<Self, EngineError> {
        cfg.validate()?;
        Ok(WmiEngine {
            api: Arc::new(api),
            cfg,
            guids: Mutex::new(HashMap::new()),
            version: Mutex::new(None),
            outstanding: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn config(&self) -> &WmiConfig {
        &self.cfg
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    /// Run `f` on a blocking thread, bounded by `limit`. A call that times out keeps its thread
    /// until WMI answers; at most [`MAX_OUTSTANDING_CALLS`] may be outstanding.
    async fn blocking<T, F>(&self, what: &str, limit: Duration, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&A) -> T + Send + 'static,
    {
        let n = self.outstanding.fetch_add(1, Ordering::SeqCst);
        let guard = Outstanding(Arc::clone(&self.outstanding));
        if n >= MAX_OUTSTANDING_CALLS {
            return Err(EngineError::Unavailable(format!(
                "{n} WMI calls are still waiting for the sync engine; it looks frozen \
                 (domain brief §6.4), {what} not attempted"
            )));
        }
        let api = Arc::clone(&self.api);
        let handle = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f(&api)
        });
        match tokio::time::timeout(limit, handle).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EngineError::Unavailable(format!(
                "WMI call {what} failed on its thread: {e}"
            ))),
            Err(_) => Err(EngineError::Unavailable(format!(
                "WMI call {what} did not answer within {limit:?}; the sync engine may be frozen \
                 (domain brief §6.4)"
            ))),
        }
    }

    /// `RunNumber()` of an MA, parsed. `Err(Ok(result))`: the engine answered with a string
    /// that is not a number, or the call failed; `result` is what `execute` reports.
    async fn snapshot(&self, ma: &str) -> Result<Result<u64, String>, EngineError> {
        let m = ma.to_owned();
        let raw = self
            .blocking("RunNumber", self.cfg.blocking_timeout, move |a| {
                a.run_number(&m)
            })
            .await?;
        Ok(match raw {
            Ok(s) => parse_run_number(&s).map(|n| n.unwrap_or(0)),
            Err(e) if e.is_not_found() => return Err(EngineError::NoSuchMa(ma.to_owned())),
            Err(e) => Err(result_from_error(&e)),
        })
    }

    /// One poll while `Execute` blocks: `RunNumber()` and, once a new run exists, `RunDetails()`.
    /// Errors are logged and count as "nothing seen".
    async fn observe(&self, ma: &str, before: u64) -> Observation {
        let m = ma.to_owned();
        let polled = self
            .blocking(
                "RunNumber/RunDetails",
                self.cfg.blocking_timeout,
                move |a| {
                    let n = a.run_number(&m)?;
                    let n = parse_run_number(&n).ok().flatten();
                    let details = match n {
                        Some(n) if n > before => Some(a.run_details(&m)?),
                        _ => None,
                    };
                    Ok::<_, WmiError>((n, details))
                },
            )
            .await;
        match polled {
            Ok(Ok((run_number, details))) => Observation {
                run_number,
                details,
            },
            Ok(Err(e)) => {
                tracing::debug!(ma, error = %e, "progress poll failed");
                Observation {
                    run_number: None,
                    details: None,
                }
            }
            Err(e) => {
                tracing::debug!(ma, error = %e, "progress poll failed");
                Observation {
                    run_number: None,
                    details: None,
                }
            }
        }
    }

    /// Poll `RunStatus()` until the run is final (§3.2); returns the final string, or `initial`
    /// when that cannot be learned.
    async fn settle(&self, ma: &str, ours: Option<u64>, initial: String) -> String {
        let deadline = tokio::time::Instant::now() + self.cfg.completing_timeout;
        let mut failures = 0u32;
        loop {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(ma, result = %initial, "run did not settle in time");
                return initial;
            }
            tokio::time::sleep(self.cfg.completing_poll).await;
            let m = ma.to_owned();
            let polled = self
                .blocking("RunStatus", self.cfg.blocking_timeout, move |a| {
                    let status = a.run_status(&m)?;
                    let number = a.run_number(&m).ok();
                    Ok::<_, WmiError>((status, number))
                })
                .await;
            let (status, number) = match polled {
                Ok(Ok((s, n))) if !is_provider_failure(&s) => {
                    (s, n.and_then(|n| parse_run_number(&n).ok().flatten()))
                }
                other => {
                    failures += 1;
                    tracing::debug!(ma, ?other, failures, "settle poll failed");
                    if failures >= MAX_SETTLE_FAILURES {
                        tracing::warn!(ma, result = %initial, "cannot read the final run status");
                        return initial;
                    }
                    continue;
                }
            };
            failures = 0;
            if let (Some(o), Some(n)) = (ours, number)
                && n > o
            {
                // A later run started: ours is over; its history says how it ended.
                return self.history_result(ma, o).await.unwrap_or(initial);
            }
            if status.trim().is_empty() {
                return initial;
            }
            if vocab::classify(&status) != ResultClass::Transitional {
                return status;
            }
        }
    }

    /// The run-level result of a stored run (most severe step result, §4 quirk 5).
    async fn history_result(&self, ma: &str, run_number: u64) -> Option<String> {
        let xml = self.fetch_run_details(ma, run_number).await.ok()?;
        let run = runhistory::parse_one(&xml).ok()?;
        run.result().map(str::to_owned)
    }

    async fn run_execute(
        &self,
        ma: &str,
        profile: &str,
        progress: ProgressSink,
    ) -> Result<ExecuteOutcome, EngineError> {
        let before = match self.snapshot(ma).await? {
            Ok(n) => n,
            Err(result) => {
                // Not even RunNumber() works: do not start a run we could not follow.
                return Ok(ExecuteOutcome {
                    result,
                    run_number: None,
                });
            }
        };
        let api = Arc::clone(&self.api);
        let (m, p) = (ma.to_owned(), profile.to_owned());
        let exec = tokio::task::spawn_blocking(move || api.execute(&m, &p));
        tokio::pin!(exec);
        let mut tracker = ProgressTracker::new(before);
        let joined = loop {
            let poll = async {
                tokio::time::sleep(self.cfg.poll_interval).await;
                self.observe(ma, before).await
            };
            tokio::select! {
                biased;
                r = &mut exec => break r,
                obs = poll => {
                    if let Some(event) = tracker.update(obs) {
                        // The receiver may be gone; the run goes on regardless.
                        let _ = progress.send(event);
                    }
                }
            }
        };
        let (mut result, lost) = match joined {
            Ok(Ok(s)) => (s, false),
            Ok(Err(e)) => {
                tracing::warn!(ma, profile, error = %e, "WMI Execute failed");
                (result_from_error(&e), e.is_service_lost())
            }
            Err(e) => {
                return Err(EngineError::Unavailable(format!(
                    "WMI Execute of {profile:?} on {ma:?} failed on its thread: {e}"
                )));
            }
        };
        if refused_to_start(&result) {
            return Ok(ExecuteOutcome {
                result,
                run_number: None,
            });
        }
        let mut run_number = tracker.ours;
        if run_number.is_none() {
            let m = ma.to_owned();
            if let Ok(Ok(s)) = self
                .blocking("RunNumber", self.cfg.blocking_timeout, move |a| {
                    a.run_number(&m)
                })
                .await
                && let Ok(Some(n)) = parse_run_number(&s)
                && n > before
            {
                run_number = Some(n);
            }
        }
        if vocab::classify(&result) == ResultClass::Transitional || (lost && run_number.is_some()) {
            result = self.settle(ma, run_number, result).await;
        }
        if run_number.is_some() && !self.cfg.post_run_delay.is_zero() {
            tokio::time::sleep(self.cfg.post_run_delay).await;
        }
        Ok(ExecuteOutcome { result, run_number })
    }

    /// `{GUID}` of an MA, from the cache or a fresh `list_mas`.
    async fn guid_of(&self, ma: &str) -> Result<String, EngineError> {
        if let Some(g) = lock(&self.guids).get(ma) {
            return Ok(g.clone());
        }
        self.list().await?;
        lock(&self.guids)
            .get(ma)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))
    }

    async fn list(&self) -> Result<Vec<MaRecord>, EngineError> {
        let mas = self
            .blocking("MIIS_ManagementAgent", self.cfg.blocking_timeout, |a| {
                a.list_mas()
            })
            .await?
            .map_err(|e| engine_error(None, "list management agents", &e))?;
        *lock(&self.guids) = mas
            .iter()
            .map(|m| (m.name.clone(), normalize_guid(&m.guid)))
            .collect();
        Ok(mas)
    }

    async fn fetch_run_details(&self, ma: &str, run_number: u64) -> Result<String, EngineError> {
        // The last run through MIIS_ManagementAgent.RunDetails() (documented, cheap); older
        // runs through MIIS_RunHistory (key format UNCONFIRMED, see the module docs).
        let m = ma.to_owned();
        let last = self
            .blocking(
                "RunNumber/RunDetails",
                self.cfg.blocking_timeout,
                move |a| {
                    let n = a.run_number(&m)?;
                    if parse_run_number(&n).ok().flatten() == Some(run_number) {
                        a.run_details(&m).map(Some)
                    } else {
                        Ok(None)
                    }
                },
            )
            .await?
            .map_err(|e| engine_error(Some(ma), "RunDetails", &e))?;
        if let Some(xml) = last {
            if is_provider_failure(&xml) {
                return Err(provider_string_error("RunDetails", ma, &xml));
            }
            // A new run may have started between the two calls: check the number when we can.
            match runhistory::parse_one(&xml) {
                Ok(run) if run.run_number != run_number => {}
                _ => return Ok(xml),
            }
        }
        let guid = self.guid_of(ma).await?;
        let found = self
            .blocking(
                "MIIS_RunHistory.RunDetails",
                self.cfg.blocking_timeout,
                move |a| a.history_details(&guid, run_number),
            )
            .await?
            .map_err(|e| engine_error(None, "MIIS_RunHistory.RunDetails", &e))?;
        match found {
            Some(xml) if is_provider_failure(&xml) => Err(provider_string_error(
                "MIIS_RunHistory.RunDetails",
                ma,
                &xml,
            )),
            Some(xml) => Ok(xml),
            None => Err(EngineError::NoSuchRun {
                ma: ma.to_owned(),
                run_number,
            }),
        }
    }

    async fn probe(&self) -> EngineHealth {
        let want_version = lock(&self.version).is_none();
        let probed = self
            .blocking("health probe", self.cfg.blocking_timeout, move |a| {
                let running = a.service_running();
                let mas = match running {
                    Ok(true) => Some(a.list_mas().map(|m| m.len())),
                    _ => None,
                };
                let version = if want_version {
                    a.engine_version().ok()
                } else {
                    None
                };
                (running, mas, version)
            })
            .await;
        let unhealthy = |detail: String| EngineHealth {
            healthy: false,
            detail,
        };
        match probed {
            Err(e) => unhealthy(e.to_string()),
            Ok((running, mas, version)) => {
                if let Some(v) = version.filter(|v| !v.trim().is_empty()) {
                    *lock(&self.version) = Some(v);
                }
                match (running, mas) {
                    (Err(e), _) => unhealthy(format!("cannot query the service state: {e}")),
                    (Ok(false), _) => unhealthy(format!(
                        "service {} is not running (or not installed)",
                        self.cfg.service_name
                    )),
                    (Ok(true), Some(Err(e))) => {
                        unhealthy(format!("cannot list management agents: {e}"))
                    }
                    (Ok(true), _) => EngineHealth {
                        healthy: true,
                        detail: String::new(),
                    },
                }
            }
        }
    }
}

impl<A: WmiApi> SyncEngine for WmiEngine<A> {
    /// Kind `mim-wmi`; version from the last successful health probe, else `unknown`.
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: KIND.to_owned(),
            version: lock(&self.version)
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }

    /// MAs from `MIIS_ManagementAgent`; run profiles from the configuration (module docs).
    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>> {
        Box::pin(async move {
            let mas = self.list().await?;
            for p in &self.cfg.profiles {
                if !mas.iter().any(|m| m.name == p.ma) {
                    tracing::warn!(ma = %p.ma, profile = %p.name, "declared profile of an unknown MA");
                }
            }
            mas.into_iter()
                .map(|m| {
                    Ok(MaInfo {
                        run_profiles: self.cfg.profiles_for(&m.name)?,
                        guid: normalize_guid(&m.guid),
                        name: m.name,
                        ma_type: m.ma_type,
                    })
                })
                .collect()
        })
    }

    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>> {
        Box::pin(self.run_execute(ma, profile, progress))
    }

    /// `Stop()`'s string verbatim (`success`, `ma-not-running`, `access-denied`, ...).
    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            self.blocking("Stop", self.cfg.stop_timeout, move |a| a.stop(&m))
                .await?
                .map_err(|e| engine_error(Some(ma), "Stop", &e))
        })
    }

    /// `RunStatus()` = `in-progress` (or `completing-*`, when the MA is still busy) →
    /// [`MaStatus::InProgress`] with `RunProfile()` and `RunNumber()` (0 when unreadable).
    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            let (status, busy) = self
                .blocking("RunStatus", self.cfg.blocking_timeout, move |a| {
                    let status = a.run_status(&m)?;
                    let busy = if vocab::classify(&status) == ResultClass::Transitional {
                        Some((a.run_profile(&m)?, a.run_number(&m)?))
                    } else {
                        None
                    };
                    Ok::<_, WmiError>((status, busy))
                })
                .await?
                .map_err(|e| engine_error(Some(ma), "RunStatus", &e))?;
            if is_provider_failure(&status) {
                return Err(provider_string_error("RunStatus", ma, &status));
            }
            Ok(match busy {
                None => MaStatus::Idle,
                Some((profile, number)) => MaStatus::InProgress {
                    profile,
                    run_number: parse_run_number(&number).ok().flatten().unwrap_or(0),
                },
            })
        })
    }

    /// The `Num*()` counters; a non-numeric answer is an error naming the string.
    fn pending<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            let raw = self
                .blocking("Num*", self.cfg.blocking_timeout, move |a| {
                    PendingCounter::ALL
                        .iter()
                        .map(|c| a.num(&m, *c).map(|s| (*c, s)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?
                .map_err(|e| engine_error(Some(ma), "Num*", &e))?;
            let mut counters = PendingCounters::default();
            for (c, s) in raw {
                *c.slot(&mut counters) = parse_counter(ma, c, &s)?;
            }
            Ok(counters)
        })
    }

    /// Run-history XML of run `run_number`: `RunDetails()` when it is the MA's last run, else
    /// `MIIS_RunHistory`; [`EngineError::NoSuchRun`] when neither has it.
    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(self.fetch_run_details(ma, run_number))
    }

    /// Healthy when the service runs and `MIIS_ManagementAgent` can be listed within
    /// [`WmiConfig::blocking_timeout`] (a frozen engine shows as unhealthy, §6.4).
    fn health(&self) -> BoxFuture<'_, EngineHealth> {
        Box::pin(self.probe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::mpsc;

    const DS_SAMPLE: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
    );
    const EXPORT_SAMPLE: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
    );
    const EXPORT_MA: &str = "MOSS-UserProfile";
    const EXPORT_GUID: &str = "{FB0D00E1-4E0B-44DA-AF5F-62D4D99B2FBC}";
    const DS_MA: &str = "MOSSAD-company";

    /// What the fake's `Execute` does.
    struct ExecPlan {
        /// Whether the engine starts a run (run number + 1, `RunStatus()` = `in-progress`).
        starts_run: bool,
        /// `RunDetails()` while the run is in progress.
        in_progress_xml: Option<String>,
        /// Block until the test sends on the gate.
        wait_for_gate: bool,
        /// What `Execute` returns.
        result: Result<String, WmiError>,
        /// `RunStatus()` answers after `Execute` returned, one per call; the last one sticks.
        statuses_after: Vec<String>,
        /// `RunDetails()` after the run.
        final_xml: Option<String>,
    }

    impl ExecPlan {
        fn returns(result: &str) -> Self {
            ExecPlan {
                starts_run: true,
                in_progress_xml: None,
                wait_for_gate: false,
                result: Ok(result.to_owned()),
                statuses_after: vec![result.to_owned()],
                final_xml: None,
            }
        }

        fn refused(result: Result<String, WmiError>) -> Self {
            ExecPlan {
                starts_run: false,
                statuses_after: Vec::new(),
                result,
                ..ExecPlan::returns("")
            }
        }
    }

    #[derive(Default)]
    struct MaState {
        run_number: String,
        run_status: String,
        run_profile: String,
        details: String,
        statuses: VecDeque<String>,
        history: HashMap<u64, String>,
        counters: HashMap<&'static str, String>,
    }

    #[derive(Default)]
    struct Inner {
        mas: Vec<MaRecord>,
        state: HashMap<String, MaState>,
        plans: VecDeque<ExecPlan>,
        /// Method name → error every call of it returns.
        failing: HashMap<&'static str, WmiError>,
        service_running: bool,
        calls: Vec<String>,
    }

    /// A scripted WMI surface.
    #[derive(Default)]
    struct FakeWmi {
        inner: Mutex<Inner>,
        gate: Mutex<Option<mpsc::Receiver<()>>>,
        /// Calls named here block until the gate opens (for timeouts).
        hang: Mutex<Vec<&'static str>>,
    }

    impl FakeWmi {
        fn new() -> Self {
            let fake = FakeWmi::default();
            {
                let mut i = fake.inner.lock().unwrap();
                i.service_running = true;
                for (name, guid, t) in [
                    (EXPORT_MA, EXPORT_GUID, "Extensible2"),
                    (DS_MA, "85098734-66bc-4938-8122-c5f585f463d0", "AD"),
                ] {
                    i.mas.push(MaRecord {
                        name: name.into(),
                        guid: guid.into(),
                        ma_type: t.into(),
                    });
                    i.state.insert(name.into(), MaState::default());
                }
            }
            fake
        }

        fn with_state(self, ma: &str, f: impl FnOnce(&mut MaState)) -> Self {
            f(self.inner.lock().unwrap().state.get_mut(ma).unwrap());
            self
        }

        fn plan(self, p: ExecPlan) -> Self {
            self.inner.lock().unwrap().plans.push_back(p);
            self
        }

        fn failing(self, method: &'static str, e: WmiError) -> Self {
            self.inner.lock().unwrap().failing.insert(method, e);
            self
        }

        fn gate(&self) -> mpsc::Sender<()> {
            let (tx, rx) = mpsc::channel();
            *self.gate.lock().unwrap() = Some(rx);
            tx
        }

        fn wait_gate(&self) {
            let rx = self.gate.lock().unwrap().take();
            if let Some(rx) = rx {
                let _ = rx.recv();
            }
        }

        fn enter(&self, method: &'static str, ma: &str) -> Result<(), WmiError> {
            if self.hang.lock().unwrap().contains(&method) {
                self.wait_gate();
            }
            let mut i = self.inner.lock().unwrap();
            i.calls.push(format!("{method}({ma})"));
            if let Some(e) = i.failing.get(method) {
                return Err(e.clone());
            }
            if !ma.is_empty() && !i.state.contains_key(ma) {
                return Err(WmiError::com(hresult::WBEM_E_NOT_FOUND));
            }
            Ok(())
        }

        fn ma<T>(
            &self,
            method: &'static str,
            ma: &str,
            f: impl FnOnce(&mut MaState) -> T,
        ) -> Result<T, WmiError> {
            self.enter(method, ma)?;
            let mut i = self.inner.lock().unwrap();
            Ok(f(i.state.get_mut(ma).unwrap()))
        }

        fn calls(&self, method: &str) -> usize {
            let prefix = format!("{method}(");
            self.inner
                .lock()
                .unwrap()
                .calls
                .iter()
                .filter(|c| c.starts_with(&prefix))
                .count()
        }
    }

    impl WmiApi for FakeWmi {
        fn list_mas(&self) -> Result<Vec<MaRecord>, WmiError> {
            self.enter("list_mas", "")?;
            Ok(self.inner.lock().unwrap().mas.clone())
        }

        fn execute(&self, ma: &str, profile: &str) -> Result<String, WmiError> {
            self.enter("execute", ma)?;
            let plan = self
                .inner
                .lock()
                .unwrap()
                .plans
                .pop_front()
                .unwrap_or_else(|| ExecPlan::returns("success"));
            let run_number = if plan.starts_run {
                let mut i = self.inner.lock().unwrap();
                let st = i.state.get_mut(ma).unwrap();
                let n = parse_run_number(&st.run_number).unwrap().unwrap_or(0) + 1;
                st.run_number = n.to_string();
                st.run_status = "in-progress".into();
                st.run_profile = profile.into();
                if let Some(x) = &plan.in_progress_xml {
                    st.details = x.clone();
                }
                Some(n)
            } else {
                None
            };
            if plan.wait_for_gate {
                self.wait_gate();
            }
            let mut i = self.inner.lock().unwrap();
            let st = i.state.get_mut(ma).unwrap();
            if let Some(n) = run_number {
                if let Some(x) = &plan.final_xml {
                    st.details = x.clone();
                    st.history.insert(n, x.clone());
                }
                st.statuses = plan.statuses_after.into_iter().collect();
                if let Some(s) = st.statuses.back() {
                    st.run_status = s.clone();
                }
            }
            plan.result
        }

        fn stop(&self, ma: &str) -> Result<String, WmiError> {
            self.ma("stop", ma, |st| {
                if st.run_status == "in-progress" {
                    "success".to_owned()
                } else {
                    "ma-not-running".to_owned()
                }
            })
        }

        fn run_status(&self, ma: &str) -> Result<String, WmiError> {
            self.ma("run_status", ma, |st| {
                if st.statuses.len() > 1 {
                    st.statuses.pop_front().unwrap_or_default()
                } else {
                    st.run_status.clone()
                }
            })
        }

        fn run_number(&self, ma: &str) -> Result<String, WmiError> {
            self.ma("run_number", ma, |st| st.run_number.clone())
        }

        fn run_profile(&self, ma: &str) -> Result<String, WmiError> {
            self.ma("run_profile", ma, |st| st.run_profile.clone())
        }

        fn run_details(&self, ma: &str) -> Result<String, WmiError> {
            self.ma("run_details", ma, |st| st.details.clone())
        }

        fn history_details(
            &self,
            ma_guid: &str,
            run_number: u64,
        ) -> Result<Option<String>, WmiError> {
            self.enter("history_details", "")?;
            let i = self.inner.lock().unwrap();
            let Some(ma) = i.mas.iter().find(|m| normalize_guid(&m.guid) == ma_guid) else {
                return Ok(None);
            };
            Ok(i.state[&ma.name].history.get(&run_number).cloned())
        }

        fn num(&self, ma: &str, counter: PendingCounter) -> Result<String, WmiError> {
            self.ma("num", ma, |st| {
                st.counters
                    .get(counter.method())
                    .cloned()
                    .unwrap_or_else(|| "0".to_owned())
            })
        }

        fn service_running(&self) -> Result<bool, WmiError> {
            self.enter("service_running", "")?;
            Ok(self.inner.lock().unwrap().service_running)
        }

        fn engine_version(&self) -> Result<String, WmiError> {
            self.enter("engine_version", "")?;
            Ok("FIMSynchronizationService 4.6.607.0".to_owned())
        }
    }

    fn fast_config() -> WmiConfig {
        WmiConfig {
            poll_interval: Duration::from_millis(10),
            completing_poll: Duration::from_millis(10),
            completing_timeout: Duration::from_secs(10),
            post_run_delay: Duration::from_millis(1),
            blocking_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
            ..WmiConfig::default()
        }
    }

    fn engine(fake: FakeWmi) -> WmiEngine<FakeWmi> {
        WmiEngine::new(fake, fast_config()).unwrap()
    }

    fn sink() -> (
        ProgressSink,
        tokio::sync::mpsc::UnboundedReceiver<EngineProgress>,
    ) {
        tokio::sync::mpsc::unbounded_channel()
    }

    fn export_success_xml() -> String {
        EXPORT_SAMPLE.replace(
            "<step-result>completed-export-errors</step-result>",
            "<step-result>success</step-result>",
        )
    }

    fn export_in_progress_xml(progress: &str) -> String {
        EXPORT_SAMPLE.replace(
            "<step-result>completed-export-errors</step-result>",
            &format!("<step-result progress=\"{progress}\">in-progress</step-result>"),
        )
    }

    // ---- execute ----------------------------------------------------------------------------

    #[tokio::test]
    async fn plain_success_gives_run_number_and_parsable_details() {
        let fake = FakeWmi::new()
            .with_state(EXPORT_MA, |s| s.run_number = "2589".into())
            .plan(ExecPlan {
                final_xml: Some(export_success_xml()),
                ..ExecPlan::returns("success")
            });
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, "success");
        assert_eq!(out.run_number, Some(2590));

        let xml = e.run_details(EXPORT_MA, 2590).await.unwrap();
        let run = runhistory::parse_one(&xml).unwrap();
        assert_eq!(run.run_number, 2590);
        assert_eq!(run.result(), Some("success"));
        let step = &run.steps[0];
        assert_eq!(step.step_type, "export");
        assert!(step.counters.contains_key("export-update"));
        assert!(!step.errors.first.is_empty());
    }

    #[tokio::test]
    async fn engine_result_string_is_kept_verbatim_with_the_sample_counters() {
        let fake = FakeWmi::new()
            .with_state(DS_MA, |s| s.run_number = "1878".into())
            .plan(ExecPlan {
                final_xml: Some(DS_SAMPLE.to_owned()),
                ..ExecPlan::returns("stopped-connectivity")
            });
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(DS_MA, "DS_DELTAIMPORT", tx).await.unwrap();
        assert_eq!(out.result, "stopped-connectivity");
        assert_eq!(out.run_number, Some(1879));
        let run = runhistory::parse_one(&e.run_details(DS_MA, 1879).await.unwrap()).unwrap();
        assert_eq!(run.result(), Some("stopped-connectivity"));
        assert_eq!(run.steps.len(), 2);
        assert_eq!(
            run.steps[1].connection_result.as_deref(),
            Some("failed-search")
        );
    }

    #[tokio::test]
    async fn completing_result_is_polled_until_final() {
        let fake = FakeWmi::new()
            .with_state(EXPORT_MA, |s| s.run_number = "7".into())
            .plan(ExecPlan {
                statuses_after: vec![
                    "completing-referential-updates".into(),
                    "completing-referential-updates".into(),
                    "completing-referential-updates".into(),
                    "completed-sync-errors".into(),
                ],
                ..ExecPlan::returns("completing-referential-updates")
            });
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Delta Sync", tx).await.unwrap();
        assert_eq!(out.result, "completed-sync-errors");
        assert_eq!(out.run_number, Some(8));
        assert!(e.api().calls("run_status") >= 4);
    }

    #[tokio::test]
    async fn completing_result_that_cannot_be_read_is_reported_raw() {
        let fake = FakeWmi::new()
            .plan(ExecPlan::returns("completing-obsoletion"))
            .failing("run_status", WmiError::com(hresult::RPC_E_DISCONNECTED));
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Full Import", tx).await.unwrap();
        assert_eq!(out.result, "completing-obsoletion");
        assert_eq!(out.run_number, Some(1));
        assert_eq!(e.api().calls("run_status"), MAX_SETTLE_FAILURES as usize);
    }

    #[tokio::test]
    async fn completing_settles_from_history_when_a_later_run_started() {
        let final_xml = export_success_xml().replace(
            "<run-number>2590</run-number>",
            "<run-number>1</run-number>",
        );
        let fake = FakeWmi::new().plan(ExecPlan {
            wait_for_gate: true,
            final_xml: Some(final_xml),
            ..ExecPlan::returns("completing-referential-updates")
        });
        let gate = fake.gate();
        let e = engine(fake);
        let (tx, mut rx) = sink();
        let exec = e.execute(EXPORT_MA, "Export", tx);
        // Once the driver knows run 1, let Execute return `completing-*`; then another run
        // (number 2) starts while the driver waits for run 1 to settle.
        let other_run = async {
            assert_eq!(rx.recv().await.unwrap().run_number, 1);
            gate.send(()).unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut i = e.api().inner.lock().unwrap();
                let st = i.state.get_mut(EXPORT_MA).unwrap();
                if st.run_status.starts_with("completing") {
                    st.run_number = "2".into();
                    st.run_status = "in-progress".into();
                    st.statuses.clear();
                    break;
                }
            }
        };
        let (out, ()) = tokio::join!(exec, other_run);
        let out = out.unwrap();
        assert_eq!(out.run_number, Some(1));
        assert_eq!(out.result, "success", "run 1's result from MIIS_RunHistory");
        assert_eq!(e.api().calls("history_details"), 1);
    }

    #[tokio::test]
    async fn concurrent_sync_com_error_is_busy() {
        let fake = FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
            hresult::CONCURRENT_SYNC,
        ))));
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Delta Sync", tx).await.unwrap();
        assert!(
            out.result.starts_with("call-failure: 0x8023063d"),
            "{}",
            out.result
        );
        assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
        assert_eq!(out.run_number, None);
    }

    #[tokio::test]
    async fn concurrent_sync_in_a_message_or_string_is_busy() {
        // A non-COM error whose text carries the HRESULT (e.g. the engine's BAIL text).
        let fake = FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::Other(
            "BAIL: MMS(3120): ..\\ma.cpp(3419): 0x8023063D (The operation cannot be performed)"
                .into(),
        ))));
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Delta Sync", tx).await.unwrap();
        assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
        assert!(out.result.contains("0x8023063d"));
        assert_eq!(out.run_number, None);

        // The same refusal returned as the Execute string: verbatim.
        let refusal =
            "call-failure: 0x8023063D other synchronization run profile is already running";
        let fake = FakeWmi::new().plan(ExecPlan::refused(Ok(refusal.into())));
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Delta Sync", tx).await.unwrap();
        assert_eq!(out.result, refusal);
        assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
        assert_eq!(out.run_number, None);
    }

    #[tokio::test]
    async fn provider_strings_pass_through_verbatim() {
        for s in [CALL_FAILURE, CONNECTION_FAILURE, ACCESS_DENIED] {
            let e = engine(FakeWmi::new().plan(ExecPlan::refused(Ok(s.into()))));
            let (tx, _rx) = sink();
            let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
            assert_eq!(out.result, s);
            assert_eq!(out.run_number, None, "{s}");
        }
    }

    #[tokio::test]
    async fn other_com_errors_become_call_failure_with_the_hresult() {
        let e = engine(FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
            hresult::WBEM_E_ACCESS_DENIED,
        )))));
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert!(
            out.result
                .starts_with("call-failure: 0x80041003 WBEM_E_ACCESS_DENIED"),
            "{}",
            out.result
        );
        assert_eq!(out.run_number, None);
    }

    #[tokio::test]
    async fn lost_service_is_connection_failure() {
        let e = engine(FakeWmi::new().plan(ExecPlan::refused(Err(WmiError::com(
            hresult::RPC_S_SERVER_UNAVAILABLE,
        )))));
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, CONNECTION_FAILURE);
        assert_eq!(vocab::classify(&out.result), ResultClass::TransientExternal);
        assert_eq!(out.run_number, None);
    }

    #[tokio::test]
    async fn connection_lost_mid_run_follows_the_run_to_its_end() {
        let e = engine(FakeWmi::new().plan(ExecPlan {
            result: Err(WmiError::com(hresult::RPC_E_DISCONNECTED)),
            statuses_after: vec!["in-progress".into(), "in-progress".into(), "success".into()],
            ..ExecPlan::returns("")
        }));
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, "success");
        assert_eq!(out.run_number, Some(1));
    }

    #[tokio::test]
    async fn no_start_has_no_run_number_even_if_the_number_moved() {
        // A foreign run started on the MA between the snapshot and Execute.
        let fake = FakeWmi::new()
            .with_state(EXPORT_MA, |s| s.run_number = "4".into())
            .plan(ExecPlan {
                starts_run: true,
                statuses_after: vec!["in-progress".into()],
                ..ExecPlan::refused(Ok("no-start-ma-already-running".into()))
            });
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, "no-start-ma-already-running");
        assert_eq!(out.run_number, None);

        let e = engine(FakeWmi::new().plan(ExecPlan::refused(Ok(
            "no-start-unknown-profile-name".into(),
        ))));
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Nope", tx).await.unwrap();
        assert_eq!(out.run_number, None);
    }

    #[tokio::test]
    async fn run_number_detection() {
        // Never run (empty RunNumber) → the first run is 1.
        let e = engine(FakeWmi::new().plan(ExecPlan::returns("success")));
        let (tx, _rx) = sink();
        assert_eq!(
            e.execute(EXPORT_MA, "Export", tx).await.unwrap().run_number,
            Some(1)
        );

        // A result that is not no-start but came without a new run number: None.
        let e = engine(
            FakeWmi::new()
                .with_state(EXPORT_MA, |s| s.run_number = "41".into())
                .plan(ExecPlan::refused(Ok("stopped-server".into()))),
        );
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, "stopped-server");
        assert_eq!(out.run_number, None);

        // RunNumber() itself answers with a provider string: no Execute, the string reported.
        let fake =
            FakeWmi::new().with_state(EXPORT_MA, |s| s.run_number = "connection-failure".into());
        let e = engine(fake);
        let (tx, _rx) = sink();
        let out = e.execute(EXPORT_MA, "Export", tx).await.unwrap();
        assert_eq!(out.result, CONNECTION_FAILURE);
        assert_eq!(out.run_number, None);
        assert_eq!(e.api().calls("execute"), 0);

        // Unknown MA.
        let e = engine(FakeWmi::new());
        let (tx, _rx) = sink();
        assert!(matches!(
            e.execute("No such MA", "Export", tx).await,
            Err(EngineError::NoSuchMa(m)) if m == "No such MA"
        ));
    }

    #[tokio::test]
    async fn progress_is_streamed_while_execute_blocks() {
        let fake = FakeWmi::new()
            .with_state(EXPORT_MA, |s| s.run_number = "2589".into())
            .plan(ExecPlan {
                in_progress_xml: Some(export_in_progress_xml("10/200")),
                wait_for_gate: true,
                final_xml: Some(EXPORT_SAMPLE.to_owned()),
                ..ExecPlan::returns("completed-export-errors")
            });
        let gate = fake.gate();
        let e = engine(fake);
        let (tx, mut rx) = sink();
        let exec = e.execute(EXPORT_MA, "Export", tx);
        let watch = async {
            let first = rx.recv().await.unwrap();
            // Advance the engine's progress and wait for the driver to report it.
            {
                let mut i = e.api().inner.lock().unwrap();
                i.state.get_mut(EXPORT_MA).unwrap().details = export_in_progress_xml("150/200");
            }
            let second = rx.recv().await.unwrap();
            gate.send(()).unwrap();
            (first, second)
        };
        let (out, (first, second)) = tokio::join!(exec, watch);
        assert_eq!(first.run_number, 2590);
        assert_eq!(first.progress.as_deref(), Some("10/200"));
        assert!(
            first
                .details_xml
                .as_deref()
                .unwrap()
                .contains("<run-number>2590")
        );
        assert_eq!(second.progress.as_deref(), Some("150/200"));
        let out = out.unwrap();
        assert_eq!(out.result, "completed-export-errors");
        assert_eq!(out.run_number, Some(2590));
        // Identical polls are not re-sent.
        let mut rest = 0;
        while let Ok(p) = rx.try_recv() {
            assert_ne!(p, second);
            rest += 1;
        }
        assert!(rest <= 1, "{rest} duplicate events");
    }

    #[tokio::test]
    async fn progress_without_details_still_reports_the_run_number() {
        let fake = FakeWmi::new()
            .with_state(EXPORT_MA, |s| {
                s.run_number = "9".into();
                s.details = "<run-history/>".into();
            })
            .plan(ExecPlan {
                wait_for_gate: true,
                ..ExecPlan::returns("success")
            });
        let gate = fake.gate();
        let e = engine(fake);
        let (tx, mut rx) = sink();
        let exec = e.execute(EXPORT_MA, "Export", tx);
        let watch = async {
            let first = rx.recv().await.unwrap();
            gate.send(()).unwrap();
            first
        };
        let (out, first) = tokio::join!(exec, watch);
        assert_eq!(
            first,
            EngineProgress {
                run_number: 10,
                progress: None,
                details_xml: None
            }
        );
        assert_eq!(out.unwrap().run_number, Some(10));
    }

    // ---- stop / status / pending / run_details ------------------------------------------------

    #[tokio::test]
    async fn stop_returns_the_engine_string() {
        let e = engine(FakeWmi::new());
        assert_eq!(e.stop(EXPORT_MA).await.unwrap(), "ma-not-running");
        e.api()
            .inner
            .lock()
            .unwrap()
            .state
            .get_mut(EXPORT_MA)
            .unwrap()
            .run_status = "in-progress".into();
        assert_eq!(e.stop(EXPORT_MA).await.unwrap(), "success");
        assert!(matches!(e.stop("x").await, Err(EngineError::NoSuchMa(_))));
        let e = engine(FakeWmi::new().failing("stop", WmiError::com(hresult::E_ACCESSDENIED)));
        assert!(matches!(
            e.stop(EXPORT_MA).await,
            Err(EngineError::Config(_))
        ));
    }

    #[tokio::test]
    async fn status_reports_runs_in_progress() {
        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.run_status = "success".into();
            s.run_number = "12".into();
        }));
        assert_eq!(e.status(EXPORT_MA).await.unwrap(), MaStatus::Idle);
        {
            let mut i = e.api().inner.lock().unwrap();
            let st = i.state.get_mut(EXPORT_MA).unwrap();
            st.run_status = "in-progress".into();
            st.run_number = "13".into();
            st.run_profile = "Full Import".into();
        }
        assert_eq!(
            e.status(EXPORT_MA).await.unwrap(),
            MaStatus::InProgress {
                profile: "Full Import".into(),
                run_number: 13
            }
        );
        e.api()
            .inner
            .lock()
            .unwrap()
            .state
            .get_mut(EXPORT_MA)
            .unwrap()
            .run_status = "completing-referential-updates".into();
        assert!(matches!(
            e.status(EXPORT_MA).await.unwrap(),
            MaStatus::InProgress { run_number: 13, .. }
        ));
        // Never run: empty status is idle.
        assert_eq!(e.status(DS_MA).await.unwrap(), MaStatus::Idle);
        e.api()
            .inner
            .lock()
            .unwrap()
            .state
            .get_mut(DS_MA)
            .unwrap()
            .run_status = "connection-failure".into();
        assert!(matches!(
            e.status(DS_MA).await,
            Err(EngineError::Unavailable(_))
        ));
        assert!(matches!(e.status("x").await, Err(EngineError::NoSuchMa(_))));
    }

    #[tokio::test]
    async fn pending_counters_are_parsed() {
        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            for (k, v) in [
                ("NumImportAdd", "1"),
                ("NumImportUpdate", "2"),
                ("NumImportDelete", "3"),
                ("NumExportAdd", "4"),
                ("NumExportUpdate", " 5 "),
                ("NumExportDelete", "6"),
                ("NumTotalConnectors", "25000"),
                ("NumCSObjects", "26000"),
            ] {
                s.counters.insert(k, v.into());
            }
        }));
        assert_eq!(
            e.pending(EXPORT_MA).await.unwrap(),
            PendingCounters {
                import_add: 1,
                import_update: 2,
                import_delete: 3,
                export_add: 4,
                export_update: 5,
                export_delete: 6,
                total_connectors: 25000,
                cs_objects: 26000,
            }
        );
    }

    #[tokio::test]
    async fn pending_counter_errors_name_the_string() {
        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.counters.insert("NumExportDelete", "lots".into());
        }));
        let err = e.pending(EXPORT_MA).await.unwrap_err().to_string();
        assert!(
            err.contains("NumExportDelete") && err.contains("\"lots\""),
            "{err}"
        );

        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.counters.insert("NumImportAdd", "-1".into());
        }));
        assert!(matches!(
            e.pending(EXPORT_MA).await,
            Err(EngineError::Unavailable(_))
        ));

        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.counters.insert("NumImportAdd", "access-denied".into());
        }));
        assert!(matches!(
            e.pending(EXPORT_MA).await,
            Err(EngineError::Config(_))
        ));

        let e = engine(FakeWmi::new().failing("num", WmiError::com(hresult::RPC_E_DISCONNECTED)));
        assert!(matches!(
            e.pending(EXPORT_MA).await,
            Err(EngineError::Unavailable(_))
        ));
        let e = engine(FakeWmi::new());
        assert!(matches!(
            e.pending("x").await,
            Err(EngineError::NoSuchMa(_))
        ));
    }

    #[tokio::test]
    async fn run_details_of_last_and_older_runs() {
        let older = EXPORT_SAMPLE.replace(
            "<run-number>2590</run-number>",
            "<run-number>2500</run-number>",
        );
        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.run_number = "2590".into();
            s.details = EXPORT_SAMPLE.into();
            s.history.insert(2500, older.clone());
        }));
        assert_eq!(e.run_details(EXPORT_MA, 2590).await.unwrap(), EXPORT_SAMPLE);
        assert_eq!(e.api().calls("history_details"), 0);
        assert_eq!(e.run_details(EXPORT_MA, 2500).await.unwrap(), older);
        assert!(matches!(
            e.run_details(EXPORT_MA, 2400).await,
            Err(EngineError::NoSuchRun {
                run_number: 2400,
                ..
            })
        ));
        assert!(matches!(
            e.run_details("x", 1).await,
            Err(EngineError::NoSuchMa(_))
        ));
    }

    #[tokio::test]
    async fn run_details_falls_back_to_history_when_a_new_run_raced() {
        // RunNumber() said 2590 but RunDetails() already shows 2591.
        let newer = EXPORT_SAMPLE.replace(
            "<run-number>2590</run-number>",
            "<run-number>2591</run-number>",
        );
        let e = engine(FakeWmi::new().with_state(EXPORT_MA, |s| {
            s.run_number = "2590".into();
            s.details = newer;
            s.history.insert(2590, EXPORT_SAMPLE.into());
        }));
        assert_eq!(e.run_details(EXPORT_MA, 2590).await.unwrap(), EXPORT_SAMPLE);
        assert_eq!(e.api().calls("history_details"), 1);
    }

    // ---- inventory / health / info ---------------------------------------------------------

    #[tokio::test]
    async fn inventory_uses_declared_or_standard_profiles() {
        let mut cfg = fast_config();
        cfg.profiles = vec![ProfileDecl {
            ma: DS_MA.into(),
            name: "DS_DELTAIMPORT".into(),
            step_types: vec![
                "delta-import/to-cs@DC=ab,DC=company,DC=com".into(),
                "apply-rules/apply-pending".into(),
            ],
        }];
        let e = WmiEngine::new(FakeWmi::new(), cfg).unwrap();
        let inv = e.inventory().await.unwrap();
        let export = inv.iter().find(|m| m.name == EXPORT_MA).unwrap();
        assert_eq!(export.guid, EXPORT_GUID);
        assert_eq!(export.ma_type, "Extensible2");
        let names: Vec<&str> = export
            .run_profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "Full Import",
                "Delta Import",
                "Full Sync",
                "Delta Sync",
                "Export"
            ]
        );
        assert!(export.profile("Delta Sync").unwrap().steps[0].is_sync());
        assert!(!export.profile("Delta Import").unwrap().steps[0].is_sync());

        let ds = inv.iter().find(|m| m.name == DS_MA).unwrap();
        assert_eq!(ds.guid, "{85098734-66BC-4938-8122-C5F585F463D0}");
        assert_eq!(ds.run_profiles.len(), 1);
        let steps = &ds.run_profiles[0].steps;
        assert_eq!(steps[0].partition, "DC=ab,DC=company,DC=com");
        assert_eq!(steps[0].subtype, "to-cs");
        assert!(steps[1].is_sync());
    }

    #[tokio::test]
    async fn health_and_info() {
        let e = engine(FakeWmi::new());
        assert_eq!(e.info().kind, "mim-wmi");
        assert_eq!(e.info().version, "unknown");
        let h = e.health().await;
        assert!(h.healthy, "{}", h.detail);
        assert_eq!(e.info().version, "FIMSynchronizationService 4.6.607.0");

        e.api().inner.lock().unwrap().service_running = false;
        let h = e.health().await;
        assert!(!h.healthy);
        assert!(
            h.detail.contains("FIMSynchronizationService"),
            "{}",
            h.detail
        );

        let e = engine(
            FakeWmi::new().failing("list_mas", WmiError::com(hresult::WBEM_E_INVALID_NAMESPACE)),
        );
        let h = e.health().await;
        assert!(!h.healthy);
        assert!(h.detail.contains("0x8004100e"), "{}", h.detail);
    }

    #[tokio::test]
    async fn a_frozen_engine_is_unhealthy_and_calls_stop_piling_up() {
        let fake = FakeWmi::new();
        fake.hang.lock().unwrap().push("list_mas");
        let gate = fake.gate();
        let mut cfg = fast_config();
        cfg.blocking_timeout = Duration::from_millis(50);
        let e = WmiEngine::new(fake, cfg).unwrap();
        let h = e.health().await;
        assert!(!h.healthy);
        assert!(h.detail.contains("did not answer"), "{}", h.detail);
        // The hung call still holds its slot; fill the rest and see calls refused at once.
        e.outstanding
            .fetch_add(MAX_OUTSTANDING_CALLS, Ordering::SeqCst);
        let err = e.status(EXPORT_MA).await.unwrap_err().to_string();
        assert!(err.contains("frozen"), "{err}");
        e.outstanding
            .fetch_sub(MAX_OUTSTANDING_CALLS, Ordering::SeqCst);
        gate.send(()).unwrap();
    }

    // ---- configuration and pure helpers ------------------------------------------------------

    #[test]
    fn config_defaults_and_toml() {
        let c: WmiConfig = toml::from_str("").unwrap();
        assert_eq!(c, WmiConfig::default());
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.completing_poll, Duration::from_secs(5));
        assert_eq!(c.post_run_delay, Duration::from_secs(2));
        c.validate().unwrap();

        let c: WmiConfig = toml::from_str(
            "poll_interval = \"1s\"\nblocking_timeout = \"2m\"\n\
             [[profiles]]\nma = \"AD\"\nname = \"Delta Import and Sync\"\nstep_types = [\"delta-import\"]\n",
        )
        .unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.blocking_timeout, Duration::from_secs(120));
        c.validate().unwrap();
        let p = c.profiles_for("AD").unwrap();
        assert!(
            p[0].steps[0].is_sync(),
            "combined import+sync is sync-class"
        );

        assert!(toml::from_str::<WmiConfig>("pol_interval = \"1s\"").is_err());
        assert!(
            toml::from_str::<WmiConfig>("[[profiles]]\nma=\"a\"\nname=\"b\"\nstep_types=[]\nx=1")
                .is_err()
        );
    }

    #[test]
    fn config_validation() {
        let bad = |f: fn(&mut WmiConfig)| {
            let mut c = WmiConfig::default();
            f(&mut c);
            matches!(c.validate(), Err(EngineError::Config(_)))
        };
        assert!(bad(|c| c.poll_interval = Duration::ZERO));
        assert!(bad(|c| c.completing_poll = Duration::from_millis(1)));
        assert!(bad(|c| c.blocking_timeout = Duration::ZERO));
        assert!(bad(|c| c.service_name = " ".into()));
        let decl = |steps: &[&str]| ProfileDecl {
            ma: "AD".into(),
            name: "P".into(),
            step_types: steps.iter().map(|s| s.to_string()).collect(),
        };
        assert!(bad(|c| c.profiles = vec![ProfileDecl {
            ma: "AD".into(),
            name: "P".into(),
            step_types: vec!["sync".into()],
        }]));
        assert!(bad(|c| c.profiles = vec![ProfileDecl {
            ma: "AD".into(),
            name: "P".into(),
            step_types: vec![],
        }]));
        let c = WmiConfig {
            profiles: vec![decl(&["export"]), decl(&["export"])],
            ..WmiConfig::default()
        };
        assert!(c.validate().is_err(), "duplicate");
        assert!(
            WmiEngine::new(
                FakeWmi::new(),
                WmiConfig {
                    poll_interval: Duration::ZERO,
                    ..WmiConfig::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn step_specs() {
        let s = parse_step_spec("apply-rules/reevaluate-flow-connectors").unwrap();
        assert_eq!(
            (
                s.step_type.as_str(),
                s.subtype.as_str(),
                s.partition.as_str()
            ),
            ("apply-rules", "reevaluate-flow-connectors", "")
        );
        let s = parse_step_spec(" export @ default").unwrap();
        assert_eq!(
            (s.step_type.as_str(), s.partition.as_str()),
            ("export", "default")
        );
        let s = parse_step_spec("full-import/to-file, resume-from-file, to-cs").unwrap();
        assert_eq!(s.subtype, "to-file, resume-from-file, to-cs");
        assert!(
            parse_step_spec("full-import-reevaluate-rules")
                .unwrap()
                .is_sync()
        );
        assert!(parse_step_spec("Delta Import").is_err());
        assert!(parse_step_spec("").is_err());
    }

    #[test]
    fn error_mapping() {
        let busy = result_from_error(&WmiError::Com {
            hresult: hresult::CONCURRENT_SYNC,
            message: String::new(),
        });
        assert_eq!(busy, "call-failure: 0x8023063d");
        assert_eq!(vocab::classify(&busy), ResultClass::Busy);
        assert_eq!(
            result_from_error(&WmiError::Com {
                hresult: 0x8004_1004,
                message: "provider failure".into()
            }),
            "call-failure: 0x80041004 provider failure"
        );
        assert_eq!(
            result_from_error(&WmiError::com(hresult::WBEM_E_TRANSPORT_FAILURE)),
            CONNECTION_FAILURE
        );
        assert_eq!(
            result_from_error(&WmiError::Other("no ReturnValue".into())),
            "call-failure: no ReturnValue"
        );

        let nf = WmiError::com(hresult::WBEM_E_NOT_FOUND);
        assert!(
            matches!(engine_error(Some("A"), "Stop", &nf), EngineError::NoSuchMa(m) if m == "A")
        );
        assert!(matches!(
            engine_error(None, "list", &nf),
            EngineError::Unavailable(_)
        ));
        assert!(matches!(
            engine_error(
                Some("A"),
                "Stop",
                &WmiError::com(hresult::WBEM_E_INVALID_CLASS)
            ),
            EngineError::Config(_)
        ));
        assert!(matches!(
            engine_error(
                Some("A"),
                "Stop",
                &WmiError::com(hresult::RPC_E_DISCONNECTED)
            ),
            EngineError::Unavailable(_)
        ));
        assert!(WmiError::com(hresult::RPC_E_DISCONNECTED).is_service_lost());
        assert!(!WmiError::com(hresult::WBEM_E_NOT_FOUND).is_service_lost());
    }

    #[test]
    fn pure_helpers() {
        assert_eq!(
            ma_path("Fabrikam HR MA"),
            r#"MIIS_ManagementAgent.Name="Fabrikam HR MA""#
        );
        assert_eq!(
            ma_path(r#"a"b\c"#),
            r#"MIIS_ManagementAgent.Name="a\"b\\c""#
        );
        assert_eq!(
            run_history_path(EXPORT_GUID, 2590),
            r#"MIIS_RunHistory.Key="{FB0D00E1-4E0B-44DA-AF5F-62D4D99B2FBC}2590""#
        );
        assert_eq!(
            normalize_guid(" fb0d00e1-4e0b-44da-af5f-62d4d99b2fbc "),
            EXPORT_GUID
        );
        assert_eq!(normalize_guid(EXPORT_GUID), EXPORT_GUID);
        const EXE: &str =
            r"C:\Program Files\Microsoft Forefront Identity Manager\2010\Bin\miiserver.exe";
        let quoted = format!("\"{EXE}\" -x");
        assert_eq!(exe_from_service_path(&quoted).as_deref(), Some(EXE));
        assert_eq!(
            exe_from_service_path(r"C:\S\Bin\miiserver.exe /y").as_deref(),
            Some(r"C:\S\Bin\miiserver.exe")
        );
        assert_eq!(exe_from_service_path("  "), None);
        assert_eq!(parse_run_number(""), Ok(None));
        assert_eq!(parse_run_number(" 17 "), Ok(Some(17)));
        assert_eq!(parse_run_number("call-failure"), Err("call-failure".into()));
        assert!(refused_to_start("no-start-ma-update-in-progress"));
        assert!(!refused_to_start("stopped-connectivity"));
        assert!(is_provider_failure(" Connection-Failure "));
        assert!(!is_provider_failure("success"));
        assert_eq!(
            progress_of(&export_in_progress_xml("3/9"), 2590),
            Some(Some("3/9".into()))
        );
        assert_eq!(progress_of(EXPORT_SAMPLE, 2590), Some(None));
        assert_eq!(progress_of(EXPORT_SAMPLE, 1), None);
        assert_eq!(progress_of("connection-failure", 1), None);
        // Progress of the step still running in a two-step run: DS sample, step 2 unfinished.
        let running = DS_SAMPLE
            .replace("<end-date>2017-01-04 23:00:58.987</end-date>", "")
            .replace(
                "<step-result>stopped-connectivity</step-result>",
                "<step-result progress=\"5/46\">in-progress</step-result>",
            );
        assert_eq!(progress_of(&running, 1879), Some(Some("5/46".into())));
        for c in PendingCounter::ALL {
            assert!(c.method().starts_with("Num"));
        }
    }
}
