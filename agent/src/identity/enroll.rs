//! `syncfleet-agent enroll`: join the fleet with a one-time token (in the manner of kubeadm
//! `--discovery-token-ca-cert-hash`, Teleport join tokens).
//!
//! 1. **Pin the CA.** A raw TLS handshake with the controller, verified by [`PinVerifier`]: one
//!    certificate the controller presents (its server certificate PEM carries `[leaf, CA]`) must
//!    have the SHA-256 given with `--ca-pin`, and the leaf must verify against that certificate
//!    as the only root, for the URL's host (or `tls.server_name`). Nothing is sent before this.
//! 2. **Enroll.** The key is generated here and never leaves the host; `EnrollService.Enroll`
//!    gets the token, the agent name and a CSR over TLS whose only root is the pinned CA, with no
//!    client certificate.
//! 3. **Store.** `ca.pem`, then `agent.key` and `agent.pem` (owner-only key; written
//!    `.new` + rename, key first), and `enrolled.toml` with the labels the token assigned. The
//!    agent adds those labels to its Hello ([`with_enrolled_labels`]; they win over the config's)
//!    and takes its name and controller URL from it when none are configured
//!    ([`apply_enrolled_defaults`]).
//!
//! The controller's refusals (token reused, expired, bound to another name, rate limited) are
//! shown verbatim. The token itself is never logged or stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use syncfleet_proto::v1::{EnrollRequest, enroll_service_client::EnrollServiceClient};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::config::AgentConfig;
use crate::identity::files::{self, CertError, NewKey};
use crate::protect::Protection;

/// TCP + TLS deadline, and the deadline of the Enroll call.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the file holding what the enrollment assigned, in the data dir.
pub const ENROLLED_FILE: &str = "enrolled.toml";

/// Why enrolling failed. `Display` is the one line after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A malformed argument (pin, URL).
    #[error("{0}")]
    Usage(String),
    #[error(
        "the controller's CA does not match --ca-pin (controller presented sha256:{presented}); check the pin printed by 'syncfleet tokens create'"
    )]
    PinMismatch { presented: String },
    #[error(
        "the controller's certificate does not verify against the pinned CA: {cause}; check --controller (the host must be in the controller's certificate) or tls.server_name"
    )]
    Untrusted { cause: String },
    #[error("cannot reach controller {url}: {cause}")]
    Connect { url: String, cause: String },
    /// The controller refused: its message verbatim (and the request id when it sent one).
    #[error("{}", refusal_line(.0))]
    Refused(tonic::Status),
    #[error(
        "the controller returned a CA certificate other than the pinned one; nothing was written"
    )]
    CaChanged,
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: String },
}

/// The controller's refusal message verbatim, with ` (request ID)` when it sent one.
fn refusal_line(s: &tonic::Status) -> String {
    let mut line = if s.message().is_empty() {
        format!("the controller refused the enrollment ({:?})", s.code())
    } else {
        s.message().to_string()
    };
    if let Some(id) = crate::identity::renew::request_id(s) {
        line.push_str(&format!(" (request {id})"));
    }
    line
}

/// What [`PinVerifier`] concluded about the chain the controller presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// The certificate with the pinned hash (DER), which the leaf verified against.
    Accepted(Vec<u8>),
    /// No presented certificate has the pinned hash; the hash (hex) of the last one presented
    /// (the CA when the controller sends its chain).
    Mismatch(String),
    /// The pinned certificate was presented, but the leaf does not verify against it.
    Untrusted(String),
}

/// A rustls server certificate verifier that trusts exactly the presented certificate whose
/// SHA-256 equals the pin, and only for a leaf that verifies against it (delegating to
/// [`WebPkiServerVerifier`] with that certificate as the only root).
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    outcome: Mutex<Option<PinOutcome>>,
}

