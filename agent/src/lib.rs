//! syncfleet agent: one per sync server. It dials out to the controller over mTLS, executes run
//! profiles through an engine driver, enforces the engine's concurrency rules locally and
//! streams status and statistics back (`ARCHITECTURE.md`).
//!
//! Contracts this crate keeps:
//! - **Exactly-once execution**: a run id is journaled before it is acted on
//!   ([`journal::Journal::accept_run`]) and never executed twice, across reconnects and
//!   restarts. A run interrupted by an agent restart is not re-run: its interrupted step's
//!   result and counters are read back from the engine's run history (by the engine run number
//!   journaled when the step started); it is reported `unknown` only when that is impossible.
//! - **Nothing lost**: every event is journaled with a per-agent sequence number and replayed
//!   until the controller acknowledges it. An event the journal refuses (full disk) is held in
//!   memory in order and written when it can be; meanwhile new runs are refused and the
//!   heartbeat says why ([`backlog`]).
//! - **Engine rules first**: see [`executor`] for the locks taken before every step.
//! - **Observable runs**: each run executes in a `run` span that continues the controller's trace
//!   (`StartRun.traceparent`), each step in a child `step` span with the MA, run profile, raw
//!   result and counters; log lines about a run carry `run_id` and `trace_id` ([`telemetry`]).
//!   Heartbeats carry every MA's pending counters, read in the background.
//!
//! Entry points: [`run`], used by the `syncfleet-agent` binary, and [`run_sharing_process`],
//! used by the controller's `dev` mode for its in-process agents.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]
#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "unit tests time their own code with the real clock"
    )
)]

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub mod autonomy;
pub mod backlog;
pub mod change;
pub mod config;
pub mod connect_gate;
pub mod engine;
pub mod event_ids;
pub mod eventlog;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "the Event Log API (RegisterEventSourceW, ReportEventW) is called through FFI"
)]
pub mod eventlog_win;
pub mod executor;
pub mod housekeeping;
pub mod identity;
pub mod inventory;
pub mod journal;
pub mod paths;
pub mod protect;
pub mod report;
pub mod service;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "the SCM dispatcher's entry point (define_windows_service!) is an FFI callback"
)]
pub mod service_scm;
pub mod service_setup;
pub mod session;
pub mod telemetry;

pub use config::AgentConfig;

/// Failures that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Tls(#[from] identity::channel::ChannelError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Scheduler(#[from] engine::adsync::SchedulerError),
}

/// Build the engine driver named by the configuration.
pub fn build_engine(cfg: &AgentConfig) -> Result<Arc<dyn engine::SyncEngine>, AgentError> {
    match &cfg.engine {
        config::EngineConfig::Sim {
            server,
            time_scale,
            sim,
            sim_file,
            ..
        } => {
            let mut sim_cfg = match (sim_file, sim) {
                (Some(path), _) => engine::sim::SimConfig::from_toml_file(path)?,
                (None, Some(s)) => (**s).clone(),
                (None, None) => engine::sim::SimConfig::example(*server),
            };
            if let Some(t) = time_scale {
                sim_cfg.time_scale = *t;
            }
            Ok(Arc::new(engine::sim::SimEngine::try_new(sim_cfg)?))
        }
        config::EngineConfig::Adsync(a) => Ok(engine::adsync::build(a.clone())?),
        #[cfg(windows)]
        config::EngineConfig::MimWmi(wmi) => Ok(engine::wmi::build(wmi.clone())?),
        #[cfg(not(windows))]
        config::EngineConfig::MimWmi(_) => Err(AgentError::Config(config::ConfigError::Invalid {
            key: "engine.kind",
            problem: "the mim-wmi driver exists only on Windows".into(),
            fix: "use kind = \"sim\" on this platform".into(),
        })),
    }
}

/// Run the agent until `shutdown` is cancelled, with the engine built from the configuration:
/// the `syncfleet-agent` process, alone in its process and telling the service manager when it
/// is ready.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_built(cfg, connect_gate::ConnectGate::open(), shutdown, true).await
}

/// [`run`] for one of several agents sharing a process (`dev`'s simulated fleet): they take
/// turns through `gate` to open their sessions ([`connect_gate`]), and none speaks for the
/// process to the service manager.
pub async fn run_sharing_process(
    cfg: AgentConfig,
    gate: connect_gate::ConnectGate,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    run_built(cfg, gate, shutdown, false).await
}

async fn run_built(
    cfg: AgentConfig,
    gate: connect_gate::ConnectGate,
    shutdown: CancellationToken,
    notify_service_manager: bool,
) -> Result<(), AgentError> {
    let name = cfg.name.clone();
    telemetry::in_agent(&name, async move {
        cfg.validate()?;
        let engine = build_engine(&cfg)?;
        take_over_engine(&cfg).await?;
        run_agent(cfg, engine, gate, shutdown, notify_service_manager).await
    })
    .await
}

