//! Operator certificates: the record of every one the controller issued, and revoking an
//! operator.
//!
//! A record ([`v1::OperatorCertificate`], under `keys::operator_cert`) is written when
//! `CreateOperator` signs a certificate; the admin credentials that `init` and `dev` write into
//! `<pki>/operators/` are recorded when the controller starts ([`Security::import_operator_files`]),
//! because `init` runs without the store. Records only serve listing: revocation is a record per
//! operator name (`keys::operator_revoked`) that refuses every certificate of that name issued
//! until then, checked on every call by [`Security::ensure_not_revoked`], so certificates issued
//! before records existed are refused too.

use std::path::Path;

use super::identity::{Role, identity_of};
use super::roles::OperatorRole;
use super::{AuthError, PeerIdentity, Security};
use crate::store::keys;
use syncfleet_proto::time::{from_millis, now, to_millis};
use syncfleet_proto::v1;

/// `issued_by` of the credentials found in the PKI folder (written by `init` or `dev`).
pub const FROM_PKI_FOLDER: &str = "pki-folder";

/// The record of an operator certificate (PEM) of fleet `fleet`, or `None` when it is no
/// operator certificate of this fleet.
pub fn certificate_record(
    cert_pem: &str,
    fleet: &str,
    issued_by: &str,
) -> Option<v1::OperatorCertificate> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let id = identity_of(&pem.contents, fleet)?;
    if id.role != Role::Operator {
        return None;
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let serial: String = cert
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let not_after = cert.validity().not_after.timestamp();
    let issued_at = id
        .issued_ms
        .unwrap_or_else(|| cert.validity().not_before.timestamp().saturating_mul(1000));
    Some(v1::OperatorCertificate {
        name: id.name,
        role: role_proto(id.operator_role) as i32,
        serial,
        fingerprint: syncfleet_proto::digest::sha256_hex(&pem.contents),
        issued_at: Some(from_millis(issued_at)),
        not_after: Some(from_millis(not_after.saturating_mul(1000))),
        issued_by: issued_by.to_string(),
        ..Default::default()
    })
}

fn role_proto(role: Option<OperatorRole>) -> v1::Role {
    match role {
        Some(OperatorRole::Viewer) => v1::Role::Viewer,
        Some(OperatorRole::Operator) => v1::Role::Operator,
        Some(OperatorRole::Admin) => v1::Role::Admin,
        None => v1::Role::Unspecified,
    }
}

/// Marks `cert` revoked when the operator's revocation record `rec` came after it was issued.
fn apply_revocation(cert: &mut v1::OperatorCertificate, rec: Option<&v1::Pause>) {
    let Some(rec) = rec else {
        return;
    };
    let revoked_ms = rec.at.as_ref().map(to_millis).unwrap_or(i64::MAX);
    let issued_ms = cert.issued_at.as_ref().map(to_millis).unwrap_or(i64::MIN);
    if issued_ms <= revoked_ms {
        cert.revoked = true;
        cert.revoked_at = rec.at;
        cert.revoked_by = rec.by.clone();
        cert.revoke_note = rec.note.clone();
    }
}

/// Whether `cert` is an admin certificate that still works at `now_ms`.
fn valid_admin(cert: &v1::OperatorCertificate, now_ms: i64) -> bool {
    cert.role == v1::Role::Admin as i32
        && !cert.revoked
        && cert.not_after.as_ref().map(to_millis).unwrap_or(0) > now_ms
}

impl Security {
    /// Records an operator certificate this controller issued, on behalf of `issued_by`.
    pub async fn record_operator(&self, cert_pem: &str, issued_by: &str) -> Result<(), AuthError> {
        let Some(rec) = certificate_record(cert_pem, &self.fleet_name, issued_by) else {
            return Ok(());
        };
        let key = keys::operator_cert(&rec.name, &rec.serial);
        self.fleet
            .store
            .put_state(&key, &prost::Message::encode_to_vec(&rec))
            .await?;
        Ok(())
    }

