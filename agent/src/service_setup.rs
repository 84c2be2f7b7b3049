//! `syncfleet-agent service ...`: what the Windows service is installed as, and the decisions
//! and messages of its management commands, as plain logic that builds and is tested on every
//! platform. The calls into the Service Control Manager are in `service_scm` (Windows only).
//!
//! The service:
//! - name `syncfleet-agent`, started automatically with a delay after boot (so the sync engine
//!   and the network are up first), restarted by the SCM after a failure (1, 2, then 5 minutes;
//!   the failure count resets after a day), also when the agent stops with an error exit code;
//! - command line `<exe> service run --config <file>`, the file by default
//!   `%ProgramData%\syncfleet\agent\agent.toml`;
//! - account by default the virtual account `NT SERVICE\syncfleet-agent` (no password; it exists
//!   as soon as the service does), or `--account`: a group managed service account
//!   `DOMAIN\name$` (no password) or a user account whose password is read from the environment
//!   variable named by `--password-from-env` (never from the command line).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::AgentConfig;

/// The service's name (also the Event Log source's name).
pub const SERVICE_NAME: &str = "syncfleet-agent";
/// The name shown in the Services console.
pub const DISPLAY_NAME: &str = "syncfleet agent";
/// The description shown in the Services console.
pub const DESCRIPTION: &str = "Runs the sync engine's run profiles as the syncfleet controller \
     schedules them, and reports their results. Stopping it lets the run in flight end or \
     records it as interrupted.";
/// The virtual account the service runs as unless `--account` says otherwise.
pub const VIRTUAL_ACCOUNT: &str = "NT SERVICE\\syncfleet-agent";
/// Delays of the SCM's restarts after the first, second and later failures.
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
];
/// After this long without a failure the SCM starts counting failures from zero again.
pub const FAILURE_RESET: Duration = Duration::from_secs(86_400);
/// How long `service start` waits for `RUNNING`.
pub const START_WAIT: Duration = Duration::from_secs(60);
/// How long `service stop` (and `uninstall` of a running service) waits for `STOPPED`: the
/// agent reports progress while the engine finishes its step, which can take long.
pub const STOP_WAIT: Duration = Duration::from_secs(300);
/// Exit code of `service status` when the service is not installed.
pub const EXIT_NOT_INSTALLED: u8 = 3;

/// What `syncfleet-agent service` on anything but Windows says (with exit code 2).
pub const NOT_WINDOWS: &str = "error: 'syncfleet-agent service' manages the Windows service, \
     and Windows services exist only on Windows. On this system run the agent with \
     'syncfleet-agent run --config <file>' under the system's service manager (for example a \
     systemd unit whose ExecStart is that command; it stops gracefully on SIGTERM).";

/// `syncfleet-agent service ...`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum ServiceCommand {
    /// Install the Windows service (or update the installed one): automatic delayed start,
    /// restart on failure, the Event Log source. Run from an elevated prompt.
    Install(InstallArgs),
    /// Stop and remove the Windows service and its Event Log source.
    Uninstall {
        /// Configuration file of the installed agent (engine-side settings to restore).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start the installed service and wait until it runs.
    Start,
    /// Stop the service and wait until it has stopped (the run in flight ends or is recorded
    /// as interrupted first).
    Stop,
    /// Print the service's state, start type, account and command line. Exits 3 when it is
    /// not installed.
    Status,
    /// What the Service Control Manager starts: connects to it and runs the agent until the
    /// service is stopped. Not for use from a console (use 'syncfleet-agent run').
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `service install`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct InstallArgs {
    /// Account the service runs as: a group managed service account `DOMAIN\name$`, or a user
    /// account with --password-from-env. Default: the virtual account NT SERVICE\syncfleet-agent.
    #[arg(long)]
    pub account: Option<String>,
    /// Name of an environment variable that holds the account's password (user accounts only).
    #[arg(long, value_name = "VAR")]
    pub password_from_env: Option<String>,
    /// Configuration file the service reads. Default:
    /// %ProgramData%\syncfleet\agent\agent.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Failures of the service commands, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "access denied by the Service Control Manager: run this from an elevated prompt (Run as administrator)"
    )]
    NotElevated,
    #[error(
        "the {SERVICE_NAME} service is not installed; install it with 'syncfleet-agent service install'"
    )]
    NotInstalled,
    #[error(
        "the {SERVICE_NAME} service is marked for deletion: close the Services console and anything else holding it open, then retry"
    )]
    MarkedForDeletion,
    #[error(
        "account {account} needs a password: put it in an environment variable and pass --password-from-env VAR, or use a group managed service account (DOMAIN\\name$) or the default virtual account"
    )]
    PasswordNeeded { account: String },
    #[error("--password-from-env {var}: that environment variable is not set or is empty")]
    PasswordVariableUnset { var: String },
    #[error("--password-from-env is only for user accounts: {account} has no password")]
    PasswordNotWanted { account: String },
    #[error(
        "'syncfleet-agent service run' is started by the Service Control Manager, not from a console; to run the agent in a console use 'syncfleet-agent run --config <file>'"
    )]
    NotUnderScm,
    #[error(
        "the service did not reach {wanted} within {waited}; it is {state} (see the Application event log, source {SERVICE_NAME})"
    )]
    Timeout {
        wanted: &'static str,
        state: String,
        waited: String,
    },
    #[error(
        "the service stopped instead of starting (exit code {code}); see the Application event log, source {SERVICE_NAME}"
    )]
    StoppedOnStart { code: u32 },
    #[error("{action} failed: {message} (Windows error {code})")]
    Windows {
        action: &'static str,
        code: i32,
        message: String,
    },
    #[error("{action} failed: {message}")]
    Other {
        action: &'static str,
        message: String,
    },
}