impl PinVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            outcome: Mutex::new(None),
        }
    }

    /// The last verification's outcome.
    pub fn outcome(&self) -> Option<PinOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, o: PinOutcome) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let Some(pinned) = presented
            .iter()
            .find(|c| files::pin_matches(c.as_ref(), &self.pin))
        else {
            let shown = presented
                .last()
                .map(|c| files::sha256_hex(c.as_ref()))
                .unwrap_or_default();
            self.record(PinOutcome::Mismatch(shown));
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        };
        let mut roots = RootCertStore::empty();
        let untrusted = |cause: String| {
            self.record(PinOutcome::Untrusted(cause.clone()));
            rustls::Error::General(cause)
        };
        roots
            .add((*pinned).clone().into_owned())
            .map_err(|e| untrusted(format!("the pinned certificate is not a usable CA: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| untrusted(e.to_string()))?;
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(v) => {
                self.record(PinOutcome::Accepted(pinned.as_ref().to_vec()));
                Ok(v)
            }
            Err(e) => {
                self.record(PinOutcome::Untrusted(e.to_string()));
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Host and port of an `https://HOST[:PORT]` URL (IPv6 without brackets).
pub fn host_port(url: &str) -> Result<(String, u16), EnrollError> {
    let bad = |why: &str| {
        EnrollError::Usage(format!(
            "invalid controller URL {url:?}: {why}; use https://HOST:PORT"
        ))
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("not https"));
    }
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    Ok((host.to_string(), uri.port_u16().unwrap_or(443)))
}

/// Connects to `url` and returns the DER of the controller's CA certificate, accepted only as
/// described in [`PinVerifier`]. `server_name` overrides the URL's host for verification.
pub async fn fetch_ca(
    url: &str,
    server_name: Option<&str>,
    pin: &[u8; 32],
) -> Result<Vec<u8>, EnrollError> {
    let (host, port) = host_port(url)?;
    let name = server_name.unwrap_or(&host).to_string();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| EnrollError::Usage(format!("{name:?} is not a valid TLS server name")))?;
    let verifier = Arc::new(PinVerifier::new(*pin));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Usage(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect_err = |cause: String| EnrollError::Connect {
        url: url.to_string(),
        cause,
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS handshake failed: {e}")))
    };
    let result = tokio::time::timeout(TIMEOUT, handshake).await;
    // The verifier's verdict decides, whatever happened after it (the controller may, for
    // instance, close the connection because no client certificate was sent).
    match verifier.outcome() {
        Some(PinOutcome::Accepted(der)) => Ok(der),
        Some(PinOutcome::Mismatch(presented)) => Err(EnrollError::PinMismatch { presented }),
        Some(PinOutcome::Untrusted(cause)) => Err(EnrollError::Untrusted { cause }),
        None => match result {
            Err(_) => Err(connect_err(format!(
                "no TLS handshake within {}s",
                TIMEOUT.as_secs()
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Err(connect_err(
                "the controller presented no certificate".into(),
            )),
        },
    }
}

/// What `enrolled.toml` records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnrolledFile {
    /// The identity in the certificate, e.g. `spiffe://prod/agent/sync-01`.
    pub identity: String,
    /// Agent name the token was created for.
    pub name: String,
    /// Controller URL used to enroll.
    pub controller: String,
    /// When the enrollment happened (RFC 3339).
    pub enrolled_at: String,
    /// Labels the token assigned; they win over `labels` in the configuration.
    pub labels: BTreeMap<String, String>,
}

/// Where `enroll` writes `enrolled.toml`: the data dir.
pub fn enrolled_path(cfg: &AgentConfig) -> PathBuf {
    cfg.data_dir.join(ENROLLED_FILE)
}

/// Where the agent looks for `enrolled.toml`: next to its certificate first (the record
/// describes that certificate, wherever `tls.cert` puts it), then in the data dir.
pub fn enrolled_candidates(cfg: &AgentConfig) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = cfg.cert_path().parent() {
        v.push(dir.join(ENROLLED_FILE));
    }
    let in_data = enrolled_path(cfg);
    if !v.contains(&in_data) {
        v.push(in_data);
    }
    v
}

/// Reads the enrollment record of this configuration (see [`enrolled_candidates`]); `None`
/// when there is none (never enrolled, or credentials provisioned by other means). An
/// unreadable file is logged and ignored.
pub fn load_enrolled(cfg: &AgentConfig) -> Option<EnrolledFile> {
    let path = enrolled_candidates(cfg).into_iter().find(|p| p.exists())?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the enrollment record");
            return None;
        }
    };
    match toml::from_str(&text) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an invalid enrollment record");
            None
        }
    }
}

