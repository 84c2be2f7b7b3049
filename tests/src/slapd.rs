//! A throwaway OpenLDAP server for tests: the dev fleet's directory
//! ([`syncfleet_controller::dev_ldap`]: Debian's `/usr/sbin/slapd`, suffix [`SUFFIX`], root DN
//! [`ROOT_DN`], the branches [`PEOPLE`] and [`OTHER`]) with the password [`ROOT_PASSWORD`], in a
//! temporary folder, listening on a free loopback port, and killed when the [`TestSlapd`] is
//! dropped. Entries are written with `ldapadd`, `ldapmodify` and `ldapdelete` (package
//! `ldap-utils`).
//!
//! [`TestSlapd::start_with_tls`] also listens for LDAPS and accepts StartTLS, with a server
//! certificate for `127.0.0.1` from a CA of its own ([`TestSlapd::ca_file`]).
//!
//! When slapd or ldap-utils are not installed, [`TestSlapd::start`] panics with the command
//! that installs them: tests that need them fail, they are never skipped.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use syncfleet_controller::dev_ldap::{self, Slapd, SlapdError, SlapdOptions, SlapdTls};
pub use syncfleet_controller::dev_ldap::{OTHER, PEOPLE, ROOT_DN, SUFFIX};

/// The root DN's password.
pub const ROOT_PASSWORD: &str = "slapd-test-secret";

const INSTALL: &str =
    "install them with `apt-get install slapd ldap-utils` (scripts/test does this)";

/// A running slapd (see the module documentation).
#[derive(Debug)]
pub struct TestSlapd {
    slapd: Slapd,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), written to `dir`.
fn write_tls_files(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let fail = |e: rcgen::Error| -> ! { panic!("cannot make the test TLS certificates: {e}") };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap_or_else(|e| fail(e));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    }
}

impl TestSlapd {
    /// Start a server of its own (each caller gets a fresh, empty directory).
    pub fn start() -> TestSlapd {
        Self::start_inner(false)
    }

    /// [`start`](Self::start), also listening for LDAPS ([`ldaps_url`](Self::ldaps_url)) and
    /// accepting StartTLS on [`url`](Self::url).
    pub fn start_with_tls() -> TestSlapd {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> TestSlapd {
        assert!(
            dev_ldap::is_installed(),
            "slapd is not installed ({} is missing): the LDAP change source tests need a real directory server; {INSTALL}",
            dev_ldap::SLAPD
        );
        let dir = tempfile::Builder::new()
            .prefix("sf-slapd")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        let tls_files = tls.then(|| {
            write_tls_files(dir.path());
            SlapdTls {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join("server.pem"),
                key: dir.path().join("server.key"),
            }
        });
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let opts = SlapdOptions {
                dir: dir.path().to_path_buf(),
                ldap: loopback(free_port()),
                ldaps: tls.then(|| loopback(free_port())),
                password: ROOT_PASSWORD.to_string(),
                tls: tls_files.clone(),
            };
            let mut slapd =
                Slapd::launch(&opts).unwrap_or_else(|e| panic!("slapd did not start: {e}"));
            let deadline = Instant::now() + dev_ldap::START_TIMEOUT;
            loop {
                match slapd.poll_ready() {
                    Ok(true) => return TestSlapd { slapd, dir },
                    Ok(false) if Instant::now() > deadline => {
                        last = format!(
                            "slapd did not listen on {} within {} s: {}",
                            opts.ldap,
                            dev_ldap::START_TIMEOUT.as_secs(),
                            slapd.log_text()
                        );
                        break;
                    }
                    Ok(false) => {}
                    Err(e @ SlapdError::Exited { .. }) => {
                        last = e.to_string();
                        break;
                    }
                    Err(e) => panic!("slapd did not start: {e}"),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("slapd did not start: {last}");
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.slapd.url()
    }

    /// `ldaps://127.0.0.1:<port>` of a server started with [`start_with_tls`](Self::start_with_tls).
    pub fn ldaps_url(&self) -> String {
        self.slapd.ldaps_url().unwrap_or_else(|| {
            panic!("this slapd was started without TLS: use TestSlapd::start_with_tls")
        })
    }

    /// The CA certificate (PEM) the server's certificate chains to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Run an ldap-utils tool as the root DN with `input` on stdin; panics with its output
    /// when it fails.
    fn tool(&self, program: &str, args: &[&str], input: &str) {
        let mut child = Command::new(program)
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("cannot write to {program}: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot wait for {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Add the entries of `ldif`.
    pub fn add(&self, ldif: &str) {
        self.tool("ldapadd", &[], ldif);
    }

    /// Apply the changes of `ldif` (`changetype: modify` records and the like).
    pub fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif);
    }

    /// Delete the entry `dn`.
    pub fn delete(&self, dn: &str) {
        self.tool("ldapdelete", &[dn], "");
    }

    /// Add an inetOrgPerson `uid=<uid>` under `parent`; returns its DN.
    pub fn add_person(&self, parent: &str, uid: &str) -> String {
        let dn = format!("uid={uid},{parent}");
        self.add(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
        ));
        dn
    }

    /// Replace one attribute of `dn` with `value`.
    pub fn replace(&self, dn: &str, attribute: &str, value: &str) {
        self.modify(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: {attribute}\n{attribute}: {value}\n"
        ));
    }
}
