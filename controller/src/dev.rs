//! `syncfleet-controller dev`: a whole fleet in one process (design decision 12).
//!
//! The controller runs with its own CA, a temporary store (unless `--data-dir`), and N
//! in-process agents on simulated engines, each a different server, connected over real
//! loopback gRPC with mTLS — the same code paths as production. A `dev` context is written into
//! the CLI config so `syncfleet` works from another terminal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use syncfleet_agent::AgentConfig;
use syncfleet_agent::config::{EngineConfig, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::cli::config::{Context, default_config_path, upsert_context};
use crate::config::ControllerConfig;
use crate::init;
use crate::server::{self, ServeError};

/// Options of `dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub agents: usize,
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// CLI config file to write the `dev` context into; default: the CLI's default path.
    pub cli_config: Option<PathBuf>,
    /// Simulated engine duration multiplier.
    pub time_scale: f64,
    /// Load the example fleet (`deploy/examples/fleet.yaml`): sequences and schedules.
    pub example_fleet: bool,
}

/// The example fleet file shipped in `deploy/examples/`, compiled in so `dev` works from any
/// folder.
pub const EXAMPLE_FLEET: &str = include_str!("../../deploy/examples/fleet.yaml");

/// The example fleet as API documents.
pub fn example_documents() -> Result<Vec<syncfleet_proto::v1::FleetDocument>, DevError> {
    let docs = crate::fleetfile::parse_str("deploy/examples/fleet.yaml", EXAMPLE_FLEET)
        .map_err(|e| DevError::Example(e.to_string()))?;
    Ok(docs
        .into_iter()
        .map(|d| syncfleet_proto::v1::FleetDocument {
            kind: d.doc.kind().to_string(),
            name: d.doc.name().to_string(),
            json: crate::fleetfile::canonical_json(&d.doc),
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
            cli_config: None,
            time_scale: 0.05,
            example_fleet: true,
        }
    }
}

/// `dev` failures.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--agents must be between 1 and 50 (got {0})")]
    Agents(usize),
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    CliConfig(#[from] crate::cli::config::ConfigError),
    #[error("the controller stopped before it was ready")]
    NotReady,
    #[error("the built-in example fleet is invalid: {0}")]
    Example(String),
}

/// Run a dev fleet until `shutdown`.
pub async fn run_dev(opts: DevOptions, shutdown: CancellationToken) -> Result<(), DevError> {
    if opts.agents == 0 || opts.agents > 50 {
        return Err(DevError::Agents(opts.agents));
    }
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
        ..ControllerConfig::default()
    };
    // Locked before `init` writes credentials into it: a data directory another controller
    // serves is left alone.
    let lock = server::DataDirLock::acquire(&data_dir)?;
    let (ca, out) = init::init(&cfg, "dev-admin")?;

    let seed = if opts.example_fleet {
        example_documents()?
    } else {
        Vec::new()
    };
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
    for i in 0..opts.agents {
        let name = format!("sync-{:02}", i + 1);
        let dir = data_dir.join("agents").join(&name);
        init::issue_agent_files(&ca, &name, &dir, Duration::from_secs(30 * 86_400))?;
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("env".to_string(), "dev".to_string());
        let role = if opts.agents > 1 && i + 1 == opts.agents {
            "staging"
        } else {
            "primary"
        };
        labels.insert("role".to_string(), role.to_string());
        let agent_cfg = AgentConfig {
            name: name.clone(),
            controller: url.clone(),
            data_dir: dir,
            labels,
            tls: TlsFiles::default(),
            engine: EngineConfig::Sim {
                server: i,
                time_scale: Some(opts.time_scale),
                sim: None,
                sim_file: None,
            },
            reconnect_max_backoff: Duration::from_secs(5),
            executor: syncfleet_agent::executor::ExecutorOptions::default(),
        };
        let stop = shutdown.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = syncfleet_agent::run(agent_cfg, stop).await {
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
                ca_cert: out.ca_cert.clone(),
                client_cert: out.operator_cert.clone(),
                client_key: out.operator_key.clone(),
                tls_server_name: None,
            },
            true,
        )?;
    }
    eprintln!(
        "syncfleet dev fleet is up: controller {url} (http://{}), {} simulated agents, data in {}",
        bound.http,
        opts.agents,
        data_dir.display()
    );
    if let Some(path) = &cli_path {
        eprintln!("CLI context \"dev\" written to {}", path.display());
    }
    eprintln!(
        "try:\n  syncfleet agents list\n  syncfleet agents show sync-01\n  syncfleet run sync-01 --step \"AD:Delta Import\" --step \"AD:Delta Sync\" --follow\n  syncfleet get schedules\n  syncfleet schedules show delta-every-3m\n  syncfleet run sync-02 --sequence delta-cycle --follow\n  syncfleet runs list\nCtrl-C stops the fleet{}.",
        if temp.is_some() {
            " and deletes its temporary data"
        } else {
            ""
        }
    );

    let result = controller.await;
    shutdown.cancel();
    for a in agents {
        let _ = a.await;
    }
    drop(temp);
    match result {
        Ok(r) => r.map_err(DevError::from),
        Err(_) => Err(DevError::NotReady),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_fleet_is_valid() {
        let docs = crate::fleetfile::parse_str("fleet.yaml", EXAMPLE_FLEET).unwrap();
        crate::fleetfile::validate(&docs, &Default::default()).unwrap();
        assert_eq!(docs.len(), 6);
        assert_eq!(example_documents().unwrap().len(), 6);
    }
}
