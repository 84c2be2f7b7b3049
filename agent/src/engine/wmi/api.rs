//! The engine's WMI surface: the namespace and classes, the provider's failure strings, the
//! HRESULTs the driver interprets, [`WmiError`], the object paths, and [`WmiApi`], one blocking
//! method per WMI call (`docs/engine.md`, "WMI interface").

use syncfleet_proto::vocab;

use crate::engine::PendingCounters;

/// WMI namespace of the sync engine's provider.
pub const NAMESPACE: &str = r"ROOT\MicrosoftIdentityIntegrationServer";

/// Class of management agents; key property `Name` (`MIIS_ManagementAgent.Name='X'`).
pub const MA_CLASS: &str = "MIIS_ManagementAgent";

/// Class of stored runs; key property `Key` = MA GUID followed by run number.
pub const RUN_HISTORY_CLASS: &str = "MIIS_RunHistory";

/// The engine's server object: `MIIS_Server.Name="MIIS_Server1"` (always that name), whose
/// `ClearRuns(EndingBefore)` removes run history.
pub const SERVER_PATH: &str = r#"MIIS_Server.Name="MIIS_Server1""#;
/// Class of [`SERVER_PATH`].
pub const SERVER_CLASS: &str = "MIIS_Server";

/// `EndingBefore` of `ClearRuns`: UTC `yyyy-MM-dd HH:mm:ss.fff`.
pub fn clear_runs_argument(ending_before: chrono::DateTime<chrono::Utc>) -> String {
    ending_before.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// Windows service of FIM 2010 / MIM 2016.
pub const DEFAULT_SERVICE: &str = "FIMSynchronizationService";

/// Provider string: unexpected error, see the event log.
pub const CALL_FAILURE: &str = "call-failure";

/// Provider string: service stopped or caller removed from the groups.
pub const CONNECTION_FAILURE: &str = "connection-failure";

/// Returned by methods when the caller is not in the required group.
pub const ACCESS_DENIED: &str = "access-denied";

/// HRESULTs the driver interprets. Values from `winerror.h` / `wbemcli.h`; `0x8023063D` from
/// event 6309.
pub mod hresult {
    /// Second concurrent synchronization refused.
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
        CONCURRENT_SYNC => "other synchronization run profile is already running (event 6309)",
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

    pub(super) fn message(&self) -> &str {
        match self {
            WmiError::Com { message, .. } | WmiError::Other(message) => message,
        }
    }

    /// The engine refused a second concurrent synchronization: HRESULT `0x8023063D`, or
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

    /// The caller lacks rights (FIMSyncOperators/FIMSyncAdmins).
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

/// One `MIIS_ManagementAgent` instance (properties `Name`, `Guid`, `Type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaRecord {
    pub name: String,
    /// As the provider returns it; [`normalize_guid`] makes it `{UPPER-CASE}`.
    pub guid: String,
    pub ma_type: String,
}

/// The pending counters the driver reads: `MIIS_ManagementAgent.Num*()` methods.
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

    pub(super) fn slot(self, c: &mut PendingCounters) -> &mut u64 {
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

/// The engine's WMI surface, one **blocking** method per WMI call. Methods
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
    /// `Stop()`: `success`, `ma-not-running`, `access-denied`.
    fn stop(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunStatus()`: status of the current or last run; `in-progress` while running; empty if
    /// never run or history cleared.
    fn run_status(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunNumber()`: number of the current or last run as a decimal string; empty if never run
    /// or history cleared.
    fn run_number(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunProfile()`: profile of the current or last run; empty if none.
    fn run_profile(&self, ma: &str) -> Result<String, WmiError>;
    /// `RunDetails()`: run-history XML of the last run.
    fn run_details(&self, ma: &str) -> Result<String, WmiError>;
    /// `MIIS_RunHistory.RunDetails()` of run `run_number` of the MA with GUID `ma_guid`
    /// (`{UPPER-CASE}` form); `Ok(None)` when no such run is stored.
    fn history_details(&self, ma_guid: &str, run_number: u64) -> Result<Option<String>, WmiError>;
    /// One `Num*()` counter method: a decimal string, or a provider string.
    fn num(&self, ma: &str, counter: PendingCounter) -> Result<String, WmiError>;
    /// Whether the sync engine's Windows service is running; `false` if not installed.
    fn service_running(&self) -> Result<bool, WmiError>;
    /// Product and build of the engine, e.g. `FIMSynchronizationService 4.6.607.0`.
    fn engine_version(&self) -> Result<String, WmiError>;
    /// `MIIS_Server.ClearRuns(EndingBefore)` with the argument as
    /// [`clear_runs_argument`] writes it: `success`, `access-denied`, ...
    fn clear_runs(&self, ending_before: &str) -> Result<String, WmiError>;
}

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

/// Object path of an MA: `MIIS_ManagementAgent.Name="X"`.
pub fn ma_path(ma: &str) -> String {
    format!("{MA_CLASS}.Name={}", quote_wmi_string(ma))
}

/// Object path of a stored run: `MIIS_RunHistory.Key="{GUID}<number>"`. The key format is
/// UNCONFIRMED ("MA GUID followed by run number").
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
