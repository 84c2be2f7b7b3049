//! The sync engine's result-string vocabulary, kept as an open set (`docs/engine.md`, "Run
//! status vocabulary").
//!
//! The engine reports results as kebab-case strings (`success`, `completed-sync-errors`,
//! `stopped-connectivity`, ...). Strings are stored verbatim everywhere; this module only
//! *classifies* them for run state, retry and alerting. A string not listed here is
//! [`ResultClass::Unknown`]: treated as a failure and never retried, but never rejected.

use crate::v1::RunState;

/// What a result string means for the run and for retries (`docs/engine.md`, "Run status
/// vocabulary").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultClass {
    /// `success`, `completed-no-objects`.
    Success,
    /// `completed-warnings`, `completed-transient-objects`: the step did its work.
    Warning,
    /// `completed-*-errors` (except discovery errors): the step ran, some objects failed.
    CompletedWithErrors,
    /// `completed-discovery-errors`: the import stopped before obsoletion; later steps must not
    /// run (the engine itself skips the later steps of a multi-step profile after it).
    DiscoveryErrors,
    /// `in-progress`, `completing-*`: not final; poll, never re-execute (`Execute` can return
    /// while the engine still completes referential updates).
    Transitional,
    /// The MA or engine is busy (`no-start-ma-already-running`, the 0x8023063d refusal): wait for
    /// idle and retry; never a failure.
    Busy,
    /// `stopped-deadlocked`: retry with backoff (AutoSync's default retry code).
    TransientEngine,
    /// Connectivity and service outages: bounded retry with backoff, alert.
    TransientExternal,
    /// `no-start-full-import-required`: a different profile must run first.
    NeedsFullImport,
    /// Object, deletion, error limits and thresholds: never retried, needs a human.
    GuardRail,
    /// Stopped by someone on purpose (`stopped-user-termination-*`).
    Intentional,
    /// Configuration or code problems (`access-denied`, extension DLL errors, ...): no retry.
    Config,
    /// Any other `no-start-*` / `stopped-*` string of the engine's list.
    Failed,
    /// A string not in the engine's known vocabulary: kept verbatim, treated as a failure.
    Unknown,
}

/// The 0x8023063d refusal of a second concurrent synchronization, as seen in the text of event
/// 6309 (source `FIMSynchronizationService`). How it reaches an `Execute` caller is unconfirmed
/// (`docs/engine.md`, "Unconfirmed"), so drivers map both the HRESULT and this text to
/// [`ResultClass::Busy`].
pub const CONCURRENT_SYNC_HRESULT: &str = "0x8023063d";

/// Result reported by syncfleet (not the engine) when a step's watchdog stopped it.
pub const WATCHDOG_STOPPED: &str = "stopped-watchdog-timeout";

/// Result reported by syncfleet's `adsync` driver (not the engine) when it refused to start a run
/// profile with an export step, or with steps it cannot tell, on an Entra Connect server in
/// staging mode (`docs/engine.md`, "Entra Connect Sync (ADSync)"). A guard rail: never retried,
/// a person must leave staging mode or take the export out of the schedule.
pub const STAGING_MODE_REFUSED: &str = "no-start-staging-mode";

