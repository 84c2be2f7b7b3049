//! The agent's credentials on disk: reading certificates (validity, identity, public key),
//! generating a fresh key and CSR, CA pins, and writing files so that a crash never leaves a key
//! that does not match its certificate.
//!
//! Files (defaults under the data dir, see [`AgentConfig`]): `ca.pem`, `agent.pem`, `agent.key`
//! (mode 0600 on unix; on Windows readable only by SYSTEM, Administrators and the agent's
//! account, see [`crate::protect`]). A renewal writes `agent.key.new` and `agent.pem.new` first, then
//! renames the key and then the certificate ([`install_pair`]); [`recover_pair`] finishes or
//! discards an interrupted renewal at startup, preferring a consistent pair.
//!
//! Keys are never logged or printed: [`NewKey`] does not implement `Debug` with its contents.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::{Digest as _, Sha256};

use crate::config::AgentConfig;
use crate::protect::{CreateDirError, ProtectError, Protection};

/// Problems with certificate or key files.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a usable PEM certificate: {problem}")]
    BadCertificate { what: String, problem: String },
    #[error("cannot generate a key or CSR: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Protect(#[from] ProtectError),
    #[error(transparent)]
    Folder(#[from] CreateDirError),
}

/// Serializes swaps of the agent's certificate and key against readers in this process (a
/// connect reads both files; it must not see the new key with the old certificate).
static FILES: Mutex<()> = Mutex::new(());

/// Hold this while reading or replacing the agent's certificate and key.
pub fn files_lock() -> MutexGuard<'static, ()> {
    FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the agent needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// The first URI SAN (e.g. `spiffe://prod/agent/sync-01`), if any.
    pub identity: Option<String>,
    /// The subject public key (raw bits of the SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

pub use syncfleet_proto::digest::sha256_hex;

/// Parses a CA pin: 64 hex digits (any case), optionally prefixed with `sha256:`; blanks around
/// it and `:` separators between bytes (as some tools print fingerprints) are ignored.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let trimmed = pin.trim();
    let body = match trimmed.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
        _ => trimmed,
    };
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    let usage = "expected the 64 hex digits of a SHA-256 (optionally prefixed with sha256:), as printed by 'syncfleet tokens create'";
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("--ca-pin {pin:?} is not a SHA-256 pin; {usage}"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("--ca-pin {pin:?} is not a SHA-256 pin; {usage}"))?;
    }
    Ok(out)
}

/// `true` when `der`'s SHA-256 equals `pin`.
pub fn pin_matches(der: &[u8], pin: &[u8; 32]) -> bool {
    Sha256::digest(der).as_slice() == pin.as_slice()
}

/// The DER contents of every `CERTIFICATE` block in `pem`, in order.
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn to_utc(t: &x509_parser::time::ASN1Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Validity, identity and public key of a DER certificate.
pub fn cert_info_der(der: &[u8], what: &str) -> Result<CertInfo, CertError> {
    let bad = |problem: String| CertError::BadCertificate {
        what: what.to_string(),
        problem,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let identity = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_string()),
                _ => None,
            })
        });
    Ok(CertInfo {
        not_before: to_utc(&cert.validity().not_before),
        not_after: to_utc(&cert.validity().not_after),
        identity,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Like [`cert_info_der`] for the first certificate of a PEM text.
pub fn cert_info_pem(pem: &[u8], what: &str) -> Result<CertInfo, CertError> {
    let der =
        pem_certificates(pem)
            .into_iter()
            .next()
            .ok_or_else(|| CertError::BadCertificate {
                what: what.to_string(),
                problem: "no CERTIFICATE block".into(),
            })?;
    cert_info_der(&der, what)
}

/// Reads and parses the certificate file at `path`.
pub fn read_cert_info(path: &Path) -> Result<CertInfo, CertError> {
    let pem = std::fs::read(path).map_err(|source| CertError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    cert_info_pem(&pem, &path.display().to_string())
}

/// The SHA-256 pin (hex) of the first certificate in the PEM file at `path`.
pub fn pin_of_file(path: &Path) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    pem_certificates(&pem).first().map(|der| sha256_hex(der))
}

/// A freshly generated private key and a CSR for it. The key never leaves the agent.
pub struct NewKey {
    key: KeyPair,
    /// PEM of the certificate signing request (CN = agent name).
    pub csr_pem: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("NewKey").finish_non_exhaustive()
    }
}

impl NewKey {
    /// Generates a key (rcgen's default, ECDSA P-256) and a CSR whose subject CN is `name`.
    pub fn generate(name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(Self { key, csr_pem })
    }

    /// PEM (PKCS#8) of the private key, for writing to the key file.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The raw public key, as found in a certificate issued for it.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    /// Checks that `cert_pem` is a certificate for this key and returns what it says.
    pub fn check_issued(&self, cert_pem: &str) -> Result<CertInfo, CertError> {
        let info = cert_info_pem(cert_pem.as_bytes(), "the issued certificate")?;
        if info.public_key != self.public_key() {
            return Err(CertError::Mismatch(
                "the controller returned a certificate for a different key than the one in the CSR"
                    .into(),
            ));
        }
        Ok(info)
    }
}

/// `true` when the PEM private key `key_pem` belongs to the PEM certificate `cert_pem`.
pub fn key_matches_cert(key_pem: &str, cert_pem: &[u8]) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    match cert_info_pem(cert_pem, "certificate") {
        Ok(info) => info.public_key == key.public_key_raw(),
        Err(_) => false,
    }
}

