//! Domain errors to gRPC status codes, in one place, and the checks every handler shares.

use tonic::Status;

use crate::auth::{PeerIdentity, Role};
use crate::limits::LimitError;
use crate::run_ids::RunIdError;
use crate::store::StoreError;

/// The caller's certificate is of the wrong role for this service.
pub(super) fn require(id: &PeerIdentity, role: Role) -> Result<(), Status> {
    if id.role == role {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{id} may not call this method (it is for {} identities)",
            match role {
                Role::Agent => "agent",
                Role::Operator => "operator",
            }
        )))
    }
}

/// A request refused by an input limit: `INVALID_ARGUMENT` with the limit's message.
pub(super) fn bad_input(e: LimitError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A store failure: a bad page token is the caller's mistake; anything else is logged and
/// reported as `INTERNAL` (the data already committed is kept).
pub fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    match e {
        StoreError::BadPageToken => Status::invalid_argument(e.to_string()),
        _ => Status::internal(format!("controller store error: {e}")),
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        store_status(e)
    }
}

impl From<RunIdError> for Status {
    fn from(e: RunIdError) -> Self {
        match e {
            RunIdError::NotFound(_) => Status::not_found(e.to_string()),
            RunIdError::Ambiguous { .. } | RunIdError::TooLong(_) => {
                Status::invalid_argument(e.to_string())
            }
            RunIdError::Store(e) => store_status(e),
        }
    }
}

impl From<LimitError> for Status {
    fn from(e: LimitError) -> Self {
        bad_input(e)
    }
}

// ---- fleet (crate::fleet::FleetError) ----

// ---- auth (crate::auth::AuthError) ----

// ---- documents and schedules (crate::documents::DocumentError, crate::schedule::ScheduleError) ----

impl From<crate::documents::DocumentError> for Status {
    fn from(e: crate::documents::DocumentError) -> Self {
        use crate::documents::DocumentError as E;
        match e {
            E::UnknownKind(_) | E::TooManyDocuments(_) | E::Invalid(_) => {
                Status::invalid_argument(e.to_string())
            }
            E::Limit(e) => bad_input(e),
            E::StoredScheduleOrphaned { .. }
            | E::InventoryProblems(_)
            | E::PruneWouldOrphan { .. }
            | E::SequenceInUse { .. } => Status::failed_precondition(e.to_string()),
            E::NotFound { .. } => Status::not_found(e.to_string()),
            E::Unreadable { .. } => Status::internal(e.to_string()),
            E::Store(e) => store_status(e),
        }
    }
}

impl From<crate::schedule::ScheduleError> for Status {
    fn from(e: crate::schedule::ScheduleError) -> Self {
        use crate::schedule::ScheduleError as E;
        match e {
            E::Document(e) => e.into(),
            E::BadTrigger { .. } => Status::internal(e.to_string()),
            E::PauseNeedsNote => Status::invalid_argument(e.to_string()),
            E::Store(e) => store_status(e),
        }
    }
}