/// What the engine needs before the agent drives it: on Entra Connect, the built-in sync cycle
/// is switched off (or the agent refuses to start). An agent without its TLS files can never
/// connect, so it stops before changing the engine.
async fn take_over_engine(cfg: &AgentConfig) -> Result<(), AgentError> {
    if let config::EngineConfig::Adsync(a) = &cfg.engine {
        identity::channel::client_tls(cfg)?;
        let runner = engine::adsync::ProcessRunner::new(a.clone());
        engine::adsync::take_over_builtin_scheduler(&runner, a, &cfg.data_dir).await?;
    }
    Ok(())
}

/// Run the agent with a given engine driver (tests and `dev` mode use this with `sim`). Every
/// line it logs and every span it opens carries `agent=<name>` ([`telemetry::in_agent`]).
pub async fn run_with_engine(
    cfg: AgentConfig,
    engine: Arc<dyn engine::SyncEngine>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let name = cfg.name.clone();
    telemetry::in_agent(
        &name,
        run_agent(
            cfg,
            engine,
            connect_gate::ConnectGate::open(),
            shutdown,
            false,
        ),
    )
    .await
}

/// With `notify_service_manager`, the agent tells systemd (`Type=notify`) it is ready when its
/// journal is open, interrupted runs are recovered and autonomy and housekeeping run, just
/// before its first session attempt; and that it is stopping at shutdown. Readiness does not
/// wait for the controller: the agent does its work without one (autonomy), so a controller
/// that is down must neither hold up nor fail the agent's start. Only the `run` of the
/// `syncfleet-agent` process sends them; several agents in one process (`dev`, tests) do not.
async fn run_agent(
    mut cfg: AgentConfig,
    engine: Arc<dyn engine::SyncEngine>,
    gate: connect_gate::ConnectGate,
    shutdown: CancellationToken,
    notify_service_manager: bool,
) -> Result<(), AgentError> {
    cfg.validate()?;
    // With a `controllers` list, calls outside a session (renewal) start at its first entry.
    if cfg.controller.is_empty()
        && let Some(first) = cfg.controllers.first()
    {
        cfg.controller = first.clone();
    }
    // Labels assigned at enrollment win over configured ones.
    let cfg = identity::enroll::with_enrolled_labels(cfg);
    // Finish an interrupted renewal, then keep the certificate renewed while the agent runs.
    let live = identity::channel::LiveChannel::default();
    let _renewal = identity::renew::spawn(&cfg, &shutdown, &live);
    // Fail fast on missing TLS files: an agent without credentials can never connect.
    identity::channel::client_tls(&cfg)?;
    let journal = Arc::new(journal::Journal::open(&cfg.journal_path())?);
    let outbox = Arc::new(tokio::sync::Notify::new());
    let executor = Arc::new(executor::Executor::new(
        Arc::clone(&engine),
        Arc::clone(&journal),
        Arc::clone(&outbox),
        cfg.executor.clone(),
    ));
    let interrupted = executor.recover_interrupted()?;
    if interrupted > 0 {
        tracing::warn!(
            count = interrupted,
            "runs interrupted by the last restart reported as unknown"
        );
    }
    tracing::info!(
        event_id = event_ids::EventId::AgentStarted.code(),
        name = %cfg.name,
        controller = %cfg.controller,
        "agent starting"
    );
    let autonomy = autonomy::Autonomy::open(
        &cfg.name,
        cfg.autonomy_after,
        syncfleet_proto::schedule_model::Clock::System,
        Arc::clone(&journal),
        Arc::clone(&executor),
        Arc::clone(&outbox),
    )?;
    let autonomy_task = tokio::spawn(Arc::clone(&autonomy).run(shutdown.clone()));
    let changes = change::Watcher::new(
        Arc::clone(&journal),
        Arc::clone(&outbox),
        cfg.credentials.clone(),
    );
    let changes_task =
        tokio::spawn(Arc::clone(&changes).run(autonomy.subscribe_set(), shutdown.clone()));
    let (older_than, every) = cfg.engine.clear_runs();
    let housekeeping = housekeeping::Housekeeping::new(
        Arc::clone(&engine),
        Arc::clone(&journal),
        older_than,
        every,
    );
    let housekeeping_task = tokio::spawn(Arc::clone(&housekeeping).run(shutdown.clone()));
    let ctx = Arc::new(session::SessionContext {
        cfg,
        live,
        engine,
        journal,
        executor,
        outbox,
        autonomy,
        housekeeping,
        changes,
        gate,
    });
    if notify_service_manager {
        syncfleet_proto::service_manager::stopping_on(&shutdown, "stopping");
        syncfleet_proto::service_manager::ready(&format!(
            "running: journal {}, connecting to {}",
            ctx.cfg.journal_path().display(),
            ctx.cfg.controller
        ));
    }
    session::run_forever(ctx, shutdown).await;
    // The tasks end with the shutdown; their outcomes carry nothing.
    let _ = autonomy_task.await;
    let _ = housekeeping_task.await;
    let _ = changes_task.await;
    tracing::info!(
        event_id = event_ids::EventId::AgentStopped.code(),
        "agent stopped"
    );
    Ok(())
}
