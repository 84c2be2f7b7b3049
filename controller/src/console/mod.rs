//! The web console: an HTTPS listener of its own (`console.listen`) with the controller's
//! certificate (server-only TLS: no client-certificate request, so browsers never show a
//! certificate picker), serving the embedded front end (`controller/console/`) and a JSON API
//! over the operators' `FleetService`.
//!
//! - Sign-in ([`login`]): one-time links minted for an authenticated operator
//!   (`CreateConsoleLogin`, `syncfleet ui`, `dev`'s banner), exchanged for a session cookie
//!   ([`session`]).
//! - Reads ([`api`]), actions ([`actions`]) and live updates ([`events`]) call `FleetSvc`'s
//!   own `FleetService` methods with the session's operator in a request extension
//!   (`api::authorize::ConsoleCaller`), so the role table, the revocation check and the audit
//!   entries are exactly those of the gRPC API; statuses become HTTP answers in [`error`].
//! - Every mutating request carries the session's CSRF token and, when the browser sends one,
//!   the console's own `Origin` ([`csrf`]); refusals are audited (anonymous ones within
//!   [`budget`]).
//! - The front end's files are embedded in the binary ([`assets`]).
//! - Every response carries the security headers of [`security_headers`].

pub mod actions;
pub mod api;
pub mod assets;
pub mod budget;
pub mod csrf;
pub mod error;
pub mod events;
pub mod login;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::FleetSvc;
use crate::api::authorize::ConsoleCaller;
use crate::auth::Security;
use crate::config::{ConsoleSettings, ControllerConfig};
use crate::store::Store;
use session::Session;

/// Largest request body (actions take a short JSON note).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A client must send a request's headers within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How often expired sessions and sign-in links are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The browser's address, put in each request's extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What the console's handlers share.
pub struct Console {
    pub svc: FleetSvc,
    pub store: Arc<dyn Store>,
    pub security: Arc<Security>,
    pub settings: ConsoleSettings,
    /// The base URL sign-in links use, without a trailing `/` (`https://host:7444`).
    pub base_url: String,
    pub fleet_name: String,
    /// Open live-update streams, at most `console.max_event_streams`.
    pub streams: Arc<Semaphore>,
    /// Audit entries of anonymous refusals, per address per minute.
    pub anonymous_audits: budget::AnonymousAudits,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A `FleetService` request made by the session's operator from `peer`.
    pub fn request<T>(&self, session: &Session, peer: SocketAddr, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.extensions_mut().insert(ConsoleCaller {
            who: session.who(),
            peer,
        });
        req
    }

