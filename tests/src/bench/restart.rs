//! Controller crash and restart with the whole fleet connected: the controller is killed
//! (SIGKILL, so every agent's session is still stored as connected) and started again on the
//! same data folder and ports. Timed until it answers `/readyz`, until every simulated agent has
//! a new Welcome, and until `ListAgents` lists them all connected. What a restart costs must
//! not be one store write per agent before the controller is useful again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::controller::{Access, ControllerProc};
use super::error::{BenchError, Result, wait_until};
use super::reconnect::connected;
use super::report::{Budget, Report};
use super::sim::{SimFleet, now_us};

/// `GET url` every 20 ms until it answers 200, bounded by `timeout`.
async fn wait_ready(url: &str, timeout: Duration) -> Result<()> {
    let client = super::http::client(Duration::from_secs(5))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(timeout, format!("{url} to answer 200")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn measure(
    proc: &mut ControllerProc,
    access: &Access,
    fleet: &SimFleet,
    report: &mut Report,
) -> Result<()> {
    let n = fleet.len();
    let shared = &fleet.shared;
    let before = shared.welcomes.load(Ordering::SeqCst);
    let t = Instant::now();
    let t_us = now_us();
    proc.crash_and_restart().await?;
    let listening = t.elapsed();
    let timeout = Duration::from_secs(120) + Duration::from_millis(20) * n as u32;
    wait_ready(&format!("{}/readyz", proc.http_url), timeout).await?;
    let ready = t.elapsed();
    wait_until(
        format!("{n} agents to be welcomed by the restarted controller"),
        timeout,
        || (shared.welcomes.load(Ordering::SeqCst) >= before + n as u64).then_some(()),
    )
    .await
    .map_err(|e| {
        BenchError::Failed(format!("{e} (last session error: {})", shared.last_error()))
    })?;
    let welcomed = Duration::from_micros(
        shared
            .last_welcome_us
            .load(Ordering::SeqCst)
            .saturating_sub(t_us),
    );
    let mut op = access.operator().await?;
    let list_timeout = Duration::from_secs(10) + Duration::from_millis(2) * n as u32;
    let deadline = Instant::now() + list_timeout;
    let (listed, listed_connected) = loop {
        let c = connected(&mut op, "sim-").await?;
        if c >= n {
            break (Some(t.elapsed()), c);
        }
        if Instant::now() >= deadline {
            break (None, c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    report.add(
        "restart.ready_s",
        &format!("controller killed and restarted, {n} agents stored as connected: /readyz"),
        Some(ready.as_secs_f64()),
        "s",
        Budget::None,
        format!("listening after {:.3} s", listening.as_secs_f64()),
    );
    report.add(
        "restart.all_welcomed_s",
        &format!("controller restart, {n} agents, all Welcomes received"),
        Some(welcomed.as_secs_f64()),
        "s",
        Budget::None,
        "agents retry every 500 ms",
    );
    report.add(
        "restart.all_listed_connected_s",
        "controller restart, ListAgents shows all connected",
        listed.map(|d| d.as_secs_f64()),
        "s",
        Budget::None,
        match listed {
            Some(_) => "polled every 50 ms".to_string(),
            None => format!(
                "after {list_timeout:?} ListAgents still listed only {listed_connected} of {n} as connected although all had their Welcome"
            ),
        },
    );
    report.check("restart.agents", json!(n));
    report.check("restart.listed_connected", json!(listed_connected));
    Ok(())
}
