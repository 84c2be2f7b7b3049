//! Change detection for schedules with `trigger.on_change`: one poller per (schedule, source)
//! watches a connected system next to the agent (LDAP directory, SQL watermark, HTTP
//! watermark) and reports what changed as `ChangeDetected` events through the outbox. The
//! controller decides when to run; the agent only detects.
//!
//! - [`Watcher`] follows the stored schedule set: it starts a poller for every source of every
//!   schedule with `on_change`, restarts it when the source's definition changes and stops it
//!   when the source disappears. Pollers run whether or not a session is open: events wait in
//!   the outbox.
//! - A poll's new cursor/state and its event are written in one journal transaction
//!   ([`crate::journal::Journal::store_change`]), so a restart neither misses nor repeats a
//!   change. The state is kept per definition digest: a changed definition starts a new
//!   baseline, and a first poll (the baseline) reports nothing.
//! - Failures are reported in the source's status (heartbeat) and retried with exponential
//!   backoff from the poll interval up to 5 minutes ([`status::backoff`]).

pub mod credentials;
pub mod http;
pub mod ldap;
pub mod sql;
#[cfg(windows)]
mod sql_server;
pub mod status;
pub mod watcher;

pub use credentials::CredentialError;
pub use watcher::Watcher;

use sha2::{Digest, Sha256};
use syncfleet_proto::schedule_model::ChangeSourceDoc;

/// Why a poll failed. Shown in the source's status; never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("{0}")]
    Ldap(String),
    #[error("{0}")]
    Sql(String),
    #[error("{0}")]
    Http(String),
    #[error("source definition: {0}")]
    Definition(String),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// What a poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    /// The state to store (cursor for display and resumption, comparison state).
    pub state: crate::journal::ChangeState,
    /// Changes seen in this poll (0 for a baseline or nothing new).
    pub changes: u64,
    /// Up to [`MAX_EXAMPLES`] examples (DNs, the new watermark).
    pub examples: Vec<String>,
    /// Whether the state differs from the stored one (only then is it written).
    pub dirty: bool,
}

/// Examples carried by one `ChangeDetected`.
pub const MAX_EXAMPLES: usize = 5;

/// Digest of a source's definition: the key under which its state is stored, so a changed
/// definition (another base, filter or query) starts a new baseline instead of comparing with
/// entries of something else.
pub fn definition_digest(doc: &ChangeSourceDoc) -> String {
    let canonical = serde_json::to_vec(doc).unwrap_or_default();
    let d = Sha256::digest(&canonical);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Where a source points, for its status (no secrets: connection strings of sources carry
/// none, the controller refuses those that do).
pub fn target_of(doc: &ChangeSourceDoc) -> String {
    if let Some(l) = &doc.ldap {
        format!("{} {}", l.url, l.base)
    } else if let Some(s) = &doc.sql {
        let driver = match s.driver {
            syncfleet_proto::schedule_model::SqlDriver::Postgres => "postgres",
            syncfleet_proto::schedule_model::SqlDriver::SqlServer => "sql_server",
        };
        format!("{driver} {}", s.connection)
    } else if let Some(h) = &doc.http {
        format!("{} {}", h.url, h.pointer)
    } else {
        String::new()
    }
}

/// A watermark source's poll: the first value is the baseline; a different value later is one
/// change with the new value as example.
pub fn watermark_outcome(
    prior: Option<&crate::journal::ChangeState>,
    value: String,
) -> PollOutcome {
    let state = crate::journal::ChangeState {
        cursor: value.clone(),
        state: value.clone().into_bytes(),
    };
    match prior {
        None => PollOutcome {
            state,
            changes: 0,
            examples: Vec::new(),
            dirty: true,
        },
        Some(p) if p.cursor == value => PollOutcome {
            state,
            changes: 0,
            examples: Vec::new(),
            dirty: false,
        },
        Some(_) => PollOutcome {
            state,
            changes: 1,
            examples: vec![value],
            dirty: true,
        },
    }
}