const SUCCESS: &[&str] = &["success", "completed-no-objects"];
const WARNING: &[&str] = &[
    "completed-warnings",
    "completed-transient-objects",
    "completed-skipped-already-completed",
];
const BUSY: &[&str] = &[
    "no-start-ma-already-running",
    "no-start-ma-update-in-progress",
    "no-start-concurrent-execution-not-support",
];
const TRANSIENT_EXTERNAL: &[&str] = &[
    "stopped-connectivity",
    "no-start-connection",
    "stopped-server-down",
    "no-start-no-domain-controller",
    "stopped-database-connection-lost",
    "stopped-service-shutdown",
    "connection-failure",
];
const GUARD_RAIL: &[&str] = &[
    "stopped-object-limit",
    "stopped-deletion-limit",
    "stopped-deletion-threshold-exceeded",
    "stopped-error-limit",
    STAGING_MODE_REFUSED,
];
const CONFIG: &[&str] = &[
    "access-denied",
    "no-start-unknown-profile-name",
    "no-start-bad-ma-configuration",
    "stopped-bad-ma-configuration",
    "no-start-credentials",
    "call-failure",
    "no-start-file-contains-incorrect-step-type",
    "no-start-partition-not-configured",
    "missing-partition-for-run-step",
    "no-start-delta-step-type-not-configured",
    "no-start-no-steps-in-profile",
    "stopped-bad-server-credentials",
    "stopped-export-disabled",
];
/// Every other `no-start-*` and `stopped-*` string of the engine's list (MS-UPSDBDAP, section
/// 2.2.1.1 "Execution Result Strings"), plus syncfleet's own [`WATCHDOG_STOPPED`].
const OTHER_FAILED: &[&str] = &[
    "no-start-file-not-found",
    "no-start-file-access-denied",
    "no-start-file-sharing-violation",
    "no-start-file-open",
    "no-start-database-permission",
    "no-start-database-table",
    "no-start-database-schema-mismatch",
    "no-start-ma-working-directory",
    "no-start-partition-rename",
    "no-start-partition-delete",
    "no-start-change-log-not-enabled",
    "no-start-file-code-page",
    "no-start-server",
    "no-start-ma",
    "no-start-notes-api-not-availible",
    "no-start-notes-client-init-failure",
    "no-start-header-row-mismatch",
    "no-start-resume-already-completed",
    "no-start-resume-no-history",
    "no-start-resume-profile-modified",
    "stopped-change-log-out-of-order",
    "stopped-parsing-errors",
    "stopped-import-read",
    "stopped-export-write",
    "stopped-file-embedded-nulls",
    "stopped-code-page-conversion",
    "stopped-server",
    "stopped-ma",
    "stopped-file-error",
    "stopped-disk-full",
    "stopped-database-disk-full",
    "stopped-out-of-memory",
    "stopped-entry-point-not-implemented",
    "stopped-unexpected-data",
    "stopped-extensible-extension-error",
    "stopped-failed-to-delete-file",
    "stopped-entry-export-error",
    "stopped-error-in-end-connection",
    "stopped-ma-extension-error-in-end-connection",
    "stopped-ma-extension-timeout",
    "stopped-password-extension-timeout",
    "stopped-password-extension-not-configured",
    WATCHDOG_STOPPED,
];

/// Classify an engine result string. Unknown strings are [`ResultClass::Unknown`].
pub fn classify(result: &str) -> ResultClass {
    let r = result.trim();
    let lower = r.to_ascii_lowercase();
    let r = lower.as_str();
    if SUCCESS.contains(&r) {
        ResultClass::Success
    } else if WARNING.contains(&r) {
        ResultClass::Warning
    } else if r == "completed-discovery-errors" {
        ResultClass::DiscoveryErrors
    } else if r.starts_with("completed-") && r.ends_with("-errors") {
        ResultClass::CompletedWithErrors
    } else if r == "in-progress" || r.starts_with("completing-") {
        ResultClass::Transitional
    } else if BUSY.contains(&r) || r.contains(CONCURRENT_SYNC_HRESULT) {
        ResultClass::Busy
    } else if r == "stopped-deadlocked" {
        ResultClass::TransientEngine
    } else if TRANSIENT_EXTERNAL.contains(&r) || r.starts_with("connection-failure") {
        ResultClass::TransientExternal
    } else if r == "no-start-full-import-required" {
        ResultClass::NeedsFullImport
    } else if GUARD_RAIL.contains(&r) {
        ResultClass::GuardRail
    } else if r.starts_with("stopped-user-termination-") {
        ResultClass::Intentional
    } else if CONFIG.contains(&r)
        || r.starts_with("stopped-extension-dll-")
        // Drivers append the HRESULT and message to the provider's string.
        || r.starts_with("call-failure")
    {
        ResultClass::Config
    } else if OTHER_FAILED.contains(&r) {
        ResultClass::Failed
    } else {
        ResultClass::Unknown
    }
}

impl ResultClass {
    /// Severity rank used to pick a run's result: the most severe step result wins (the Sync
    /// Service Manager's Status column "shows the most severe problem for a run").
    pub fn severity(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Transitional => 1,
            Self::Warning => 2,
            Self::CompletedWithErrors => 3,
            Self::DiscoveryErrors => 4,
            Self::Busy => 5,
            Self::Intentional => 6,
            Self::TransientEngine | Self::TransientExternal => 7,
            Self::NeedsFullImport => 8,
            Self::Failed => 9,
            Self::Config => 10,
            Self::GuardRail => 11,
            Self::Unknown => 12,
        }
    }

    /// True when later steps of the run may still execute after this result: completed steps
    /// let the next step run, except `completed-discovery-errors`; any other result
    /// (`no-start-*`, `stopped-*`, an unknown string) stops the run, as the engine stops the
    /// later steps of a multi-step profile after `stopped-*`.
    pub fn lets_next_step_run(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Warning | Self::CompletedWithErrors
        )
    }
}

