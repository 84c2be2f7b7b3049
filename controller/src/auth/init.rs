//! `syncfleet-controller init`: create the CA, the controller's server certificate and a first
//! admin operator credential in the data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ca::{self, Ca, PkiError};
use super::identity::Role;
use crate::config::ControllerConfig;

/// Lifetime of the controller's server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Lifetime of operator certificates issued by `init` and `dev`.
pub const OPERATOR_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Lifetime of agent certificates issued by `init --agent` (enrollment replaces this later).
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitOutput {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub operator_cert: PathBuf,
    pub operator_key: PathBuf,
    pub created_ca: bool,
}

/// Create (or reuse) the CA, (re)issue the server certificate, and issue an operator
/// credential named `operator` under `<data_dir>/pki/operators/`.
pub fn init(cfg: &ControllerConfig, operator: &str) -> Result<(Ca, InitOutput), PkiError> {
    let dir = cfg.pki_dir();
    let created_ca = !dir.join("ca.pem").exists();
    let ca = Ca::load_or_create(&dir, &cfg.fleet)?;
    let mut server = ca.issue_server(&cfg.server_names, SERVER_CERT_LIFETIME)?;
    // Serve the chain [leaf, CA]: enrolling agents see the CA and check it against their pin.
    server.cert_pem = format!("{}{}", server.cert_pem, ca.cert_pem());
    let (server_cert, _) = ca::write_pair(&dir, "controller", &server)?;
    let op = ca.issue_client(Role::Operator, operator, OPERATOR_CERT_LIFETIME)?;
    let (operator_cert, operator_key) = ca::write_pair(&dir.join("operators"), operator, &op)?;
    Ok((
        ca,
        InitOutput {
            ca_cert: dir.join("ca.pem"),
            server_cert,
            operator_cert,
            operator_key,
            created_ca,
        },
    ))
}

/// Issue an agent credential into `dir` as `agent.pem` / `agent.key` plus `ca.pem` — the
/// layout the agent's defaults expect.
pub fn issue_agent_files(
    ca: &Ca,
    name: &str,
    dir: &Path,
    lifetime: Duration,
) -> Result<(), PkiError> {
    let ck = ca.issue_client(Role::Agent, name, lifetime)?;
    ca::write_pair(dir, "agent", &ck)?;
    ca::write_public(&dir.join("ca.pem"), ca.cert_pem())
}