/// `<path>` with `suffix` appended to its file name (`agent.key` → `agent.key.new`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CertError + 'a {
    move |source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` (created or truncated), flushed to disk. A `private` file is
/// restricted before its contents are written ([`crate::protect`]: mode 0600 on unix, a
/// protected DACL for SYSTEM, Administrators and the agent's account on Windows); what was done
/// is returned for the messages. A missing folder is created restricted
/// ([`crate::protect::create_private_dir`]).
fn write_synced(
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<Option<Protection>, CertError> {
    if let Some(dir) = path.parent() {
        crate::protect::create_private_dir(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io_err("write", path))?;
    // An existing file keeps its mode or DACL on open: make sure it is private.
    let protection = if private {
        crate::protect::private_file(path)?
    } else {
        None
    };
    f.write_all(contents).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("write", path))?;
    Ok(protection)
}

fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Replaces `path` atomically: writes `<path>.tmp` and renames it over `path` (a rename keeps
/// the restriction made on the temporary file); returns what [`write_synced`] did.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<Option<Protection>, CertError> {
    let tmp = sibling(path, ".tmp");
    let protection = write_synced(&tmp, contents, private)?;
    std::fs::rename(&tmp, path).map_err(io_err("replace", path))?;
    sync_dir(path);
    Ok(protection)
}

/// Installs a new certificate and key: both are written as `<file>.new` first, then the key is
/// renamed into place and then the certificate. A crash before the first rename leaves the old
/// pair; a crash between the renames leaves `agent.pem.new` matching `agent.key`, which
/// [`recover_pair`] finishes at the next start. Returns how the key is restricted (the rename
/// keeps the restriction made on `agent.key.new`).
pub fn install_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Option<Protection>, CertError> {
    let key_new = sibling(key_path, ".new");
    let cert_new = sibling(cert_path, ".new");
    let protection = write_synced(&key_new, key_pem.as_bytes(), true)?;
    write_synced(&cert_new, cert_pem.as_bytes(), false)?;
    let _guard = files_lock();
    std::fs::rename(&key_new, key_path).map_err(io_err("replace", key_path))?;
    std::fs::rename(&cert_new, cert_path).map_err(io_err("replace", cert_path))?;
    sync_dir(key_path);
    sync_dir(cert_path);
    Ok(protection)
}

/// What [`recover_pair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No leftovers of an interrupted renewal.
    Clean,
    /// An interrupted renewal was finished (the new certificate and key are in place).
    Completed,
    /// Leftovers that did not form a consistent pair were removed.
    Discarded(Vec<PathBuf>),
}

