//! Hardening of the controller process, through the real binaries: silent or surplus
//! connections are closed, runs for revoked agents are refused, a damaged store and a second
//! controller on the same data directory stop the start.
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fleet, Proc, bin, free_port, stdout, wait_for};
use tokio::io::AsyncReadExt;

/// Write a controller TOML config with `body` and return its path.
fn controller_config(fleet: &Fleet, body: &str) -> PathBuf {
    let path = fleet.dir.path().join("controller.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// Start `serve` on `fleet`'s data dir with `args` and wait until it exits (it must: these
/// starts are refused). Returns the exit code and its stderr.
fn serve_must_exit(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String) {
    let n = std::fs::read_dir(fleet.dir.path()).unwrap().count();
    let log = fleet.dir.path().join(format!("refused-{n}.log"));
    let mut cmd = Command::new(bin("syncfleet-controller"));
    cmd.args(["serve", "--fleet", "e2e", "--data-dir"])
        .arg(fleet.data_dir())
        .args(["--grpc-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--set", "console.listen=127.0.0.1:0"])
        .args(args);
    must_exit(Proc::spawn("controller", &mut cmd, log))
}

fn must_exit(mut proc: Proc) -> (Option<i32>, String) {
    let status = wait_for(
        &format!("{} to refuse to start and exit", proc.name),
        Duration::from_secs(30),
        || proc.child.try_wait().unwrap(),
    );
    (status.code(), proc.log_text())
}

fn tls_client(fleet: &Fleet, identity: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fleet.pki().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let dir = fleet.pki().join("operators");
            let certs = CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Read until the server closes the connection; Err if it is still open after `bound`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    bound: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(bound, read_all).await {
        Ok(()) => Ok(start.elapsed()),
        Err(_) => Err(format!("still open after {bound:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_without_a_certificate_is_closed_and_health_still_answers() {
    let mut fleet = Fleet::init(&[]);
    // Default settings: the idle limit for connections without a certificate is 10 s.
    fleet.start_controller();
    let port = fleet.grpc_port;

    // TLS completes without a client certificate; then the client says nothing at all.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut silent = tls_client(&fleet, None)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    // A TCP connection that never starts TLS is closed by the handshake timeout (10 s).
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // An operator's connection (certificate of this CA) that is quiet is left alone.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut operator = tls_client(&fleet, Some("admin"))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();

    let took = closed_within(&mut silent, Duration::from_secs(40))
        .await
        .unwrap_or_else(|e| panic!("a TLS connection without a certificate: {e}"));
    assert!(took >= Duration::from_secs(5), "closed too early: {took:?}");
    closed_within(&mut raw, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("a TCP connection without TLS: {e}"));
    assert!(
        closed_within(&mut operator, Duration::from_secs(2))
            .await
            .is_err(),
        "a quiet operator connection was closed"
    );

    // Health keeps answering clients without a certificate, also on a channel used again after
    // the idle limit (the client reconnects).
    let ch = anonymous_channel(&fleet).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(health.check(check()).await.unwrap().into_inner().status, 1);
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert!(
        log.contains("closed an idle connection without a client certificate"),
        "{log}"
    );
    // A health Watch is a request in progress: its connection outlives the idle limit.
    let mut watch =
        tonic_health::pb::health_client::HealthClient::new(anonymous_channel(&fleet).await)
            .watch(check())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let next = tokio::time::timeout(Duration::from_secs(1), watch.message()).await;
    assert!(next.is_err(), "the Watch stream ended: {next:?}");
    let status = wait_for_async(|| {
        let mut h = health.clone();
        async move { h.check(check()).await }
    })
    .await;
    assert_eq!(status, 1, "SERVING");
}

/// A gRPC channel without a client certificate.
async fn anonymous_channel(fleet: &Fleet) -> tonic::transport::Channel {
    fleet.channel(None).await.unwrap()
}

/// Retry a call a few times: a channel whose connection was closed reconnects on the next call.
async fn wait_for_async<F, Fut>(mut f: F) -> i32
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>,
        >,
{
    let mut last = None;
    for _ in 0..5 {
        match f().await {
            Ok(r) => return r.into_inner().status,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("health never answered again: {last:?}");
}

/// Whether the server has closed `s` (EOF or reset), without waiting.
fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A blocking TCP connection from `local` (any port) to 127.0.0.1:`port`; every address of
/// 127.0.0.0/8 is local on Linux, so tests can come from several source addresses.
/// (std cannot bind before connecting; a thread of its own lets async tests call this too.)
fn connect_from(local: Ipv4Addr, port: u16) -> TcpStream {
    std::thread::spawn(move || connect_from_blocking(local, port))
        .join()
        .unwrap()
}

fn connect_from_blocking(local: Ipv4Addr, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((local, 0))).unwrap();
        let s = sock
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap()
            .into_std()
            .unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Wait until the server closes `s`; false if it is still open after `bound`.
fn server_closes(s: &mut TcpStream, bound: Duration) -> bool {
    s.set_read_timeout(Some(bound)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A refused connection is closed at once; 5 s is a liveness bound.
fn closed_soon(s: &mut TcpStream) -> bool {
    server_closes(s, Duration::from_secs(5))
}

#[test]
fn connections_are_capped_per_address_by_default() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let port = fleet.grpc_port;
    // The default allows 100 connections from one address. These never start TLS.
    let mut held: Vec<TcpStream> = (0..100)
        .map(|_| connect_from(Ipv4Addr::LOCALHOST, port))
        .collect();
    let mut extra = connect_from(Ipv4Addr::LOCALHOST, port);
    assert!(
        closed_soon(&mut extra),
        "the 101st connection from one address was accepted"
    );
    let open = held.iter().filter(|s| !is_closed(s)).count();
    assert_eq!(open, 100, "the first 100 connections stay open");
    // Another address is not affected.
    let other = connect_from(Ipv4Addr::new(127, 0, 0, 2), port);
    assert!(!is_closed(&other));
    // Freeing a slot lets a new connection in: the CLI works again.
    held.truncate(90);
    let out = fleet.cli(&["agents", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert!(
        log.contains("refused a connection from 127.0.0.1")
            && log.contains("max_connections_per_address"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_connection_cap_and_the_idle_timeout_are_configurable() {
    let mut fleet = Fleet::init(&[]);
    let cfg = controller_config(
        &fleet,
        "max_connections = 4\nmax_connections_per_address = 3\ntls_handshake_timeout = \"60s\"\nunauthenticated_idle_timeout = \"2s\"\n",
    );
    fleet.start_controller_with(&["--config", cfg.to_str().unwrap()]);
    let port = fleet.grpc_port;
    let a2 = Ipv4Addr::new(127, 0, 0, 2);
    let from_a: Vec<TcpStream> = (0..3).map(|_| connect_from(a2, port)).collect();
    let mut fourth_from_a = connect_from(a2, port);
    assert!(closed_soon(&mut fourth_from_a), "per-address cap of 3");
    // The fourth connection in all (once the harness's start probe is gone).
    let _b = wait_for(
        "a connection from 127.0.0.3",
        Duration::from_secs(10),
        || {
            let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 3), port);
            (!server_closes(&mut s, Duration::from_millis(500))).then_some(s)
        },
    );
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 4), port);
    assert!(closed_soon(&mut c), "total cap of 4");
    assert!(from_a.iter().all(|s| !is_closed(s)));
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert!(log.contains("max_connections = 4"), "{log}");
    drop(from_a);

    // The configured idle limit (2 s; the default is 10 s) applies to a silent TLS connection.
    let silent = wait_for("a free connection slot", Duration::from_secs(10), || {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 5), port);
        (!server_closes(&mut s, Duration::from_millis(500))).then_some(s)
    });
    silent.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(silent).unwrap();
    let mut tls = tls_client(&fleet, None)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    closed_within(&mut tls, Duration::from_secs(8))
        .await
        .unwrap_or_else(|e| panic!("unauthenticated_idle_timeout = 2s: {e}"));
}

fn apply(fleet: &Fleet, yaml: &str) {
    let path = fleet.dir.path().join("fleet.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = fleet.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runs_for_a_revoked_agent_are_refused_until_it_enrols_again() {
    let mut fleet = Fleet::started(&["sync-01", "sync-02"], 0.01);
    // A run waits for sync-01 while it is away; the revocation fails it at once.
    fleet.agents.get_mut("sync-01").unwrap().kill9();
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = stdout(&out);
    assert_eq!(fleet.run_json(&queued).unwrap()["state"], "pending");
    let out = fleet.cli(&["agents", "revoke", "sync-01", "--note", "decommissioned"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = fleet.run_json(&queued).unwrap();
    assert_eq!(run["state"], "failed", "{run:#}");
    assert!(
        run["message"].as_str().unwrap().contains("revoked"),
        "{run:#}"
    );

    // Ad-hoc steps and a sequence: refused at once, naming the agent and the way back.
    apply(
        &fleet,
        "kind: Sequence\nname: quick\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n",
    );
    for args in [
        &["run", "sync-01", "--step", "AD:Delta Import"][..],
        &["run", "sync-01", "--sequence", "quick"][..],
    ] {
        let out = fleet.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} was accepted: {}",
            stdout(&out)
        );
        assert!(
            err.contains("sync-01") && err.contains("revoked") && err.contains("new token"),
            "{args:?}: {err}"
        );
    }
    let runs = fleet.cli_json(&["runs", "list", "--agent", "sync-01", "-o", "json"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");

    // A schedule over both agents creates runs for sync-02 only.
    apply(
        &fleet,
        "kind: Schedule\nname: every-2s\nsequence: quick\ntargets: {selector: env=e2e}\ntrigger: {cron: [\"*/2 * * * * *\"]}\n",
    );
    wait_for(
        "two scheduled runs on sync-02",
        Duration::from_secs(60),
        || {
            let r = fleet.cli_json(&["runs", "list", "--agent", "sync-02", "-o", "json"]);
            (r.as_array()?.len() >= 2).then_some(())
        },
    );
    let runs = fleet.cli_json(&["runs", "list", "--agent", "sync-01", "-o", "json"]);
    assert_eq!(
        runs.as_array().unwrap().len(),
        1,
        "no scheduled run: {runs:#}"
    );
    let out = fleet.cli(&["delete", "schedule", "every-2s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Enrolled again with a new token, it takes runs again.
    let t = fleet.cli_json(&["tokens", "create", "--agent", "sync-01", "-o", "json"]);
    let out = Command::new(bin("syncfleet-agent"))
        .args([
            "enroll",
            "--controller",
            &format!("https://127.0.0.1:{}", fleet.grpc_port),
        ])
        .args(["--token", t["token"].as_str().unwrap()])
        .args(["--ca-pin", t["ca_pin"].as_str().unwrap()])
        .args(["--name", "sync-01", "--data-dir"])
        .arg(fleet.dir.path().join("enrolled-sync-01"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_refused_store(code: Option<i32>, err: &str, db: &Path) {
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(
        err.contains("backup") && err.contains("move it aside"),
        "the message says what to do: {err}"
    );
}

#[test]
fn an_empty_or_damaged_store_is_refused_at_start_and_kept() {
    let mut fleet = Fleet::init(&[]);
    let db = fleet.data_dir().join("controller.db");

    // A zero-length store file (a failed copy, a full disk): not silently a new empty fleet.
    std::fs::write(&db, b"").unwrap();
    let (code, err) = serve_must_exit(&fleet, &[]);
    assert_refused_store(code, &err, &db);
    assert!(err.contains("empty"), "{err}");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "the file was kept"
    );

    // A store with data whose middle pages are damaged.
    std::fs::remove_file(&db).unwrap();
    fleet.start_controller();
    let out = fleet.cli(&["tokens", "create", "--agent", "sync-01"]);
    assert!(out.status.success());
    let mut controller = fleet.controller.take().unwrap();
    controller.signal("TERM");
    controller.child.wait().unwrap();
    {
        // More pages, as a fleet with history has.
        let conn = rusqlite::Connection::open(&db).unwrap();
        for i in 0..2000 {
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?1, ?2)",
                rusqlite::params![format!("filler/{i}"), vec![7u8; 200]],
            )
            .unwrap();
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 100_000, "{len}");
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(len / 2 / 4096 * 4096))
        .unwrap();
    f.write_all(&[0xA5; 8192]).unwrap();
    drop(f);
    let before = std::fs::read(&db).unwrap();
    let (code, err) = serve_must_exit(&fleet, &[]);
    assert_refused_store(code, &err, &db);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file was kept as it was"
    );
}

#[test]
fn a_second_controller_on_the_same_data_dir_is_refused_naming_the_first() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let pid = fleet.controller.as_ref().unwrap().child.id();

    let (code, err) = serve_must_exit(&fleet, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("pid {pid}"))
            && err.contains(&fleet.data_dir().display().to_string()),
        "{err}"
    );

    // `dev --data-dir` on it too.
    let mut cmd = common::dev_command("syncfleet-controller");
    cmd.args(["--agents", "1", "--no-example-fleet", "--data-dir"])
        .arg(fleet.data_dir())
        .arg("--cli-config")
        .arg(fleet.dir.path().join("dev-cli.toml"));
    let (code, err) = must_exit(Proc::spawn(
        "dev",
        &mut cmd,
        fleet.dir.path().join("dev.log"),
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    // The first one keeps serving; once it is gone (even killed), the data dir is free again.
    let out = fleet.cli(&["agents", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.controller_mut().kill9();
    fleet.start_controller();
    let out = fleet.cli(&["agents", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
