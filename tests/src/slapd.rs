//! A throwaway OpenLDAP server for tests: Debian's `/usr/sbin/slapd` (package `slapd`) with its
//! own `slapd.conf` (mdb backend, suffix [`SUFFIX`], root DN [`ROOT_DN`] with password
//! [`ROOT_PASSWORD`], the core, cosine, inetorgperson and nis schemas of `/etc/ldap/schema`) and
//! database in a temporary folder, listening on a free loopback port. The server starts with
//! the suffix entry and the organizational units `ou=people` and `ou=other`, and is killed
//! when the [`TestSlapd`] is dropped. Entries are written with `ldapadd`, `ldapmodify` and
//! `ldapdelete` (package `ldap-utils`).
//!
//! [`TestSlapd::start_with_tls`] also listens for LDAPS and accepts StartTLS, with a server
//! certificate for `127.0.0.1` from a CA of its own ([`TestSlapd::ca_file`]).
//!
//! When slapd or ldap-utils are not installed, [`TestSlapd::start`] panics with the command
//! that installs them: tests that need them fail, they are never skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The root DN (no access control applies to it).
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
/// Its password.
pub const ROOT_PASSWORD: &str = "slapd-test-secret";
/// Where the users of the tests go.
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// Another branch, outside [`PEOPLE`].
pub const OTHER: &str = "ou=other,dc=example,dc=org";

const SLAPD: &str = "/usr/sbin/slapd";
const INSTALL: &str =
    "install them with `apt-get install slapd ldap-utils` (scripts/test does this)";

/// A running slapd (see the module documentation).
#[derive(Debug)]
pub struct TestSlapd {
    child: Child,
    port: u16,
    /// The LDAPS port, when started with TLS.
    tls_port: Option<u16>,
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

fn config(dir: &Path, tls: bool) -> String {
    let d = dir.display();
    let tls = if tls {
        format!(
            "TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/server.pem\nTLSCertificateKeyFile {d}/server.key\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"{tls}include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
sizelimit unlimited
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {d}/db
index objectClass eq
"#
    )
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
            Path::new(SLAPD).exists(),
            "slapd is not installed ({SLAPD} is missing): the LDAP change source tests need a real directory server; {INSTALL}"
        );
        let dir = tempfile::Builder::new()
            .prefix("sf-slapd")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        std::fs::create_dir(dir.path().join("db"))
            .unwrap_or_else(|e| panic!("cannot create the slapd database folder: {e}"));
        let conf = dir.path().join("slapd.conf");
        if tls {
            write_tls_files(dir.path());
        }
        std::fs::write(&conf, config(dir.path(), tls))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let log = dir.path().join("slapd.log");
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let mut urls = format!("ldap://127.0.0.1:{port}/");
            if let Some(p) = tls_port {
                urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
            }
            let log_file = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
            // `-d 0`: stay in the foreground (killed on drop), log nothing but errors.
            let mut child = Command::new(SLAPD)
                .arg("-f")
                .arg(&conf)
                .args(["-h", &urls, "-d", "0"])
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {SLAPD}: {e}; {INSTALL}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "slapd exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                let listening = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
                if listening(port) && tls_port.is_none_or(listening) {
                    let slapd = TestSlapd {
                        child,
                        port,
                        tls_port,
                        dir,
                    };
                    slapd.add(&format!(
                        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
                         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
                         dn: {OTHER}\nobjectClass: organizationalUnit\nou: other\n"
                    ));
                    return slapd;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!(
                        "slapd did not listen on port {port} within 20 s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                #[allow(
                    clippy::disallowed_methods,
                    reason = "`start` is synchronous like the other harnesses (no runtime needed); this short wait for the port happens once per server, before the test's own work"
                )]
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("slapd did not start: {last}");
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:<port>` of a server started with [`start_with_tls`](Self::start_with_tls).
    pub fn ldaps_url(&self) -> String {
        match self.tls_port {
            Some(p) => format!("ldaps://127.0.0.1:{p}"),
            None => panic!("this slapd was started without TLS: use TestSlapd::start_with_tls"),
        }
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

impl Drop for TestSlapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
