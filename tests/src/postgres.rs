//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package (`initdb`, `pg_ctl`
//! from `/usr/lib/postgresql/<version>/bin`), a temporary data folder, a free loopback port and
//! the unix socket in the same folder. As root it runs as the `postgres` user (PostgreSQL
//! refuses to run as root). It is stopped, and its folder removed, when the last
//! [`Arc<TestPostgres>`] handed out by [`TestPostgres::shared`] is dropped.
//!
//! A server whose test process was killed before it could stop it is stopped by the next test
//! process that starts one.
//!
//! When PostgreSQL is not installed, [`TestPostgres::shared`] panics with the command that
//! installs it: tests that need it fail, they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A running PostgreSQL server (see the module documentation).
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `Some(user)` when the server runs as another user (the test process is root).
    run_as: Option<String>,
    /// How long `initdb` plus `pg_ctl start` took.
    pub started_in: Duration,
    next_db: AtomicU32,
}

static SHARED: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());

/// The `bin` folder of the newest PostgreSQL under `/usr/lib/postgresql`.
fn find_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): the PostgreSQL store tests need a real server; install it with `apt-get install postgresql` (scripts/test does this)"
        ),
    }
}

/// Prefix of the servers' temporary folders.
const DIR_PREFIX: &str = "sf-pg";
/// File in a server's folder holding the pid of the test process that started it.
const OWNER_FILE: &str = "owner.pid";

/// Stop servers left running by test processes that were killed before they could stop them
/// (a test timeout, SIGKILL), and remove their folders.
fn stop_orphans(bin: &Path, run_as: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let is_ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        let Some(owner) = is_ours
            .then(|| std::fs::read_to_string(dir.join(OWNER_FILE)).ok())
            .flatten()
        else {
            continue;
        };
        if Path::new("/proc").join(owner.trim()).exists() {
            continue;
        }
        let _ = pg_command(bin, run_as, "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// PostgreSQL's `program` from `bin`, run as `run_as` when given (through `runuser`: the test
/// process is root, and PostgreSQL refuses to run as root).
fn pg_command(bin: &Path, run_as: Option<&str>, program: &str) -> Command {
    let path = bin.join(program);
    match run_as {
        Some(user) => {
            let mut cmd = Command::new(runuser());
            cmd.args(["-u", user, "--"]).arg(path);
            cmd
        }
        None => Command::new(path),
    }
}

/// `runuser` (util-linux) by its full path: it lives in `sbin`, which a root shell's `PATH`
/// may not include (CI runners, `su` without `-`).
fn runuser() -> PathBuf {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("runuser"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl TestPostgres {
    /// The server of this test process, started on first use.
    pub fn shared() -> Arc<TestPostgres> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pg) = slot.upgrade() {
            return pg;
        }
        let pg = Arc::new(Self::start());
        *slot = Arc::downgrade(&pg);
        pg
    }

    fn start() -> TestPostgres {
        let started = Instant::now();
        let bin = find_bin();
        let run_as = is_root().then(|| "postgres".to_string());
        stop_orphans(&bin, run_as.as_deref());
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        // Whose server this is, for `stop_orphans` of a later test process.
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("cannot write {OWNER_FILE}: {e}"));
        if let Some(user) = &run_as {
            let out = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
            assert!(
                out.status.success(),
                "cannot give {} to the {user} user: {}",
                dir.path().display(),
                text(&out)
            );
        }
        let mut pg = TestPostgres {
            bin,
            dir,
            port: 0,
            run_as,
            started_in: Duration::ZERO,
            next_db: AtomicU32::new(0),
        };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c shared_buffers=16MB",
                pg.port,
                pg.dir.path().display()
            );
            let out = pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(pg.dir.path().join("server.log"))
                .args(["-o", &opts, "start"])
                .output()
                .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
            if out.status.success() {
                pg.started_in = started.elapsed();
                return pg;
            }
            last = format!(
                "{}\n{}",
                text(&out),
                std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL program, as the server's user.
    fn command(&self, program: &str) -> Command {
        pg_command(&self.bin, self.run_as.as_deref(), program)
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database of its own (`<prefix>_<n>`); returns its URL. Its collation is
    /// ICU `en-US`, as on many production servers, not byte order: a query whose order depends
    /// on the database's collation rather than the schema's shows up in tests.
    pub fn create_database(&self, prefix: &str) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "--template=template0", "--locale=C.UTF-8"])
            .args(["--locale-provider=icu", "--icu-locale=en-US", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            text(&out)
        );
        self.url(&name)
    }

    /// Run `sql` with `psql` on the database at `url`; its unaligned output, trimmed.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(out.status.success(), "psql {sql:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate: the data is thrown away with the folder.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}
