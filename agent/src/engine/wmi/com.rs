//! The `mim-wmi` driver's COM side (Windows only): [`ComWmi`] implements
//! [`WmiApi`] with the `wmi` crate (0.17), and [`build`] makes the engine driver. All decisions
//! (polling, result classification, run numbers) live in the rest of [`super`], which is
//! unit-tested on every platform; this file only makes WMI calls and converts values.
//!
//! # WMI objects used
//!
//! - Namespace [`NAMESPACE`] (`ROOT\MicrosoftIdentityIntegrationServer`).
//! - `MIIS_ManagementAgent` instances by key path `MIIS_ManagementAgent.Name="X"`
//!   ([`api::ma_path`]); methods `Execute(RunProfileName)`, `Stop()`, `RunStatus()`,
//!   `RunNumber()`, `RunProfile()`, `RunDetails()`, `Num*()`, each answering in the out-parameter
//!   `ReturnValue` (a string).
//! - `MIIS_RunHistory.RunDetails()` of one stored run: first by key path
//!   `MIIS_RunHistory.Key="{GUID}<number>"` (the key format is UNCONFIRMED), then by a
//!   WQL query on `MaGuid` and `RunNumber` (the property's CIM type is UNCONFIRMED, so the number
//!   is tried unquoted, then quoted).
//! - `ROOT\CIMV2` `Win32_Service` (state and executable of the engine service) and
//!   `CIM_DataFile.Version` of that executable for [`WmiApi::engine_version`].
//!
//! # COM initialization and threads
//!
//! COM is initialized **per thread**. Every [`WmiApi`] call runs on a tokio blocking thread
//! (`spawn_blocking`, see [`WmiEngine`]); the first call on a thread initializes COM for it in the
//! multi-threaded apartment with `wmi::COMLibrary::new()` (`CoInitializeEx(COINIT_MULTITHREADED)`,
//! then the process-wide `CoInitializeSecurity`, whose `RPC_E_TOO_LATE` on later threads is
//! expected and ignored by the crate) and opens a connection that the thread keeps in a
//! thread-local for its later calls. COM is never uninitialized: it lives as long as the thread.
//! A connection whose call failed with a lost-service HRESULT ([`WmiError::is_service_lost`]) is
//! dropped and reopened on the thread's next call, so a restarted sync service is picked up.
//! No `unsafe` code is needed: the `wmi` crate wraps the COM calls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use ::wmi::{COMLibrary, Variant, WMIConnection, WMIError};

use super::api::{
    self, MA_CLASS, MaRecord, NAMESPACE, PendingCounter, RUN_HISTORY_CLASS, WmiApi, WmiError,
    hresult, quote_wmi_string,
};
use super::config::WmiConfig;
use super::driver::WmiEngine;
use crate::engine::{EngineError, SyncEngine};

/// Namespace of `Win32_Service` and `CIM_DataFile`.
const CIMV2: &str = r"ROOT\CIMV2";

/// Make the `mim-wmi` engine driver. Validates `config`; makes no WMI call (the first call
/// happens on the first use, on a blocking thread). With [`WmiConfig::discover`] its run
/// profiles are read from the engine's database ([`super::SqlProfiles`]).
pub fn build(config: WmiConfig) -> Result<Arc<dyn SyncEngine>, EngineError> {
    let api = ComWmi::new(config.service_name.clone());
    let profiles = super::SqlProfiles::new(&config);
    let discover = config.discover;
    let engine = WmiEngine::new(api, config)?;
    Ok(if discover {
        Arc::new(engine.with_profile_source(Arc::new(profiles)))
    } else {
        Arc::new(engine)
    })
}

impl From<WMIError> for WmiError {
    fn from(e: WMIError) -> Self {
        match e {
            // Same bits: HRESULTs are conventionally written as unsigned hex.
            WMIError::HResultError { hres } => {
                WmiError::com(u32::from_ne_bytes(hres.to_ne_bytes()))
            }
            other => WmiError::Other(other.to_string()),
        }
    }
}

/// The engine's WMI provider through COM. Holds no COM object itself (connections are
/// per thread, see the module documentation), so it is `Send + Sync`.
#[derive(Debug, Clone)]
pub struct ComWmi {
    service_name: String,
}

impl ComWmi {
    /// `service_name`: the engine's Windows service (`FIMSynchronizationService`).
    pub fn new(service_name: String) -> Self {
        ComWmi { service_name }
    }
}

#[derive(Clone, Copy)]
enum Namespace {
    Miis,
    Cimv2,
}

