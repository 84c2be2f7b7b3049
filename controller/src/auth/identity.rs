//! Who is calling: the identity carried by a verified client certificate.
//!
//! An identity comes only from a certificate of the fleet CA, never from a message: its
//! subject alternative name is a SPIFFE-style URI, `spiffe://<fleet>/agent/<name>` or
//! `spiffe://<fleet>/operator/<name>`, plus a role URN (`urn:syncfleet:role:<role>`) for
//! operators.

use super::AuthError;
use super::ca::check_name;
use super::roles::OperatorRole;

/// What kind of party a client certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Operator,
}

impl Role {
    pub(super) fn path_segment(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
        }
    }
}

/// Prefix of the URI SAN carrying an operator's role.
pub(super) const ROLE_URN: &str = "urn:syncfleet:role:";

/// The identity carried by a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
    /// Operators only: what they may do.
    pub operator_role: Option<OperatorRole>,
    /// When the certificate was issued (Unix ms, from its serial number), for revocation.
    pub issued_ms: Option<i64>,
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role.path_segment(), self.name)
    }
}

/// Identity of a verified peer certificate (DER), from its `spiffe://<fleet>/<role>/<name>` SAN.
/// `None` when the certificate carries no syncfleet identity of this fleet.
pub fn identity_of(der: &[u8], fleet: &str) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{fleet}/");
    let mut identity = None;
    let mut operator_role = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(r) = uri.strip_prefix(ROLE_URN) {
                operator_role = OperatorRole::parse(r);
                continue;
            }
            let Some(rest) = uri.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let (role, name) = rest.split_once('/')?;
            let role = match role {
                "agent" => Role::Agent,
                "operator" => Role::Operator,
                _ => return None,
            };
            check_name(name).ok()?;
            identity = Some((role, name.to_string()));
        }
    }
    let (role, name) = identity?;
    let serial = cert.tbs_certificate.raw_serial();
    let issued_ms = match serial {
        [1, rest @ ..] if rest.len() == 16 => rest[..8].try_into().ok().map(i64::from_be_bytes),
        _ => None,
    };
    Some(PeerIdentity {
        role,
        name,
        // Operator certificates without a role URN predate roles: they are viewers.
        operator_role: (role == Role::Operator)
            .then(|| operator_role.unwrap_or(OperatorRole::Viewer)),
        issued_ms,
    })
}

/// The verified identity of a caller from its client certificate chain as TLS verified it
/// (leaf first; `None` when it presented none), or the error naming what is missing.
pub fn identify<C: AsRef<[u8]>>(
    chain: Option<&[C]>,
    fleet: &str,
) -> Result<PeerIdentity, AuthError> {
    let leaf = chain
        .ok_or(AuthError::NoClientCertificate)?
        .first()
        .ok_or(AuthError::EmptyCertificateChain)?;
    identity_of(leaf.as_ref(), fleet).ok_or_else(|| AuthError::NoFleetIdentity {
        fleet: fleet.to_string(),
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::auth::ca::Ca;

    /// The caller's identity is read from a plain certificate chain, and each way a chain can
    /// lack one is named.
    #[test]
    fn identify_reads_the_leaf_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "prod").unwrap();
        let agent = ca
            .issue_client(Role::Agent, "sync-01", std::time::Duration::from_secs(60))
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(agent.cert_pem.as_bytes()).unwrap();
        let chain = [pem.contents];
        let id = identify(Some(&chain[..]), "prod").unwrap();
        assert_eq!(id.to_string(), "agent/sync-01");
        assert_eq!(
            identify::<Vec<u8>>(None, "prod").unwrap_err().to_string(),
            "no client certificate: syncfleet requires mutual TLS; use a certificate issued by this controller's CA"
        );
        assert_eq!(
            identify::<Vec<u8>>(Some(&[]), "prod")
                .unwrap_err()
                .to_string(),
            "empty client certificate chain"
        );
        assert_eq!(
            identify(Some(&chain[..]), "dev").unwrap_err().to_string(),
            "client certificate carries no identity of fleet \"dev\" (expected a SAN URI spiffe://dev/agent/NAME or spiffe://dev/operator/NAME)"
        );
    }
}