/// Finishes or undoes a renewal interrupted by a crash, so that `cert_path` and `key_path` hold
/// a matching pair whenever one can be made from the files present.
pub fn recover_pair(cert_path: &Path, key_path: &Path) -> Result<Recovery, CertError> {
    let key_new = sibling(key_path, ".new");
    let cert_new = sibling(cert_path, ".new");
    let read = |p: &Path| std::fs::read(p).ok();
    let _guard = files_lock();
    let (kn, cn) = (read(&key_new), read(&cert_new));
    if kn.is_none() && cn.is_none() {
        return Ok(Recovery::Clean);
    }
    let new_pair_ok = match (&kn, &cn) {
        (Some(k), Some(c)) => key_matches_cert(&String::from_utf8_lossy(k), c),
        _ => false,
    };
    if new_pair_ok {
        // Crash before the renames: the new pair is complete and newer; install it.
        std::fs::rename(&key_new, key_path).map_err(io_err("replace", key_path))?;
        std::fs::rename(&cert_new, cert_path).map_err(io_err("replace", cert_path))?;
        sync_dir(cert_path);
        return Ok(Recovery::Completed);
    }
    if kn.is_none()
        && let Some(c) = &cn
        && let Some(k) = read(key_path)
        && key_matches_cert(&String::from_utf8_lossy(&k), c)
    {
        // Crash between the renames: the key is already the new one.
        std::fs::rename(&cert_new, cert_path).map_err(io_err("replace", cert_path))?;
        sync_dir(cert_path);
        return Ok(Recovery::Completed);
    }
    let mut removed = Vec::new();
    for p in [key_new, cert_new] {
        if p.exists() {
            std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
            removed.push(p);
        }
    }
    Ok(Recovery::Discarded(removed))
}

/// RFC 3339 UTC, whole seconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How to come back after the certificate expired or was revoked.
fn reenroll_hint(cfg: &AgentConfig) -> String {
    let pin = pin_of_file(&cfg.ca_cert_path())
        .map(|p| format!("sha256:{p}"))
        .unwrap_or_else(|| "<pin>".into());
    format!(
        "re-enroll with 'syncfleet-agent enroll --token <new token> --ca-pin {pin}' (create the token with 'syncfleet tokens create --agent {}')",
        cfg.name
    )
}

/// Why the agent's certificate cannot be used at `now` (expired or not yet valid), as the
/// error line to log; `None` when it is within its validity or cannot be read (the connect
/// reports unreadable files itself).
pub fn unusable_reason(cfg: &AgentConfig, now: DateTime<Utc>) -> Option<String> {
    let path = cfg.cert_path();
    let info = read_cert_info(&path).ok()?;
    expiry_message(&path, &info, now, cfg)
}

/// The error line for a certificate that is expired or not yet valid at `now`.
pub fn expiry_message(
    path: &Path,
    info: &CertInfo,
    now: DateTime<Utc>,
    cfg: &AgentConfig,
) -> Option<String> {
    if now >= info.not_after {
        Some(format!(
            "agent certificate {} expired at {}; an expired agent cannot reconnect or renew: {}",
            path.display(),
            rfc3339(info.not_after),
            reenroll_hint(cfg)
        ))
    } else if now < info.not_before {
        Some(format!(
            "agent certificate {} is not valid before {} (this server's clock says {}); check the clock, or {}",
            path.display(),
            rfc3339(info.not_before),
            rfc3339(now),
            reenroll_hint(cfg)
        ))
    } else {
        None
    }
}

/// `true` for a gRPC refusal that says the caller is revoked.
pub fn is_revoked_status(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) && status.message().to_ascii_lowercase().contains("revoked")
}

/// The error line for a session (or renewal) the controller refused because this agent is
/// revoked, or `None` when `status` is another refusal.
pub fn revoked_message(status: &tonic::Status, cfg: &AgentConfig) -> Option<String> {
    is_revoked_status(status).then(|| revoked_line(status.message(), cfg))
}