/// `cfg` with the labels assigned at enrollment added (they win over configured labels).
pub fn with_enrolled_labels(mut cfg: AgentConfig) -> AgentConfig {
    if let Some(e) = load_enrolled(&cfg) {
        cfg.labels.extend(e.labels);
    }
    cfg
}

/// Fills an empty `name` or `controller` from `enrolled.toml`, so `syncfleet-agent run
/// --data-dir DIR` works right after `enroll`.
pub fn apply_enrolled_defaults(cfg: &mut AgentConfig) {
    if !cfg.name.is_empty() && !cfg.controller.is_empty() {
        return;
    }
    if let Some(e) = load_enrolled(cfg) {
        if cfg.name.is_empty() {
            cfg.name = e.name;
        }
        if cfg.controller.is_empty() {
            cfg.controller = e.controller;
        }
    }
}

/// The result of a successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub identity: String,
    pub not_after: DateTime<Utc>,
    pub labels: BTreeMap<String, String>,
    pub ca_pin: String,
    /// Files written, in order, with how each private one is restricted (`None` for a public
    /// file).
    pub files: Vec<(PathBuf, Option<Protection>)>,
}

impl Enrolled {
    /// What is printed on success.
    pub fn report(&self) -> String {
        let mut s = format!(
            "enrolled as {} (certificate valid until {}; renewed automatically while the agent runs)\n",
            self.identity,
            files::rfc3339(self.not_after)
        );
        for (path, protection) in &self.files {
            match protection {
                Some(p) => s.push_str(&format!("wrote {} (private key, {p})\n", path.display())),
                None => s.push_str(&format!("wrote {}\n", path.display())),
            }
        }
        if self.labels.is_empty() {
            s.push_str("labels assigned by the token: none\n");
        } else {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("labels assigned by the token: {}\n", l.join(",")));
        }
        s.push_str(&format!("controller CA: sha256:{}\n", self.ca_pin));
        s
    }
}

fn write_err(path: &Path) -> impl FnOnce(CertError) -> EnrollError + '_ {
    move |e| EnrollError::Write {
        path: path.to_path_buf(),
        cause: e.to_string(),
    }
}

/// Enrolls the agent named in `cfg` with the controller at `cfg.controller` (see the module
/// docs) and writes its credentials where `cfg` says.
pub async fn enroll(cfg: &AgentConfig, token: &str, ca_pin: &str) -> Result<Enrolled, EnrollError> {
    let pin = files::parse_pin(ca_pin).map_err(EnrollError::Usage)?;
    let server_name = cfg.tls.server_name.as_deref();
    let ca_der = fetch_ca(&cfg.controller, server_name, &pin).await?;
    let new_key = NewKey::generate(&cfg.name)?;

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.clone()))
        .map_err(|e| EnrollError::Untrusted {
            cause: e.to_string(),
        })?;
    let mut tls = ClientTlsConfig::new()
        .trust_anchors(roots.roots)
        .timeout(TIMEOUT);
    if let Some(name) = server_name {
        tls = tls.domain_name(name.to_string());
    }
    let connect_err = |cause: String| EnrollError::Connect {
        url: cfg.controller.clone(),
        cause,
    };
    let channel = Endpoint::from_shared(cfg.controller.clone())
        .map_err(|e| EnrollError::Usage(format!("invalid controller URL: {e}")))?
        .tls_config(tls)
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(TIMEOUT)
        .connect()
        .await
        .map_err(|e| connect_err(error_chain(&e)))?;
    let mut client = EnrollServiceClient::new(channel);
    let call = client.enroll(EnrollRequest {
        token: token.to_string(),
        agent: cfg.name.clone(),
        csr_pem: new_key.csr_pem.clone(),
    });
    let resp = tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| connect_err(format!("no answer within {}s", TIMEOUT.as_secs())))?
        .map_err(EnrollError::Refused)?
        .into_inner();
    let info = new_key.check_issued(&resp.cert_pem)?;
    if files::pem_certificates(resp.ca_pem.as_bytes()).first() != Some(&ca_der) {
        return Err(EnrollError::CaChanged);
    }

    let (ca_path, cert_path, key_path) = (cfg.ca_cert_path(), cfg.cert_path(), cfg.key_path());
    files::write_atomic(&ca_path, resp.ca_pem.as_bytes(), false).map_err(write_err(&ca_path))?;
    let key_protection =
        files::install_pair(&cert_path, &key_path, &resp.cert_pem, &new_key.key_pem())
            .map_err(write_err(&cert_path))?;
    let identity = if resp.identity.is_empty() {
        info.identity.clone().unwrap_or_default()
    } else {
        resp.identity.clone()
    };
    let labels: BTreeMap<String, String> = resp.labels.into_iter().collect();
    let record = EnrolledFile {
        identity: identity.clone(),
        name: cfg.name.clone(),
        controller: cfg.controller.clone(),
        enrolled_at: files::rfc3339(Utc::now()),
        labels: labels.clone(),
    };
    let text = format!(
        "# Written by 'syncfleet-agent enroll'. The labels were assigned by the enrollment token\n# and win over `labels` in the agent's configuration.\n{}",
        toml::to_string(&record).map_err(|e| EnrollError::Write {
            path: enrolled_path(cfg),
            cause: e.to_string(),
        })?
    );
    let enrolled = enrolled_path(cfg);
    files::write_atomic(&enrolled, text.as_bytes(), false).map_err(write_err(&enrolled))?;
    tracing::info!(identity = %identity, not_after = %files::rfc3339(info.not_after), "enrolled");
    Ok(Enrolled {
        identity,
        not_after: info.not_after,
        labels,
        ca_pin: files::sha256_hex(&ca_der),
        files: vec![
            (ca_path, None),
            (cert_path, None),
            (key_path, key_protection),
            (enrolled, None),
        ],
    })
}