/// This thread's connections, opened on first use.
struct Connections {
    miis: Option<WMIConnection>,
    cimv2: Option<WMIConnection>,
}

thread_local! {
    static CONNECTIONS: RefCell<Connections> =
        const { RefCell::new(Connections { miis: None, cimv2: None }) };
}

/// Run `f` with this thread's connection to `ns`, initializing COM and connecting first if
/// needed. A lost-service failure drops the connection so the next call reconnects.
fn with_connection<T>(
    ns: Namespace,
    f: impl FnOnce(&WMIConnection) -> Result<T, WmiError>,
) -> Result<T, WmiError> {
    CONNECTIONS.with(|cell| {
        let mut conns = cell
            .try_borrow_mut()
            .map_err(|_| WmiError::Other("nested WMI call on one thread".to_owned()))?;
        let (slot, path) = match ns {
            Namespace::Miis => (&mut conns.miis, NAMESPACE),
            Namespace::Cimv2 => (&mut conns.cimv2, CIMV2),
        };
        let conn = match slot {
            Some(c) => c,
            None => {
                let com = COMLibrary::new()?;
                slot.insert(WMIConnection::with_namespace_path(path, com)?)
            }
        };
        let result = f(conn);
        if let Err(e) = &result
            && e.is_service_lost()
        {
            *slot = None;
        }
        result
    })
}

/// A method's `ReturnValue`, or a property, as text.
fn variant_string(v: Variant) -> Result<String, WmiError> {
    Ok(match v {
        Variant::String(s) => s,
        Variant::Empty | Variant::Null => String::new(),
        Variant::Bool(b) => b.to_string(),
        Variant::I1(n) => n.to_string(),
        Variant::I2(n) => n.to_string(),
        Variant::I4(n) => n.to_string(),
        Variant::I8(n) => n.to_string(),
        Variant::UI1(n) => n.to_string(),
        Variant::UI2(n) => n.to_string(),
        Variant::UI4(n) => n.to_string(),
        Variant::UI8(n) => n.to_string(),
        other => {
            return Err(WmiError::Other(format!(
                "unexpected WMI value {other:?} where text was expected"
            )));
        }
    })
}

fn take(row: &mut HashMap<String, Variant>, key: &str) -> Result<String, WmiError> {
    row.remove(key)
        .map_or_else(|| Ok(String::new()), variant_string)
}

/// Call `method` on the instance at `path` (class `class`) with string arguments; return its
/// `ReturnValue` as text.
fn call_method(
    conn: &WMIConnection,
    path: &str,
    class: &str,
    method: &str,
    args: &[(&str, &str)],
) -> Result<String, WmiError> {
    let in_params = if args.is_empty() {
        None
    } else {
        // GetMethod works on the class definition only.
        let Some(signature) = conn.get_object(class)?.get_method(method)? else {
            return Err(WmiError::Other(format!(
                "{class}.{method} takes no parameters"
            )));
        };
        let params = signature.spawn_instance()?;
        for (name, value) in args {
            params.put_property(name, *value)?;
        }
        Some(params)
    };
    let out = conn
        .exec_method(path, method, in_params.as_ref())?
        .ok_or_else(|| WmiError::Other(format!("{class}.{method} returned no ReturnValue")))?;
    variant_string(out.get_property("ReturnValue")?)
}

fn ma_method(ma: &str, method: &str, args: &[(&str, &str)]) -> Result<String, WmiError> {
    with_connection(Namespace::Miis, |conn| {
        call_method(conn, &api::ma_path(ma), MA_CLASS, method, args)
    })
}

/// Errors that mean "this WQL form does not fit the class", so the next form is tried.
fn is_query_mismatch(e: &WmiError) -> bool {
    matches!(
        e.hresult(),
        Some(hresult::WBEM_E_INVALID_QUERY | hresult::WBEM_E_TYPE_MISMATCH)
    )
}

impl ComWmi {
    /// The `Win32_Service` row of the engine service; `None` when it is not installed.
    fn service_row(&self) -> Result<Option<HashMap<String, Variant>>, WmiError> {
        let query = format!(
            "SELECT Name, State, PathName FROM Win32_Service WHERE Name = {}",
            quote_wmi_string(&self.service_name)
        );
        with_connection(Namespace::Cimv2, |conn| {
            let mut rows: Vec<HashMap<String, Variant>> = conn.raw_query(query)?;
            Ok(rows.pop())
        })
    }
}

