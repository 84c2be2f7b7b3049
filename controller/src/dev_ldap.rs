//! A throwaway OpenLDAP directory: Debian's `/usr/sbin/slapd` (package `slapd`) with a
//! `slapd.conf` and an mdb database of its own in one folder, listening on loopback.
//!
//! `syncfleet dev` runs one so the example change-triggered schedule has a real directory to
//! watch; the test harness runs one per LDAP test. The database starts with the suffix entry
//! [`SUFFIX`] and the organizational units [`PEOPLE`] and [`OTHER`], loaded with `slapadd`
//! (part of the `slapd` package) before the server starts, so nothing but `slapd` is needed to
//! bring it up; changing entries afterwards takes an LDAP client such as `ldapadd` (package
//! `ldap-utils`). The root DN [`ROOT_DN`] binds with the password of [`SlapdOptions`]; no
//! access control applies to it.
//!
//! The server runs in the foreground under a small `sh` guard that holds the read end of a pipe
//! whose write end only the owner has: when the owner drops the [`Slapd`] or dies in any way
//! (Ctrl-C, SIGKILL, a test killed on timeout), the pipe closes and the guard stops slapd, so
//! no directory outlives its fleet and keeps its port. Its folder is the caller's: a database
//! already there (a dev fleet restarted with `--data-dir`) is served as it is.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The root DN.
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
/// Where people go: the branch the dev fleet's example schedule watches.
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// Another branch, outside [`PEOPLE`].
pub const OTHER: &str = "ou=other,dc=example,dc=org";

/// Debian's slapd.
pub const SLAPD: &str = "/usr/sbin/slapd";
/// Debian's slapadd (loads LDIF into a database while no server runs on it).
pub const SLAPADD: &str = "/usr/sbin/slapadd";
/// How to get both, and the `ldapadd`/`ldapmodify` clients.
pub const INSTALL_HINT: &str = "sudo apt-get install slapd ldap-utils";

/// Longest wait for a started server to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the server keeps its files, what it listens on, and the root DN's password.
#[derive(Debug, Clone)]
pub struct SlapdOptions {
    /// The server's folder: `slapd.conf`, `db/`, `slapd.log`.
    pub dir: PathBuf,
    /// Plain LDAP (and StartTLS when `tls` is set).
    pub ldap: SocketAddr,
    /// LDAPS, when `tls` is set.
    pub ldaps: Option<SocketAddr>,
    /// The root DN's password (one word: slapd.conf splits values at blanks).
    pub password: String,
    /// The server's certificate: CA, certificate and key files (PEM).
    pub tls: Option<SlapdTls>,
}

/// The PEM files slapd serves TLS with.
#[derive(Debug, Clone)]
pub struct SlapdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the directory did not start.
#[derive(Debug, thiserror::Error)]
pub enum SlapdError {
    #[error(
        "OpenLDAP's slapd is not installed ({SLAPD} is missing); install it with `{INSTALL_HINT}`"
    )]
    NotInstalled,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("slapadd could not load the directory's first entries: {0}")]
    Load(String),
    #[error("slapd exited ({status}): {log}")]
    Exited { status: String, log: String },
    #[error("slapd did not listen on {addr} within {secs} s: {log}")]
    NotListening {
        addr: SocketAddr,
        secs: u64,
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SlapdError {
    let what = what.into();
    move |source| SlapdError::Io { what, source }
}

/// Runs slapd (`"$@"`) and stops it when standard input closes, which happens when the owner
/// of the pipe drops it or exits. Background commands of a non-interactive shell read
/// `/dev/null`, hence the copy of standard input on descriptor 3. Exits with slapd's status.
const GUARD: &str = r#"exec 3<&0
"$@" </dev/null &
server=$!
( read -r _ <&3; kill "$server" 2>/dev/null ) &
watcher=$!
wait "$server"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A running slapd; stopped on drop.
#[derive(Debug)]
pub struct Slapd {
    /// The guard shell (see [`GUARD`]); its standard input is the pipe that keeps slapd alive.
    child: Child,
    ldap: SocketAddr,
    ldaps: Option<SocketAddr>,
    log: PathBuf,
}

/// Whether Debian's slapd and slapadd are installed.
pub fn is_installed() -> bool {
    Path::new(SLAPD).is_file() && Path::new(SLAPADD).exists()
}

/// `addr` when nothing listens there yet, otherwise a free port on the same address: the dev
/// fleet's directory keeps its usual address unless another dev fleet has it.
pub fn free_or_ephemeral(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    match TcpListener::bind(addr) {
        Ok(l) => l.local_addr(),
        Err(_) => TcpListener::bind(SocketAddr::new(addr.ip(), 0))?.local_addr(),
    }
}

fn config(opts: &SlapdOptions) -> String {
    let d = opts.dir.display();
    let tls = match &opts.tls {
        Some(t) => format!(
            "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
            t.ca.display(),
            t.cert.display(),
            t.key.display()
        ),
        None => String::new(),
    };
    let password = &opts.password;
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
rootpw {password}
directory {d}/db
index objectClass eq
"#
    )
}

