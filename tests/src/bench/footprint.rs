//! Footprint of a real `syncfleet-agent` process (simulated engine) enrolled with the
//! controller and connected, idling: resident and proportional memory, CPU time and voluntary
//! context switches (all threads) over the idle period, the latter a proxy for wake-ups.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use syncfleet_proto::v1::{self, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

use super::controller::Access;
use super::error::{BenchError, Result};
use super::procfs::{self, mb};
use super::report::{Budget, Report};

const AGENT: &str = "bench-real-agent";

pub async fn measure(
    access: &Access,
    op: &mut FleetServiceClient<Channel>,
    bin_dir: &Path,
    work: &Path,
    idle: Duration,
    report: &mut Report,
) -> Result<()> {
    let exe = bin_dir.join("syncfleet-agent");
    let data = work.join("real-agent");
    let token = op
        .create_token(v1::CreateTokenRequest {
            agent: AGENT.into(),
            labels: Default::default(),
            ttl_seconds: 600,
        })
        .await
        .map_err(BenchError::rpc("CreateToken for the real agent"))?
        .into_inner();
    let out = tokio::process::Command::new(&exe)
        .args([
            "enroll",
            "--controller",
            &access.url,
            "--token",
            &token.token,
        ])
        .args(["--ca-pin", &token.ca_pin, "--name", AGENT, "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "syncfleet-agent enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let log = std::fs::File::create(work.join("real-agent.log"))
        .map_err(BenchError::io("cannot create the agent's log"))?;
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "run",
            "--name",
            AGENT,
            "--controller",
            &access.url,
            "--data-dir",
        ])
        .arg(&data)
        .args(["--sim-server", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(BenchError::io(format!("cannot start {}", exe.display())))?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Failed("the agent exited at once".into()))?;
    let connect_timeout = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + connect_timeout;
    loop {
        let a = op
            .get_agent(v1::GetAgentRequest { name: AGENT.into() })
            .await
            .ok()
            .map(tonic::Response::into_inner);
        if a.is_some_and(|a| a.state == v1::AgentState::Connected as i32) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Failed(format!(
                "the real agent exited ({status}) before connecting; see {}",
                work.join("real-agent.log").display()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Timeout(
                connect_timeout,
                "the real agent to be listed as connected".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let start-up work (inventory, first heartbeat) settle before the idle period.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s0 = procfs::sample(pid)?;
    tokio::time::sleep(idle).await;
    let s1 = procfs::sample(pid)?;
    let _ = child.kill().await;
    let secs = idle.as_secs_f64();
    let note = format!(
        "real agent, sim engine, connected, idle {}",
        humantime::format_duration(idle)
    );
    report.add(
        "agent.rss_mb",
        "agent idle RSS",
        Some(mb(s1.rss)),
        "MB",
        Budget::AtMost(10.0),
        note.clone(),
    );
    report.add(
        "agent.pss_mb",
        "agent idle PSS",
        Some(mb(s1.pss)),
        "MB",
        Budget::None,
        note.clone(),
    );
    report.add(
        "agent.cpu_ms",
        "agent CPU time while idle",
        Some(((s1.cpu_seconds - s0.cpu_seconds) * 1000.0).round()),
        "ms",
        Budget::None,
        note.clone(),
    );
    let switches = s1.voluntary_switches.saturating_sub(s0.voluntary_switches);
    report.add(
        "agent.wakeups_per_min",
        "agent wake-ups while idle (voluntary context switches, all threads)",
        Some((switches as f64 / secs * 60.0).round()),
        "/min",
        Budget::None,
        "heartbeat every 10 s by default (6/min) plus HTTP/2 keep-alive pings",
    );
    report.context("agent.voluntary_switches", json!(switches));
    report.context("agent.idle_s", json!(secs));
    Ok(())
}