/// All messages of an error chain, joined with `: ` (tonic's transport errors say little at
/// the top).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]
mod tests {
    use super::*;
    use crate::identity::files::tests::{TestCa, server_cert, sign_agent, test_ca};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn pin_of(der: &[u8]) -> [u8; 32] {
        files::parse_pin(&files::sha256_hex(der)).unwrap()
    }

    fn verify(v: &PinVerifier, leaf: &[u8], chain: &[&[u8]], name: &str) -> bool {
        let inter: Vec<CertificateDer<'_>> =
            chain.iter().map(|d| CertificateDer::from(*d)).collect();
        v.verify_server_cert(
            &CertificateDer::from(leaf),
            &inter,
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    #[test]
    fn verifier_accepts_only_the_pinned_ca_for_the_right_name() {
        let ca = test_ca("ca");
        let (_, leaf, _) = server_cert(&ca);
        let v = PinVerifier::new(pin_of(&ca.der));
        assert!(verify(&v, &leaf, &[&ca.der], "localhost"));
        assert_eq!(v.outcome(), Some(PinOutcome::Accepted(ca.der.clone())));
        assert!(verify(&v, &leaf, &[&ca.der], "127.0.0.1"));

        // Wrong pin: refused, and the presented CA's hash is reported.
        let other = test_ca("other");
        let v = PinVerifier::new(pin_of(&other.der));
        assert!(!verify(&v, &leaf, &[&ca.der], "localhost"));
        assert_eq!(
            v.outcome(),
            Some(PinOutcome::Mismatch(files::sha256_hex(&ca.der)))
        );

        // The pinned CA is presented but did not sign the leaf (a MITM relaying the real CA).
        let (_, rogue_leaf, _) = server_cert(&other);
        let v = PinVerifier::new(pin_of(&ca.der));
        assert!(!verify(&v, &rogue_leaf, &[&ca.der], "localhost"));
        assert!(matches!(v.outcome(), Some(PinOutcome::Untrusted(_))));

        // Right CA, wrong name.
        let v = PinVerifier::new(pin_of(&ca.der));
        assert!(!verify(&v, &leaf, &[&ca.der], "controller.example.com"));
        assert!(matches!(v.outcome(), Some(PinOutcome::Untrusted(_))));

        // Pinning the leaf itself does not make it a trust anchor.
        let v = PinVerifier::new(pin_of(&leaf));
        assert!(!verify(&v, &leaf, &[&ca.der], "localhost"));
    }

    /// A TLS server on 127.0.0.1 presenting `[leaf, ca]`; answers every handshake then closes.
    async fn tls_server(ca: &TestCa) -> u16 {
        let (_, leaf, key) = server_cert(ca);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            rcgen::KeyPair::from_pem(&key).unwrap().serialize_der(),
        ));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(leaf),
                CertificateDer::from(ca.der.clone()),
            ],
            key,
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn handshake_with_a_real_server_checks_the_pin() {
        let ca = test_ca("ca");
        let port = tls_server(&ca).await;
        let url = format!("https://127.0.0.1:{port}");
        let got = fetch_ca(&url, None, &pin_of(&ca.der)).await.unwrap();
        assert_eq!(got, ca.der);
        let got = fetch_ca(&format!("https://localhost:{port}"), None, &pin_of(&ca.der))
            .await
            .unwrap();
        assert_eq!(got, ca.der);

        let wrong = test_ca("wrong");
        let e = fetch_ca(&url, None, &pin_of(&wrong.der)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the controller's CA does not match --ca-pin (controller presented sha256:{}); check the pin printed by 'syncfleet tokens create'",
                files::sha256_hex(&ca.der)
            )
        );
        let e = fetch_ca(&url, Some("elsewhere.example.com"), &pin_of(&ca.der))
            .await
            .unwrap_err();
        assert!(matches!(e, EnrollError::Untrusted { .. }), "{e}");
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1".to_string(), 7443)
        );
        assert_eq!(
            host_port("https://[::1]:7443").unwrap(),
            ("::1".to_string(), 7443)
        );
        assert_eq!(
            host_port("https://c.example.com").unwrap(),
            ("c.example.com".to_string(), 443)
        );
        assert!(host_port("http://c:1").is_err());
        assert!(host_port("c:1").is_err());
    }

    #[test]
    fn enrolled_labels_win_and_fill_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        cfg.labels.insert("env".into(), "test".into());
        cfg.labels.insert("site".into(), "a".into());
        // No record: unchanged.
        assert_eq!(with_enrolled_labels(cfg.clone()).labels, cfg.labels);
        let record = EnrolledFile {
            identity: "spiffe://prod/agent/s1".into(),
            name: "s1".into(),
            controller: "https://c:1".into(),
            enrolled_at: "2025-01-01T00:00:00Z".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
        };
        std::fs::write(enrolled_path(&cfg), toml::to_string(&record).unwrap()).unwrap();
        let merged = with_enrolled_labels(cfg.clone());
        assert_eq!(merged.labels["env"], "prod");
        assert_eq!(merged.labels["site"], "a");
        apply_enrolled_defaults(&mut cfg);
        assert_eq!(
            (cfg.name.as_str(), cfg.controller.as_str()),
            ("s1", "https://c:1")
        );
        cfg.name = "explicit".into();
        apply_enrolled_defaults(&mut cfg);
        assert_eq!(cfg.name, "explicit");

        // Credentials enrolled into another folder and named by tls.*: the record next to the
        // certificate is the one that counts.
        let elsewhere = dir.path().join("enrolled");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let mut moved = record.clone();
        moved.labels.insert("role".into(), "staging".into());
        std::fs::write(
            elsewhere.join(ENROLLED_FILE),
            toml::to_string(&moved).unwrap(),
        )
        .unwrap();
        cfg.tls.cert = Some(elsewhere.join("agent.pem"));
        let merged = with_enrolled_labels(cfg.clone());
        assert_eq!(merged.labels["role"], "staging");
    }

    mod fake {
        use super::*;
        use syncfleet_proto::v1::enroll_service_server::{EnrollService, EnrollServiceServer};
        use syncfleet_proto::v1::{CertificateResponse, EnrollRequest};

        pub struct Svc {
            pub ca: TestCa,
            pub used: Mutex<bool>,
        }

        #[tonic::async_trait]
        impl EnrollService for Svc {
            async fn enroll(
                &self,
                req: tonic::Request<EnrollRequest>,
            ) -> Result<tonic::Response<CertificateResponse>, tonic::Status> {
                let r = req.into_inner();
                if r.token != "abc.secret" {
                    let mut s = tonic::Status::permission_denied(
                        "token abc was already used at 2025-01-01T00:00:00Z; create a new one",
                    );
                    s.metadata_mut()
                        .insert("x-request-id", "req-7".parse().unwrap());
                    return Err(s);
                }
                let mut used = self.used.lock().unwrap();
                if *used {
                    return Err(tonic::Status::permission_denied(
                        "token abc was already used",
                    ));
                }
                *used = true;
                let cert = sign_agent(
                    &self.ca,
                    &r.csr_pem,
                    &r.agent,
                    time::OffsetDateTime::now_utc(),
                    86_400,
                );
                Ok(tonic::Response::new(CertificateResponse {
                    cert_pem: cert,
                    ca_pem: self.ca.pem.clone(),
                    not_after: None,
                    identity: format!("spiffe://test/agent/{}", r.agent),
                    labels: [("env".to_string(), "prod".to_string())].into(),
                }))
            }
        }

        pub async fn serve(ca: TestCa) -> (u16, String) {
            let (leaf_pem, _, key_pem) = server_cert(&ca);
            let ca_pem = ca.pem.clone();
            let identity =
                tonic::transport::Identity::from_pem(format!("{leaf_pem}{ca_pem}"), key_pem);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let svc = EnrollServiceServer::new(Svc {
                ca,
                used: Mutex::new(false),
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .unwrap()
                    .add_service(svc)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            (port, ca_pem)
        }
    }

    #[tokio::test]
    async fn enroll_writes_a_consistent_identity_and_reports_refusals_verbatim() {
        let ca = test_ca("ca");
        let pin = files::sha256_hex(&ca.der);
        let (port, ca_pem) = fake::serve(ca).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            name: "sync-01".into(),
            controller: format!("https://127.0.0.1:{port}"),
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        let done = enroll(
            &cfg,
            "abc.secret",
            &format!("SHA256:{}", pin.to_uppercase()),
        )
        .await
        .unwrap();
        assert_eq!(done.identity, "spiffe://test/agent/sync-01");
        assert_eq!(std::fs::read_to_string(cfg.ca_cert_path()).unwrap(), ca_pem);
        let key = std::fs::read_to_string(cfg.key_path()).unwrap();
        assert!(files::key_matches_cert(
            &key,
            &std::fs::read(cfg.cert_path()).unwrap()
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(cfg.key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let record = load_enrolled(&cfg).unwrap();
        assert_eq!(record.labels["env"], "prod");
        assert_eq!(record.identity, done.identity);
        let report = done.report();
        assert!(
            report.contains("enrolled as spiffe://test/agent/sync-01"),
            "{report}"
        );
        assert!(
            report.contains(&format!("wrote {}", cfg.key_path().display())),
            "{report}"
        );
        // The message states what was done to the key on this OS.
        #[cfg(unix)]
        assert!(
            report.contains(&format!(
                "wrote {} (private key, mode 0600, owner only)\n",
                cfg.key_path().display()
            )),
            "{report}"
        );
        assert!(
            report.contains(&format!("wrote {}\n", cfg.cert_path().display())),
            "{report}"
        );
        assert!(!report.contains("abc.secret"));
        // The written files are what the session uses.
        crate::identity::channel::client_tls(&cfg).unwrap();

        // Refusals: the server's message verbatim, with its request id.
        let e = enroll(&cfg, "abc.secret", &pin).await.unwrap_err();
        assert_eq!(e.to_string(), "token abc was already used");
        let e = enroll(&cfg, "abc.other", &pin).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "token abc was already used at 2025-01-01T00:00:00Z; create a new one (request req-7)"
        );
        // A wrong pin fails before anything is sent or written.
        let e = enroll(&cfg, "abc.secret", &"0".repeat(64))
            .await
            .unwrap_err();
        assert!(matches!(e, EnrollError::PinMismatch { .. }), "{e}");
        let e = enroll(&cfg, "abc.secret", "nonsense").await.unwrap_err();
        assert!(matches!(e, EnrollError::Usage(_)), "{e}");
    }
}
