//! Domain errors to gRPC status codes, in one place, and the checks every handler shares.

use tonic::Status;

use crate::auth::{PeerIdentity, Role};
use crate::fleet::FleetError;
use crate::fleet::session_protocol::OpenError;
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
        StoreError::BadPageToken { .. } => Status::invalid_argument(e.to_string()),
        StoreError::Fenced { .. } => Status::unavailable(e.to_string()),
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

// Fleet errors (`crate::fleet::FleetError`).

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Self {
        use FleetError as E;
        let message = e.to_string();
        match e {
            E::Store(e) => store_status(e),
            E::NoStepsRequested
            | E::NoSteps
            | E::UnknownMa { .. }
            | E::UnknownProfile { .. }
            | E::PauseWithoutNote
            | E::BadSelector(_)
            | E::TooManyAgents { .. }
            | E::Selection(_)
            | E::PlanChoice(_)
            | E::NoHello
            | E::RejectNeedsNote => Status::invalid_argument(message),
            E::UnknownAgent { .. }
            | E::NoSuchAgent(_)
            | E::NoSuchRun(_)
            | E::NoSuchSequence(_)
            | E::NothingSelected(_) => Status::not_found(message),
            E::Revoked { .. }
            | E::Blocked(_)
            | E::NotHeld { .. }
            | E::AlreadyApproved { .. }
            | E::AlreadyRejected { .. }
            | E::ApprovedBeforeReject { .. }
            | E::NotHeldToReject { .. }
            | E::AlreadyEnded { .. }
            | E::Refused(_) => Status::failed_precondition(message),
            E::ChangedMeanwhile => Status::aborted(message),
            E::UnreadableSequence(_) => Status::internal(message),
            E::NameMismatch { .. } => Status::permission_denied(message),
            E::SessionClosed(_) => Status::unauthenticated(message),
            E::EventsNotStored => Status::unavailable(message),
        }
    }
}

/// A session that could not be opened: a failed inbound stream keeps its own status.
impl From<OpenError<Status>> for Status {
    fn from(e: OpenError<Status>) -> Self {
        match e {
            OpenError::Inbound(status) => status,
            OpenError::Refused(e) => e.into(),
        }
    }
}

// Auth errors (`crate::auth::AuthError`).

impl From<crate::auth::AuthError> for Status {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError as E;
        let message = e.to_string();
        match e {
            E::Store(e) => store_status(e),
            E::NoClientCertificate
            | E::EmptyCertificateChain
            | E::NoFleetIdentity { .. }
            | E::Revoked { .. }
            | E::OperatorRevoked { .. } => Status::unauthenticated(message),
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
            E::NoSuchAgent(_) | E::NoSuchOperator { .. } => Status::not_found(message),
            E::LastAdmin { .. } => Status::failed_precondition(message),
            E::NotInPermissionTable { .. } | E::EncodeToken(_) => Status::internal(message),
        }
    }
}

// Document and schedule errors (`crate::documents::DocumentError`, `crate::schedule::ScheduleError`).

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

impl From<crate::notify::NotifyError> for Status {
    fn from(e: crate::notify::NotifyError) -> Self {
        use crate::notify::NotifyError as E;
        match e {
            E::NotFound(_) => Status::not_found(e.to_string()),
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

#[cfg(test)]
mod fleet_error_tests {
    use syncfleet_proto::v1;
    use tonic::{Code, Status};

    use crate::fleet::session_protocol::OpenError;
    use crate::fleet::{FleetError, RunBlocked};
    use crate::store::StoreError;

    /// The code and message each fleet refusal reaches the caller with; clients and the CLI
    /// match on both.
    #[test]
    fn fleet_errors_keep_their_codes_and_messages() {
        let pause = v1::Pause {
            paused: true,
            note: "patching".into(),
            by: "operator/admin".into(),
            at: None,
        };
        let cases = [
            (
                FleetError::NoStepsRequested,
                Code::InvalidArgument,
                "a run needs at least one step (MA and run profile)",
            ),
            (
                FleetError::UnknownAgent {
                    name: "x".into(),
                    known: vec![],
                },
                Code::NotFound,
                "no agent named \"x\"; known agents: none yet",
            ),
            (
                FleetError::UnknownAgent {
                    name: "x".into(),
                    known: vec!["a".into(), "b".into()],
                },
                Code::NotFound,
                "no agent named \"x\"; known agents: a, b",
            ),
            (
                FleetError::NoSuchAgent("x".into()),
                Code::NotFound,
                "no agent named \"x\"",
            ),
            (
                FleetError::Revoked {
                    agent: "a".into(),
                    revocation: pause.clone(),
                },
                Code::FailedPrecondition,
                "agent a was revoked by operator/admin (patching); it takes no runs until it enrols again with a new token ('syncfleet tokens create --agent a', then 'syncfleet-agent enroll' on the server)",
            ),
            (
                FleetError::Blocked(RunBlocked::FleetPaused(pause)),
                Code::FailedPrecondition,
                "the fleet is paused by operator/admin: patching; resume with 'syncfleet fleet resume'",
            ),
            (
                FleetError::NotHeld {
                    id: "r".into(),
                    state: v1::RunState::Running,
                },
                Code::FailedPrecondition,
                "run r is running, not held; only held runs can be approved",
            ),
            (
                FleetError::ChangedMeanwhile,
                Code::Aborted,
                "the run changed state meanwhile; try again",
            ),
            (
                FleetError::UnreadableSequence("s".into()),
                Code::Internal,
                "stored sequence s is unreadable",
            ),
            (
                FleetError::NameMismatch {
                    certificate: "a".into(),
                    claimed: "b".into(),
                },
                Code::PermissionDenied,
                "certificate identifies agent \"a\" but Hello claims \"b\"",
            ),
            (
                FleetError::SessionClosed("agent a was revoked".into()),
                Code::Unauthenticated,
                "agent a was revoked",
            ),
            (
                FleetError::EventsNotStored,
                Code::Unavailable,
                "controller store error; reconnect later",
            ),
            (
                FleetError::Store(StoreError::BadPageToken { token: "x".into() }),
                Code::InvalidArgument,
                "invalid page token \"x\"; pass the next_page_token of the previous response unchanged, or no token for the first page",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
        let inbound = Status::from(OpenError::Inbound(Status::cancelled("gone")));
        assert_eq!(
            (inbound.code(), inbound.message()),
            (Code::Cancelled, "gone")
        );
    }
}