    /// Records the operator certificates (`*.pem`) in `dir` (`<pki>/operators/`, where `init`
    /// and `dev` write the admin credential) that are not recorded yet; returns how many were
    /// added. Files that are not operator certificates of this fleet are skipped.
    pub async fn import_operator_files(&self, dir: &Path) -> Result<usize, AuthError> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(0);
        };
        let mut added = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            let Ok(pem) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Some(rec) = certificate_record(&pem, &self.fleet_name, FROM_PKI_FOLDER) else {
                continue;
            };
            let key = keys::operator_cert(&rec.name, &rec.serial);
            if self.fleet.store.get_state(&key).await?.is_none() {
                self.fleet
                    .store
                    .put_state(&key, &prost::Message::encode_to_vec(&rec))
                    .await?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Every recorded operator certificate with its revocation state, by name, newest first.
    pub async fn list_operators(&self) -> Result<Vec<v1::OperatorCertificate>, AuthError> {
        let store = &self.fleet.store;
        let revocations: std::collections::HashMap<String, v1::Pause> = store
            .list_state(&keys::operator_revoked_prefix())
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k
                    .strip_prefix(&keys::operator_revoked_prefix())?
                    .to_string();
                let rec = <v1::Pause as prost::Message>::decode(v.as_slice()).ok()?;
                Some((name, rec))
            })
            .collect();
        let mut certs: Vec<v1::OperatorCertificate> = store
            .list_state(&keys::operator_certs_prefix())
            .await?
            .into_iter()
            .filter_map(|(_, v)| {
                <v1::OperatorCertificate as prost::Message>::decode(v.as_slice()).ok()
            })
            .collect();
        for c in &mut certs {
            apply_revocation(c, revocations.get(&c.name));
        }
        certs.sort_by(|a, b| {
            let t = |c: &v1::OperatorCertificate| c.issued_at.as_ref().map(to_millis);
            a.name.cmp(&b.name).then_with(|| t(b).cmp(&t(a)))
        });
        Ok(certs)
    }

    /// Revokes operator `name` on behalf of `caller`: every certificate issued to that name
    /// until now is refused from now on. Refused for a name without recorded certificates
    /// ([`AuthError::NoSuchOperator`]), and for the caller's own name while no other operator
    /// holds a valid admin certificate ([`AuthError::LastAdmin`]): that would lock every admin
    /// out of the fleet.
    pub async fn revoke_operator(
        &self,
        caller: &PeerIdentity,
        name: &str,
        note: &str,
    ) -> Result<Vec<v1::OperatorCertificate>, AuthError> {
        let all = self.list_operators().await?;
        if !all.iter().any(|c| c.name == name) {
            let mut known: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
            known.dedup();
            return Err(AuthError::NoSuchOperator {
                name: name.to_string(),
                known,
            });
        }
        let now_ms = to_millis(&now());
        if caller.role == Role::Operator
            && caller.name == name
            && !all.iter().any(|c| c.name != name && valid_admin(c, now_ms))
        {
            return Err(AuthError::LastAdmin {
                name: name.to_string(),
            });
        }
        let rec = v1::Pause {
            paused: true,
            note: note.to_string(),
            by: caller.to_string(),
            at: Some(now()),
        };
        self.fleet
            .store
            .put_state(
                &keys::operator_revoked(name),
                &prost::Message::encode_to_vec(&rec),
            )
            .await?;
        let mut mine: Vec<v1::OperatorCertificate> =
            all.into_iter().filter(|c| c.name == name).collect();
        for c in &mut mine {
            apply_revocation(c, Some(&rec));
        }
        Ok(mine)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::auth::Ca;

    #[test]
    fn a_record_names_the_operator_role_serial_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "prod").unwrap();
        let op = ca
            .issue_client(Role::Operator, "ada", std::time::Duration::from_secs(3600))
            .unwrap();
        let rec = certificate_record(&op.cert_pem, "prod", "operator/root").unwrap();
        assert_eq!(rec.name, "ada");
        assert_eq!(rec.role, v1::Role::Admin as i32);
        assert_eq!(rec.serial.len(), 34, "{}", rec.serial);
        assert_eq!(rec.fingerprint.len(), 64);
        assert_eq!(rec.issued_by, "operator/root");
        let issued = to_millis(rec.issued_at.as_ref().unwrap());
        let expires = to_millis(rec.not_after.as_ref().unwrap());
        assert!(
            (3_500_000..=3_700_000).contains(&(expires - issued)),
            "{issued} {expires}"
        );
        // Another fleet's certificate, or an agent's, is no operator record of this fleet.
        assert!(certificate_record(&op.cert_pem, "dev", "x").is_none());
        let agent = ca
            .issue_client(Role::Agent, "sync-01", std::time::Duration::from_secs(60))
            .unwrap();
        assert!(certificate_record(&agent.cert_pem, "prod", "x").is_none());
    }

    #[test]
    fn revocation_covers_certificates_issued_until_then_only() {
        let mut cert = v1::OperatorCertificate {
            issued_at: Some(from_millis(1_000)),
            ..Default::default()
        };
        let rec = v1::Pause {
            paused: true,
            at: Some(from_millis(2_000)),
            by: "operator/ada".into(),
            note: "left".into(),
        };
        let mut later = cert.clone();
        later.issued_at = Some(from_millis(3_000));
        apply_revocation(&mut cert, Some(&rec));
        apply_revocation(&mut later, Some(&rec));
        assert!(cert.revoked);
        assert_eq!(cert.revoked_by, "operator/ada");
        assert!(!later.revoked);
    }
}