impl WmiApi for ComWmi {
    fn list_mas(&self) -> Result<Vec<MaRecord>, WmiError> {
        with_connection(Namespace::Miis, |conn| {
            let rows: Vec<HashMap<String, Variant>> =
                conn.raw_query(format!("SELECT Name, Guid, Type FROM {MA_CLASS}"))?;
            rows.into_iter()
                .map(|mut row| {
                    Ok(MaRecord {
                        name: take(&mut row, "Name")?,
                        guid: take(&mut row, "Guid")?,
                        ma_type: take(&mut row, "Type")?,
                    })
                })
                .collect()
        })
    }

    fn execute(&self, ma: &str, profile: &str) -> Result<String, WmiError> {
        ma_method(ma, "Execute", &[("RunProfileName", profile)])
    }

    fn stop(&self, ma: &str) -> Result<String, WmiError> {
        ma_method(ma, "Stop", &[])
    }

    fn run_status(&self, ma: &str) -> Result<String, WmiError> {
        ma_method(ma, "RunStatus", &[])
    }

    fn run_number(&self, ma: &str) -> Result<String, WmiError> {
        ma_method(ma, "RunNumber", &[])
    }

    fn run_profile(&self, ma: &str) -> Result<String, WmiError> {
        ma_method(ma, "RunProfile", &[])
    }

    fn run_details(&self, ma: &str) -> Result<String, WmiError> {
        ma_method(ma, "RunDetails", &[])
    }

    fn history_details(&self, ma_guid: &str, run_number: u64) -> Result<Option<String>, WmiError> {
        with_connection(Namespace::Miis, |conn| {
            let key_path = api::run_history_path(ma_guid, run_number);
            match call_method(conn, &key_path, RUN_HISTORY_CLASS, "RunDetails", &[]) {
                Ok(xml) => return Ok(Some(xml)),
                Err(e)
                    if e.is_not_found()
                        || e.hresult() == Some(hresult::WBEM_E_INVALID_OBJECT_PATH) => {}
                Err(e) => return Err(e),
            }
            let guid = quote_wmi_string(ma_guid);
            let number = run_number.to_string();
            for literal in [number.clone(), quote_wmi_string(&number)] {
                let query = format!(
                    "SELECT * FROM {RUN_HISTORY_CLASS} WHERE MaGuid = {guid} AND RunNumber = {literal}"
                );
                let first = match conn.exec_query(&query) {
                    Ok(mut rows) => rows.next().map(|r| r.map_err(WmiError::from)),
                    Err(e) => Some(Err(WmiError::from(e))),
                };
                match first {
                    None => return Ok(None),
                    Some(Err(e)) if is_query_mismatch(&e) => continue,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(run)) => {
                        let path = run.path()?;
                        return call_method(conn, &path, RUN_HISTORY_CLASS, "RunDetails", &[])
                            .map(Some);
                    }
                }
            }
            Ok(None)
        })
    }

    fn num(&self, ma: &str, counter: PendingCounter) -> Result<String, WmiError> {
        ma_method(ma, counter.method(), &[])
    }

    fn service_running(&self) -> Result<bool, WmiError> {
        Ok(match self.service_row()? {
            Some(mut row) => take(&mut row, "State")?.eq_ignore_ascii_case("Running"),
            None => false,
        })
    }

    fn clear_runs(&self, ending_before: &str) -> Result<String, WmiError> {
        with_connection(Namespace::Miis, |conn| {
            call_method(
                conn,
                api::SERVER_PATH,
                api::SERVER_CLASS,
                "ClearRuns",
                &[("EndingBefore", ending_before)],
            )
        })
    }

    fn engine_version(&self) -> Result<String, WmiError> {
        let Some(mut row) = self.service_row()? else {
            return Err(WmiError::Other(format!(
                "service {} is not installed",
                self.service_name
            )));
        };
        let path_name = take(&mut row, "PathName")?;
        let Some(exe) = api::exe_from_service_path(&path_name) else {
            return Err(WmiError::Other(format!(
                "service {} has no executable path",
                self.service_name
            )));
        };
        let query = format!(
            "SELECT Version FROM CIM_DataFile WHERE Name = {}",
            quote_wmi_string(&exe)
        );
        let version = with_connection(Namespace::Cimv2, |conn| {
            let mut rows: Vec<HashMap<String, Variant>> = conn.raw_query(query)?;
            match rows.pop() {
                Some(mut r) => take(&mut r, "Version"),
                None => Ok(String::new()),
            }
        })?;
        if version.trim().is_empty() {
            return Err(WmiError::Other(format!("{exe} has no file version")));
        }
        Ok(format!("{} {}", self.service_name, version.trim()))
    }
}
