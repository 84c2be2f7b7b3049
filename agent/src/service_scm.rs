//! The Windows service itself: `service run` connects to the Service Control Manager and runs
//! the agent under [`crate::service::drive`]; `install`, `uninstall`, `start`, `stop` and
//! `status` talk to the SCM through the `windows-service` crate. What is installed, and the
//! messages, are decided in [`crate::service_setup`].

use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::config::AgentConfig;
use crate::event_ids::EventId;
use crate::eventlog::{Entry, EntryType, EventLogLayer, Sink};
use crate::eventlog_win::{self, EventLogSink};
use crate::service::{self, Control, Reply, State, Status};
use crate::service_setup::{
    self, Account, DESCRIPTION, DISPLAY_NAME, FAILURE_RESET, RESTART_DELAYS, SERVICE_NAME,
    START_WAIT, STOP_WAIT, ServiceError, StatusReport,
};

/// A `tracing` layer handed to the binary's logging setup.
pub type BoxedLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// What `service run` gets from the binary: loads the effective configuration and installs
/// logging with the given extra layers (the Event Log writer), returning a guard to keep
/// until the agent has stopped; or the reason it cannot.
pub type Loader = Box<
    dyn FnOnce(Vec<BoxedLayer>) -> Result<(AgentConfig, Box<dyn std::any::Any>), String> + Send,
>;

/// Exit code reported to the SCM (service-specific) when the configuration cannot be loaded.
const EXIT_CONFIG: u32 = 64;

static LOADER: Mutex<Option<Loader>> = Mutex::new(None);

fn scm_error(action: &'static str, e: windows_service::Error) -> ServiceError {
    match e {
        windows_service::Error::Winapi(io) => {
            let code = io.raw_os_error().unwrap_or_default();
            // The system's text without std's " (os error N)" suffix: the code is shown once.
            let text = io.to_string();
            let text = text
                .strip_suffix(&format!(" (os error {code})"))
                .unwrap_or(&text)
                .to_string();
            ServiceError::from_os(action, code, text)
        }
        other => ServiceError::Other {
            action,
            message: other.to_string(),
        },
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|e| scm_error("connecting to the Service Control Manager", e))
}

/// `service install`: creates the service, or updates the installed one to this exe,
/// configuration file and account; then start type, description, recovery actions and the
/// Event Log source. Returns what it did, for the console.
pub fn install(config: &std::path::Path, account: &Account) -> Result<String, ServiceError> {
    let exe = std::env::current_exe().map_err(|e| ServiceError::Other {
        action: "finding this program's path",
        message: e.to_string(),
    })?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: service_setup::launch_arguments(config),
        dependencies: vec![],
        account_name: Some(account.name.clone().into()),
        account_password: account.password.clone().map(OsString::from),
    };
    let mgr = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let access = ServiceAccess::QUERY_CONFIG
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::START;
    let (svc, verb) = match mgr.open_service(SERVICE_NAME, access) {
        Ok(svc) => {
            svc.change_config(&info)
                .map_err(|e| scm_error("updating the service", e))?;
            (svc, "updated")
        }
        Err(e) => match scm_error("opening the service", e) {
            ServiceError::NotInstalled => (
                mgr.create_service(&info, access)
                    .map_err(|e| scm_error("creating the service", e))?,
                "installed",
            ),
            other => return Err(other),
        },
    };
    svc.set_description(DESCRIPTION)
        .map_err(|e| scm_error("setting the description", e))?;
    let mut warnings = String::new();
    let delayed = service_setup::optional_setting(
        "the delayed automatic start",
        svc.set_delayed_auto_start(true)
            .map_err(|e| scm_error("setting the delayed automatic start", e)),
    )?;
    let actions = svc
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
            reboot_msg: None,
            command: None,
            actions: Some(
                RESTART_DELAYS
                    .iter()
                    .map(|delay| ServiceAction {
                        action_type: ServiceActionType::Restart,
                        delay: *delay,
                    })
                    .collect(),
            ),
        })
        .map_err(|e| scm_error("setting the recovery actions", e));
    let recovery = service_setup::optional_setting("the recovery actions", actions)?;
    // The agent stopping with an error exit code counts as a failure too, not only a crash.
    let non_crash = service_setup::optional_setting(
        "recovery after an error exit code",
        svc.set_failure_actions_on_non_crash_failures(true)
            .map_err(|e| scm_error("setting the recovery actions", e)),
    )?;
    for warning in [&delayed, &recovery, &non_crash].into_iter().flatten() {
        warnings.push_str(warning);
        warnings.push('\n');
    }
    eventlog_win::register_source()?;
    Ok(format!(
        "{verb} service {SERVICE_NAME}: {} start{}, account {}, configuration {}; Event Log source {SERVICE_NAME} registered in the Application log\n{warnings}start it with 'syncfleet-agent service start'\n",
        if delayed.is_none() {
            "automatic (delayed)"
        } else {
            "automatic"
        },
        if recovery.is_none() {
            ", restart after 1, 2 and 5 minutes on failure"
        } else {
            ""
        },
        account.name,
        config.display()
    ))
}

