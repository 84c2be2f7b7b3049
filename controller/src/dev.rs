//! `syncfleet dev` (also `syncfleet-controller dev`): a whole fleet in one process.
//!
//! The controller runs with its own CA, a temporary store (unless `--data-dir`), and N
//! in-process agents on simulated engines, each a different server, connected over real
//! loopback gRPC with mTLS — the same code paths as production. A `dev` context is written into
//! the CLI config so `syncfleet` works from another terminal.
//!
//! Both binaries accept `dev` so that the README's first command (`cargo run -p
//! syncfleet-controller -- dev`, which runs the package's default binary, the `syncfleet` CLI)
//! leaves the CLI built next to it: the tour's `syncfleet ...` commands then work as written.
//! The banner (how to reach the fleet) goes to stdout; logs go to stderr, so `--log-format json`
//! stays one JSON object per stderr line.
//!
//! This module, and the `dev` subcommands of both binaries, exist only with the `dev` cargo
//! feature (on by default): it is the one part of the controller that links the agent crate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use syncfleet_agent::AgentConfig;
use syncfleet_agent::config::{Credential, EngineConfig, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::auth::{console_login, init};
use crate::config::ControllerConfig;
use crate::contexts::{Context, default_config_path, upsert_context};
use crate::dev_ldap;
use crate::server::{self, ServeError};

/// `dev`'s command-line arguments, shared by the `syncfleet` and `syncfleet-controller` binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of simulated agents (sync servers), 1 to 5000.
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Keep the store and credentials here instead of a temporary folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub grpc_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,
    /// The web console's HTTPS address; when its port is taken (another dev fleet), an
    /// ephemeral port is used instead
    #[arg(long, default_value = "127.0.0.1:7444")]
    pub console_listen: SocketAddr,
    /// The console's link to a run's trace: a URL containing `{trace_id}`, e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` (Jaeger); the same setting as a controller's
    /// `console.trace_url`
    #[arg(long, env = "SYNCFLEET_CONSOLE__TRACE_URL")]
    pub console_trace_url: Option<String>,
    /// CLI config file to write the `dev` context into (default: the CLI's own default).
    #[arg(long)]
    pub cli_config: Option<PathBuf>,
    /// Simulated engine duration multiplier (1.0 = realistic).
    #[arg(long, default_value_t = 0.05)]
    pub time_scale: f64,
    /// Do not load the example fleet (sequences and schedules).
    #[arg(long)]
    pub no_example_fleet: bool,
    /// Address of the fleet's own OpenLDAP directory, which the example schedule
    /// `people-on-change` watches (needs Debian's slapd); when its port is taken, an ephemeral
    /// port is used instead
    #[arg(long, default_value = "127.0.0.1:7389")]
    pub ldap_listen: SocketAddr,
    /// Do not start the OpenLDAP directory (nor load `people-on-change`).
    #[arg(long)]
    pub no_ldap: bool,
    #[arg(long, env = "SYNCFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl DevArgs {
    /// The options for [`run_dev`]; `cli_config` falls back to `default_cli_config` (the CLI's
    /// global `--config`) when `--cli-config` is not given.
    pub fn options(&self, default_cli_config: Option<&Path>) -> DevOptions {
        DevOptions {
            agents: self.agents,
            data_dir: self.data_dir.clone(),
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            console_listen: self.console_listen,
            console_trace_url: self.console_trace_url.clone(),
            cli_config: self
                .cli_config
                .clone()
                .or_else(|| default_cli_config.map(Path::to_path_buf)),
            time_scale: self.time_scale,
            example_fleet: !self.no_example_fleet,
            ldap_listen: (!self.no_ldap).then_some(self.ldap_listen),
        }
    }
}

