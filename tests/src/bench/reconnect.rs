//! Reconnect storm: every simulated agent drops its session and connection at once and
//! connects again; timed until every agent has its Welcome, and until `ListAgents` shows all of
//! them connected.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use syncfleet_proto::v1::{self, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

use super::error::{BenchError, Result, wait_until};
use super::phase::Phase;
use super::report::{Budget, Report};
use super::sim::{Control, SimFleet, now_us};

/// Agents of `names` that the controller lists as connected.
pub async fn connected(op: &mut FleetServiceClient<Channel>, prefix: &str) -> Result<usize> {
    // ListAgents pages: every page is counted.
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let resp = op
            .list_agents(v1::ListAgentsRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(BenchError::rpc("ListAgents"))?
            .into_inner();
        count += resp
            .agents
            .iter()
            .filter(|a| a.name.starts_with(prefix) && a.state == v1::AgentState::Connected as i32)
            .count();
        if resp.next_page_token.is_empty() || resp.agents.is_empty() {
            return Ok(count);
        }
        page_token = resp.next_page_token;
    }
}

/// How a fleet came back after its sessions were cut (a reconnect storm, a controller restart).
pub struct Rejoined {
    /// From the cut until the last Welcome arrived (not until a poll saw it).
    pub welcomed: Duration,
    /// From the cut until `ListAgents` listed every agent connected; `None` if it did not
    /// within `list_timeout`.
    pub listed: Option<Duration>,
    pub listed_connected: usize,
    pub list_timeout: Duration,
}

/// Waits until every agent of `fleet` has had a Welcome since `before` Welcomes were counted
/// (cut at `t` / `t_us`; `what` says how, for the timeout message), then polls the controller's
/// stored view for a bounded time: a shortfall is reported (an agent with a live session listed
/// as not connected is a controller defect), not waited for.
pub async fn rejoined(
    op: &mut FleetServiceClient<Channel>,
    fleet: &SimFleet,
    before: u64,
    t: Instant,
    t_us: u64,
    what: &str,
) -> Result<Rejoined> {
    let n = fleet.len();
    let shared = &fleet.shared;
    let timeout = Duration::from_secs(120) + Duration::from_millis(20) * n as u32;
    wait_until(
        format!("{n} agents to be welcomed again {what}"),
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
    let list_timeout = Duration::from_secs(10) + Duration::from_millis(2) * n as u32;
    let deadline = Instant::now() + list_timeout;
    let (listed, listed_connected) = loop {
        let c = connected(op, "sim-").await?;
        if c >= n {
            break (Some(t.elapsed()), c);
        }
        if Instant::now() >= deadline {
            break (None, c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Rejoined {
        welcomed,
        listed,
        listed_connected,
        list_timeout,
    })
}

pub async fn measure(
    op: &mut FleetServiceClient<Channel>,
    fleet: &SimFleet,
    controller_pid: Option<u32>,
    report: &mut Report,
) -> Result<()> {
    let n = fleet.len();
    let shared = &fleet.shared;
    let before = shared.welcomes.load(Ordering::SeqCst);
    let phase = Phase::begin(controller_pid);
    let t = Instant::now();
    let t_us = now_us();
    fleet.broadcast(Control::Reconnect);
    let rejoined = rejoined(op, fleet, before, t, t_us, "after dropping their sessions").await?;
    let (welcomed, listed, listed_connected, list_timeout) = (
        rejoined.welcomed,
        rejoined.listed,
        rejoined.listed_connected,
        rejoined.list_timeout,
    );
    report.add(
        "reconnect.all_welcomed_s",
        &format!("reconnect storm, {n} agents, all Welcomes received"),
        Some(welcomed.as_secs_f64()),
        "s",
        Budget::AtMost(10.0),
        "every session dropped at once",
    );
    report.add(
        "reconnect.all_listed_connected_s",
        "reconnect storm, ListAgents shows all connected",
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
    report.check("reconnect.agents", json!(n));
    report.check("reconnect.listed_connected", json!(listed_connected));
    report.context("reconnect.cpu", phase.end());
    Ok(())
}
