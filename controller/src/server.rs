//! Serving: bind the gRPC (mTLS) and HTTP listeners, start the fleet logic, run until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use syncfleet_proto::v1::{
    agent_service_server::AgentServiceServer, fleet_service_server::FleetServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::ControllerConfig;
use crate::fleet::{Fleet, Settings};
use crate::services::{AgentSvc, FleetSvc};
use crate::store::{Store, StoreError, sqlite::SqliteStore};

/// Largest gRPC message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Failures that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot read {what} {path}: {source}; run 'syncfleet-controller init --data-dir DIR' first, or set tls.{key}"
    )]
    Tls {
        what: &'static str,
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} ({what}): {source}; is another process using it? change {what}"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS setup failed: {0}")]
    Tls2(String),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("{0}")]
    Pki(#[from] crate::pki::PkiError),
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

fn read(
    what: &'static str,
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::Tls {
        what,
        key,
        path: path.display().to_string(),
        source,
    })
}

/// Run the controller until `shutdown`. `on_bound` receives the bound addresses once both
/// listeners are up.
pub async fn serve(
    cfg: ControllerConfig,
    shutdown: CancellationToken,
    on_bound: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), ServeError> {
    serve_with(cfg, shutdown, on_bound, Vec::new()).await
}

/// [`serve`], first applying `seed` fleet documents (as `syncfleet apply` would; `dev` mode
/// loads its example fleet this way).
pub async fn serve_with(
    cfg: ControllerConfig,
    shutdown: CancellationToken,
    on_bound: Option<tokio::sync::oneshot::Sender<Bound>>,
    seed: Vec<syncfleet_proto::v1::FleetDocument>,
) -> Result<(), ServeError> {
    cfg.validate()?;
    let ca = read("the CA certificate", "ca_cert", &cfg.ca_cert_path())?;
    let cert = read("the controller certificate", "cert", &cfg.cert_path())?;
    let key = read("the controller key", "key", &cfg.key_path())?;
    let grpc_listener =
        TcpListener::bind(cfg.grpc_listen)
            .await
            .map_err(|source| ServeError::Bind {
                what: "grpc_listen",
                addr: cfg.grpc_listen,
                source,
            })?;
    let http_listener =
        TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|source| ServeError::Bind {
                what: "http_listen",
                addr: cfg.http_listen,
                source,
            })?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().map_err(ServeError::Http)?,
        http: http_listener.local_addr().map_err(ServeError::Http)?,
    };

    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&cfg.store_path())?);
    let fleet = Fleet::new(
        store,
        Settings {
            heartbeat_interval: cfg.heartbeat_interval,
            agent_lost_after: cfg.agent_lost_after,
            pending_deadline: cfg.pending_deadline,
        },
    );
    fleet.reset_sessions_after_restart().await;
    let scheduler = crate::schedule::scheduler::Scheduler::new(
        Arc::clone(&fleet),
        crate::schedule::scheduler::Clock::System,
    );
    // Subscribes to run updates before anything can create a run (seed, scheduler, gRPC).
    let metrics = crate::metrics::Metrics::start(
        Arc::clone(&fleet),
        Arc::clone(&scheduler),
        shutdown.clone(),
    );
    if !seed.is_empty() {
        let req = syncfleet_proto::v1::ApplyRequest {
            documents: seed,
            dry_run: false,
            prune: false,
            // The example fleet is applied before any agent reconnects; problems are logged.
            force: true,
        };
        match crate::operations::apply(&fleet, &scheduler, &req, "syncfleet-controller").await {
            Ok(r) => {
                for w in &r.warnings {
                    tracing::warn!(place = %w.place, "{}", w.message);
                }
                tracing::info!(changes = r.changes.len(), "example fleet documents applied");
            }
            Err(e) => tracing::error!(error = %e.message(), "example fleet documents rejected"),
        }
    }
    let scheduler_task = tokio::spawn(Arc::clone(&scheduler).run(shutdown.clone()));

    // Client certificates are optional at the TLS layer so that health checks and enrollment
    // work without one; every other syncfleet method requires one (services::caller). A
    // certificate that is presented must chain to the fleet CA, or the handshake fails — and is
    // audited (see `accept_tls`).
    let tls = tls_server_config(&ca, &cert, &key)?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<AgentSvc>>()
        .await;
    health_reporter
        .set_serving::<FleetServiceServer<FleetSvc>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(syncfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(syncfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let ca = crate::pki::Ca::load(&cfg.pki_dir(), &cfg.fleet)?;
    let security = Arc::new(crate::security::Security::new(
        Arc::clone(&fleet),
        Arc::new(ca),
        cfg.fleet.clone(),
        cfg.agent_cert_lifetime,
    ));
    let agent_svc = AgentServiceServer::new(AgentSvc {
        fleet: Arc::clone(&fleet),
        fleet_name: cfg.fleet.clone(),
        security: Arc::clone(&security),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let enroll_svc = syncfleet_proto::v1::enroll_service_server::EnrollServiceServer::new(
        crate::services::EnrollSvc {
            security: Arc::clone(&security),
        },
    )
    .max_decoding_message_size(64 * 1024);
    let fleet_svc = FleetServiceServer::new(FleetSvc {
        fleet: Arc::clone(&fleet),
        scheduler: Arc::clone(&scheduler),
        security: Arc::clone(&security),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let sweeper = {
        let fleet = Arc::clone(&fleet);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => fleet.sweep().await,
                    () = stop.cancelled() => return,
                }
            }
        })
    };

    let http = {
        let stop = shutdown.clone();
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            // `/metrics`, and `/readyz` (ready when the store answers).
            .merge(crate::metrics::routes(metrics));
        tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    tracing::info!(grpc = %bound.grpc, http = %bound.http, fleet = %cfg.fleet, "controller listening");
    if let Some(tx) = on_bound {
        let _ = tx.send(bound);
    }
    let incoming = accept_tls(
        grpc_listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        Arc::clone(&security),
        shutdown.clone(),
    );
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent_svc)
        .add_service(enroll_svc)
        .add_service(fleet_svc)
        .serve_with_incoming_shutdown(incoming, {
            let stop = shutdown.clone();
            async move { stop.cancelled().await }
        });
    // Agent sessions are endless streams that a graceful stop would wait for forever: give them
    // a moment after shutdown, then stop anyway (the process exits and flushes its traces).
    let result = tokio::select! {
        r = grpc => r,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        } => Ok(()),
    };
    shutdown.cancel();
    sweeper.abort();
    scheduler_task.abort();
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result?;
    tracing::info!("controller stopped");
    Ok(())
}

