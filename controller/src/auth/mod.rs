//! Who may do what, and the record of it.
//!
//! - **Authentication** ([`identity`]): the caller's client certificate, verified by TLS against
//!   the fleet CA; its identity (`spiffe://<fleet>/<agent|operator>/<name>`, plus a role URN for
//!   operators) is read by [`identify`]. A certificate issued before its agent or operator was
//!   revoked is refused ([`Security::ensure_not_revoked`], [`revocation`]); operator
//!   certificates are recorded and operators revoked in [`operators`].
//! - **Authorization** ([`roles`]): operator roles are cumulative: `viewer` reads everything,
//!   `operator` also runs, cancels, approves, pauses, resumes and drains, `admin` also applies
//!   and deletes fleet files, creates tokens and operators, and revokes agents and operators.
//!   Which permission each RPC needs is one table, [`roles::RPC_ACCESS`], checked by
//!   [`permits`]. A denial names the missing permission and is audited.
//! - **Audit** ([`audit`]): every mutating call, every denial, enrollment, renewal and
//!   revocation is appended to the store's audit log with who, what, target, when, result, peer
//!   and a request id (also returned as `x-request-id` metadata and logged). Token secrets and
//!   keys never appear in it.
//!
//! Nothing here knows gRPC: failures are [`AuthError`]s, and reading the caller's certificate
//! from a request, authorizing and auditing each call and tagging it with its request id are
//! the API's (`crate::api::authorize`).
//! - **Enrollment** ([`enrollment`]): one-time tokens `<id>.<secret>` bound to an agent name,
//!   with a TTL; only a SHA-256 of the secret is stored; consuming a token is atomic. Failed
//!   `Enroll` calls are rate limited per peer address; successful ones do not count.
//! - **Renewal** ([`renewal`]): agents renew their own certificates; operators get credentials
//!   for CSRs.
//! - **The fleet CA** ([`ca`]) issues every identity; [`init`] creates it.
//! - **Web console sign-in** ([`console_login`]): one-time links minted for an authenticated
//!   operator, stored hashed, redeemed once for a browser session.

pub mod audit;
pub mod ca;
pub mod console_login;
pub mod enrollment;
pub mod error;
pub mod failure_window;
pub mod identity;
pub mod init;
pub mod operators;
pub mod renewal;
pub mod revocation;
pub mod roles;

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;

pub use ca::{Ca, CertifiedKey, PkiError, check_name, pin_of_pem, write_pair, write_public};
pub use enrollment::{DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, check_labels};
pub use error::AuthError;
pub use failure_window::{ENROLL_FAILURES_PER_WINDOW, ENROLL_WINDOW};
pub use identity::{PeerIdentity, Role, identify, identity_of};
pub use roles::{Access, OperatorRole, Permission, permits};

/// Security state and services of one controller.
pub struct Security {
    pub fleet: Arc<Fleet>,
    pub ca: Arc<Ca>,
    pub fleet_name: String,
    pub agent_cert_lifetime: Duration,
    /// Failed enrollments per peer address within the last [`ENROLL_WINDOW`].
    enroll_failures: failure_window::FailureWindow,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("fleet", &self.fleet_name)
            .finish_non_exhaustive()
    }
}

/// Longest note, label or name accepted from clients.
pub const MAX_NOTE: usize = crate::limits::MAX_TEXT;

impl Security {
    pub fn new(
        fleet: Arc<Fleet>,
        ca: Arc<Ca>,
        fleet_name: String,
        agent_cert_lifetime: Duration,
    ) -> Self {
        Self {
            fleet,
            ca,
            fleet_name,
            agent_cert_lifetime,
            enroll_failures: failure_window::FailureWindow::default(),
        }
    }
}
