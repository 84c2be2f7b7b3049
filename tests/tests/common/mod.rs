//! Harness for end-to-end tests: real binaries as child processes on loopback, real TLS, real
//! SQLite files. Waits are liveness bounds (generous, to tolerate a loaded machine), never
//! performance assertions.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "shared test harness: not every test file uses every helper; tests fail loudly"
)]

use std::collections::HashMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary, built next to the test executable by `cargo test`/`nextest`
/// (the controller and agent packages have integration tests, so cargo builds their binaries).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not found; build it with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The repository's root folder (README.md, deploy/, ...).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `BINARY dev` (`syncfleet` or `syncfleet-controller`) on addresses of its own: free gRPC and
/// HTTP ports and an ephemeral port for its directory. The README's addresses (7443, 7080,
/// 7389) belong to the README tour test alone, which runs `dev` as the README writes it.
pub fn dev_command(binary: &str) -> Command {
    let mut cmd = Command::new(bin(binary));
    cmd.args(["dev", "--ldap-listen", "127.0.0.1:0"])
        .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())]);
    cmd
}

/// Poll `f` until it returns Some, or fail after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Poll `f` until it returns Some; None once `timeout` has passed.
#[allow(
    clippy::disallowed_methods,
    reason = "tests poll real child processes from the test thread; the pause between polls blocks only it"
)]
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `syncfleet run AGENT --step S... --follow -o json` through `cli`: asserts that the CLI
/// succeeded (failing with its output) and returns the run it printed.
pub fn run_followed(
    cli: impl Fn(&[&str]) -> Output,
    agent: &str,
    steps: &[&str],
) -> serde_json::Value {
    let mut args = vec!["run", agent];
    for s in steps {
        args.extend(["--step", s]);
    }
    args.extend(["--follow", "-o", "json"]);
    let out = cli(&args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The PKI of another fleet (`syncfleet-controller init` in a fresh temporary folder): its
/// certificates chain to a CA the test fleet does not trust.
pub fn foreign_pki() -> tempfile::TempDir {
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(bin("syncfleet-controller"))
        .args(["init", "--fleet", "e2e", "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    other
}

/// The `syncfleet` CLI with the contexts file `config` (`SYNCFLEET_CONFIG`): `cli(&["agents",
/// "list"])` runs it and returns its output.
pub fn cli_with_config(config: &Path) -> impl Fn(&[&str]) -> Output + Copy + '_ {
    move |args: &[&str]| {
        Command::new(bin("syncfleet"))
            .args(args)
            .env("SYNCFLEET_CONFIG", config)
            .output()
            .unwrap()
    }
}

/// Polls `syncfleet agents list -o json` through `cli` until `n` agents are connected; returns
/// the list.
pub fn wait_agents_connected(cli: impl Fn(&[&str]) -> Output, n: usize) -> serde_json::Value {
    wait_agents_connected_within(cli, n, Duration::from_secs(90))
}

/// [`wait_agents_connected`] with its own time limit (large fleets take longer to connect).
pub fn wait_agents_connected_within(
    cli: impl Fn(&[&str]) -> Output,
    n: usize,
    timeout: Duration,
) -> serde_json::Value {
    wait_for(&format!("{n} connected agents"), timeout, || {
        let out = cli(&["agents", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let connected = v
            .as_array()?
            .iter()
            .filter(|a| a["state"] == "connected")
            .count();
        (connected == n).then_some(v)
    })
}

/// A child process whose stderr goes to a log file; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        Self::spawn_with_stdout(name, cmd, log, Stdio::null())
    }

    /// Like [`Proc::spawn`], with stdout going to `stdout` instead of nowhere.
    pub fn spawn_with_stdout(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        stdout: impl Into<Stdio>,
    ) -> Proc {
        let file = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .env("SYNCFLEET_LOG", "info,syncfleet=debug")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// SIGKILL: no chance to clean up, like a crash or power loss of the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fleet of real processes in a temporary folder.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The web console's HTTPS port.
    pub console_port: u16,
    pub controller: Option<Proc>,
    pub agents: HashMap<String, Proc>,
    pub cli_config: PathBuf,
}

impl Fleet {
    /// `syncfleet-controller init` with credentials for `agents`, and a CLI config for admin.
    pub fn init(agents: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("controller");
        let mut cmd = Command::new(bin("syncfleet-controller"));
        cmd.args(["init", "--fleet", "e2e", "--data-dir"])
            .arg(&data);
        for a in agents {
            cmd.args(["--agent", a]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grpc_port = free_port();
        let http_port = free_port();
        let console_port = free_port();
        let cli_config = dir.path().join("cli.toml");
        let pki = data.join("pki");
        std::fs::write(
            &cli_config,
            format!(
                "current_context = \"e2e\"\n[contexts.e2e]\ncontroller = \"https://127.0.0.1:{grpc_port}\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
                pki.join("ca.pem"),
                pki.join("operators/admin.pem"),
                pki.join("operators/admin.key"),
            ),
        )
        .unwrap();
        Fleet {
            dir,
            grpc_port,
            http_port,
            console_port,
            controller: None,
            agents: HashMap::new(),
            cli_config,
        }
    }

    /// A running fleet: the controller and simulated agents `agents` (the i-th simulating
    /// example server i, with durations scaled by `time_scale`), all connected.
    pub fn started(agents: &[&str], time_scale: f64) -> Fleet {
        let mut fleet = Fleet::init(agents);
        fleet.start_controller();
        for (i, a) in agents.iter().enumerate() {
            fleet.start_agent(a, i, time_scale);
        }
        fleet.wait_connected(agents);
        fleet
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("controller")
    }

    pub fn pki(&self) -> PathBuf {
        self.data_dir().join("pki")
    }

    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.pki().join("agents").join(name)
    }

    pub fn start_controller(&mut self) {
        self.start_controller_with(&[]);
    }

    pub fn start_controller_with(&mut self, extra: &[&str]) {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.dir.path().join(format!("controller-{n}.log"));
        let mut cmd = Command::new(bin("syncfleet-controller"));
        cmd.args(["serve", "--fleet", "e2e", "--data-dir"])
            .arg(self.data_dir())
            .args(["--grpc-listen", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
            .args([
                "--set",
                &format!("console.listen=127.0.0.1:{}", self.console_port),
            ])
            .args(extra);
        let proc = Proc::spawn("controller", &mut cmd, log);
        let port = self.grpc_port;
        wait_for("the controller to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        self.controller = Some(proc);
    }

    pub fn controller_mut(&mut self) -> &mut Proc {
        self.controller.as_mut().unwrap()
    }

    pub fn start_agent(&mut self, name: &str, sim_server: usize, time_scale: f64) {
        self.start_agent_program(
            Command::new(bin("syncfleet-agent")),
            name,
            sim_server,
            time_scale,
        );
    }

    /// Like [`Fleet::start_agent`], with `cmd` as the agent program (e.g. the Windows agent
    /// under Wine): `run` and the agent's settings are appended to it.
    pub fn start_agent_program(
        &mut self,
        mut cmd: Command,
        name: &str,
        sim_server: usize,
        time_scale: f64,
    ) {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.dir.path().join(format!("agent-{name}-{n}.log"));
        cmd.args(["run", "--name", name])
            .args([
                "--controller",
                &format!("https://127.0.0.1:{}", self.grpc_port),
            ])
            .arg("--data-dir")
            .arg(self.agent_dir(name))
            .args(["--sim-server", &sim_server.to_string()])
            .args(["--sim-time-scale", &time_scale.to_string()])
            .args(["--label", "env=e2e"]);
        let proc = Proc::spawn(name, &mut cmd, log);
        self.agents.insert(name.to_string(), proc);
    }

    /// Start an agent from a TOML config file: `extra` is appended after the connection
    /// settings (e.g. an `[executor]` or `[engine]` table).
    pub fn start_agent_with(&mut self, name: &str, extra: &str) {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let cfg = self.dir.path().join(format!("agent-{name}-{n}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "name = {name:?}\ncontroller = \"https://127.0.0.1:{}\"\ndata_dir = {:?}\n[labels]\nenv = \"e2e\"\n{extra}\n",
                self.grpc_port,
                self.agent_dir(name)
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("agent-{name}-{n}.log"));
        let mut cmd = Command::new(bin("syncfleet-agent"));
        cmd.args(["run", "--config"]).arg(&cfg);
        let proc = Proc::spawn(name, &mut cmd, log);
        self.agents.insert(name.to_string(), proc);
    }

    /// Start an agent from a complete TOML configuration `toml` (name, controller or
    /// controllers, data_dir, ...), written next to its log.
    pub fn start_agent_toml(&mut self, name: &str, toml: &str) {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let cfg = self.dir.path().join(format!("agent-{name}-{n}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let log = self.dir.path().join(format!("agent-{name}-{n}.log"));
        let mut cmd = Command::new(bin("syncfleet-agent"));
        cmd.args(["run", "--config"]).arg(&cfg);
        let proc = Proc::spawn(name, &mut cmd, log);
        self.agents.insert(name.to_string(), proc);
    }

    /// Run the `syncfleet` CLI against this fleet.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(&self.cli_config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run the CLI, require success, parse stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "syncfleet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "syncfleet {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Agents' states by name, or None if the controller cannot be reached.
    pub fn agent_states(&self) -> Option<HashMap<String, String>> {
        let out = self.cli(&["agents", "list", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|a| {
                    (
                        a["name"].as_str().unwrap_or_default().to_string(),
                        a["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        )
    }

    pub fn wait_connected(&self, names: &[&str]) {
        wait_for(
            &format!("agents {names:?} to be connected"),
            Duration::from_secs(60),
            || {
                let states = self.agent_states()?;
                names
                    .iter()
                    .all(|n| states.get(*n).map(String::as_str) == Some("connected"))
                    .then_some(())
            },
        );
    }

    pub fn run_json(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["runs", "show", id, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until a run reaches one of `states`; returns its JSON.
    pub fn wait_run_state(
        &self,
        id: &str,
        states: &[&str],
        timeout: Duration,
    ) -> serde_json::Value {
        wait_for(&format!("run {id} to reach {states:?}"), timeout, || {
            let run = self.run_json(id)?;
            states
                .contains(&run["state"].as_str().unwrap_or_default())
                .then_some(run)
        })
    }

    /// Whether an agent's journal (its real SQLite file) holds a run id, and if it finished.
    pub fn journal_run(&self, agent: &str, run_id: &str) -> Option<bool> {
        let path = self.agent_dir(agent).join("agent.db");
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        conn.query_row(
            "SELECT finished FROM runs WHERE run_id = ?1",
            [run_id],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|f| f == 1)
    }
}

/// Plain HTTP/1.0 GET on loopback: (status, body), or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Stdout of a CLI call as trimmed text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl Fleet {
    /// A gRPC channel to the controller over TLS, verified against the fleet's CA; with
    /// `identity` (certificate and key, PEM) as the client certificate, else without one.
    pub async fn channel(
        &self,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let ca = std::fs::read(self.pki().join("ca.pem")).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        // Bounded, so a connection the controller never answers fails the test instead of
        // hanging it.
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))
            .unwrap()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    /// Write a fleet file into the fleet's folder and return its path (for `apply -f`).
    pub fn fleet_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// A fleet (controller started with `controller_args`) whose agent `sync-01` imports 300
    /// adds into HR (2000 connectors), and the applied sequence `hr-cycle` whose sync allows at
    /// most 5 % staged adds: each run of it ends held.
    pub fn with_a_guarded_sequence(controller_args: &[&str]) -> Fleet {
        let mut fleet = Fleet::init(&["sync-01"]);
        fleet.start_controller_with(controller_args);
        let server = fleet.dir.path().join("server.toml");
        std::fs::write(
            &server,
            "seed = 3\ntime_scale = 0.01\n\
             [[mas]]\nname = \"HR\"\nma_type = \"MSSQL\"\nconnectors = 2000\nchange_rate_per_hour = 0.0\n\
             receives_exports = false\nsource_events = [{at_secs = 0.0, add = 300}]\n\
             [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 2000\nchange_rate_per_hour = 0.0\n",
        )
        .unwrap();
        fleet.start_agent_with(
            "sync-01",
            &format!(
                "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n"
            ),
        );
        fleet.wait_connected(&["sync-01"]);
        let file = fleet.fleet_file(
            "hr.yaml",
            "kind: Sequence\nname: hr-cycle\nstages:\n  - steps: [{ma: HR, profile: Delta Import}]\n  - steps: [{ma: HR, profile: Delta Sync, guard: {max_staged_adds: \"5%\", max_staged_updates: 1000}}]\n",
        );
        let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        fleet
    }
}

/// Stderr of a CLI call as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The Python of the tests' virtualenv `target/py-venv` with `packages` installed from PyPI
/// (once: `marker` in the venv records that they are). Fails, with what to install, when
/// `python3` or its `venv` module is missing (`scripts/test` installs them).
pub fn py_venv_with(packages: &[&str], marker: &str) -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let venv = target.join("py-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(marker);
    if !ready.exists() {
        if !python.exists() {
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 is needed for this test (Debian: apt-get install python3-venv)");
            assert!(
                st.success(),
                "python3 -m venv failed (install python3-venv)"
            );
        }
        let st = Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(packages)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "pip install {packages:?} failed (PyPI needed)"
        );
        std::fs::write(&ready, "").unwrap();
    }
    python
}
