//! The controller's certificate authority and the identities it issues.
//!
//! Every party on the wire is identified by a certificate signed by the fleet's CA: the
//! controller by a server certificate, agents and operators by client certificates whose
//! subject alternative name is a SPIFFE-style URI, `spiffe://<fleet>/agent/<name>` or
//! `spiffe://<fleet>/operator/<name>`. The controller trusts nothing else: an identity comes only
//! from a certificate of this CA, never from a message.
//!
//! Files (under `<data_dir>/pki/`): `ca.pem`, `ca.key`, `controller.pem`, `controller.key`. Key
//! files are written owner read-only; the CA key never leaves this folder.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::identity::{ROLE_URN, Role};
use super::roles::OperatorRole;

/// PKI failures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "the CA in {0} is incomplete (ca.pem or ca.key missing); restore both files or move the folder away and run 'syncfleet-controller init' again"
    )]
    IncompleteCa(PathBuf),
    /// The name as [`crate::limits::echo`] quotes it.
    #[error("invalid name {0}: use 1-63 characters from a-z, A-Z, 0-9, '.', '_' and '-'")]
    BadName(String),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error(
        "no CA in {0} (ca.pem and ca.key): run 'syncfleet-controller init --data-dir DIR' first"
    )]
    NoCa(PathBuf),
}

/// SHA-256 (hex) of the first certificate in a PEM text.
pub fn pin_of_pem(pem: &str) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(syncfleet_proto::digest::sha256_hex(&p.contents))
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CertifiedKey").finish_non_exhaustive()
    }
}

/// The fleet CA, loaded from or created in a folder.
pub struct Ca {
    dir: PathBuf,
    fleet: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

/// Validate a name used in identities and certificates.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(crate::limits::echo(name)))
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(|e| io("write", e))?;
        f.write_all(contents.as_bytes())
            .map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("write", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("write", e))
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Serial number: a version byte (1), the issue time in Unix milliseconds (8 bytes,
/// big-endian) and 8 random bytes, so a revocation can refuse every certificate issued before
/// it. The leading 1 keeps the DER integer positive and its length fixed.
fn serial(params: &mut CertificateParams) {
    let ms = chrono::Utc::now().timestamp_millis().max(0);
    let mut bytes = Vec::with_capacity(17);
    bytes.push(1);
    bytes.extend_from_slice(&ms.to_be_bytes());
    let random: [u8; 8] = rand::random();
    bytes.extend_from_slice(&random);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
}

fn validity(params: &mut CertificateParams, lifetime: std::time::Duration) {
    serial(params);
    let now = OffsetDateTime::now_utc();
    // Backdate a little so peers with a slightly slow clock accept a fresh certificate.
    params.not_before = now - Duration::minutes(5);
    params.not_after =
        now + Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
}

impl Ca {
    /// Load an existing CA from `dir` (the controller never creates one while serving).
    pub fn load(dir: &Path, fleet: &str) -> Result<Self, PkiError> {
        if !dir.join("ca.pem").exists() || !dir.join("ca.key").exists() {
            return Err(PkiError::NoCa(dir.to_path_buf()));
        }
        Self::load_or_create(dir, fleet)
    }

    /// Load the CA from `dir`, or create it when neither file exists.
    pub fn load_or_create(dir: &Path, fleet: &str) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = read_file(&cert_path)?;
                let key = KeyPair::from_pem(&read_file(&key_path)?)?;
                let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
                Ok(Self {
                    dir: dir.to_path_buf(),
                    fleet: fleet.to_string(),
                    cert_pem,
                    issuer,
                })
            }
            (false, false) => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, format!("syncfleet CA ({fleet})"));
                dn.push(DnType::OrganizationName, "syncfleet");
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(
                    &mut params,
                    std::time::Duration::from_secs(10 * 365 * 86_400),
                );
                let cert = params.self_signed(&key)?;
                write_file(&key_path, &key.serialize_pem(), true)?;
                write_file(&cert_path, &cert.pem(), false)?;
                let cert_pem = cert.pem();
                Ok(Self {
                    dir: dir.to_path_buf(),
                    fleet: fleet.to_string(),
                    cert_pem,
                    issuer: Issuer::new(params, key),
                })
            }
            _ => Err(PkiError::IncompleteCa(dir.to_path_buf())),
        }
    }

    /// PEM of the CA certificate (what every party trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The fleet name used in identities.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// Issue the controller's server certificate for the given DNS names / IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: std::time::Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "syncfleet-controller");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn client_params(
        &self,
        role: Role,
        name: &str,
        operator_role: Option<OperatorRole>,
        lifetime: std::time::Duration,
    ) -> Result<CertificateParams, PkiError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.path_segment());
        params.distinguished_name = dn;
        let uri = format!("spiffe://{}/{}/{}", self.fleet, role.path_segment(), name);
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        if let Some(r) = operator_role {
            params.subject_alt_names.push(SanType::URI(
                format!("{ROLE_URN}{}", r.as_str()).try_into()?,
            ));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        Ok(params)
    }

    /// Issue a client certificate (and a fresh key) for an agent, or for an operator with the
    /// admin role (bootstrap credentials of `init` and `dev`).
    pub fn issue_client(
        &self,
        role: Role,
        name: &str,
        lifetime: std::time::Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let op = (role == Role::Operator).then_some(OperatorRole::Admin);
        let params = self.client_params(role, name, op, lifetime)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign a CSR (whose signature proves possession of its key) for an identity chosen by the
    /// controller: whatever names the CSR asks for are ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        operator_role: Option<OperatorRole>,
        lifetime: std::time::Duration,
    ) -> Result<(String, OffsetDateTime), PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let params = self.client_params(role, name, operator_role, lifetime)?;
        let not_after = params.not_after;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok((cert.pem(), not_after))
    }

    /// SHA-256 of the CA certificate (DER), lower-case hex: the pin agents check on enrollment.
    pub fn pin(&self) -> String {
        pin_of_pem(&self.cert_pem).unwrap_or_default()
    }
}

