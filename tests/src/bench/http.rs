//! The HTTP client of the rows that read the controller's HTTP listener (`/metrics`,
//! `/readyz`): plain HTTP on loopback. reqwest is built without a default TLS provider, so the
//! client is given one explicitly (it is never used for `http://`).

use std::sync::Arc;
use std::time::Duration;

use super::error::{BenchError, Result};

/// A client whose every request is bounded by `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BenchError::Failed(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .build()
        .map_err(|e| BenchError::Failed(format!("cannot build an HTTP client: {e}")))
}
