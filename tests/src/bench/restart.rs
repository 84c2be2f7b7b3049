//! Controller crash and restart with the whole fleet connected: the controller is killed
//! (SIGKILL, so every agent's session is still stored as connected) and started again on the
//! same data folder and ports. Timed until it answers `/readyz`, until every simulated agent has
//! a new Welcome, and until `ListAgents` lists them all connected. What a restart costs must
//! not be one store write per agent before the controller is useful again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::controller::{Access, ControllerProc};
use super::error::{BenchError, Result};
use super::reconnect::rejoined;
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
    let mut op = access.operator().await?;
    let rejoined = rejoined(
        &mut op,
        fleet,
        before,
        t,
        t_us,
        "by the restarted controller",
    )
    .await?;
    let (welcomed, listed, listed_connected, list_timeout) = (
        rejoined.welcomed,
        rejoined.listed,
        rejoined.listed_connected,
        rejoined.list_timeout,
    );
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