    /// The request's session, or 401.
    pub async fn session(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Session, error::ConsoleError> {
        session::of_request(self.store.as_ref(), headers, now_ms()).await
    }

    /// Write the audit entry of a refused request (`who` = `anonymous` is limited per address
    /// per minute, see [`budget`]).
    pub async fn audit_refusal(
        &self,
        who: &str,
        action: &str,
        target: &str,
        detail: &str,
        request_id: &str,
        peer: SocketAddr,
    ) {
        if who == "anonymous"
            && !self
                .anonymous_audits
                .admit(peer.ip(), chrono::Utc::now().timestamp() / 60)
        {
            return;
        }
        self.security
            .audit(
                who,
                action,
                target,
                "denied",
                detail,
                request_id,
                &peer.to_string(),
            )
            .await;
    }

    /// The console's own origin (`https://host:port`), which `Origin` headers must match.
    pub fn origin(&self) -> &str {
        &self.base_url
    }
}

/// What `dev` (and tests in the process) need of a running console: where it is and how to
/// mint a sign-in link.
#[derive(Clone)]
pub struct ConsoleHandle {
    pub addr: SocketAddr,
    pub base_url: String,
    pub store: Arc<dyn Store>,
}

impl std::fmt::Debug for ConsoleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHandle")
            .field("addr", &self.addr)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The console's base URL: `console.url`, or `https://` + the first of `server_names` (else
/// `localhost`) + the bound port. A console listening on a loopback address is reached by that
/// address (`localhost` may resolve to the other address family, where nothing listens).
pub fn base_url(cfg: &ControllerConfig, bound: SocketAddr) -> String {
    if let Some(url) = &cfg.console.url {
        return url.trim_end_matches('/').to_string();
    }
    if bound.ip().is_loopback() {
        return format!("https://{bound}");
    }
    let host = cfg
        .server_names
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("https://{host}:{}", bound.port())
}

/// Bind `console.listen`; when it is taken and `ephemeral_if_taken` is set (`dev`), an
/// ephemeral port of the same address instead.
pub async fn bind(settings: &ConsoleSettings) -> std::io::Result<TcpListener> {
    match TcpListener::bind(settings.listen).await {
        Ok(l) => Ok(l),
        Err(e) if settings.ephemeral_if_taken && e.kind() == std::io::ErrorKind::AddrInUse => {
            TcpListener::bind(SocketAddr::new(settings.listen.ip(), 0)).await
        }
        Err(e) => Err(e),
    }
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{*path}", get(assets::asset))
        .route("/login", get(login::login))
        .route("/logout", post(actions::logout))
        .route("/api/session", get(api::session))
        .route("/api/fleet", get(api::fleet))
        .route("/api/agents/{name}", get(api::agent))
        .route("/api/agents/{name}/drain", post(actions::drain_agent))
        .route("/api/agents/{name}/resume", post(actions::resume_agent))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{id}", get(api::run))
        .route("/api/runs/{id}/approve", post(actions::approve_run))
        .route("/api/runs/{id}/reject", post(actions::reject_run))
        .route("/api/runs/{id}/cancel", post(actions::cancel_run))
        .route("/api/timeline", get(api::timeline))
        .route("/api/schedules", get(api::schedules))
        .route("/api/schedules/{name}", get(api::schedule))
        .route("/api/schedules/{name}/pause", post(actions::pause_schedule))
        .route(
            "/api/schedules/{name}/resume",
            post(actions::resume_schedule),
        )
        .route("/api/events", get(events::events))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

async fn not_found(req: Request) -> error::ConsoleError {
    error::ConsoleError::NotFound(format!("no page or API at {}", req.uri().path()))
}

/// The Content-Security-Policy of every response: nothing but the console's own files (no
/// inline script or style, no framing, no foreign form targets).
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Security headers on every response; `Cache-Control: no-store` on the API and the sign-in
/// page (fleet data and credentials stay out of caches).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The sign-in link's token must not leave in a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if path.starts_with("/api/") || path == "/login" || path == "/logout" {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// rustls configuration of the console: the controller's certificate chain and key, no client
/// certificates, HTTP/2 or HTTP/1.1.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("controller certificate: {e}"))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("controller key: {e}"))?
        .ok_or_else(|| "controller key: no private key in the file".to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("controller certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serve the console on `listener` until `shutdown`: TLS handshakes bounded by
/// `handshake_timeout`, at most `console.max_connections` connections, request headers within
/// [`HEADER_READ_TIMEOUT`]; expired sessions and links are swept every minute.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    console: Arc<Console>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(Semaphore::new(
        usize::try_from(console.settings.max_connections).unwrap_or(256),
    ));
    let store = Arc::clone(&console.store);
    let sweeper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let now = now_ms();
                if let Err(e) = session::sweep(store.as_ref(), now).await {
                    tracing::warn!(error = %e, "cannot delete expired console sessions");
                }
                if let Err(e) = crate::auth::console_login::sweep(store.as_ref(), now).await {
                    tracing::warn!(error = %e, "cannot delete expired console sign-in links");
                }
            }
        })
    };
    let app = router(console);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "console: connection refused, console.max_connections reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone().layer(axum::Extension(ClientAddr(peer)));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "console: TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(64);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "console connection ended");
                },
                // Live-update streams never end by themselves.
                () = shutdown.cancelled() => {}
            }
        });
    }
    sweeper.abort();
}
