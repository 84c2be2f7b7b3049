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

use crate::api::{AgentSvc, FleetSvc};
use crate::config::{ControllerConfig, StoreLocation};
use crate::connections::{GuardedConn, LogLimiter};
use crate::fleet::{Fleet, Settings};
use crate::leader::{Leadership, LeaseSettings, Wake};
use crate::schedule::scheduler::Scheduler;
use crate::store::fence;
use crate::store::{Store, StoreError, postgres::PgStore, sqlite::SqliteStore};

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
    Pki(#[from] crate::auth::PkiError),
    #[error(
        "the data directory {dir} is in use by another syncfleet controller (pid {pid}, lock file {lock}); two controllers on one store would both dispatch runs: stop that process first, or give this one its own data directory"
    )]
    Locked {
        dir: String,
        pid: String,
        lock: String,
    },
    #[error("cannot lock the data directory {dir} ({lock}): {source}")]
    Lock {
        dir: String,
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// Exclusive lock on a controller data directory, held as long as the value lives: two
/// controllers on one store would both dispatch runs (split brain). It is an OS file lock on
/// `<data_dir>/controller.lock` (`flock` / `LockFileEx`), so the OS releases it when the
/// process ends in any way, SIGKILL included; the file holds the owner's pid for the message
/// a second controller gets. The file is left in place on exit.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
    path: std::path::PathBuf,
}

impl DataDirLock {
    /// Name of the lock file in the data directory.
    pub const FILE: &'static str = "controller.lock";

    /// Lock `data_dir` (created if missing), or fail naming the pid that holds it.
    pub fn acquire(data_dir: &std::path::Path) -> Result<Self, ServeError> {
        use std::io::Write;
        let path = data_dir.join(Self::FILE);
        let io_err = |source| ServeError::Lock {
            dir: data_dir.display().to_string(),
            lock: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io_err)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // fs4's trait method by its full path: std's inherent `File::try_lock` (Rust 1.89)
        // would shadow it on newer compilers.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(ServeError::Locked {
                    dir: data_dir.display().to_string(),
                    pid,
                    lock: path.display().to_string(),
                });
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The web console, when enabled: its address, base URL and store (to mint sign-in links).
    pub console: Option<crate::console::ConsoleHandle>,
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

/// Run the controller until `shutdown`, holding the lock of its data directory. `on_bound`
/// receives the bound addresses once both listeners are up.
pub async fn serve(
    cfg: ControllerConfig,
    shutdown: CancellationToken,
    on_bound: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), ServeError> {
    cfg.validate()?;
    let lock = DataDirLock::acquire(&cfg.data_dir)?;
    serve_with(cfg, lock, shutdown, on_bound, Vec::new()).await
}