/// Write a certificate and key pair as `<dir>/<stem>.pem` and `<dir>/<stem>.key` (0600).
pub fn write_pair(
    dir: &Path,
    stem: &str,
    ck: &CertifiedKey,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    write_file(&key, &ck.key_pem, true)?;
    write_file(&cert, &ck.cert_pem, false)?;
    Ok((cert, key))
}

/// Write a public PEM file (e.g. a copy of the CA certificate).
pub fn write_public(path: &Path, pem: &str) -> Result<(), PkiError> {
    write_file(path, pem, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::identity_of;

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn ca_persists_and_identities_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "dev").unwrap();
        let again = Ca::load_or_create(dir.path(), "dev").unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let agent = again
            .issue_client(Role::Agent, "sync-01", std::time::Duration::from_secs(3600))
            .unwrap();
        let id = identity_of(&der_of(&agent.cert_pem), "dev").unwrap();
        assert_eq!(id.role, Role::Agent);
        assert_eq!(id.name, "sync-01");
        assert_eq!(id.operator_role, None);
        let issued = id.issued_ms.unwrap();
        assert!((chrono::Utc::now().timestamp_millis() - issued).abs() < 60_000);
        let op = again
            .issue_client(
                Role::Operator,
                "alice",
                std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let id = identity_of(&der_of(&op.cert_pem), "dev").unwrap();
        assert_eq!(id.operator_role, Some(OperatorRole::Admin));
        assert_eq!(identity_of(&der_of(&agent.cert_pem), "other-fleet"), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_names_and_half_cas_are_refused() {
        assert!(check_name("sync 01").is_err());
        assert!(check_name("").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        assert!(matches!(
            Ca::load_or_create(dir.path(), "dev"),
            Err(PkiError::IncompleteCa(_))
        ));
    }
}

#[cfg(test)]
mod csr_tests {
    use super::*;
    use crate::auth::identity::identity_of;

    #[test]
    fn csr_is_signed_for_the_identity_the_controller_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "prod").unwrap();
        let key = KeyPair::generate().unwrap();
        // The CSR asks for another identity: ignored.
        let mut req = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        req.subject_alt_names.push(SanType::URI(
            "spiffe://prod/operator/root".try_into().unwrap(),
        ));
        let csr = req.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, _) = ca
            .sign_csr(
                &csr,
                Role::Operator,
                "bob",
                Some(OperatorRole::Viewer),
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let id = identity_of(&p.contents, "prod").unwrap();
        assert_eq!(id.name, "bob");
        assert_eq!(id.operator_role, Some(OperatorRole::Viewer));
        assert!(matches!(
            ca.sign_csr(
                "garbage",
                Role::Agent,
                "a",
                None,
                std::time::Duration::from_secs(60)
            ),
            Err(PkiError::BadCsr(_))
        ));
        assert_eq!(ca.pin().len(), 64);
    }
}