/// The most severe of a set of result strings (ties keep the first); `None` for no results.
pub fn most_severe<'a>(results: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(&str, u8)> = None;
    for r in results {
        let s = classify(r).severity();
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((r, s));
        }
    }
    best.map(|(r, _)| r)
}

/// The terminal run state implied by the results of the steps that ran, in order. `all_ran` is
/// false when later steps were not executed.
pub fn run_state_for(results: &[&str], all_ran: bool) -> RunState {
    if results.is_empty() {
        return RunState::Failed;
    }
    let mut state = RunState::Succeeded;
    for r in results {
        match classify(r) {
            ResultClass::Success | ResultClass::Warning => {}
            ResultClass::CompletedWithErrors => state = RunState::CompletedWithErrors,
            ResultClass::Intentional => return RunState::Cancelled,
            _ => return RunState::Failed,
        }
    }
    if !all_ran { RunState::Failed } else { state }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_engine_vocabulary() {
        assert_eq!(classify("success"), ResultClass::Success);
        assert_eq!(classify("completed-no-objects"), ResultClass::Success);
        assert_eq!(classify("completed-warnings"), ResultClass::Warning);
        assert_eq!(
            classify("completed-sync-errors"),
            ResultClass::CompletedWithErrors
        );
        assert_eq!(
            classify("completed-export-errors"),
            ResultClass::CompletedWithErrors
        );
        assert_eq!(
            classify("completed-discovery-errors"),
            ResultClass::DiscoveryErrors
        );
        assert_eq!(
            classify("completing-referential-updates"),
            ResultClass::Transitional
        );
        assert_eq!(classify("no-start-ma-already-running"), ResultClass::Busy);
        assert_eq!(classify(STAGING_MODE_REFUSED), ResultClass::GuardRail);
        assert_eq!(
            classify(
                "call-failure: 0x8023063D other synchronization run profile is already running"
            ),
            ResultClass::Busy
        );
        assert_eq!(classify("stopped-deadlocked"), ResultClass::TransientEngine);
        assert_eq!(
            classify("stopped-connectivity"),
            ResultClass::TransientExternal
        );
        assert_eq!(
            classify("stopped-deletion-threshold-exceeded"),
            ResultClass::GuardRail
        );
        assert_eq!(
            classify("stopped-user-termination-from-wmi-or-ui"),
            ResultClass::Intentional
        );
        assert_eq!(
            classify("stopped-extension-dll-exception"),
            ResultClass::Config
        );
        assert_eq!(classify("stopped-disk-full"), ResultClass::Failed);
        assert_eq!(
            classify("call-failure: 0x80041003 access denied"),
            ResultClass::Config
        );
        assert_eq!(
            classify("connection-failure: 0x800706BA"),
            ResultClass::TransientExternal
        );
        assert_eq!(
            classify("something-new-from-a-future-build"),
            ResultClass::Unknown
        );
    }

    #[test]
    fn most_severe_picks_the_worst() {
        assert_eq!(
            most_severe(["success", "completed-export-errors", "completed-warnings"]),
            Some("completed-export-errors")
        );
        assert_eq!(
            most_severe(["stopped-connectivity", "success"]),
            Some("stopped-connectivity")
        );
        assert_eq!(most_severe(Vec::<&str>::new()), None);
    }

    #[test]
    fn run_state_from_results() {
        assert_eq!(
            run_state_for(&["success", "completed-warnings"], true),
            RunState::Succeeded
        );
        assert_eq!(
            run_state_for(&["success", "completed-sync-errors"], true),
            RunState::CompletedWithErrors
        );
        assert_eq!(
            run_state_for(&["stopped-connectivity"], false),
            RunState::Failed
        );
        assert_eq!(run_state_for(&["brand-new-string"], true), RunState::Failed);
        assert_eq!(run_state_for(&["success"], false), RunState::Failed);
    }
}
