//! The `mim-wmi` driver: the real engine through its WMI provider (`docs/engine.md`, "WMI
//! interface"). Its decision logic is kept apart from the COM calls so that it runs and is
//! unit-tested on every platform; only the COM side (`com.rs`) is Windows-only.
//!
//! # Layers and files
//!
//! - [`WmiApi`]: the engine's WMI surface, one **blocking** method per WMI call
//!   (namespace [`NAMESPACE`], classes [`MA_CLASS`] and [`RUN_HISTORY_CLASS`]).
//!   Implementations return the provider's strings verbatim and report COM failures as
//!   [`WmiError::Com`] with the HRESULT (`api.rs`). On Windows it is `ComWmi` (`com.rs`); the
//!   tests use a scripted fake (`fake.rs`).
//! - [`WmiEngine`]: implements [`SyncEngine`](crate::engine::SyncEngine) on top of any [`WmiApi`]. Every WMI call runs on a
//!   tokio blocking thread (`spawn_blocking`), because every WMI call may block; all but `Execute`
//!   are bounded by [`WmiConfig::blocking_timeout`] (`Stop` by [`WmiConfig::stop_timeout`])
//!   (`driver.rs`; `Execute` and its polling in `execute.rs`).
//! - What the engine's answers mean (`status.rs`), run-number detection (`run_number.rs`), the
//!   driver's settings and declared run profiles (`config.rs`), run profile discovery
//!   (`discovery.rs`, portable; `sql.rs`, the Windows database reader).
//!
//! # Rules implemented
//!
//! - `Execute` is synchronous and returns a status **string**: it runs on its own
//!   blocking thread for the whole run; meanwhile the driver polls `RunStatus()`/`RunNumber()`/
//!   `RunDetails()` every [`WmiConfig::poll_interval`] to detect the new run number and stream
//!   `step-result/@progress`.
//! - `RunNumber()` is snapshot before `Execute`; a run number greater than the snapshot is the
//!   run's number (only one run per MA at a time). `no-start-*` and busy results have
//!   no run number ([`ExecuteOutcome::run_number`](crate::engine::ExecuteOutcome::run_number) is `None`).
//! - `Execute` may return `completing-*` (or, defensively, `in-progress`): the driver polls
//!   `RunStatus()` every [`WmiConfig::completing_poll`] until it is final (AutoSync
//!   `CompletingRefUpdatesSleepInterval`, 5 s) and reports that final string; if it
//!   cannot (timeout, WMI errors, history cleared) it returns the raw `completing-*` string, which
//!   the vocabulary classifies as `Transitional`.
//! - Dropping the `execute` future does not stop the run: the engine keeps running it and
//!   its blocking thread stays in `Execute` until the run ends. Stopping is [`SyncEngine::stop`](crate::engine::SyncEngine::stop).
//! - After a run, the driver waits [`WmiConfig::post_run_delay`] before returning so that the run
//!   history is complete when the caller reads it (AutoSync `PostRunInterval`, 2 s).
//! - The provider strings `call-failure` and `connection-failure` (the provider's common return
//!   strings) returned by `Execute` are passed through verbatim, like every engine string.
//! - The engine's refusal of a second concurrent synchronization, `0x8023063d`, may reach
//!   the caller as a COM error or inside a string (UNCONFIRMED which): a COM error with that
//!   HRESULT, or any error whose message contains it, becomes
//!   `call-failure: 0x8023063d <message>`, which [`syncfleet_proto::vocab::classify`] reads as
//!   `Busy`; a string containing it is passed through verbatim (also `Busy`).
//! - Other COM failures of `Execute` become `call-failure: 0x<hresult> <message>`; a lost
//!   connection to the service (RPC disconnect/unavailable, WMI transport failure, see
//!   [`WmiError::is_service_lost`]) becomes `connection-failure` (a transient external failure). When
//!   the connection drops mid-run the engine may still be running the profile: the driver
//!   then follows the run through `RunStatus()` like a `completing-*` result.
//! - Run profiles: the WMI provider has no class or method that lists run profiles or their
//!   steps. With [`WmiConfig::discover`] (the default) the driver reads them from the engine's
//!   SQL database through a [`ProfileSource`] (on Windows `SqlProfiles`: the
//!   `mms_run_profile.configuration_xml` of every profile, read-only, as the agent's own
//!   account, bounded by [`WmiConfig::blocking_timeout`]) and parses the steps
//!   ([`parse_run_configuration`], `discovery.rs`). Declarations ([`WmiConfig::profiles`])
//!   override a discovered profile of the same MA and name and add others
//!   ([`merge_profiles`]). The five standard single-step profiles ([`STANDARD_PROFILES`]) are
//!   used only when discovery is off or unavailable, for MAs without declarations: the
//!   executor's synchronization lock then relies on declared steps. Where each MA's profiles
//!   came from is logged and kept ([`WmiEngine::profile_origins`]); a profile whose XML
//!   cannot be parsed is left out with a warning (`docs/engine.md`, "Run profile discovery").
//!
//! # What is UNCONFIRMED about the real provider (verify on a server)
//!
//! - How `0x8023063d` surfaces through `Execute` (COM error or string): both handled.
//! - The exact format of `MIIS_RunHistory.Key` ("MA GUID followed by run number"):
//!   `ComWmi` tries `{GUID}<number>` and falls back to a WQL query on `MaGuid`/`RunNumber`.
//!   The driver reads the **last** run through `MIIS_ManagementAgent.RunDetails()` (documented)
//!   and uses `MIIS_RunHistory` only for older runs (enumerating run history is a known
//!   performance trap).
//! - Whether `RunDetails()` returns the in-progress run while `Execute` blocks (progress events
//!   then carry no XML and no progress, only the run number), and whether `RunStatus()` reports
//!   `completing-*` or already the final string while the engine completes.
//! - Whether run numbers restart after `ClearRuns` (`RunNumber()` is empty when the
//!   history was cleared; an empty snapshot counts as 0, so a restarted sequence is still detected).

mod api;
#[cfg(windows)]
mod com;
mod config;
mod discovery;
mod driver;
mod execute;
#[cfg(test)]
mod fake;
mod run_number;
#[cfg(windows)]
mod sql;
mod status;

pub use api::*;
#[cfg(windows)]
pub use com::{ComWmi, build};
pub use config::*;
pub use discovery::*;
pub use driver::*;
pub use execute::MAX_SETTLE_FAILURES;
pub use run_number::{parse_run_number, progress_of};
#[cfg(windows)]
pub use sql::SqlProfiles;
pub use status::*;