/// rustls server configuration: TLS 1.2 and 1.3 only (rustls has nothing older), HTTP/2, the
/// controller's certificate chain, and optional client certificates that must chain to the CA.
fn tls_server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::ServerConfig, ServeError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ServeError::Tls2(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let c = c.map_err(|e| bad("CA certificate", &e))?;
        roots.add(c).map_err(|e| bad("CA certificate", &e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| bad("client verifier", &e))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("controller certificate", &e))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| bad("controller key", &e))?
        .ok_or_else(|| bad("controller key", &"no private key in the file"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad("controller certificate", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Handshake failures audited per peer address per minute at most (a scanner must not flood
/// the audit log).
const HANDSHAKE_AUDITS_PER_MINUTE: u32 = 5;

/// Accept TCP connections and complete TLS handshakes (bounded to 10 s each), handing good
/// ones to the gRPC server and auditing refused ones (no chain to the fleet CA, expired,
/// self-signed).
fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    security: Arc<crate::security::Security>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let audited: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (i64, u32)>>> =
        Arc::default();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let security = Arc::clone(&security);
            let audited = Arc::clone(&audited);
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        let minute = chrono::Utc::now().timestamp() / 60;
                        let audit = {
                            let mut m = audited.lock().unwrap_or_else(|p| p.into_inner());
                            m.retain(|_, (t, _)| *t == minute);
                            let e = m.entry(peer.ip()).or_insert((minute, 0));
                            e.1 += 1;
                            e.1 <= HANDSHAKE_AUDITS_PER_MINUTE
                        };
                        if audit {
                            security
                                .audit(
                                    "anonymous",
                                    "TlsHandshake",
                                    "",
                                    "denied",
                                    &format!("TLS handshake refused: {e}"),
                                    "",
                                    &peer.to_string(),
                                )
                                .await;
                        }
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
