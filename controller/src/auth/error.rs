//! Why an authentication, authorization, enrollment, renewal or revocation step refused or
//! failed. The API maps each variant to a gRPC status code (`crate::api::status`); the `Display`
//! text is the status message and the audit entry's detail, so it names the problem and how to
//! fix it.

use std::time::Duration;

use super::ca::PkiError;
use super::enrollment::MAX_TOKEN_TTL;
use super::failure_window::{ENROLL_FAILURES_PER_WINDOW, ENROLL_WINDOW};
use super::roles::{OperatorRole, Permission};
use crate::limits::LimitError;
use crate::store::StoreError;

/// An authentication, authorization or credential error.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The caller presented no client certificate (`UNAUTHENTICATED`).
    #[error(
        "no client certificate: syncfleet requires mutual TLS; use a certificate issued by this controller's CA"
    )]
    NoClientCertificate,
    /// The caller's certificate chain is empty (`UNAUTHENTICATED`).
    #[error("empty client certificate chain")]
    EmptyCertificateChain,
    /// The caller's certificate names no agent or operator of this fleet (`UNAUTHENTICATED`).
    #[error(
        "client certificate carries no identity of fleet {fleet:?} (expected a SAN URI spiffe://{fleet}/agent/NAME or spiffe://{fleet}/operator/NAME)"
    )]
    NoFleetIdentity { fleet: String },
    /// The agent's certificate was issued before the agent was revoked (`UNAUTHENTICATED`).
    /// `at` is the revocation time (RFC 3339), `by` who revoked it, `note` their note.
    #[error(
        "agent {name} was revoked at {at} by {by}{}; its certificates are refused: enroll it again with a new token ('syncfleet tokens create --agent {name}')",
        parenthesized(.note)
    )]
    Revoked {
        name: String,
        at: String,
        by: String,
        note: String,
    },
    /// The operator's certificate was issued before the operator was revoked
    /// (`UNAUTHENTICATED`).
    #[error(
        "operator {name} was revoked at {at} by {by}{}; its certificates are refused: ask an admin for a new credential ('syncfleet operators create {name} --role ...')",
        parenthesized(.note)
    )]
    OperatorRevoked {
        name: String,
        at: String,
        by: String,
        note: String,
    },
    /// No certificate was ever recorded for this operator name (`NOT_FOUND`).
    #[error(
        "no operator named {name:?} has a recorded certificate (operators: {}); see 'syncfleet operators list'",
        if .known.is_empty() { "none".to_string() } else { .known.join(", ") }
    )]
    NoSuchOperator { name: String, known: Vec<String> },
    /// Revoking the caller's own credential while no other operator holds a valid admin
    /// certificate (`FAILED_PRECONDITION`).
    #[error(
        "refusing to revoke operator {name}: it is your own credential and no other operator holds a valid admin certificate, so nobody could administer the fleet afterwards; issue another admin first ('syncfleet operators create NAME --role admin')"
    )]
    LastAdmin { name: String },
    /// The permission table has no operator entry for this RPC: a controller bug (`INTERNAL`).
    #[error("{rpc} has no entry in the permission table")]
    NotInPermissionTable { rpc: String },
    /// An operator whose role does not grant the permission an RPC needs (`PERMISSION_DENIED`).
    #[error(
        "{who} has role {}; {rpc} needs the '{}' permission (role {} or higher)",
        .role.map_or("none", OperatorRole::as_str),
        .permission.as_str(),
        .permission.needs().as_str()
    )]
    RoleTooLow {
        who: String,
        role: Option<OperatorRole>,
        rpc: String,
        permission: Permission,
    },
    /// An agent called an operator RPC (`PERMISSION_DENIED`).
    #[error("{who} is an agent; {rpc} is for operators ('{}' permission)", .permission.as_str())]
    AgentNotOperator {
        who: String,
        rpc: String,
        permission: Permission,
    },
    /// Too many failed enrollments from the caller's address (`RESOURCE_EXHAUSTED`); retrying
    /// after `retry_in_secs` seconds is allowed again.
    #[error(
        "too many failed enrollment attempts from this address ({ENROLL_FAILURES_PER_WINDOW} in the last {}); retry in {retry_in_secs} s",
        humantime::format_duration(ENROLL_WINDOW)
    )]
    EnrollRateLimited { retry_in_secs: u64 },
    /// The enrollment token is not of the form `<id>.<secret>` (`PERMISSION_DENIED`).
    #[error(
        "malformed enrollment token: expected <id>.<secret> as printed by 'syncfleet tokens create'"
    )]
    MalformedToken,
    /// The enrollment token is unknown, used, expired or for another agent
    /// (`PERMISSION_DENIED`); the text is decided where the token is consumed, in the store's
    /// transaction.
    #[error("{0}")]
    TokenRefused(String),
    /// The token was consumed but the CA refused the CSR sent with it (`PERMISSION_DENIED`).
    #[error("token {token_id} consumed, but the CSR was refused: {source}")]
    CsrRefusedAfterConsume {
        token_id: String,
        #[source]
        source: PkiError,
    },
    /// The CA refused a name or a CSR (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Pki(#[from] PkiError),
    /// An operator credential was requested without a role (`INVALID_ARGUMENT`).
    #[error("give a role: viewer, operator or admin")]
    NoRole,
    /// A token lifetime above [`MAX_TOKEN_TTL`] (`INVALID_ARGUMENT`).
    #[error(
        "token lifetime {} is longer than the maximum {}; enrollment tokens are meant to be used at once",
        humantime::format_duration(*.0),
        humantime::format_duration(MAX_TOKEN_TTL)
    )]
    TokenTtlTooLong(Duration),
    /// A label key or value out of bounds (`INVALID_ARGUMENT`); both are already cut for echoing.
    #[error("label {key}={value}: keys must be 1-63 characters and values at most 253")]
    BadLabel { key: String, value: String },
    /// More labels than allowed (`INVALID_ARGUMENT`).
    #[error("at most 64 labels")]
    TooManyLabels,
    /// A free-text field over its limit (`INVALID_ARGUMENT`).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// No agent of that name is known (`NOT_FOUND`).
    #[error("no agent named {0:?}")]
    NoSuchAgent(String),
    /// A token record could not be encoded (`INTERNAL`).
    #[error("{0}")]
    EncodeToken(#[source] serde_json::Error),
    /// The controller's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// ` (note)`, or nothing for an empty note.
fn parenthesized(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(" ({note})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_names_who_when_why_and_how_to_recover() {
        let e = |note: &str| AuthError::Revoked {
            name: "sync-01".into(),
            at: "2026-01-02T03:04:05Z".into(),
            by: "operator/ada".into(),
            note: note.into(),
        };
        assert_eq!(
            e("").to_string(),
            "agent sync-01 was revoked at 2026-01-02T03:04:05Z by operator/ada; its certificates are refused: enroll it again with a new token ('syncfleet tokens create --agent sync-01')"
        );
        assert_eq!(
            e("stolen").to_string(),
            "agent sync-01 was revoked at 2026-01-02T03:04:05Z by operator/ada (stolen); its certificates are refused: enroll it again with a new token ('syncfleet tokens create --agent sync-01')"
        );
        assert_eq!(
            AuthError::EnrollRateLimited { retry_in_secs: 7 }.to_string(),
            "too many failed enrollment attempts from this address (10 in the last 1m); retry in 7 s"
        );
        assert_eq!(
            AuthError::TokenTtlTooLong(Duration::from_secs(90_000)).to_string(),
            "token lifetime 1day 1h is longer than the maximum 1day; enrollment tokens are meant to be used at once"
        );
    }
}
