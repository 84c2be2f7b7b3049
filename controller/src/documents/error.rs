//! Why an apply, get or delete of fleet documents was refused. The `Display` text is the
//! message the client sees; the API maps each variant to its gRPC code (the comment on each
//! says which) so that this module needs no transport types.

use crate::limits::{LimitError, echo};
use crate::store::StoreError;

/// A refused document operation ([`apply`](super::apply)).
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A kind that is neither a sequence nor a schedule. `INVALID_ARGUMENT`.
    #[error("unknown kind {}; use Sequence, Schedule or Notifier", echo(.0))]
    UnknownKind(String),
    /// A request field over its limit (a name too long). `INVALID_ARGUMENT`.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// More documents in one apply than allowed. `INVALID_ARGUMENT`.
    #[error("{0}; split the files into several applies")]
    TooManyDocuments(LimitError),
    /// Documents that do not parse or validate, one problem per line. `INVALID_ARGUMENT`.
    #[error("{0}")]
    Invalid(String),
    /// A stored schedule whose sequence is gone. `FAILED_PRECONDITION`.
    #[error("stored schedule {schedule} uses sequence {sequence} which does not exist")]
    StoredScheduleOrphaned { schedule: String, sequence: String },
    /// Steps that name MAs or run profiles the target agents lack, and no `force`, one problem
    /// per line. `FAILED_PRECONDITION`.
    #[error("{0}")]
    InventoryProblems(String),
    /// `prune` would delete a sequence that a remaining schedule uses. `FAILED_PRECONDITION`.
    #[error("--prune would delete sequence {sequence} which schedule {schedule} uses")]
    PruneWouldOrphan { sequence: String, schedule: String },
    /// Deleting a sequence that schedules use. `FAILED_PRECONDITION`.
    #[error("sequence {sequence} is used by schedule(s) {}; delete or change those first", .users.join(", "))]
    SequenceInUse {
        sequence: String,
        users: Vec<String>,
    },
    /// No stored document of that kind and name; `what` is the kind as the message names it
    /// (`Sequence`, `Schedule`, or `schedule` for a schedule looked up by name). `NOT_FOUND`.
    #[error("no {what} named {}", echo(.name))]
    NotFound { what: &'static str, name: String },
    /// A stored document that cannot be read back; `problem` says why. `INTERNAL`.
    #[error("stored {kind} {name} is unreadable{problem}")]
    Unreadable {
        kind: String,
        name: String,
        /// Empty, or `": "` followed by the parse error.
        problem: String,
    },
    /// The store failed; committed data is kept.
    #[error(transparent)]
    Store(#[from] StoreError),
}
