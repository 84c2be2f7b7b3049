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

impl From<crate::auth::AuthError> for Status {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError as E;
        let message = e.to_string();
        match e {
            E::Store(e) => store_status(e),
            E::NoClientCertificate
            | E::EmptyCertificateChain
            | E::NoFleetIdentity { .. }
            | E::Revoked { .. } => Status::unauthenticated(message),
            E::RoleTooLow { .. }
            | E::AgentNotOperator { .. }
            | E::MalformedToken
            | E::TokenRefused(_)
            | E::CsrRefusedAfterConsume { .. } => Status::permission_denied(message),
            E::EnrollRateLimited { .. } => Status::resource_exhausted(message),
            E::Pki(_)
            | E::NoRole
            | E::TokenTtlTooLong(_)
            | E::BadLabel { .. }
            | E::TooManyLabels
            | E::Limit(_) => Status::invalid_argument(message),
            E::NoSuchAgent(_) => Status::not_found(message),
            E::NotInPermissionTable { .. } | E::EncodeToken(_) => Status::internal(message),
        }
    }
}

// ---- documents and schedules (crate::documents::DocumentError, crate::schedule::ScheduleError) ----
