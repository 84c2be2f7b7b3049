//! What the engine's answers mean: the provider's failure strings, the engine's refusals to
//! start, and the result string or driver error a failed WMI call becomes.

use syncfleet_proto::vocab::{self, ResultClass};

use super::api::{
    ACCESS_DENIED, CALL_FAILURE, CONNECTION_FAILURE, NAMESPACE, PendingCounter, WmiError,
};
use crate::engine::EngineError;

/// True for the provider's failure strings and `access-denied`.
pub fn is_provider_failure(s: &str) -> bool {
    let t = s.trim();
    [CALL_FAILURE, CONNECTION_FAILURE, ACCESS_DENIED]
        .iter()
        .any(|p| t.eq_ignore_ascii_case(p))
}

/// The engine's own refusal to start: `no-start-*` or a busy result. Such a run
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
            "{method}: {e}; the agent's account must be in FIMSyncOperators or FIMSyncAdmins"
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
pub(super) fn provider_string_error(method: &str, ma: &str, s: &str) -> EngineError {
    if s.trim().eq_ignore_ascii_case(ACCESS_DENIED) {
        EngineError::Config(format!(
            "{method}() of MA {ma:?} returned {ACCESS_DENIED}; the agent's account must be in \
             FIMSyncOperators or FIMSyncAdmins"
        ))
    } else {
        EngineError::Unavailable(format!("{method}() of MA {ma:?} returned {s:?}"))
    }
}

/// Parse a `Num*()` counter string (the engine answers counters as numeric strings).
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

#[cfg(test)]
mod tests;
