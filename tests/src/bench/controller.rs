//! The controller under test: a `syncfleet-controller` child process with its own temporary
//! data folder and free ports (killed when dropped, also on Ctrl-C and errors), or a running
//! controller given by address and operator credentials.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use syncfleet_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::error::{BenchError, Result};

/// Fleet name the benchmark's controllers are initialised with.
pub const FLEET: &str = "bench";

/// How long a started controller may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest gRPC message the operator client accepts (a `ListAgents` of 10,000 agents).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A free TCP port on loopback (bound and released; the controller binds it right after).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("cannot bind a port"))?;
    Ok(l.local_addr()
        .map_err(BenchError::io("no local address"))?
        .port())
}

/// Where the controller is and how an operator reaches it.
#[derive(Debug, Clone)]
pub struct Access {
    pub url: String,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub operator_cert: Vec<u8>,
    pub operator_key: Vec<u8>,
}

impl Access {
    /// From a data folder initialised by `syncfleet-controller init` (its `pki/`).
    pub fn from_data_dir(data: &Path, grpc_port: u16) -> Result<Access> {
        let pki = data.join("pki");
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(BenchError::io(format!("cannot read {}", p.display())))
        };
        Ok(Access {
            url: format!("https://127.0.0.1:{grpc_port}"),
            server_name: "localhost".into(),
            ca_pem: read(pki.join("ca.pem"))?,
            operator_cert: read(pki.join("operators/admin.pem"))?,
            operator_key: read(pki.join("operators/admin.key"))?,
        })
    }

    /// A TLS configuration trusting the fleet's CA, with `identity` as client certificate.
    pub fn tls(&self, identity: Option<Identity>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        tls
    }

    /// An endpoint for the controller with `tls`.
    pub fn endpoint(&self, tls: ClientTlsConfig) -> Result<Endpoint> {
        let connect = |cause: String| BenchError::Connect {
            url: self.url.clone(),
            cause,
        };
        Ok(Endpoint::from_shared(self.url.clone())
            .map_err(|e| connect(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| connect(e.to_string()))?
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120)))
    }

    /// A new operator connection (its own HTTP/2 connection).
    pub async fn operator(&self) -> Result<FleetServiceClient<Channel>> {
        let id = Identity::from_pem(&self.operator_cert, &self.operator_key);
        let channel = self
            .endpoint(self.tls(Some(id)))?
            .connect()
            .await
            .map_err(|e| BenchError::Connect {
                url: self.url.clone(),
                cause: error_chain(&e),
            })?;
        Ok(FleetServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// All messages of an error chain, joined with `: ` (transport errors say little at the top).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// `syncfleet-controller init` into `data`.
pub async fn init(bin_dir: &Path, data: &Path) -> Result<()> {
    let exe = bin_dir.join("syncfleet-controller");
    let out = tokio::process::Command::new(&exe)
        .args(["init", "--fleet", FLEET, "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "syncfleet-controller init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A `syncfleet-controller serve` child process, killed when dropped.
#[derive(Debug)]
pub struct ControllerProc {
    child: tokio::process::Child,
    pub pid: u32,
    pub access: Access,
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT`, the controller's HTTP listener (`/metrics`, `/readyz`).
    pub http_url: String,
    /// The command line it was started with, to start it again on the same ports.
    command: Vec<std::ffi::OsString>,
    exe: PathBuf,
}

impl ControllerProc {
    /// Serves the initialised data folder `data` on free loopback ports, with connection
    /// limits raised for `agents` agents, and waits until it listens.
    pub async fn serve(
        bin_dir: &Path,
        data: &Path,
        agents: usize,
        extra: &[String],
    ) -> Result<ControllerProc> {
        let exe = bin_dir.join("syncfleet-controller");
        let grpc = free_port()?;
        let http = free_port()?;
        // Every simulated agent holds one connection, and all come from 127.0.0.1.
        let limit = (agents + 100).max(1000);
        let mut command: Vec<std::ffi::OsString> = ["serve", "--fleet", FLEET, "--data-dir"]
            .iter()
            .map(Into::into)
            .collect();
        command.push(data.as_os_str().to_owned());
        for arg in [
            "--grpc-listen".to_string(),
            format!("127.0.0.1:{grpc}"),
            "--http-listen".into(),
            format!("127.0.0.1:{http}"),
            "--set".into(),
            "console.listen=127.0.0.1:0".into(),
            "--set".into(),
            format!("max_connections={limit}"),
            "--set".into(),
            format!("max_connections_per_address={limit}"),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        {
            command.push(arg.into());
        }
        let log = data.join(format!("controller-{grpc}.log"));
        let child = spawn(&exe, &command, &log)?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Failed("the controller exited at once".into()))?;
        let mut proc = ControllerProc {
            child,
            pid,
            access: Access::from_data_dir(data, grpc)?,
            log,
            http_url: format!("http://127.0.0.1:{http}"),
            command,
            exe,
        };
        proc.wait_listening(grpc).await?;
        Ok(proc)
    }

    /// Kills the controller (SIGKILL, as a crash or an OOM kill would) and starts it again on
    /// the same ports and data folder; returns once it listens.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        let _ = self.child.kill().await;
        self.child = spawn(&self.exe, &self.command, &self.log)?;
        self.pid = self
            .child
            .id()
            .ok_or_else(|| BenchError::Failed("the controller exited at once".into()))?;
        let grpc = self
            .access
            .url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| BenchError::Failed(format!("no port in {}", self.access.url)))?;
        self.wait_listening(grpc).await
    }

    async fn wait_listening(&mut self, grpc: u16) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", grpc))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Failed(format!(
                    "the controller exited ({status}) before listening: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BenchError::Timeout(
                    LISTEN_TIMEOUT,
                    format!("the controller to listen on 127.0.0.1:{grpc}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the controller (SIGKILL) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `exe command...` with its log appended to `log`.
fn spawn(exe: &Path, command: &[std::ffi::OsString], log: &Path) -> Result<tokio::process::Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(BenchError::io("cannot open the controller's log"))?;
    tokio::process::Command::new(exe)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))
}
