//! Connecting to the controller, and turning transport and gRPC failures into one clear line.
//!
//! The channel is mTLS only: the context's CA verifies the server (as `tls_server_name`, else
//! the URL's host) and the operator certificate identifies the caller. The connection is made
//! eagerly with a short timeout so "controller not running" is reported at once, naming the URL,
//! instead of surfacing later as an opaque `Unavailable` from the first call.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use syncfleet_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::contexts::{ResolvedContext, io_message, strip_os_error};

/// How long to wait for TCP + TLS before giving up on the controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected FleetService client.
pub type Client = FleetServiceClient<Channel>;

/// Why the CLI could not get a working channel to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A certificate or key file of the context cannot be read.
    #[error(
        "cannot read {field} {} of context \"{context}\" (from {}): {}; fix the path or recreate the credentials (a dev fleet writes fresh ones)",
        path.display(), config.display(), io_message(source)
    )]
    CredentialFile {
        field: &'static str,
        path: PathBuf,
        context: String,
        config: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The context's credentials are gone and nothing listens at its controller address: what
    /// is left behind by a `dev` fleet that stopped (it deletes its temporary data).
    #[error(
        "the controller {url} of context \"{context}\" is not running (nothing listens there) and its credentials are gone ({} does not exist); a `syncfleet dev` fleet deletes them when it stops: start it again, or pick another context with --context",
        missing.display()
    )]
    NotRunning {
        url: String,
        context: String,
        missing: PathBuf,
    },
    /// The controller URL was refused by the transport.
    #[error(
        "invalid controller URL \"{url}\" in context \"{context}\": {cause}; set controller = \"https://HOST:PORT\""
    )]
    Url {
        url: String,
        context: String,
        cause: String,
    },
    /// The CA certificate, client certificate or key could not be used.
    #[error(
        "unusable TLS credentials in context \"{context}\" (from {}): {cause}; check that ca_cert, client_cert and client_key are PEM files of a CA, an X.509 v3 certificate and its private key",
        config.display()
    )]
    Credentials {
        context: String,
        config: PathBuf,
        cause: String,
    },
    /// The TLS handshake failed (wrong CA, name mismatch, rejected client certificate).
    #[error(
        "TLS handshake with controller {url} failed: {cause}; check ca_cert, client_cert, client_key and tls_server_name of context \"{context}\""
    )]
    Tls {
        url: String,
        context: String,
        cause: String,
    },
    /// TCP connect failed or timed out.
    #[error(
        "cannot reach controller {url} (context \"{context}\"): {cause}; is syncfleet-controller running?"
    )]
    Unreachable {
        url: String,
        context: String,
        cause: String,
    },
}

