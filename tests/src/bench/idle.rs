//! Idle cost: the controller's CPU and wake-ups while every simulated agent is connected and
//! nothing runs, so only heartbeats, keep-alives and the controller's own timers (the lost-agent
//! watch, leases, expiry sweeps) cost anything. A controller whose idle cost grows with the
//! fleet spends a core on nothing at 10,000 agents.

use std::time::Duration;

use serde_json::json;

use super::error::Result;
use super::procfs;
use super::report::{Budget, Report};

/// Samples the controller `pid` over `idle` and reports its share of one core and its wake-ups.
pub async fn measure(pid: u32, agents: usize, idle: Duration, report: &mut Report) -> Result<()> {
    // Let the connect burst, first heartbeats and inventory writes settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s0 = procfs::sample(pid)?;
    let t0 = std::time::Instant::now();
    tokio::time::sleep(idle).await;
    let s1 = procfs::sample(pid)?;
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let cores = (s1.cpu_seconds - s0.cpu_seconds) / secs;
    report.add(
        "idle.controller_core_pct",
        &format!("controller CPU, {agents} agents connected, idle"),
        Some((cores * 1000.0).round() / 10.0),
        "% of a core",
        Budget::None,
        format!(
            "over {}; heartbeats included",
            humantime::format_duration(Duration::from_secs(secs.round() as u64))
        ),
    );
    report.add(
        "idle.controller_wakeups_per_s",
        &format!("controller wake-ups, {agents} agents connected, idle"),
        Some((s1.voluntary_switches.saturating_sub(s0.voluntary_switches) as f64 / secs).round()),
        "/s",
        Budget::None,
        "voluntary context switches of the threads alive at the end",
    );
    report.context("idle.seconds", json!(secs));
    Ok(())
}