/// `the controller refused agent NAME as revoked (...)` with the way back.
pub fn revoked_line(server_message: &str, cfg: &AgentConfig) -> String {
    format!(
        "the controller refused agent {} as revoked ({server_message}); a revoked agent cannot reconnect or renew: {}",
        cfg.name,
        reenroll_hint(cfg)
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer, KeyUsagePurpose, SanType,
    };

    /// A CA for tests: its certificate PEM/DER and an issuer.
    pub(crate) struct TestCa {
        pub pem: String,
        pub der: Vec<u8>,
        pub issuer: Issuer<'static, KeyPair>,
    }

    pub(crate) fn test_ca(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate (localhost, 127.0.0.1) signed by `ca`: (cert PEM, cert DER, key PEM).
    pub(crate) fn server_cert(ca: &TestCa) -> (String, Vec<u8>, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), cert.der().to_vec(), key.serialize_pem())
    }

    /// Signs `csr_pem` as an agent certificate valid from `from` for `secs` seconds.
    pub(crate) fn sign_agent(
        ca: &TestCa,
        csr_pem: &str,
        name: &str,
        from: time::OffsetDateTime,
        secs: i64,
    ) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://test/agent/{name}").try_into().unwrap(),
        )];
        csr.params.not_before = from;
        csr.params.not_after = from + time::Duration::seconds(secs);
        csr.signed_by(&ca.issuer).unwrap().pem()
    }

    #[test]
    fn pins_parse_in_every_spelling() {
        let der = b"hello";
        let hex = sha256_hex(der);
        assert_eq!(hex.len(), 64);
        for spelling in [
            hex.clone(),
            hex.to_ascii_uppercase(),
            format!("sha256:{hex}"),
            format!("SHA256:{}", hex.to_ascii_uppercase()),
            format!("  {hex}\n"),
        ] {
            let pin = parse_pin(&spelling).unwrap();
            assert!(pin_matches(der, &pin), "{spelling}");
        }
        assert!(!pin_matches(b"other", &parse_pin(&hex).unwrap()));
        let e = parse_pin("sha256:abc").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn csr_round_trips_and_carries_the_key() {
        let k = NewKey::generate("sync-01").unwrap();
        let csr = CertificateSigningRequestParams::from_pem(&k.csr_pem).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&csr.public_key),
            k.public_key()
        );
        let cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .unwrap();
        assert_eq!(cn, &rcgen::DnValue::Utf8String("sync-01".into()));
        // The key PEM parses back to the same public key; Debug never shows it.
        let again = KeyPair::from_pem(&k.key_pem()).unwrap();
        assert_eq!(again.public_key_raw(), k.public_key());
        assert_eq!(format!("{k:?}"), "NewKey { .. }");

        let ca = test_ca("ca");
        let now = time::OffsetDateTime::now_utc();
        let cert = sign_agent(&ca, &k.csr_pem, "sync-01", now, 3600);
        let info = k.check_issued(&cert).unwrap();
        assert_eq!(
            info.identity.as_deref(),
            Some("spiffe://test/agent/sync-01")
        );
        assert_eq!((info.not_after - info.not_before).num_seconds(), 3600);
        assert!(key_matches_cert(&k.key_pem(), cert.as_bytes()));
        let other = NewKey::generate("sync-01").unwrap();
        assert!(other.check_issued(&cert).is_err());
        assert!(!key_matches_cert(&other.key_pem(), cert.as_bytes()));
    }

    fn pair(ca: &TestCa) -> (String, String) {
        let k = NewKey::generate("a").unwrap();
        let cert = sign_agent(ca, &k.csr_pem, "a", time::OffsetDateTime::now_utc(), 600);
        (cert, k.key_pem())
    }

    fn consistent(dir: &Path) -> bool {
        let key = std::fs::read_to_string(dir.join("agent.key")).unwrap();
        let cert = std::fs::read(dir.join("agent.pem")).unwrap();
        key_matches_cert(&key, &cert)
    }

    #[test]
    fn install_replaces_both_and_leaves_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("agent.pem"), dir.path().join("agent.key"));
        let ca = test_ca("ca");
        let (c1, k1) = pair(&ca);
        install_pair(&c, &k, &c1, &k1).unwrap();
        assert!(consistent(dir.path()));
        let (c2, k2) = pair(&ca);
        install_pair(&c, &k, &c2, &k2).unwrap();
        assert!(consistent(dir.path()));
        assert_eq!(std::fs::read_to_string(&c).unwrap(), c2);
        assert!(!sibling(&c, ".new").exists() && !sibling(&k, ".new").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&k).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(recover_pair(&c, &k).unwrap(), Recovery::Clean);
    }

    #[test]
    fn recovery_prefers_a_consistent_pair_after_a_crash() {
        let ca = test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("agent.pem"), dir.path().join("agent.key"));
        let (c1, k1) = pair(&ca);
        let (c2, k2) = pair(&ca);

        // Crash between the renames: new key in place, new cert still in agent.pem.new.
        write_atomic(&c, c1.as_bytes(), false).unwrap();
        write_atomic(&k, k2.as_bytes(), true).unwrap();
        std::fs::write(sibling(&c, ".new"), &c2).unwrap();
        assert!(!consistent(dir.path()));
        assert_eq!(recover_pair(&c, &k).unwrap(), Recovery::Completed);
        assert!(consistent(dir.path()));
        assert_eq!(std::fs::read_to_string(&c).unwrap(), c2);

        // Crash before the renames: both .new files complete -> the new pair is installed.
        std::fs::write(sibling(&k, ".new"), &k1).unwrap();
        std::fs::write(sibling(&c, ".new"), &c1).unwrap();
        assert_eq!(recover_pair(&c, &k).unwrap(), Recovery::Completed);
        assert!(consistent(dir.path()));
        assert_eq!(std::fs::read_to_string(&c).unwrap(), c1);

        // Crash while writing: only the new key (or a torn cert) -> discarded, old pair kept.
        std::fs::write(sibling(&k, ".new"), &k2).unwrap();
        std::fs::write(sibling(&c, ".new"), "-----BEGIN CERT").unwrap();
        assert!(matches!(
            recover_pair(&c, &k).unwrap(),
            Recovery::Discarded(v) if v.len() == 2
        ));
        assert!(consistent(dir.path()));
        assert_eq!(std::fs::read_to_string(&c).unwrap(), c1);
        assert!(!sibling(&k, ".new").exists());
    }

    fn cfg_in(dir: &Path) -> AgentConfig {
        AgentConfig {
            name: "sync-01".into(),
            controller: "https://127.0.0.1:1".into(),
            data_dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn expired_certificate_is_reported_with_the_way_back() {
        let ca = test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let k = NewKey::generate("sync-01").unwrap();
        let issued = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
        let cert = sign_agent(&ca, &k.csr_pem, "sync-01", issued, 3600);
        install_pair(&cfg.cert_path(), &cfg.key_path(), &cert, &k.key_pem()).unwrap();
        std::fs::write(cfg.ca_cert_path(), &ca.pem).unwrap();
        let info = read_cert_info(&cfg.cert_path()).unwrap();

        let now = Utc::now();
        let msg = unusable_reason(&cfg, now).unwrap();
        assert_eq!(
            msg,
            format!(
                "agent certificate {} expired at {}; an expired agent cannot reconnect or renew: \
                 re-enroll with 'syncfleet-agent enroll --token <new token> --ca-pin sha256:{}' \
                 (create the token with 'syncfleet tokens create --agent sync-01')",
                cfg.cert_path().display(),
                rfc3339(info.not_after),
                sha256_hex(&ca.der)
            )
        );
        // Within the validity: nothing to say. Before it: the clock is named.
        let inside = info.not_before + chrono::TimeDelta::minutes(1);
        assert_eq!(unusable_reason(&cfg, inside), None);
        let before = info.not_before - chrono::TimeDelta::minutes(1);
        let msg = unusable_reason(&cfg, before).unwrap();
        assert!(msg.contains("is not valid before"), "{msg}");
        assert!(msg.contains("check the clock"), "{msg}");
        // No certificate at all: left to the connect, which names the missing file.
        assert_eq!(
            unusable_reason(&cfg_in(&dir.path().join("none")), now),
            None
        );
    }

    #[test]
    fn revoked_refusals_are_recognized() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg_in(dir.path());
        let e = tonic::Status::permission_denied("agent sync-01 is revoked");
        let msg = revoked_message(&e, &cfg).unwrap();
        assert!(
            msg.starts_with("the controller refused agent sync-01 as revoked (agent sync-01 is revoked); a revoked agent cannot reconnect or renew: re-enroll with 'syncfleet-agent enroll --token <new token> --ca-pin <pin>'"),
            "{msg}"
        );
        let e = tonic::Status::unauthenticated("certificate REVOKED");
        assert!(revoked_message(&e, &cfg).is_some());
        let e = tonic::Status::unavailable("revoked");
        assert!(revoked_message(&e, &cfg).is_none());
        let e = tonic::Status::permission_denied("wrong fleet");
        assert!(revoked_message(&e, &cfg).is_none());
    }
}
