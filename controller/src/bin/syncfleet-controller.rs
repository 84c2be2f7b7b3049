//! `syncfleet-controller`: thin binary around the controller library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use syncfleet_controller::config::{self, ConfigError, ControllerConfig, EXIT_CONFIG};
use syncfleet_proto::{process, service_manager};

#[derive(Parser, Debug)]
#[command(
    name = "syncfleet-controller",
    version,
    about = "syncfleet controller: schedules and dispatches sync engine runs across a fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve agents and operators.
    Serve(Common),
    /// Tell whether this controller (its `advertise_url`) is the leader of its store, and name
    /// the leader.
    Status(Common),
    /// Exit 0 when the controller of this configuration answers `GET /readyz` with 200 on its
    /// `http_listen` port (on loopback), 1 otherwise: a health check for images without curl.
    Healthcheck {
        #[command(flatten)]
        common: Common,
        /// Give up after this long, e.g. "5s".
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Create the CA, the controller's certificate and an admin operator credential.
    Init {
        #[command(flatten)]
        common: Common,
        /// Name of the first operator credential.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// Also issue credentials for an agent of this name into
        /// `<data_dir>/pki/agents/NAME/` (repeatable); copy that folder to the sync server.
        #[arg(long = "agent")]
        agents: Vec<String>,
    },
    /// Run a whole fleet on this machine: controller + simulated agents, with a CLI context
    /// (the same as `syncfleet dev`).
    #[cfg(feature = "dev")]
    Dev(syncfleet_controller::dev::DevArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// Configuration file (TOML).
    #[arg(long, env = "SYNCFLEET_CONTROLLER_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (store and PKI); overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where runs, schedules and the audit log are kept: `sqlite:PATH` or a
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` URL; overrides `store` (default
    /// `<data_dir>/controller.db`).
    #[arg(long, value_name = "sqlite:PATH|postgres://URL")]
    store: Option<String>,
    /// gRPC listen address; overrides `grpc_listen`.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP listen address; overrides `http_listen`.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Fleet name; overrides `fleet`.
    #[arg(long)]
    fleet: Option<String>,
    /// Pending-run deadline, e.g. "15m"; overrides `pending_deadline`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pending_deadline: Option<std::time::Duration>,
    /// Lifetime of agent certificates, e.g. "24h"; overrides `agent_cert_lifetime`.
    #[arg(long, value_parser = humantime::parse_duration)]
    agent_cert_lifetime: Option<std::time::Duration>,
    /// Any key: KEY=VALUE with a dotted key, e.g. `tls.cert=/etc/syncfleet/controller.pem`
    /// (repeatable; wins over the file and SYNCFLEET_* variables).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
    /// Log format.
    #[arg(long, env = "SYNCFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    dump_config: bool,
}

/// `--set KEY=VALUE`.
fn parse_set(s: &str) -> Result<(String, String), String> {
    process::parse_set(s, "agent_lost_after=5m")
}

/// The file, `SYNCFLEET_*` variables and the flags, in rising precedence.
fn effective(c: &Common) -> Result<ControllerConfig, ConfigError> {
    let mut layers = config::Layers::<ControllerConfig>::new()
        .file(c.config.as_deref())?
        .env(&config::CONTROLLER_ENV, config::process_env())?;
    if let Some(v) = &c.data_dir {
        layers = layers.flag("data_dir", v.display(), "--data-dir");
    }
    if let Some(v) = &c.store {
        layers = layers.flag("store", v, "--store");
    }
    if let Some(v) = c.grpc_listen {
        layers = layers.flag("grpc_listen", v, "--grpc-listen");
    }
    if let Some(v) = c.http_listen {
        layers = layers.flag("http_listen", v, "--http-listen");
    }
    if let Some(v) = &c.fleet {
        layers = layers.flag("fleet", v, "--fleet");
    }
    if let Some(v) = c.pending_deadline {
        layers = layers.flag(
            "pending_deadline",
            humantime::format_duration(v),
            "--pending-deadline",
        );
    }
    if let Some(v) = c.agent_cert_lifetime {
        layers = layers.flag(
            "agent_cert_lifetime",
            humantime::format_duration(v),
            "--agent-cert-lifetime",
        );
    }
    let cfg = layers.sets(&c.sets).extract()?;
    cfg.validate()?;
    Ok(cfg)
}

/// `READY=1` to systemd once `serve` reports its addresses: by then the store is open (and
/// migrated), the data directory locked, and the gRPC, HTTP (`/readyz`) and console listeners
/// bound, so a unit ordered after this one finds the controller answering. Nothing is sent when
/// `serve` fails before that (systemd sees the exit instead).
async fn notify_when_bound(
    bound: tokio::sync::oneshot::Receiver<syncfleet_controller::server::Bound>,
    fleet: String,
) {
    if let Ok(b) = bound.await {
        service_manager::ready(&format!(
            "serving fleet {fleet}: gRPC {}, HTTP {}",
            b.grpc, b.http
        ));
    }
}

/// Logs (text or JSON) and, when `OTEL_*` asks for it, OTLP trace export. The guard flushes
/// buffered spans when dropped at exit.
fn init_logging(format: &str) -> syncfleet_proto::telemetry::TelemetryGuard {
    syncfleet_controller::telemetry::init(format)
}

/// Refuse `OTEL_*` settings the exporter cannot follow (exit code 64, before any port is bound).
fn check_telemetry() -> Result<(), ExitCode> {
    syncfleet_proto::telemetry::check_env()
        .map(drop)
        .map_err(|e| process::config_error(&e))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli.command {
        Command::Serve(common) => {
            let cfg = match effective(&common) {
                Ok(c) => c,
                Err(e) => return process::config_error(&e),
            };
            if let Err(code) = check_telemetry() {
                return code;
            }
            if common.dump_config {
                return dump(&cfg);
            }
            let _telemetry = init_logging(&common.log_format);
            let rt = match process::runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(async {
                let shutdown = syncfleet_proto::shutdown::shutdown_on_signals();
                let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
                tokio::spawn(notify_when_bound(bound_rx, cfg.fleet.clone()));
                service_manager::stopping_on(&shutdown, "stopping: closing agent sessions");
                match syncfleet_controller::server::serve(cfg, shutdown, Some(bound_tx)).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e @ syncfleet_controller::server::ServeError::Config(_)) => {
                        service_manager::status(&format!("failed: {e}"));
                        process::config_error(&e)
                    }
                    Err(e) => {
                        service_manager::status(&format!("failed: {e}"));
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Status(common) => {
            let cfg = match effective(&common) {
                Ok(c) => c,
                Err(e) => return process::config_error(&e),
            };
            let rt = match process::runtime(false) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(syncfleet_controller::leader::status_report(&cfg)) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { common, timeout } => {
            let cfg = match effective(&common) {
                Ok(c) => c,
                Err(e) => return process::config_error(&e),
            };
            if common.dump_config {
                return dump(&cfg);
            }
            match syncfleet_controller::healthcheck::check(cfg.http_listen, timeout) {
                Ok(body) => {
                    println!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("not ready: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init {
            common,
            operator,
            agents,
        } => {
            let cfg = match effective(&common) {
                Ok(c) => c,
                Err(e) => return process::config_error(&e),
            };
            if common.dump_config {
                return dump(&cfg);
            }
            match syncfleet_controller::auth::init::init(&cfg, &operator).and_then(|(ca, out)| {
                for name in &agents {
                    let dir = cfg.pki_dir().join("agents").join(name);
                    syncfleet_controller::auth::init::issue_agent_files(
                        &ca,
                        name,
                        &dir,
                        syncfleet_controller::auth::init::AGENT_CERT_LIFETIME,
                    )?;
                    eprintln!("agent {name}: {}", dir.display());
                }
                Ok(out)
            }) {
                Ok(out) => {
                    eprintln!(
                        "{} CA {}\nserver certificate {}\noperator {operator}: {} / {}",
                        if out.created_ca {
                            "created"
                        } else {
                            "kept existing"
                        },
                        out.ca_cert.display(),
                        out.server_cert.display(),
                        out.operator_cert.display(),
                        out.operator_key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "dev")]
        Command::Dev(args) => syncfleet_controller::dev::main(&args, None),
    }
}

/// Print the effective configuration; a password in a PostgreSQL `store` URL is shown as `***`.
fn dump(cfg: &ControllerConfig) -> ExitCode {
    let mut shown = cfg.clone();
    shown.store = shown
        .store
        .map(|s| syncfleet_controller::store::postgres::redact_url(&s));
    process::dump_config(&shown)
}
