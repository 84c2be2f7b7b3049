//! The Windows Event Log: the `syncfleet-agent` source in the Application log (registered and
//! removed with the service), and the [`Sink`] that writes the entries [`crate::eventlog`]
//! chooses with `ReportEventW`.
//!
//! The source's message file is .NET Framework's `EventLogMessages.dll`, present on every
//! Windows Server: it holds the message `%1` under every event id, so the Event Viewer shows
//! the entry's own text whatever its id (the same registration .NET's `EventLog.CreateEventSource`
//! makes).

use windows::Win32::Foundation::HANDLE;
use windows::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    RegisterEventSourceW, ReportEventW,
};
use windows::core::{HSTRING, PCWSTR};

use crate::eventlog::{Entry, EntryType, Sink};
use crate::service_setup::{SERVICE_NAME, ServiceError};

/// The source's registry key under `HKEY_LOCAL_MACHINE`.
pub const SOURCE_KEY: &str =
    "SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\syncfleet-agent";
/// The message file registered for the source (`REG_EXPAND_SZ`).
pub const MESSAGE_FILE: &str =
    "%SystemRoot%\\Microsoft.NET\\Framework64\\v4.0.30319\\EventLogMessages.dll";
/// Error, warning and information entries.
const TYPES_SUPPORTED: u32 = 7;
/// `ReportEventW` takes strings of at most 31,839 characters.
const MAX_TEXT: usize = 31_000;

/// Windows error code of a `windows` crate error (the low word of a `FACILITY_WIN32` HRESULT).
pub fn win32_code(e: &windows::core::Error) -> i32 {
    let hr = e.code().0 as u32;
    if hr & 0xFFFF_0000 == 0x8007_0000 {
        (hr & 0xFFFF) as i32
    } else {
        hr as i32
    }
}

fn registry_error(action: &'static str, e: &windows::core::Error) -> ServiceError {
    ServiceError::from_os(action, win32_code(e), e.message())
}

/// Registers the event source (idempotent: the values are set again).
pub fn register_source() -> Result<(), ServiceError> {
    let key = windows_registry::LOCAL_MACHINE
        .create(SOURCE_KEY)
        .map_err(|e| registry_error("registering the Event Log source", &e))?;
    key.set_expand_string("EventMessageFile", MESSAGE_FILE)
        .and_then(|()| key.set_u32("TypesSupported", TYPES_SUPPORTED))
        .map_err(|e| registry_error("registering the Event Log source", &e))
}

/// Removes the event source; nothing to do when it is not registered.
pub fn remove_source() -> Result<(), ServiceError> {
    match windows_registry::LOCAL_MACHINE.remove_tree(SOURCE_KEY) {
        Ok(()) => Ok(()),
        // ERROR_FILE_NOT_FOUND: not registered.
        Err(e) if win32_code(&e) == 2 => Ok(()),
        Err(e) => Err(registry_error("removing the Event Log source", &e)),
    }
}

/// Whether the service is set to start with a delay (the SCM keeps the flag in the
/// service's registry key; the SCM API has no query for it in `windows-service`).
pub fn delayed_auto_start() -> bool {
    windows_registry::LOCAL_MACHINE
        .open(format!(
            "SYSTEM\\CurrentControlSet\\Services\\{SERVICE_NAME}"
        ))
        .and_then(|k| k.get_u32("DelayedAutostart"))
        .is_ok_and(|v| v != 0)
}

/// Writes entries with the `syncfleet-agent` source.
#[derive(Debug)]
pub struct EventLogSink {
    /// The event source handle, kept as an address: Event Log handles may be used from any
    /// thread, and `HANDLE` itself is neither `Send` nor `Sync`.
    handle: usize,
}

impl EventLogSink {
    /// Opens the source on the local computer.
    pub fn open() -> Result<EventLogSink, ServiceError> {
        let name = HSTRING::from(SERVICE_NAME);
        // SAFETY: both arguments are valid for the call: a null server name (local computer)
        // and a NUL-terminated UTF-16 string that outlives it.
        let handle = unsafe { RegisterEventSourceW(PCWSTR::null(), &name) }.map_err(|e| {
            ServiceError::from_os("opening the Event Log source", win32_code(&e), e.message())
        })?;
        Ok(EventLogSink {
            handle: handle.0 as usize,
        })
    }

    fn handle(&self) -> HANDLE {
        HANDLE(self.handle as *mut core::ffi::c_void)
    }
}

impl Sink for EventLogSink {
    fn write(&self, entry: &Entry) {
        let kind = match entry.kind {
            EntryType::Error => EVENTLOG_ERROR_TYPE,
            EntryType::Warning => EVENTLOG_WARNING_TYPE,
            EntryType::Information => EVENTLOG_INFORMATION_TYPE,
        };
        let text: String = entry.text.chars().take(MAX_TEXT).collect();
        let text = HSTRING::from(text);
        let strings = [PCWSTR(text.as_ptr())];
        // SAFETY: the handle came from RegisterEventSourceW and stays open until drop; the
        // one string is NUL-terminated UTF-16 that outlives the call; no SID, no raw data.
        // A failed write has nowhere to be reported but the log it failed to reach.
        let _ = unsafe {
            ReportEventW(
                self.handle(),
                kind,
                0,
                entry.id,
                None,
                0,
                Some(&strings),
                None,
            )
        };
    }
}

impl Drop for EventLogSink {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once, here.
        let _ = unsafe { DeregisterEventSource(self.handle()) };
    }
}
