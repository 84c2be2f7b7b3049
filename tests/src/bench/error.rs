//! What can stop a benchmark: every wait is bounded and names what did not happen.

use std::time::Duration;

/// Why `fleet-bench` stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bounded wait ran out; `what` names what did not happen.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {status}")]
    Rpc {
        what: String,
        #[source]
        status: tonic::Status,
    },
    #[error("cannot connect to the controller at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    pub fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> BenchError {
        let what = what.into();
        move |status| BenchError::Rpc { what, status }
    }
}

/// Result of a benchmark step.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Polls `check` every 10 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_until<T>(
    what: impl Into<String>,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Timeout(timeout, what.into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
