//! Why reading or pausing a schedule was refused. The `Display` text is the message the client
//! sees; the API maps each variant to its gRPC code (the comment on each says which).

use crate::documents::{DocumentError, trigger::TriggerError};
use crate::store::StoreError;

/// A refused schedule operation ([`status`](super::status)).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Looking the schedule up failed (no such schedule, unreadable, bad name).
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The stored schedule's trigger no longer compiles. `INTERNAL`.
    #[error("stored schedule {name}: {source}")]
    BadTrigger { name: String, source: TriggerError },
    /// A pause without a note saying why. `INVALID_ARGUMENT`.
    #[error("say why the schedule is paused: pass --note TEXT")]
    PauseNeedsNote,
    /// The store failed; committed data is kept.
    #[error(transparent)]
    Store(#[from] StoreError),
}