impl ServiceError {
    /// The error for Windows error `code` from `action` (`message` is the system's text).
    pub fn from_os(action: &'static str, code: i32, message: String) -> ServiceError {
        match code {
            // ERROR_ACCESS_DENIED
            5 => ServiceError::NotElevated,
            // ERROR_SERVICE_DOES_NOT_EXIST
            1060 => ServiceError::NotInstalled,
            // ERROR_FAILED_SERVICE_CONTROLLER_CONNECT
            1063 => ServiceError::NotUnderScm,
            // ERROR_SERVICE_MARKED_FOR_DELETE
            1072 => ServiceError::MarkedForDeletion,
            _ => ServiceError::Windows {
                action,
                code,
                message,
            },
        }
    }
}

/// `ERROR_INVALID_LEVEL`: the Service Control Manager does not implement an information level
/// of `ChangeServiceConfig2` (Windows has every level the agent sets since Windows Server 2008;
/// Wine's service manager lacks some).
pub const ERROR_INVALID_LEVEL: i32 = 124;

/// The outcome of setting an optional part of the service's configuration (`what`): `None`
/// when it is set; a warning when the Service Control Manager does not implement it
/// ([`ERROR_INVALID_LEVEL`]), so the service is installed without it; any other error stays
/// an error.
pub fn optional_setting(
    what: &str,
    result: Result<(), ServiceError>,
) -> Result<Option<String>, ServiceError> {
    match result {
        Ok(()) => Ok(None),
        Err(ServiceError::Windows {
            code: ERROR_INVALID_LEVEL,
            ..
        }) => Ok(Some(format!(
            "warning: this Service Control Manager does not implement {what} (ERROR_INVALID_LEVEL); the service is installed without it"
        ))),
        Err(e) => Err(e),
    }
}

/// The account and password `service install` configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password: Option<String>,
}

/// Whether `account` signs in without a password: a virtual account (`NT SERVICE\...`), a
/// built-in one (`LocalSystem`, `NT AUTHORITY\...`) or a group managed service account (its
/// name ends with `$`).
pub fn passwordless(account: &str) -> bool {
    let a = account.trim().to_ascii_lowercase();
    a.starts_with("nt service\\")
        || a.starts_with("nt authority\\")
        || a == "localsystem"
        || a.ends_with('$')
}

/// The account to install with, its password read from `env(var)` when one is needed.
pub fn account(
    args: &InstallArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Account, ServiceError> {
    let name = args
        .account
        .clone()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| VIRTUAL_ACCOUNT.to_string());
    match (&args.password_from_env, passwordless(&name)) {
        (None, true) => Ok(Account {
            name,
            password: None,
        }),
        (Some(_), true) => Err(ServiceError::PasswordNotWanted { account: name }),
        (None, false) => Err(ServiceError::PasswordNeeded { account: name }),
        (Some(var), false) => match env(var).filter(|p| !p.is_empty()) {
            Some(password) => Ok(Account {
                name,
                password: Some(password),
            }),
            None => Err(ServiceError::PasswordVariableUnset { var: var.clone() }),
        },
    }
}

/// `%ProgramData%\syncfleet\agent\agent.toml`, from the `ProgramData` value given (the
/// environment's), else `C:\ProgramData`: the same file `run` and `enroll` read without
/// `--config` ([`crate::paths::windows_config_file`]).
pub fn default_config_path(program_data: Option<OsString>) -> PathBuf {
    crate::paths::windows_config_file(program_data.as_deref())
}