/// Runs `dev` as a process: logging, a multi-threaded runtime, Ctrl-C/SIGTERM to stop. Returns
/// the process exit code.
pub fn main(args: &DevArgs, default_cli_config: Option<&Path>) -> ExitCode {
    // `OTEL_*` settings the exporter cannot follow are configuration errors, like a bad key.
    if let Err(e) = syncfleet_proto::telemetry::check_env() {
        return syncfleet_proto::process::config_error(&e);
    }
    let _telemetry = crate::telemetry::init(&args.log_format);
    let rt = match syncfleet_proto::process::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let shutdown = syncfleet_proto::shutdown::shutdown_on_signals();
        match run_dev(args.options(default_cli_config), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Options of `dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub agents: usize,
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// The web console's address (an ephemeral port when it is taken).
    pub console_listen: SocketAddr,
    /// The console's trace link template (`console.trace_url`).
    pub console_trace_url: Option<String>,
    /// CLI config file to write the `dev` context into; default: the CLI's default path.
    pub cli_config: Option<PathBuf>,
    /// Simulated engine duration multiplier.
    pub time_scale: f64,
    /// Load the example fleet (`deploy/examples/fleet.yaml`): sequences and schedules.
    pub example_fleet: bool,
    /// Where the fleet's own OpenLDAP directory listens (an ephemeral port when it is taken);
    /// `None`: no directory.
    pub ldap_listen: Option<SocketAddr>,
}

/// The example fleet file shipped in `deploy/examples/`, compiled in so `dev` works from any
/// folder.
pub const EXAMPLE_FLEET: &str = include_str!("../../deploy/examples/fleet.yaml");

/// The example fleet as API documents.
pub fn example_documents() -> Result<Vec<syncfleet_proto::v1::FleetDocument>, DevError> {
    documents_of("deploy/examples/fleet.yaml", EXAMPLE_FLEET)
}

/// The change-triggered example schedule (`deploy/examples/on-change.yaml`), loaded when the
/// fleet's directory runs; its source's url names [`DEV_LDAP_PORT`] on loopback.
pub const EXAMPLE_ON_CHANGE: &str = include_str!("../../deploy/examples/on-change.yaml");
/// The dev directory's usual port (LDAP's 389, in the dev fleet's 7xxx range).
pub const DEV_LDAP_PORT: u16 = 7389;
/// The dev directory's root DN password: a throwaway directory on loopback, and the README's
/// `ldapadd` line must work as written.
pub const DEV_LDAP_PASSWORD: &str = "dev-ldap";
/// The credential the dev agents bind to the directory with, as the example schedule names it.
pub const DEV_LDAP_CREDENTIAL: &str = "dev-ldap";

/// The example schedule watching the directory at `ldap`.
pub fn on_change_documents(
    ldap: SocketAddr,
) -> Result<Vec<syncfleet_proto::v1::FleetDocument>, DevError> {
    let text = EXAMPLE_ON_CHANGE.replace(
        &format!("ldap://127.0.0.1:{DEV_LDAP_PORT}"),
        &format!("ldap://{ldap}"),
    );
    documents_of("deploy/examples/on-change.yaml", &text)
}

fn documents_of(
    source: &str,
    text: &str,
) -> Result<Vec<syncfleet_proto::v1::FleetDocument>, DevError> {
    let docs =
        crate::documents::parse_str(source, text).map_err(|e| DevError::Example(e.to_string()))?;
    Ok(docs
        .into_iter()
        .map(|d| syncfleet_proto::v1::FleetDocument {
            kind: d.doc.kind().to_string(),
            name: d.doc.name().to_string(),
            json: crate::documents::canonical_json(&d.doc),
            source: d.source,
        })
        .collect())
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            agents: 3,
            data_dir: None,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            console_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            console_trace_url: None,
            cli_config: None,
            time_scale: 0.05,
            example_fleet: true,
            ldap_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEV_LDAP_PORT))),
        }
    }
}

/// Most in-process agents `dev` starts: each is a few tasks on the shared runtime, a journal and
/// a connection (about 8 open files, `open_files.rs`); 5,000 try a large fleet on a laptop.
pub const MAX_AGENTS: usize = 5000;

/// `dev` failures.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--agents must be between 1 and {max} (got {0})", max = MAX_AGENTS)]
    Agents(usize),
    #[error(transparent)]
    OpenFiles(#[from] crate::open_files::TooFewFiles),
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Pki(#[from] crate::auth::PkiError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    CliConfig(#[from] crate::contexts::ConfigError),
    #[error("the controller stopped before it was ready")]
    NotReady,
    #[error("the built-in example fleet is invalid: {0}")]
    Example(String),
}

/// Run a dev fleet until `shutdown`.
pub async fn run_dev(opts: DevOptions, shutdown: CancellationToken) -> Result<(), DevError> {
    if opts.agents == 0 || opts.agents > MAX_AGENTS {
        return Err(DevError::Agents(opts.agents));
    }
    crate::open_files::ensure_for(opts.agents)?;
    let temp = match &opts.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("syncfleet-dev-")
                .tempdir()
                .map_err(DevError::TempDir)?,
        ),
    };
    let data_dir = match (&opts.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        // Exactly one of the two is set above.
        (None, None) => return Err(DevError::NotReady),
    };
    let cfg = ControllerConfig {
        data_dir: data_dir.clone(),
        fleet: "dev".into(),
        grpc_listen: opts.grpc_listen,
        http_listen: opts.http_listen,
        heartbeat_interval: Duration::from_secs(5),
        agent_lost_after: Duration::from_secs(60),
        pending_deadline: Duration::from_secs(600),
        // Every in-process agent connects from this machine.
        max_connections: u32::try_from(opts.agents + 1000).unwrap_or(u32::MAX),
        max_connections_per_address: u32::try_from(opts.agents + 100).unwrap_or(u32::MAX),
        console: crate::config::ConsoleSettings {
            listen: opts.console_listen,
            trace_url: opts.console_trace_url.clone(),
            ephemeral_if_taken: true,
            ..Default::default()
        },
        ..ControllerConfig::default()
    };
    // Locked before `init` writes credentials into it: a data directory another controller
    // serves is left alone.
    let lock = server::DataDirLock::acquire(&data_dir)?;
    let (ca, out) = init::init(&cfg, "dev-admin")?;

    let directory = match opts.ldap_listen {
        Some(addr) => Some(start_directory(&data_dir, addr).await),
        None => None,
    };
    let mut seed = if opts.example_fleet {
        example_documents()?
    } else {
        Vec::new()
    };
    if opts.example_fleet
        && let Some(Ok(d)) = &directory
    {
        seed.extend(on_change_documents(d.slapd.ldap_addr())?);
    }
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(server::serve_with(
        cfg.clone(),
        lock,
        shutdown.clone(),
        Some(bound_tx),
        seed,
    ));
    let bound = match bound_rx.await {
        Ok(b) => b,
        Err(_) => {
            return match controller.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DevError::NotReady),
            };
        }
    };
    let host = if bound.grpc.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bound.grpc.ip()
    };
    let url = format!("https://{}", SocketAddr::new(host, bound.grpc.port()));

    let mut agents = Vec::new();
    // The agents share this process's CPU with each other and the controller: they open their
    // sessions a few at a time, so a large fleet connects instead of timing out together.
    let gate = syncfleet_agent::connect_gate::ConnectGate::for_cpus();
    let mut issued = issue_agents(ca, &data_dir, opts.agents);
    while let Some(next) = issued.recv().await {
        let (i, name, dir) = match next {
            Ok(agent) => agent,
            Err(e) => {
                shutdown.cancel();
                return Err(e.into());
            }
        };
        let mut labels = std::collections::BTreeMap::new();
        let role = if opts.agents > 1 && i + 1 == opts.agents {
            "staging"
        } else {
            "primary"
        };
        // Primaries stand for production servers, the last one for staging: `-l env=prod`
        // selects the primaries, as on a real fleet.
        let env = if role == "primary" { "prod" } else { "staging" };
        labels.insert("env".to_string(), env.to_string());
        labels.insert("role".to_string(), role.to_string());
        let agent_cfg = AgentConfig {
            name: name.clone(),
            controller: url.clone(),
            controllers: Vec::new(),
            data_dir: dir,
            labels,
            tls: TlsFiles::default(),
            engine: EngineConfig::Sim {
                server: i,
                time_scale: Some(opts.time_scale),
                sim: None,
                sim_file: None,
                clear_runs_older_than: None,
                clear_runs_every: None,
            },
            reconnect_max_backoff: Duration::from_secs(5),
            executor: syncfleet_agent::executor::ExecutorOptions::default(),
            // In-process agents share the controller's process: without it, nobody fires.
            autonomy_after: Duration::ZERO,
            credentials: match &directory {
                Some(Ok(d)) => d.credentials(),
                _ => Default::default(),
            },
        };
        let stop = shutdown.clone();
        let gate = gate.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = syncfleet_agent::run_sharing_process(agent_cfg, gate, stop).await {
                tracing::error!(agent = %name, error = %e, "dev agent stopped");
            }
        }));
    }

    let cli_path = opts.cli_config.clone().or_else(default_config_path);
    if let Some(path) = &cli_path {
        upsert_context(
            path,
            "dev",
            &Context {
                controller: url.clone(),
                controllers: Vec::new(),
                ca_cert: out.ca_cert.clone(),
                client_cert: out.operator_cert.clone(),
                client_key: out.operator_key.clone(),
                tls_server_name: None,
            },
            true,
        )?;
    }
    let console_line = match &bound.console {
        Some(console) => {
            Some(dev_console_line(console, &out.operator_cert, &out.ca_cert, &cfg.fleet).await)
        }
        None => None,
    };
    println!(
        "{}",
        banner(
            &url,
            bound.http,
            opts.agents,
            &data_dir,
            cli_path.as_deref(),
            temp.is_some(),
            console_line
                .into_iter()
                .chain(
                    directory
                        .as_ref()
                        .map(|d| directory_line(d, opts.example_fleet))
                )
                .collect(),
        )
    );

    let result = controller.await;
    shutdown.cancel();
    for a in agents {
        let _ = a.await;
    }
    // The directory's files are in the temporary folder: stop the server first.
    drop(directory);
    drop(temp);
    match result {
        Ok(r) => r.map_err(DevError::from),
        Err(_) => Err(DevError::NotReady),
    }
}

/// Issue the certificates of `count` agents (`sync-01`, ...) under `data_dir/agents`, in order, on
/// a blocking thread: signing and writing thousands of them takes seconds, which must not be
/// taken from the runtime the controller and the agents already started run on. Each agent's
/// index, name and folder arrive as soon as its files are written; the first failure ends the
/// stream.
fn issue_agents(
    ca: crate::auth::ca::Ca,
    data_dir: &Path,
    count: usize,
) -> tokio::sync::mpsc::Receiver<Result<(usize, String, PathBuf), crate::auth::PkiError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let agents_dir = data_dir.join("agents");
    tokio::task::spawn_blocking(move || {
        for i in 0..count {
            let name = format!("sync-{:02}", i + 1);
            let dir = agents_dir.join(&name);
            let issued =
                init::issue_agent_files(&ca, &name, &dir, Duration::from_secs(30 * 86_400))
                    .map(|()| (i, name, dir));
            let failed = issued.is_err();
            // A closed receiver means `dev` is stopping: issue no more.
            if tx.blocking_send(issued).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The banner's console lines: a one-time sign-in link for the dev admin, valid for an hour,
/// and which CA the browser must trust (the dev fleet's own, which no browser knows).
async fn dev_console_line(
    console: &crate::console::ConsoleHandle,
    admin_cert: &Path,
    ca_cert: &Path,
    fleet: &str,
) -> String {
    let minted = async {
        let pem = std::fs::read(admin_cert).map_err(|e| e.to_string())?;
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .ok_or("no certificate in the admin credential")?
            .map_err(|e| e.to_string())?;
        let who = crate::auth::identity_of(&der, fleet)
            .and_then(|w| console_login::StoredIdentity::of(&w))
            .ok_or("the admin credential is not an operator certificate of this fleet")?;
        console_login::mint(
            console.store.as_ref(),
            &console.base_url,
            who,
            console_login::DEV_LOGIN_TTL,
            chrono::Utc::now().timestamp_millis(),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    let link = match minted {
        Ok(m) => format!(
            "console: {} (sign-in link valid 1 h, one-time; or run `syncfleet ui` for a new link)\n",
            m.url
        ),
        Err(e) => format!(
            "console: {} (no sign-in link: {e}; run `syncfleet ui` for one)\n",
            console.base_url
        ),
    };
    format!(
        "{link}  its certificate is signed by this dev fleet's own CA, {}: import that into the browser's trust store, or accept the browser's warning for this dev fleet\n",
        ca_cert.display()
    )
}

/// What `dev` prints once the fleet is up: where it is, how to reach it with the CLI, what to
/// try. `services` are lines about what runs beside the controller (console, directory). The
/// CLI hint names the `syncfleet` binary found beside the running executable (the same
/// one under `cargo run`), so "put that folder on your PATH" is advice that works.
fn banner(
    url: &str,
    http: SocketAddr,
    agents: usize,
    data_dir: &Path,
    cli_config: Option<&Path>,
    temporary: bool,
    services: Vec<String>,
) -> String {
    let mut text = format!(
        "syncfleet dev fleet is up: controller {url} (http://{http}), {agents} simulated agents, data in {}\n",
        data_dir.display()
    );
    for line in services {
        text.push_str(&line);
    }
    if let Some(path) = cli_config {
        text.push_str(&format!(
            "CLI context \"dev\" written to {}\n",
            path.display()
        ));
    }
    text.push_str(&cli_hint());
    text.push_str(
        "try (in another terminal):\n  syncfleet agents list\n  syncfleet agents show sync-01\n  syncfleet run sync-01 --step \"AD:Delta Import\" --step \"AD:Delta Sync\" --follow\n  syncfleet runs list\n  syncfleet schedules list\n  syncfleet schedules show delta-every-3m\n  syncfleet run sync-02 --sequence delta-cycle --follow\n  syncfleet run -l env=prod --sequence delta-cycle --follow\n  syncfleet timeline --since 10m\n",
    );
    text.push_str("Ctrl-C stops the fleet");
    if temporary {
        text.push_str(" and deletes its temporary data");
    }
    text.push('.');
    text
}

/// The fleet's own directory (see [`crate::dev_ldap`]) and the credential its agents bind with.
struct DevDirectory {
    slapd: dev_ldap::Slapd,
    password_file: PathBuf,
}

impl DevDirectory {
    /// `[credentials.dev-ldap]` of every dev agent.
    fn credentials(&self) -> std::collections::BTreeMap<String, Credential> {
        let credential = Credential {
            username: Some(dev_ldap::ROOT_DN.to_string()),
            password_file: Some(self.password_file.clone()),
            ..Credential::default()
        };
        std::collections::BTreeMap::from([(DEV_LDAP_CREDENTIAL.to_string(), credential)])
    }
}

/// Starts the directory in `<data-dir>/ldap` on `addr`, or on an ephemeral port when another
/// process has it. A directory that cannot start leaves the rest of the fleet running: the
/// banner says why.
async fn start_directory(
    data_dir: &Path,
    addr: SocketAddr,
) -> Result<DevDirectory, dev_ldap::SlapdError> {
    if !dev_ldap::is_installed() {
        return Err(dev_ldap::SlapdError::NotInstalled);
    }
    let dir = data_dir.join("ldap");
    let io = |what: String| move |source| dev_ldap::SlapdError::Io { what, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let password_file = dir.join("bind.pw");
    std::fs::write(&password_file, DEV_LDAP_PASSWORD)
        .map_err(io(format!("write {}", password_file.display())))?;
    let options = |ldap| dev_ldap::SlapdOptions {
        dir: dir.clone(),
        ldap,
        ldaps: None,
        password: DEV_LDAP_PASSWORD.to_string(),
        tls: None,
    };
    let ldap = dev_ldap::free_or_ephemeral(addr).map_err(io(format!("bind {addr}")))?;
    let mut slapd = dev_ldap::Slapd::start(&options(ldap)).await;
    if let Err(dev_ldap::SlapdError::Exited { .. }) = &slapd {
        // Another process took the port between the check and slapd's bind (two dev fleets
        // started together): once more, on a port the system picks.
        let any = SocketAddr::new(addr.ip(), 0);
        let ldap = dev_ldap::free_or_ephemeral(any).map_err(io(format!("bind {any}")))?;
        slapd = dev_ldap::Slapd::start(&options(ldap)).await;
    }
    match slapd {
        Ok(slapd) => Ok(DevDirectory {
            slapd,
            password_file,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "the dev fleet's directory did not start");
            Err(e)
        }
    }
}

/// The banner's directory lines: where it is and how to change it, or why there is none.
fn directory_line(
    directory: &Result<DevDirectory, dev_ldap::SlapdError>,
    example_fleet: bool,
) -> String {
    match directory {
        Ok(d) => {
            let url = d.slapd.url();
            let schedule = if example_fleet {
                format!(
                    ": schedule people-on-change runs delta-cycle on sync-01 when {} changes",
                    dev_ldap::PEOPLE
                )
            } else {
                String::new()
            };
            format!(
                "directory: {url} (OpenLDAP, bind {} password {DEV_LDAP_PASSWORD}){schedule}
  add a person: ldapadd -x -H {url} -D {} -w {DEV_LDAP_PASSWORD} -f deploy/examples/new-hire.ldif
",
                dev_ldap::ROOT_DN,
                dev_ldap::ROOT_DN,
            )
        }
        Err(dev_ldap::SlapdError::NotInstalled) => format!(
            "directory: none; for an OpenLDAP directory whose changes start runs (schedule people-on-change), install slapd and ldap-utils (Debian, Ubuntu: `{}`) and start dev again
",
            dev_ldap::INSTALL_HINT
        ),
        Err(e) => format!("directory: not started: {e}
"),
    }
}

/// Where the `syncfleet` CLI is, as a line telling how to put it on the `PATH`.
fn cli_hint() -> String {
    let exe_name = format!("syncfleet{}", std::env::consts::EXE_SUFFIX);
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    match dir {
        Some(dir) if dir.join(&exe_name).is_file() => format!(
            "CLI: {} (put its folder on your PATH: export PATH=\"{}:$PATH\")\n",
            dir.join(&exe_name).display(),
            dir.display()
        ),
        _ => "CLI: not built yet; build it with `cargo build --release -p syncfleet-controller --bin syncfleet`\n".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_fleet_is_valid() {
        let docs = crate::documents::parse_str("fleet.yaml", EXAMPLE_FLEET).unwrap();
        crate::documents::validate(&docs, &Default::default()).unwrap();
        assert_eq!(docs.len(), 6);
        assert_eq!(example_documents().unwrap().len(), 6);
    }

    #[test]
    fn the_on_change_example_is_valid_with_the_directory_on_another_port() {
        let mut docs = crate::documents::parse_str("fleet.yaml", EXAMPLE_FLEET).unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], 40_389));
        let on_change = on_change_documents(at).unwrap();
        assert_eq!(on_change.len(), 1);
        assert!(
            on_change[0].json.contains("ldap://127.0.0.1:40389"),
            "{}",
            on_change[0].json
        );
        docs.extend(crate::documents::parse_str("on-change.yaml", EXAMPLE_ON_CHANGE).unwrap());
        crate::documents::validate(&docs, &Default::default()).unwrap();
    }
}