/// [`serve`] with the data directory already locked by the caller (`dev` locks it before it
/// writes credentials there), first applying `seed` fleet documents (as `syncfleet apply`
/// would; `dev` mode loads its example fleet this way).
pub async fn serve_with(
    cfg: ControllerConfig,
    lock: DataDirLock,
    shutdown: CancellationToken,
    on_bound: Option<tokio::sync::oneshot::Sender<Bound>>,
    seed: Vec<syncfleet_proto::v1::FleetDocument>,
) -> Result<(), ServeError> {
    cfg.validate()?;
    tracing::debug!(lock = %lock.path().display(), "data directory locked");
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
    let console_listener = if cfg.console.enabled {
        Some(
            crate::console::bind(&cfg.console)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "console.listen",
                    addr: cfg.console.listen,
                    source,
                })?,
        )
    } else {
        None
    };
    let console_addr = match &console_listener {
        Some(l) => Some(l.local_addr().map_err(ServeError::Http)?),
        None => None,
    };
    let console_url = console_addr.map(|a| crate::console::base_url(&cfg, a));
    let mut bound = Bound {
        grpc: grpc_listener.local_addr().map_err(ServeError::Http)?,
        http: http_listener.local_addr().map_err(ServeError::Http)?,
        console: None,
    };

    let (store, leadership): (Arc<dyn Store>, Leadership) = match cfg.store_location()? {
        StoreLocation::Sqlite(path) => (Arc::new(SqliteStore::open(&path)?), Leadership::single()),
        StoreLocation::Postgres(url) => {
            // Controllers sharing the database compete for the leader lease; only the holder
            // runs leader-only work (see `leader_work`).
            let pg = PgStore::connect(&url).await?;
            let advertise_url = cfg.advertise_url();
            let settings = LeaseSettings {
                holder: format!("{advertise_url} {}", uuid::Uuid::new_v4()),
                advertise_url,
                ttl: cfg.lease_ttl,
            };
            let leadership = Leadership::start(pg.clone(), settings, shutdown.clone());
            (Arc::new(pg), leadership)
        }
    };
    let fleet = Fleet::new(
        store,
        Settings {
            heartbeat_interval: cfg.heartbeat_interval,
            agent_lost_after: cfg.agent_lost_after,
            pending_deadline: cfg.pending_deadline,
        },
    );
    let scheduler = crate::schedule::scheduler::Scheduler::new(
        Arc::clone(&fleet),
        crate::schedule::scheduler::Clock::System,
    );
    // Subscribes to run updates before anything can create a run (seed, scheduler, gRPC).
    let metrics = crate::metrics::Metrics::start(
        Arc::clone(&fleet),
        Arc::clone(&scheduler),
        leadership.clone(),
        &cfg.metrics,
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
        match crate::schedule::documents::apply_documents(
            &fleet,
            &scheduler,
            &req,
            "syncfleet-controller",
        )
        .await
        {
            Ok(r) => {
                for w in &r.warnings {
                    tracing::warn!(place = %w.place, "{}", w.message);
                }
                tracing::info!(changes = r.changes.len(), "example fleet documents applied");
            }
            Err(e) => tracing::error!(error = %e, "example fleet documents rejected"),
        }
    }
    let leader_task = tokio::spawn(leader_work(
        Arc::clone(&fleet),
        Arc::clone(&scheduler),
        leadership.clone(),
        cfg.retention.clone(),
        shutdown.clone(),
    ));

    // Client certificates are optional at the TLS layer so that health checks and enrollment
    // work without one; every other syncfleet method requires one (api::authorize::caller). A
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

    let ca = crate::auth::Ca::load(&cfg.pki_dir(), &cfg.fleet)?;
    let security = Arc::new(crate::auth::Security::new(
        Arc::clone(&fleet),
        Arc::new(ca),
        cfg.fleet.clone(),
        cfg.agent_cert_lifetime,
    ));
    // `init` and `dev` write the admin credential without the store: record it now, so that
    // `operators list` shows it and it can be revoked like any other.
    match security
        .import_operator_files(&cfg.pki_dir().join("operators"))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            count = n,
            "recorded operator certificates of the PKI folder"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the operator certificates of the PKI folder")
        }
    }
    let reflection_guard = reflection_guard(Arc::clone(&security), cfg.fleet.clone());
    let reflection_v1 = tonic::service::interceptor::InterceptedService::new(
        reflection_v1,
        reflection_guard.clone(),
    );
    let reflection_v1alpha =
        tonic::service::interceptor::InterceptedService::new(reflection_v1alpha, reflection_guard);
    let agent_svc = AgentServiceServer::new(AgentSvc {
        fleet: Arc::clone(&fleet),
        fleet_name: cfg.fleet.clone(),
        security: Arc::clone(&security),
        leadership: leadership.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let enroll_svc = syncfleet_proto::v1::enroll_service_server::EnrollServiceServer::new(
        crate::api::EnrollSvc {
            security: Arc::clone(&security),
        },
    )
    .max_decoding_message_size(64 * 1024);
    let fleet_svc_impl = FleetSvc {
        fleet: Arc::clone(&fleet),
        scheduler: Arc::clone(&scheduler),
        security: Arc::clone(&security),
        leadership: leadership.clone(),
        console_url: console_url.clone(),
    };
    let fleet_svc = FleetServiceServer::new(fleet_svc_impl.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    // The web console: its own HTTPS listener, server-only TLS with the controller's
    // certificate, the operators' API behind sessions (crate::console).
    let console_task = match (console_listener, console_addr, console_url) {
        (Some(listener), Some(addr), Some(base_url)) => {
            let console_tls = crate::console::tls_config(&cert, &key).map_err(ServeError::Tls2)?;
            let console = Arc::new(crate::console::Console {
                svc: fleet_svc_impl,
                store: Arc::clone(&fleet.store),
                security: Arc::clone(&security),
                settings: cfg.console.clone(),
                base_url: base_url.clone(),
                fleet_name: cfg.fleet.clone(),
                streams: Arc::new(tokio::sync::Semaphore::new(
                    usize::try_from(cfg.console.max_event_streams).unwrap_or(64),
                )),
                anonymous_audits: Default::default(),
            });
            bound.console = Some(crate::console::ConsoleHandle {
                addr,
                base_url: base_url.clone(),
                store: Arc::clone(&fleet.store),
            });
            tracing::info!(console = %base_url, listen = %addr, "web console listening");
            Some(tokio::spawn(crate::console::serve(
                listener,
                console_tls,
                console,
                cfg.tls_handshake_timeout,
                shutdown.clone(),
            )))
        }
        _ => None,
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
        crate::connections::Limits::from_config(&cfg),
        shutdown.clone(),
    );
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(crate::connections::ActivityLayer)
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
    leader_task.abort();
    if let Some(t) = console_task {
        let _ = t.await;
    }
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result?;
    tracing::info!("controller stopped");
    Ok(())
}

/// Leader-only work for each term this controller leads, until `shutdown`: when leadership is
/// gained, the term's work starts under its epoch ([`leader_term`]); when it is lost (another
/// controller took the lease, a fenced write was refused), the work stops at once.
async fn leader_work(
    fleet: Arc<Fleet>,
    scheduler: Arc<Scheduler>,
    leadership: Leadership,
    retention: crate::config::RetentionSettings,
    shutdown: CancellationToken,
) {
    let mut watch = leadership.subscribe();
    loop {
        let state = watch.borrow_and_update().clone();
        if !state.leader {
            tokio::select! {
                r = watch.changed() => if r.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            continue;
        }
        let epoch = state.epoch;
        tracing::info!(
            epoch,
            "leader: starting the scheduler, dispatch and the sweeper"
        );
        let term = shutdown.child_token();
        let work = tokio::spawn(fence::with_epoch(
            epoch,
            leader_term(
                Arc::clone(&fleet),
                Arc::clone(&scheduler),
                leadership.clone(),
                retention.clone(),
                term.clone(),
            ),
        ));
        let stopping = loop {
            tokio::select! {
                r = watch.changed() => {
                    if r.is_err() {
                        break true;
                    }
                    let s = watch.borrow();
                    if !s.leader || s.epoch != epoch {
                        break false;
                    }
                }
                () = shutdown.cancelled() => break true,
            }
        };
        term.cancel();
        work.abort();
        let _ = work.await;
        if stopping {
            return;
        }
        tracing::warn!(
            epoch,
            "leadership lost: the scheduler, dispatch and the sweeper stopped"
        );
    }
}

/// One leadership term's work, run under its epoch (every write fenced): sessions left in the
/// store by the previous leader reset, the scheduler (loading from the store, catching up fire
/// times missed since), the sweeper (dispatch of due pending runs, deadlines, lost agents)
/// each second, the wake-ups of followers, the notifications (`notify::Notifier::run`) and store
/// retention (`crate::retention`).
async fn leader_term(
    fleet: Arc<Fleet>,
    scheduler: Arc<Scheduler>,
    leadership: Leadership,
    retention: crate::config::RetentionSettings,
    term: CancellationToken,
) {
    fleet.reset_sessions_after_restart().await;
    let sweeper = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => fleet.sweep().await,
                () = term.cancelled() => return,
            }
        }
    };
    let wakes = async {
        let Some(pg) = leadership.shared_store() else {
            return;
        };
        loop {
            match pg.listen().await {
                Ok(mut rx) => loop {
                    let payload = tokio::select! {
                        p = rx.recv() => p,
                        () = term.cancelled() => return,
                    };
                    let Some(payload) = payload else { break };
                    match Wake::parse(&payload) {
                        Some(Wake::Reload) => scheduler.reload(),
                        Some(Wake::Dispatch) => fleet.sweep().await,
                        Some(Wake::Cancel(id)) => fleet.send_stored_cancel(&id).await,
                        None => tracing::warn!(payload, "unknown wake-up notification ignored"),
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot listen for followers' wake-ups"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = term.cancelled() => return,
            }
        }
    };
    let notifier =
        crate::notify::Notifier::new(Arc::clone(&fleet), Arc::clone(&scheduler)).run(term.clone());
    let pruner = crate::retention::run(
        Arc::clone(&fleet.store),
        retention,
        &fleet.retention,
        term.clone(),
    );
    tokio::join!(
        Arc::clone(&scheduler).run(term.clone()),
        sweeper,
        wakes,
        notifier,
        pruner
    );
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

/// Server reflection answers only callers with a certificate of the fleet CA (any role): it
/// is not one of the two services (health, enrollment) open to everyone. Refusals are audited.
fn reflection_guard(
    security: Arc<crate::auth::Security>,
    fleet: String,
) -> impl tonic::service::Interceptor + Clone {
    move |req: tonic::Request<()>| match crate::api::authorize::caller(&req, &fleet) {
        Ok(_) => Ok(req),
        Err(status) => {
            let request_id = uuid::Uuid::new_v4().to_string();
            let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            let security = Arc::clone(&security);
            let detail = status.message().to_string();
            let id = request_id.clone();
            tokio::spawn(async move {
                security
                    .audit(
                        "anonymous",
                        "ServerReflectionInfo",
                        "",
                        "denied",
                        &detail,
                        &id,
                        &peer,
                    )
                    .await;
            });
            Err(crate::api::authorize::status_with_request_id(
                status,
                &request_id,
            ))
        }
    }
}

/// Handshake failures audited per peer address per minute at most (a scanner must not flood
/// the audit log).
const HANDSHAKE_AUDITS_PER_MINUTE: u32 = 5;

/// Accept TCP connections within the connection caps and complete TLS handshakes (bounded by
/// `tls_handshake_timeout`), handing good ones to the gRPC server (with the idle limit for
/// connections without a client certificate, see [`crate::connections`]) and auditing refused
/// ones (no chain to the fleet CA, expired, self-signed).
fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    security: Arc<crate::auth::Security>,
    limits: crate::connections::Limits,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<GuardedConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let audited: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (i64, u32)>>> =
        Arc::default();
    let admission = crate::connections::Admission::new(limits);
    let refused_log = LogLimiter::new(crate::connections::LOG_LINES_PER_MINUTE);
    let timeout_log = Arc::new(LogLimiter::new(crate::connections::LOG_LINES_PER_MINUTE));
    let idle_log = Arc::new(LogLimiter::new(crate::connections::LOG_LINES_PER_MINUTE));
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
            let slot = match admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    if let Some(left_out) = refused_log.admit() {
                        tracing::warn!(
                            %peer,
                            left_out,
                            "refused a connection from {}: {why}; raise the setting if this is expected load",
                            peer.ip()
                        );
                    }
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let security = Arc::clone(&security);
            let audited = Arc::clone(&audited);
            let timeout_log = Arc::clone(&timeout_log);
            let idle_log = Arc::clone(&idle_log);
            tokio::spawn(async move {
                match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => {
                        let conn = GuardedConn::new(tls, slot, limits, peer, idle_log);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        drop(slot);
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
                    Err(_) => {
                        if let Some(left_out) = timeout_log.admit() {
                            tracing::info!(
                                %peer,
                                left_out,
                                "closed a connection from {peer}: no TLS handshake within {} (tls_handshake_timeout)",
                                humantime::format_duration(limits.tls_handshake_timeout)
                            );
                        }
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
