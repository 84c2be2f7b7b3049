//! `syncfleet-agent`: thin binary around [`syncfleet_agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncfleet_agent::config::AgentConfig;
use syncfleet_agent::paths;
use syncfleet_agent::service_setup::{self, ServiceCommand};
use syncfleet_proto::config_layers::{AGENT_ENV, ConfigError, EXIT_CONFIG, Layers, process_env};
use syncfleet_proto::{process, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "syncfleet-agent",
    version,
    about = "syncfleet agent: runs sync engine run profiles on this server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the controller and execute the runs it sends.
    Run(RunArgs),
    /// Join the fleet with a one-time token from 'syncfleet tokens create': check the
    /// controller's CA against --ca-pin, generate this agent's key here, and store the
    /// certificate the controller issues (ca.pem, agent.pem, agent.key, enrolled.toml in the
    /// data folder). Exits 1 with the controller's reason when it refuses.
    Enroll(EnrollArgs),
    /// The Windows service (Windows only): install (elevated; automatic delayed start, restart
    /// on failure, Event Log source), uninstall, start, stop, status.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print the normalized run of a run-history XML file (`RunDetails()` output or a saved
    /// history with `<execution-histories>`). Exits 1 with the reason on bad input.
    RunDetails {
        /// The XML file; `-` reads standard input.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Entra Connect Sync (engine kind "adsync").
    Adsync {
        #[command(subcommand)]
        command: AdsyncCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdsyncCommand {
    /// Switch the built-in sync cycle back on if syncfleet switched it off on this server
    /// (recorded in adsync-scheduler.json in the data folder); does nothing otherwise.
    RestoreScheduler {
        /// Configuration file (TOML): data_dir and the engine settings are taken from it.
        #[arg(long, env = "SYNCFLEET_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Data folder (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Configuration file (TOML). Default on Windows:
    /// %ProgramData%\syncfleet\agent\agent.toml when it exists.
    #[arg(long, env = "SYNCFLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Agent name (overrides `name`).
    #[arg(long)]
    name: Option<String>,
    /// Controller URL, https://host:port (overrides `controller`).
    #[arg(long)]
    controller: Option<String>,
    /// Data folder for the journal and TLS files (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Simulated engine: which example server to simulate (overrides `engine.server`).
    #[arg(long)]
    sim_server: Option<usize>,
    /// Simulated engine: duration multiplier (overrides `engine.time_scale`).
    #[arg(long)]
    sim_time_scale: Option<f64>,
    /// Label key=value (repeatable; adds to `labels`).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Any key: KEY=VALUE with a dotted key, e.g. `executor.watchdog=2h` (repeatable; wins over
    /// the file and SYNCFLEET_AGENT_* variables).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
    /// Log format.
    #[arg(long, env = "SYNCFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    dump_config: bool,
}

#[derive(clap::Args, Debug)]
struct EnrollArgs {
    /// Controller URL, https://host:port (overrides `controller`).
    #[arg(long)]
    controller: Option<String>,
    /// One-time enrollment token "<id>.<secret>" from 'syncfleet tokens create'.
    #[arg(long, env = "SYNCFLEET_ENROLL_TOKEN", hide_env_values = true)]
    token: String,
    /// SHA-256 of the controller's CA certificate (hex, optionally "sha256:"-prefixed), as
    /// printed by 'syncfleet tokens create'.
    #[arg(long = "ca-pin", value_name = "SHA256")]
    ca_pin: String,
    /// Agent name the token was created for (overrides `name`).
    #[arg(long)]
    name: Option<String>,
    /// Data folder for the TLS files (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML): name, controller, data_dir and tls.* are taken from it.
    /// Default on Windows: %ProgramData%\syncfleet\agent\agent.toml when it exists.
    #[arg(long, env = "SYNCFLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Name to verify in the controller's certificate (overrides `tls.server_name`; default:
    /// the host of the controller URL).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

/// The file, `SYNCFLEET_AGENT_*` variables and the flags, in rising precedence. Without
/// `--config`, the file is the OS's default one when it exists (on Windows
/// `%ProgramData%\syncfleet\agent\agent.toml`, see `syncfleet_agent::paths`).
fn layers(config: Option<&std::path::Path>) -> Result<Layers<AgentConfig>, ConfigError> {
    let config = paths::config_file(config, paths::default_config_file(), |p| p.is_file());
    Layers::new()
        // The engine table's tag, so that a variable or flag can set one of its keys alone.
        .base("engine.kind", "sim")
        .file(config.as_deref())?
        .env(&AGENT_ENV, process_env())
}

/// `--name`, `--controller` and `--data-dir`, the flags `run` and `enroll` share, over `layers`.
fn identity_flags(
    mut layers: Layers<AgentConfig>,
    name: Option<&String>,
    controller: Option<&String>,
    data_dir: Option<&PathBuf>,
) -> Layers<AgentConfig> {
    if let Some(v) = name {
        layers = layers.flag("name", v, "--name");
    }
    if let Some(v) = controller {
        layers = layers.flag("controller", v, "--controller");
    }
    if let Some(v) = data_dir {
        layers = layers.flag("data_dir", v.display(), "--data-dir");
    }
    layers
}

fn enroll_config(args: &EnrollArgs) -> Result<AgentConfig, ConfigError> {
    let mut layers = identity_flags(
        layers(args.config.as_deref())?,
        args.name.as_ref(),
        args.controller.as_ref(),
        args.data_dir.as_ref(),
    );
    if let Some(v) = &args.tls_server_name {
        layers = layers.flag("tls.server_name", v, "--tls-server-name");
    }
    let cfg = layers.extract()?;
    cfg.validate()?;
    Ok(cfg)
}

fn enroll(args: &EnrollArgs) -> ExitCode {
    let cfg = match enroll_config(args) {
        Ok(c) => c,
        Err(e) => return process::config_error(&e),
    };
    let rt = match process::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = rt.block_on(syncfleet_agent::identity::enroll::enroll(
        &cfg,
        &args.token,
        &args.ca_pin,
    ));
    match outcome {
        Ok(done) => {
            print!("{}", done.report());
            ExitCode::SUCCESS
        }
        Err(e @ syncfleet_agent::identity::enroll::EnrollError::Usage(_)) => {
            process::config_error(&e)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("label {s:?} must look like key=value"))
}

/// `--set KEY=VALUE`.
fn parse_set(s: &str) -> Result<(String, String), String> {
    process::parse_set(s, "executor.watchdog=2h")
}

fn effective(args: &RunArgs) -> Result<AgentConfig, ConfigError> {
    let mut layers = identity_flags(
        layers(args.config.as_deref())?,
        args.name.as_ref(),
        args.controller.as_ref(),
        args.data_dir.as_ref(),
    );
    if let Some(v) = args.sim_server {
        layers = layers.flag("engine.server", v, "--sim-server");
    }
    if let Some(v) = args.sim_time_scale {
        layers = layers.flag("engine.time_scale", v, "--sim-time-scale");
    }
    let mut cfg = layers.sets(&args.sets).extract()?;
    // Added after the layers: a label key may contain dots, which a key path would split.
    for (k, v) in &args.labels {
        cfg.labels.insert(k.clone(), v.clone());
    }
    // Name and controller default to what 'syncfleet-agent enroll' recorded.
    syncfleet_agent::identity::enroll::apply_enrolled_defaults(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
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
        Command::Run(args) => run(args),
        Command::Enroll(args) => enroll(&args),
        Command::Service { command } => service(command),
        Command::RunDetails { file, output } => run_details(&file, &output),
        Command::Adsync {
            command: AdsyncCommand::RestoreScheduler { config, data_dir },
        } => restore_scheduler(config.as_deref(), data_dir.as_ref()),
    }
}

fn restore_scheduler(config: Option<&std::path::Path>, data_dir: Option<&PathBuf>) -> ExitCode {
    let cfg = match layers(config).and_then(|l| identity_flags(l, None, None, data_dir).extract()) {
        Ok(c) => c,
        Err(e) => return process::config_error(&e),
    };
    let rt = match process::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    use syncfleet_agent::engine::adsync::{Restore, restore_builtin_scheduler};
    match rt.block_on(restore_builtin_scheduler(&cfg)) {
        Ok(Restore::SwitchedOn) => {
            println!("the Entra Connect built-in sync cycle is switched on again");
            ExitCode::SUCCESS
        }
        Ok(Restore::NothingRecorded) => {
            println!(
                "nothing to restore: syncfleet did not switch the built-in sync cycle off here (no {} in {})",
                syncfleet_agent::engine::adsync::STATE_FILE,
                cfg.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_details(file: &std::path::Path, output: &str) -> ExitCode {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => Ok(s),
            Err(e) => Err(format!("cannot read standard input: {e}")),
        }
    } else {
        std::fs::read(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))
            .and_then(|bytes| {
                syncfleet_agent::engine::runhistory::decode_vec(bytes)
                    .map_err(|e| format!("{}: {e}", file.display()))
            })
    };
    let runs = text.and_then(|t| {
        syncfleet_agent::engine::runhistory::parse(&t)
            .map_err(|e| format!("{}: {e}", file.display()))
    });
    match runs {
        Ok(runs) if runs.is_empty() => {
            eprintln!("error: {}: the run history holds no run", file.display());
            ExitCode::FAILURE
        }
        Ok(runs) => {
            if output == "json" {
                match serde_json::to_string_pretty(&syncfleet_agent::report::runs_json(&runs)) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", syncfleet_agent::report::runs_text(&runs));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let cfg = match effective(&args) {
        Ok(c) => c,
        Err(e) => return process::config_error(&e),
    };
    if let Err(e) = telemetry::check_env() {
        return process::config_error(&e);
    }
    if args.dump_config {
        return process::dump_config(&cfg);
    }
    // Flushes buffered spans when dropped at the end of `run`.
    let _telemetry = init_logging(&args.log_format, &cfg);
    let rt = match process::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let shutdown = syncfleet_proto::shutdown::shutdown_on_signals();
        match syncfleet_agent::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ syncfleet_agent::AgentError::Config(_)) => process::config_error(&e),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `syncfleet-agent service ...` off Windows: there is no such thing (exit code 2).
#[cfg(not(windows))]
fn service(_command: ServiceCommand) -> ExitCode {
    eprintln!("{}", service_setup::NOT_WINDOWS);
    ExitCode::from(2)
}

/// `syncfleet-agent service ...` on Windows.
#[cfg(windows)]
fn service(command: ServiceCommand) -> ExitCode {
    use syncfleet_agent::service_scm;
    let outcome = match command {
        ServiceCommand::Install(args) => {
            let account = match service_setup::account(&args, |v| std::env::var(v).ok()) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let config = service_config_path(args.config);
            if !config.exists() {
                eprintln!(
                    "warning: {} does not exist yet; the service cannot start until it does",
                    config.display()
                );
            }
            service_scm::install(&config, &account)
        }
        ServiceCommand::Uninstall { config } => {
            let cfg = effective(&file_args(service_config_path(config))).map_err(|e| e.to_string());
            service_scm::uninstall(cfg)
        }
        ServiceCommand::Start => service_scm::start(),
        ServiceCommand::Stop => service_scm::stop(),
        ServiceCommand::Status => match service_scm::status() {
            Ok(report) => Ok(report.to_string()),
            Err(service_setup::ServiceError::NotInstalled) => {
                println!("service {}: not installed", service_setup::SERVICE_NAME);
                return ExitCode::from(service_setup::EXIT_NOT_INSTALLED);
            }
            Err(e) => Err(e),
        },
        ServiceCommand::Run { config } => return service_run(service_config_path(config)),
    };
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The service's configuration file: the one given (made absolute: the SCM starts the
/// service in System32), else `%ProgramData%\syncfleet\agent\agent.toml`.
#[cfg(windows)]
fn service_config_path(config: Option<PathBuf>) -> PathBuf {
    let path = config
        .unwrap_or_else(|| service_setup::default_config_path(std::env::var_os("ProgramData")));
    std::path::absolute(&path).unwrap_or(path)
}

/// `run`'s arguments with only a configuration file.
#[cfg(windows)]
fn file_args(config: PathBuf) -> RunArgs {
    RunArgs {
        config: Some(config),
        name: None,
        controller: None,
        data_dir: None,
        sim_server: None,
        sim_time_scale: None,
        labels: Vec::new(),
        sets: Vec::new(),
        log_format: "text".into(),
        dump_config: false,
    }
}

/// `service run`: the agent under the Service Control Manager, its warnings and errors also
/// in the Event Log.
#[cfg(windows)]
fn service_run(config: PathBuf) -> ExitCode {
    let outcome = syncfleet_agent::service_scm::run(Box::new(move |layers| {
        let cfg = effective(&file_args(config)).map_err(|e| e.to_string())?;
        telemetry::check_env().map_err(|e| e.to_string())?;
        let guard = init_logging_with("text", &cfg, layers);
        Ok((cfg, Box::new(guard) as Box<dyn std::any::Any>))
    }));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs (text or JSON) and, when `OTEL_*` asks for it, OTLP trace export with the agent's name
/// and labels as resource attributes.
fn init_logging(format: &str, cfg: &AgentConfig) -> telemetry::TelemetryGuard {
    init_logging_with(format, cfg, Vec::new())
}

/// [`init_logging`] with `extra` layers (the Event Log writer of the Windows service).
fn init_logging_with(
    format: &str,
    cfg: &AgentConfig,
    extra: Vec<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>,
) -> telemetry::TelemetryGuard {
    let mut attributes = vec![
        ("service.instance.id".to_string(), cfg.name.clone()),
        ("syncfleet.agent.name".to_string(), cfg.name.clone()),
    ];
    for (k, v) in &cfg.labels {
        attributes.push((format!("syncfleet.agent.label.{k}"), v.clone()));
    }
    telemetry::init_with(
        &telemetry::Setup {
            service_name: "syncfleet-agent",
            log_format: format.to_string(),
            attributes,
            agent: Some(cfg.name.clone()),
        },
        extra,
    )
}