/// The entries a new database starts with.
fn first_entries() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {OTHER}\nobjectClass: organizationalUnit\nou: other\n"
    )
}

impl Slapd {
    /// Writes the configuration, loads the first entries into a new database (an existing one
    /// is kept) and starts the server. It may not listen yet: see [`poll_ready`](Self::poll_ready)
    /// and [`start`](Self::start).
    pub fn launch(opts: &SlapdOptions) -> Result<Slapd, SlapdError> {
        if !is_installed() {
            return Err(SlapdError::NotInstalled);
        }
        let db = opts.dir.join("db");
        std::fs::create_dir_all(&db).map_err(io(format!("create {}", db.display())))?;
        let conf = opts.dir.join("slapd.conf");
        std::fs::write(&conf, config(opts)).map_err(io(format!("write {}", conf.display())))?;
        let log = opts.dir.join("slapd.log");
        if !db.join("data.mdb").exists() {
            let ldif = opts.dir.join("first-entries.ldif");
            std::fs::write(&ldif, first_entries())
                .map_err(io(format!("write {}", ldif.display())))?;
            let out = Command::new(SLAPADD)
                .arg("-f")
                .arg(&conf)
                .arg("-l")
                .arg(&ldif)
                .stdin(Stdio::null())
                .output()
                .map_err(io(format!("run {SLAPADD}")))?;
            if !out.status.success() {
                return Err(SlapdError::Load(format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        let mut urls = format!("ldap://{}/", opts.ldap);
        if let Some(addr) = opts.ldaps {
            urls.push_str(&format!(" ldaps://{addr}/"));
        }
        let log_file =
            std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        // `-d 0`: stay in the foreground (a child of the guard) and log errors only.
        let child = Command::new("sh")
            .args(["-c", GUARD, "slapd-guard", SLAPD, "-f"])
            .arg(&conf)
            .args(["-h", &urls, "-d", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(io(format!("run {SLAPD} under sh")))?;
        Ok(Slapd {
            child,
            ldap: opts.ldap,
            ldaps: opts.ldaps,
            log,
        })
    }

    /// `Ok(true)` once every address listens; an error when the server has exited.
    pub fn poll_ready(&mut self) -> Result<bool, SlapdError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(SlapdError::Exited {
                status: status.to_string(),
                log: self.log_text(),
            });
        }
        let listening =
            |a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok();
        Ok(listening(self.ldap) && self.ldaps.is_none_or(listening))
    }

    /// [`launch`](Self::launch), then waits up to [`START_TIMEOUT`] for the server to listen.
    pub async fn start(opts: &SlapdOptions) -> Result<Slapd, SlapdError> {
        let mut slapd = Self::launch(opts)?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if slapd.poll_ready()? {
                return Ok(slapd);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(SlapdError::NotListening {
                    addr: slapd.ldap,
                    secs: START_TIMEOUT.as_secs(),
                    log: slapd.log_text(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the server logged (errors only).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The plain LDAP address.
    pub fn ldap_addr(&self) -> SocketAddr {
        self.ldap
    }

    /// `ldap://ADDR`.
    pub fn url(&self) -> String {
        format!("ldap://{}", self.ldap)
    }

    /// `ldaps://ADDR`, when started with TLS.
    pub fn ldaps_url(&self) -> Option<String> {
        self.ldaps.map(|a| format!("ldaps://{a}"))
    }
}

impl Drop for Slapd {
    /// Closes the guard's pipe (the guard stops slapd and exits with it) and reaps the guard.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