/// Waits until the service's state is `wanted` (or, while starting, it stopped).
#[allow(
    clippy::disallowed_methods,
    reason = "the management commands are synchronous, outside any async runtime: they wait in real time"
)]
fn wait_for(
    svc: &windows_service::service::Service,
    wanted: ServiceState,
    within: Duration,
) -> Result<ServiceStatus, ServiceError> {
    let deadline = Instant::now() + within;
    loop {
        let status = svc
            .query_status()
            .map_err(|e| scm_error("querying the service", e))?;
        if status.current_state == wanted {
            return Ok(status);
        }
        if wanted == ServiceState::Running && status.current_state == ServiceState::Stopped {
            return Err(ServiceError::StoppedOnStart {
                code: exit_code_of(&status.exit_code).unwrap_or_default(),
            });
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::Timeout {
                wanted: if wanted == ServiceState::Running {
                    "running"
                } else {
                    "stopped"
                },
                state: state_name(status.current_state).to_string(),
                waited: humantime::format_duration(within).to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn exit_code_of(code: &ServiceExitCode) -> Option<u32> {
    match *code {
        // NO_ERROR; ERROR_SERVICE_NEVER_STARTED
        ServiceExitCode::Win32(0 | 1077) => None,
        ServiceExitCode::Win32(c) | ServiceExitCode::ServiceSpecific(c) => Some(c),
    }
}

/// Stops the service if it runs and waits until it has stopped.
fn stop_and_wait(svc: &windows_service::service::Service) -> Result<bool, ServiceError> {
    let status = svc
        .query_status()
        .map_err(|e| scm_error("querying the service", e))?;
    if status.current_state == ServiceState::Stopped {
        return Ok(false);
    }
    if status.current_state != ServiceState::StopPending {
        match svc.stop() {
            Ok(_) => {}
            // ERROR_SERVICE_NOT_ACTIVE: it stopped meanwhile.
            Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(1062) => {
                return Ok(false);
            }
            Err(e) => return Err(scm_error("stopping the service", e)),
        }
    }
    wait_for(svc, ServiceState::Stopped, STOP_WAIT)?;
    Ok(true)
}

/// `service uninstall`: stops the service, restores what the engine driver changed
/// ([`service_setup::restore_engine_on_uninstall`]; skipped with a warning when the
/// configuration cannot be loaded), deletes the service and removes the Event Log source.
/// A service that is not installed is not an error: only the source is removed.
pub fn uninstall(config: Result<AgentConfig, String>) -> Result<String, ServiceError> {
    let mgr = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let mut out = String::new();
    match mgr.open_service(SERVICE_NAME, access) {
        Ok(svc) => {
            if stop_and_wait(&svc)? {
                out.push_str("stopped the service\n");
            }
            match config {
                Ok(cfg) => {
                    let restored =
                        service_setup::restore_engine_on_uninstall(&cfg).map_err(|message| {
                            ServiceError::Other {
                                action: "restoring the engine's settings",
                                message,
                            }
                        })?;
                    out.push_str(&restored);
                }
                Err(e) => out.push_str(&format!(
                    "warning: the configuration could not be loaded ({e}); engine settings the agent changed were not restored\n"
                )),
            }
            svc.delete()
                .map_err(|e| scm_error("deleting the service", e))?;
            out.push_str(&format!("removed service {SERVICE_NAME}\n"));
        }
        Err(e) => match scm_error("opening the service", e) {
            ServiceError::NotInstalled => {
                out.push_str(&format!("service {SERVICE_NAME} is not installed\n"));
            }
            other => return Err(other),
        },
    }
    eventlog_win::remove_source()?;
    out.push_str(&format!("removed Event Log source {SERVICE_NAME}\n"));
    Ok(out)
}

/// `service start`: starts the service and waits until it runs.
pub fn start() -> Result<String, ServiceError> {
    let mgr = manager(ServiceManagerAccess::CONNECT)?;
    let svc = mgr
        .open_service(
            SERVICE_NAME,
            ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .map_err(|e| scm_error("opening the service", e))?;
    match svc.start(&[] as &[&OsStr]) {
        Ok(()) => {}
        // ERROR_SERVICE_ALREADY_RUNNING
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(1056) => {
            return Ok(format!("service {SERVICE_NAME} is already running\n"));
        }
        Err(e) => return Err(scm_error("starting the service", e)),
    }
    let status = wait_for(&svc, ServiceState::Running, START_WAIT)?;
    Ok(match status.process_id {
        Some(pid) => format!("service {SERVICE_NAME} is running (pid {pid})\n"),
        None => format!("service {SERVICE_NAME} is running\n"),
    })
}

/// `service stop`: stops the service and waits until it has stopped.
pub fn stop() -> Result<String, ServiceError> {
    let mgr = manager(ServiceManagerAccess::CONNECT)?;
    let svc = mgr
        .open_service(
            SERVICE_NAME,
            ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
        )
        .map_err(|e| scm_error("opening the service", e))?;
    Ok(if stop_and_wait(&svc)? {
        format!("service {SERVICE_NAME} stopped\n")
    } else {
        format!("service {SERVICE_NAME} is not running\n")
    })
}

fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Stopped => "stopped",
        ServiceState::StartPending => "start pending",
        ServiceState::StopPending => "stop pending",
        ServiceState::Running => "running",
        ServiceState::ContinuePending => "continue pending",
        ServiceState::PausePending => "pause pending",
        ServiceState::Paused => "paused",
    }
}

/// `service status`.
pub fn status() -> Result<StatusReport, ServiceError> {
    let mgr = manager(ServiceManagerAccess::CONNECT)?;
    let svc = mgr
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
        )
        .map_err(|e| scm_error("opening the service", e))?;
    let status = svc
        .query_status()
        .map_err(|e| scm_error("querying the service", e))?;
    let config = svc
        .query_config()
        .map_err(|e| scm_error("querying the service's configuration", e))?;
    let start_type = match config.start_type {
        ServiceStartType::AutoStart => "automatic",
        ServiceStartType::OnDemand => "manual",
        ServiceStartType::Disabled => "disabled",
        ServiceStartType::SystemStart => "system",
        ServiceStartType::BootStart => "boot",
    };
    Ok(StatusReport {
        state: state_name(status.current_state).to_string(),
        pid: status.process_id,
        start_type: start_type.to_string(),
        delayed: config.start_type == ServiceStartType::AutoStart
            && eventlog_win::delayed_auto_start(),
        account: config
            .account_name
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_else(|| "LocalSystem".into()),
        command_line: config.executable_path.to_string_lossy().into_owned(),
        exit_code: (status.current_state == ServiceState::Stopped)
            .then(|| exit_code_of(&status.exit_code))
            .flatten(),
    })
}

define_windows_service!(ffi_service_main, service_main);

/// `service run`: hands this thread to the SCM's dispatcher, which calls the service's main
/// function on its own thread; returns once the service has stopped. `loader` loads the
/// configuration and logging there, so a bad configuration is reported to the SCM (and the
/// Event Log) as a stop with exit code 64 rather than as a service that never answered.
pub fn run(loader: Loader) -> Result<(), ServiceError> {
    *LOADER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(loader);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)
        .map_err(|e| scm_error("connecting to the Service Control Manager", e))
}

fn to_scm(s: Status) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: match s.state {
            State::StartPending => ServiceState::StartPending,
            State::Running => ServiceState::Running,
            State::StopPending => ServiceState::StopPending,
            State::Stopped => ServiceState::Stopped,
        },
        controls_accepted: if s.accepts_stop {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if s.exit_code == 0 {
            ServiceExitCode::NO_ERROR
        } else {
            ServiceExitCode::ServiceSpecific(s.exit_code)
        },
        checkpoint: s.checkpoint,
        wait_hint: s.wait_hint,
        process_id: None,
    }
}

