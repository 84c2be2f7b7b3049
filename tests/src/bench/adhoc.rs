//! One ad-hoc command to every simulated agent: time from the call until the last agent
//! received its StartRun (and sent its CommandAck).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use syncfleet_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use super::error::{BenchError, Result, wait_until};
use super::fanout::start_one_each;
use super::phase::Phase;
use super::report::{Budget, Report};
use super::sim::{RunMode, SimFleet, now_ms};

pub async fn measure(
    op: &FleetServiceClient<Channel>,
    fleet: &SimFleet,
    controller_pid: Option<u32>,
    report: &mut Report,
) -> Result<()> {
    fleet.shared.set_mode(RunMode::Complete);
    let n = fleet.len();
    let phase = Phase::begin(controller_pid);
    let before = fleet.shared.accepted_count();
    let t0 = now_ms();
    let (runs, method) = start_one_each(op, &fleet.names).await?;
    let returned = now_ms() - t0;
    let ids: HashSet<String> = runs.iter().map(|r| r.id.clone()).collect();
    let timeout = Duration::from_secs(60) + Duration::from_millis(10) * n as u32;
    let shared = &fleet.shared;
    wait_until(
        format!("{} ad-hoc runs to reach their simulated agents", ids.len()),
        timeout,
        // Counting is cheap; the new entries are read once all have arrived (nothing else
        // starts runs meanwhile).
        || (shared.accepted_count() >= before + ids.len()).then_some(()),
    )
    .await
    .map_err(|e| {
        BenchError::Failed(format!("{e} (last session error: {})", shared.last_error()))
    })?;
    let accepted = shared.accepted();
    let mine: Vec<f64> = accepted
        .iter()
        .skip(before)
        .filter(|a| ids.contains(&a.run_id))
        .map(|a| a.at_ms)
        .collect();
    let last = mine.iter().copied().fold(f64::MIN, f64::max);
    let budget = if n <= 1000 {
        Budget::AtMost(100.0)
    } else {
        Budget::None
    };
    report.add(
        "adhoc.all_accepted_ms",
        &format!("ad-hoc command to {n} agents, all accepted"),
        Some(last - t0),
        "ms",
        budget,
        method.label(),
    );
    report.check("adhoc.runs_created", json!(runs.len()));
    report.check("adhoc.runs_accepted", json!(mine.len()));
    report.context("adhoc.method", json!(method.label()));
    report.context("adhoc.calls_returned_ms", json!(returned));
    report.context("adhoc.cpu", phase.end());
    Ok(())
}