/// The arguments after the exe in the service's command line.
pub fn launch_arguments(config: &Path) -> Vec<OsString> {
    vec![
        "service".into(),
        "run".into(),
        "--config".into(),
        config.as_os_str().to_os_string(),
    ]
}

/// What `service status` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// `running`, `stopped`, `start pending`, ...
    pub state: String,
    pub pid: Option<u32>,
    /// `automatic`, `manual`, `disabled`, ...
    pub start_type: String,
    pub delayed: bool,
    pub account: String,
    /// The command line the SCM starts.
    pub command_line: String,
    /// The last exit code when stopped after an error.
    pub exit_code: Option<u32>,
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service:    {SERVICE_NAME}\nstate:      {}", self.state)?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        if let Some(code) = self.exit_code {
            write!(f, " (last exit code {code})")?;
        }
        write!(
            f,
            "\nstart type: {}{}\naccount:    {}\nbinary:     {}\n",
            self.start_type,
            if self.delayed { " (delayed)" } else { "" },
            self.account,
            self.command_line
        )
    }
}

/// Engine-side settings the agent changed and must put back when the service is removed
/// (`service uninstall` calls this before it deletes the service, outside any async runtime).
/// Returns a line saying what was restored (empty when nothing was). Nothing to restore for
/// the MIM sync engine drivers; on Entra Connect Sync the built-in sync cycle the agent switched
/// off is switched on again ([`crate::engine::adsync::restore_builtin_scheduler`]); an error
/// stops the uninstall, so the service is not removed while the engine stays without scheduler.
pub fn restore_engine_on_uninstall(cfg: &AgentConfig) -> Result<String, String> {
    match &cfg.engine {
        crate::config::EngineConfig::Sim { .. } | crate::config::EngineConfig::MimWmi(_) => {
            Ok(String::new())
        }
        crate::config::EngineConfig::Adsync(_) => {
            use crate::engine::adsync::{Restore, restore_builtin_scheduler};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            match rt.block_on(restore_builtin_scheduler(cfg)) {
                Ok(Restore::SwitchedOn) => {
                    Ok("switched the Entra Connect built-in sync cycle on again\n".into())
                }
                Ok(Restore::NothingRecorded) => Ok(String::new()),
                Err(e) => Err(format!(
                    "{e}; the service is left installed: fix the cause, or switch the cycle on with 'syncfleet-agent adsync restore-scheduler', then uninstall again"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(account: Option<&str>, var: Option<&str>) -> InstallArgs {
        InstallArgs {
            account: account.map(str::to_string),
            password_from_env: var.map(str::to_string),
            config: None,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_default_account_is_the_virtual_account_without_password() {
        let a = account(&install(None, None), no_env).unwrap();
        assert_eq!(a.name, "NT SERVICE\\syncfleet-agent");
        assert_eq!(a.password, None);
    }

    #[test]
    fn a_gmsa_needs_no_password_and_a_user_account_reads_it_from_the_environment() {
        let a = account(&install(Some("CONTOSO\\svc-syncfleet$"), None), no_env).unwrap();
        assert_eq!(a.password, None);
        let e = account(&install(Some("CONTOSO\\svc-sync"), None), no_env).unwrap_err();
        assert!(e.to_string().contains("--password-from-env"), "{e}");
        let env = |v: &str| (v == "SYNC_PW").then(|| "s3cret".to_string());
        let a = account(&install(Some("CONTOSO\\svc-sync"), Some("SYNC_PW")), env).unwrap();
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        let e = account(&install(Some("CONTOSO\\svc-sync"), Some("UNSET")), env).unwrap_err();
        assert!(e.to_string().contains("UNSET"), "{e}");
        let e = account(&install(None, Some("SYNC_PW")), env).unwrap_err();
        assert!(matches!(e, ServiceError::PasswordNotWanted { .. }), "{e}");
    }

    #[test]
    fn the_service_runs_the_agent_with_its_configuration_file() {
        let path = default_config_path(Some("D:\\Data".into()));
        assert_eq!(path, PathBuf::from(r"D:\Data\syncfleet\agent\agent.toml"));
        assert_eq!(
            default_config_path(None),
            PathBuf::from(r"C:\ProgramData\syncfleet\agent\agent.toml")
        );
        let args = launch_arguments(&path);
        assert_eq!(
            args[..3],
            ["service", "run", "--config"].map(OsString::from)
        );
        assert_eq!(args[3], path.as_os_str());
    }

    #[test]
    fn windows_errors_say_what_to_do() {
        let denied = ServiceError::from_os("install", 5, "Access is denied.".into());
        assert!(denied.to_string().contains("elevated prompt"), "{denied}");
        let missing = ServiceError::from_os("open", 1060, String::new());
        assert!(missing.to_string().contains("service install"), "{missing}");
        let console = ServiceError::from_os("connect", 1063, String::new());
        assert!(
            console.to_string().contains("syncfleet-agent run"),
            "{console}"
        );
        let other = ServiceError::from_os("start", 1058, "The service is disabled.".into());
        assert_eq!(
            other.to_string(),
            "start failed: The service is disabled. (Windows error 1058)"
        );
    }

    #[test]
    fn only_a_service_manager_without_the_setting_makes_it_optional() {
        assert_eq!(
            optional_setting("the delayed automatic start", Ok(())).unwrap(),
            None
        );
        let unsupported = ServiceError::from_os("setting", 124, "Invalid level.".into());
        let warning = optional_setting("the delayed automatic start", Err(unsupported))
            .unwrap()
            .unwrap();
        assert!(
            warning.contains("does not implement the delayed automatic start"),
            "{warning}"
        );
        let denied = ServiceError::from_os("setting", 5, "Access is denied.".into());
        assert!(matches!(
            optional_setting("the recovery actions", Err(denied)),
            Err(ServiceError::NotElevated)
        ));
    }

    #[test]
    fn status_names_state_start_type_account_and_command_line() {
        let report = StatusReport {
            state: "running".into(),
            pid: Some(4242),
            start_type: "automatic".into(),
            delayed: true,
            account: VIRTUAL_ACCOUNT.into(),
            command_line: "C:\\syncfleet\\syncfleet-agent.exe service run --config C:\\a.toml"
                .into(),
            exit_code: None,
        };
        assert_eq!(
            report.to_string(),
            "service:    syncfleet-agent\nstate:      running (pid 4242)\nstart type: automatic (delayed)\naccount:    NT SERVICE\\syncfleet-agent\nbinary:     C:\\syncfleet\\syncfleet-agent.exe service run --config C:\\a.toml\n"
        );
    }

    #[test]
    fn the_message_off_windows_says_how_the_agent_runs_there() {
        assert!(NOT_WINDOWS.contains("only on Windows"));
        assert!(NOT_WINDOWS.contains("syncfleet-agent run"));
    }

    /// An agent configured for Entra Connect Sync with the PowerShell stand-in of the adsync
    /// driver's tests (`extra` are its arguments) and its data in `dir`.
    fn adsync_agent(dir: &std::path::Path, extra: &[&str]) -> AgentConfig {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/engine/adsync/stand_in.py");
        let mut args = vec![script.to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        AgentConfig {
            data_dir: dir.to_owned(),
            engine: crate::config::EngineConfig::Adsync(crate::engine::adsync::AdsyncConfig {
                powershell: "python3".into(),
                host_args: Some(args),
                start_timeout: std::time::Duration::from_secs(20),
                call_timeout: std::time::Duration::from_secs(20),
                ..Default::default()
            }),
            ..AgentConfig::default()
        }
    }

    fn record_switch_off(dir: &std::path::Path) {
        std::fs::write(
            crate::engine::adsync::state_path(dir),
            r#"{"sync_cycle_enabled_before": true, "disabled_at": "2026-12-06T10:00:00Z"}"#,
        )
        .unwrap();
    }

    #[test]
    fn uninstall_switches_the_entra_connect_cycle_back_on_only_when_the_agent_switched_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = adsync_agent(dir.path(), &[]);
        assert_eq!(restore_engine_on_uninstall(&cfg).unwrap(), "");
        record_switch_off(dir.path());
        let said = restore_engine_on_uninstall(&cfg).unwrap();
        assert!(
            said.contains("switched the Entra Connect built-in sync cycle on again"),
            "{said}"
        );
        assert!(!crate::engine::adsync::state_path(dir.path()).exists());
        // The MIM drivers change nothing in the engine.
        let sim = AgentConfig::default();
        assert_eq!(restore_engine_on_uninstall(&sim).unwrap(), "");
    }

    #[test]
    fn a_refused_restore_stops_the_uninstall_and_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = adsync_agent(dir.path(), &["--deny-set"]);
        record_switch_off(dir.path());
        let err = restore_engine_on_uninstall(&cfg).unwrap_err();
        assert!(err.contains("Access is denied"), "{err}");
        assert!(err.contains("left installed"), "{err}");
        assert!(crate::engine::adsync::state_path(dir.path()).exists());
    }
}