fn to_control(c: ServiceControl) -> Control {
    match c {
        ServiceControl::Stop => Control::Stop,
        ServiceControl::Shutdown => Control::Shutdown,
        ServiceControl::Interrogate => Control::Interrogate,
        other => Control::Other(other.raw_service_control_type()),
    }
}

/// Writes one entry straight to the Event Log (before logging is set up).
fn report_directly(kind: EntryType, text: String) {
    if let Ok(sink) = EventLogSink::open() {
        sink.write(&Entry {
            kind,
            id: EventId::Other.code(),
            text,
        });
    }
}

/// The service's main function (on the dispatcher's thread).
fn service_main(_arguments: Vec<OsString>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |control: ServiceControl| {
        let control = to_control(control);
        match service::reply_to(control) {
            Reply::NoError => {
                // The receiver is gone only once the agent has stopped.
                let _ = tx.send(control);
                ServiceControlHandlerResult::NoError
            }
            Reply::NotImplemented => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(h) => h,
        Err(e) => {
            report_directly(
                EntryType::Error,
                format!("cannot register the service control handler: {e}"),
            );
            return;
        }
    };
    let report = move |s: Status| {
        // A failed status report leaves the SCM with the previous one; nothing better to do.
        let _ = handle.set_service_status(to_scm(s));
    };
    let mut life = service::Lifecycle::new(service::WAIT_HINT);
    report(life.status());
    let loader = LOADER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let mut layers: Vec<BoxedLayer> = Vec::new();
    match EventLogSink::open() {
        Ok(sink) => {
            use tracing_subscriber::Layer as _;
            let ours = tracing_subscriber::filter::Targets::new()
                .with_target("syncfleet_agent", tracing::Level::INFO)
                .with_target("syncfleet_proto", tracing::Level::INFO);
            layers.push(EventLogLayer::new(sink).with_filter(ours).boxed());
        }
        Err(e) => eprintln!("warning: the Event Log is not written: {e}"),
    }
    let loaded = match loader {
        Some(load) => load(layers),
        None => Err("the service started without its configuration loader".to_string()),
    };
    let (cfg, _logging) = match loaded {
        Ok(l) => l,
        Err(message) => {
            report_directly(
                EntryType::Error,
                format!("syncfleet-agent service cannot start: {message}"),
            );
            report(life.stopped(EXIT_CONFIG));
            return;
        }
    };
    report(life.progress());
    // One thread, as `syncfleet-agent run`: the agent's blocking work (WMI, SQLite, `Execute()`)
    // already goes to tokio's blocking pool, so worker threads (one per CPU by default) would only
    // add idle stacks, malloc arenas and wake-ups (`docs/agent-footprint.md`).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            report(life.stopped(service::EXIT_FAILED));
            return;
        }
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let agent = {
            let shutdown = shutdown.clone();
            async move {
                let result = crate::run(cfg, shutdown).await;
                // Logged before STOPPED is reported: the SCM may end the process after it.
                if let Err(e) = &result {
                    tracing::error!(error = %e, "agent stopped with an error");
                }
                result
            }
        };
        // The outcome is in the STOPPED status (exit code) and was logged above.
        let _ = service::drive(agent, shutdown, rx, report).await;
    });
}
