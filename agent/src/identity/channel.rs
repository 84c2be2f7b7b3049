//! The mTLS channel to the controller, built from the identity files at every connect so that a
//! renewed certificate is picked up. The session and certificate renewal both use it; while a
//! session is open, renewal rides that session's connection ([`LiveChannel`]).

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;

/// How long the session waits for an answer to its HTTP/2 keep-alive ping before it counts the
/// controller as gone: the agent's heartbeat timeout.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the session pings the controller. A controller that hangs (stopped process, lost
/// host) without closing the connection is noticed after at most this plus
/// [`KEEP_ALIVE_TIMEOUT`] (30 s), so the agent moves to the new leader, or starts firing on its
/// own, without waiting for TCP to give up. A ping is a few bytes per agent.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Why no channel to the controller could be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot read {what} {path}: {source}")]
    ReadTls {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid controller address {0:?}: {1}")]
    BadUrl(String, String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// TLS material read from disk at every connect, so renewed certificates are picked up.
pub fn client_tls(cfg: &AgentConfig) -> Result<ClientTlsConfig, ChannelError> {
    // Never read a renewed key with the certificate it replaces.
    let _files = super::files::files_lock();
    let read = |what, path: std::path::PathBuf| {
        std::fs::read(&path).map_err(|source| ChannelError::ReadTls {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let ca = read("CA certificate", cfg.ca_cert_path())?;
    let cert = read("agent certificate", cfg.cert_path())?;
    let key = read("agent key", cfg.key_path())?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(name) = &cfg.tls.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// An mTLS channel to the controller with the current credentials (sessions and renewals).
pub async fn connect(cfg: &AgentConfig) -> Result<Channel, ChannelError> {
    let tls = client_tls(cfg)?;
    let endpoint = Endpoint::from_shared(cfg.controller.clone())
        .map_err(|e| ChannelError::BadUrl(cfg.controller.clone(), e.to_string()))?
        .tls_config(tls)
        .map_err(|e| ChannelError::BadUrl(cfg.controller.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .map_err(|source| ChannelError::Connect {
            url: cfg.controller.clone(),
            source,
        })
}

/// The channel of the open session, if any: other calls (certificate renewal) ride the same
/// HTTP/2 connection instead of opening a new one.
pub type LiveChannel = Arc<std::sync::Mutex<Option<Channel>>>;

pub fn set_live(live: &LiveChannel, channel: Option<Channel>) {
    // The slot holds a cheap handle; a poisoned lock still holds a valid value.
    *live.lock().unwrap_or_else(|p| p.into_inner()) = channel;
}

/// The open session's channel, if there is one.
pub fn live_channel(live: &LiveChannel) -> Option<Channel> {
    live.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