/// Reads the context's credentials and connects to the first of its controllers that answers
/// (several share one store; every one serves the operator API), failing within about
/// [`CONNECT_TIMEOUT`] per controller. An unreachable controller moves on to the next; any
/// other failure (credentials, TLS) is reported at once.
pub async fn connect(rc: &ResolvedContext) -> Result<Client, ConnectError> {
    let mut unreachable = None;
    for url in rc.context.urls() {
        match connect_to(rc, &url).await {
            Ok(client) => return Ok(client),
            Err(e @ (ConnectError::Unreachable { .. } | ConnectError::NotRunning { .. })) => {
                unreachable = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    match unreachable {
        Some(e) => Err(e),
        None => connect_to(rc, &rc.context.controller).await,
    }
}

/// [`connect`] to the controller at `url`.
async fn connect_to(rc: &ResolvedContext, url: &str) -> Result<Client, ConnectError> {
    let ctx = &rc.context;
    let read = |field: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ConnectError::CredentialFile {
            field,
            path: path.to_path_buf(),
            context: rc.name.clone(),
            config: rc.config_path.clone(),
            source,
        })
    };
    let files = read("ca_cert", &ctx.ca_cert).and_then(|ca| {
        Ok((
            ca,
            read("client_cert", &ctx.client_cert)?,
            read("client_key", &ctx.client_key)?,
        ))
    });
    let (ca, cert, key) = match files {
        Ok(files) => files,
        Err(ConnectError::CredentialFile { path, source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !listening(url).await =>
        {
            return Err(ConnectError::NotRunning {
                url: url.to_string(),
                context: rc.name.clone(),
                missing: path,
            });
        }
        Err(e) => return Err(e),
    };

    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .timeout(CONNECT_TIMEOUT);
    if let Some(name) = &ctx.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ConnectError::Url {
            url: url.to_string(),
            context: rc.name.clone(),
            cause: cause_of(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .tls_config(tls)
        .map_err(|e| ConnectError::Credentials {
            context: rc.name.clone(),
            config: rc.config_path.clone(),
            cause: cause_of(&e),
        })?;
    // tonic's own timeout covers TCP and (via the TLS config) the handshake; this outer one is a
    // backstop so the CLI never hangs on a half-open peer.
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), endpoint.connect()).await;
    let channel = match connected {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => return Err(classify(url, &rc.name, &e)),
        Err(_) => {
            return Err(ConnectError::Unreachable {
                url: url.to_string(),
                context: rc.name.clone(),
                cause: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            });
        }
    };
    Ok(FleetServiceClient::new(channel))
}

/// Whether something accepts TCP connections at the controller URL's host and port (false when
/// the URL cannot be parsed or nothing answers within [`CONNECT_TIMEOUT`]).
async fn listening(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    matches!(
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Sorts a transport failure into TLS vs unreachable, with a short cause.
fn classify(url: &str, context: &str, e: &(dyn StdError + 'static)) -> ConnectError {
    let cause = cause_of(e);
    if cause.to_ascii_lowercase().contains("handshake timeout") {
        // TCP connected but nobody spoke TLS: something else listens on that port, or the
        // controller is wedged. Not a credentials problem, so do not send the operator there.
        return ConnectError::Unreachable {
            url: url.to_string(),
            context: context.to_string(),
            cause: format!(
                "the port accepted the connection but no TLS handshake completed within {}s (wrong port?)",
                CONNECT_TIMEOUT.as_secs()
            ),
        };
    }
    if is_tls_failure(e) {
        ConnectError::Tls {
            url: url.to_string(),
            context: context.to_string(),
            cause,
        }
    } else {
        ConnectError::Unreachable {
            url: url.to_string(),
            context: context.to_string(),
            cause,
        }
    }
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&e| e.source())
}

fn is_tls_failure(e: &(dyn StdError + 'static)) -> bool {
    chain(e).any(|e| {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        let m = e.to_string().to_ascii_lowercase();
        m.contains("certificate") || m.contains("handshake") || m.contains("tls")
    })
}

/// The most specific human cause in an error chain: the innermost message, with well-known
/// socket errors phrased plainly ("connection refused") and the OS error number dropped.
pub fn cause_of(e: &(dyn StdError + 'static)) -> String {
    for err in chain(e) {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let plain = match io.kind() {
                K::ConnectionRefused => Some("connection refused"),
                K::TimedOut => Some("connection timed out"),
                K::ConnectionReset => Some("connection reset by peer"),
                K::ConnectionAborted => Some("connection aborted"),
                K::AddrNotAvailable => Some("address not available"),
                _ => None,
            };
            if let Some(p) = plain {
                return p.to_string();
            }
        }
    }
    let innermost = chain(e).last().map(|e| e.to_string()).unwrap_or_default();
    let innermost = strip_os_error(&innermost).trim_end_matches('.').to_string();
    let lower = innermost.to_ascii_lowercase();
    if lower.contains("failed to lookup address") || lower.contains("name or service not known") {
        return format!("cannot resolve host ({innermost})");
    }
    if lower == "timeout expired" || lower == "deadline has elapsed" {
        return format!("no answer within {}s", CONNECT_TIMEOUT.as_secs());
    }
    if innermost.is_empty() {
        e.to_string()
    } else {
        innermost
    }
}

/// Short form of a status for retry notices: `message (Code)`, or for transport failures the
/// plain cause (`connection refused (Unavailable)`).
pub fn brief_status(status: &tonic::Status) -> String {
    let msg = match StdError::source(status) {
        Some(src) => cause_of(src),
        None if status.message().is_empty() => status.code().description().to_string(),
        None => status.message().to_string(),
    };
    format!("{msg} ({:?})", status.code())
}

/// One line for a failed RPC: the server's message and the gRPC code name, with a hint for codes
/// that usually mean a configuration problem. `Unavailable` (the channel lost the controller
/// after connecting) names the controller URL like a connect failure does.
pub fn describe_status(status: &tonic::Status, url: &str) -> String {
    use tonic::Code;
    let msg = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    let code = status.code();
    match code {
        Code::Unavailable => {
            let cause = match StdError::source(status) {
                Some(src) => cause_of(src),
                None => msg,
            };
            format!(
                "cannot reach controller {url}: {cause} ({code:?}); is syncfleet-controller running?"
            )
        }
        Code::Unauthenticated => format!(
            "{msg} ({code:?}); the controller refused this operator certificate: check client_cert/client_key of the context"
        ),
        // Authenticated, but the operator's role lacks the permission (the message names it).
        Code::PermissionDenied => format!(
            "{msg} ({code:?}); this operator's role does not allow it: ask an admin, who can issue a credential with another role ('syncfleet operators create NAME --role ...')"
        ),
        Code::Unimplemented => format!(
            "{msg} ({code:?}); the controller does not support this call — is it older than this CLI?"
        ),
        Code::DeadlineExceeded => {
            format!("{msg} ({code:?}); the controller did not answer in time")
        }
        _ => format!("{msg} ({code:?})"),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn refused_io_error_is_plain() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(cause_of(&io), "connection refused");
    }

    #[test]
    fn status_lines_name_message_and_code() {
        let s = tonic::Status::not_found("no agent \"x\"");
        assert_eq!(
            describe_status(&s, "https://h:1"),
            "no agent \"x\" (NotFound)"
        );
        let s = tonic::Status::unavailable("");
        let line = describe_status(&s, "https://h:1");
        assert!(
            line.starts_with("cannot reach controller https://h:1: "),
            "{line}"
        );
    }
}
