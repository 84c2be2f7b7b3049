//! Schedule lateness: one `every` schedule (jitter 0) targeting every simulated agent. For each
//! scheduled run, lateness = when its agent received the StartRun − the run's nominal time (as
//! the controller stored it). Fires cut short by the end of the measurement (the schedule is
//! paused halfway between two fire times) are reported and left out of the figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use syncfleet_proto::v1::{self, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

use super::enroll::LABEL;
use super::error::{BenchError, Result};
use super::phase::Phase;
use super::report::{Budget, Report};
use super::sim::{MA, PROFILE, RunMode, SimFleet, now_ms};
use super::stats::percentile;

pub const SCHEDULE: &str = "fleet-bench-every";
pub const SEQUENCE: &str = "fleet-bench-seq";

/// Every run created since `since_ms` (Unix ms), all pages.
pub async fn list_runs_since(
    op: &mut FleetServiceClient<Channel>,
    since_ms: i64,
) -> Result<Vec<v1::Run>> {
    let mut runs = Vec::new();
    let mut token = String::new();
    loop {
        let page = op
            .list_runs(v1::ListRunsRequest {
                since: Some(syncfleet_proto::time::from_millis(since_ms)),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .map_err(BenchError::rpc("ListRuns"))?
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return Ok(runs);
        }
        token = page.next_page_token;
    }
}

fn documents(every: Duration) -> Vec<v1::FleetDocument> {
    let sequence = json!({
        "name": SEQUENCE,
        "stages": [{"steps": [{"ma": MA, "profile": PROFILE}]}],
    });
    let schedule = json!({
        "name": SCHEDULE,
        "sequence": SEQUENCE,
        "targets": {"selector": format!("{}={}", LABEL.0, LABEL.1)},
        "trigger": {"every": humantime::format_duration(every).to_string()},
        "jitter": "0s",
    });
    vec![
        v1::FleetDocument {
            kind: "Sequence".into(),
            name: SEQUENCE.into(),
            json: sequence.to_string(),
            source: "fleet-bench".into(),
        },
        v1::FleetDocument {
            kind: "Schedule".into(),
            name: SCHEDULE.into(),
            json: schedule.to_string(),
            source: "fleet-bench".into(),
        },
    ]
}

/// The runs of the benchmark schedule created since `applied_ms`, and every StartRun the
/// simulated agents received so far.
async fn scheduled_runs(
    op: &mut FleetServiceClient<Channel>,
    fleet: &SimFleet,
    applied_ms: f64,
) -> Result<(Vec<v1::Run>, Vec<super::sim::Accepted>)> {
    let runs = list_runs_since(op, applied_ms as i64 - 1000)
        .await?
        .into_iter()
        .filter(|r| r.schedule == SCHEDULE)
        .collect();
    Ok((runs, fleet.shared.accepted()))
}

/// Fires (runs grouped by nominal time) whose `n` runs all reached their agents, and the
/// other fires.
fn fires(runs: &[v1::Run], accepted: &[super::sim::Accepted], n: usize) -> (usize, usize) {
    let ids: HashSet<&str> = accepted.iter().map(|a| a.run_id.as_str()).collect();
    let mut per_nominal: HashMap<i64, usize> = HashMap::new();
    for r in runs {
        let nominal = r
            .nominal_time
            .as_ref()
            .map_or(0, syncfleet_proto::time::to_millis);
        let entry = per_nominal.entry(nominal).or_default();
        if ids.contains(r.id.as_str()) {
            *entry += 1;
        }
    }
    let complete = per_nominal.values().filter(|c| **c == n).count();
    (complete, per_nominal.len() - complete)
}

/// Measures schedule lateness over `duration` (at least one fire).
pub async fn measure(
    op: &mut FleetServiceClient<Channel>,
    fleet: &SimFleet,
    every: Duration,
    duration: Duration,
    controller_pid: Option<u32>,
    report: &mut Report,
) -> Result<()> {
    fleet.shared.set_mode(RunMode::Complete);
    let n = fleet.len();
    let every_ms = every.as_millis().max(1) as f64;
    let applied = now_ms();
    let phase = Phase::begin(controller_pid);
    op.apply(v1::ApplyRequest {
        documents: documents(every),
        dry_run: false,
        prune: false,
        force: false,
    })
    .await
    .map_err(BenchError::rpc("Apply of the benchmark schedule"))?;
    // Wait for `fires` fires that reached every agent (a fire that is skipped on some agents
    // because their previous run is still in flight, or cut by the pause, does not count), then
    // pause the schedule and let what is under way arrive.
    let wanted = (duration.as_millis() as f64 / every_ms).floor().max(1.0) as usize;
    let timeout = Duration::from_secs(60) + Duration::from_millis(10) * n as u32;
    let fires_deadline = tokio::time::Instant::now() + duration + every + timeout;
    loop {
        let (runs, accepted) = scheduled_runs(op, fleet, applied).await?;
        let (complete, _) = fires(&runs, &accepted, n);
        if complete >= wanted || tokio::time::Instant::now() >= fires_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    op.pause_schedule(v1::PauseScheduleRequest {
        name: SCHEDULE.into(),
        note: "fleet-bench: measurement over".into(),
    })
    .await
    .map_err(BenchError::rpc("PauseSchedule"))?;
    // Every run created reaches its agent, and nothing new comes for five seconds.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_count = usize::MAX;
    let mut stable_polls = 0;
    let (runs, accepted) = loop {
        let (runs, accepted) = scheduled_runs(op, fleet, applied).await?;
        let ids: HashSet<&str> = accepted.iter().map(|a| a.run_id.as_str()).collect();
        let missing = runs.iter().filter(|r| !ids.contains(r.id.as_str())).count();
        stable_polls = if runs.len() == last_count {
            stable_polls + 1
        } else {
            0
        };
        last_count = runs.len();
        if missing == 0 && stable_polls >= 5 {
            break (runs, accepted);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Timeout(
                timeout,
                format!(
                    "{missing} of {} scheduled runs to reach their simulated agents (last session error: {})",
                    runs.len(),
                    fleet.shared.last_error()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let cpu = phase.end();
    // Delete the schedule so that it fires no more, whatever is measured next.
    op.delete_document(v1::DeleteDocumentRequest {
        kind: "Schedule".into(),
        name: SCHEDULE.into(),
    })
    .await
    .map_err(BenchError::rpc("DeleteDocument of the benchmark schedule"))?;

    let mut received: HashMap<&str, Vec<(u32, f64)>> = HashMap::new();
    for a in &accepted {
        received
            .entry(a.run_id.as_str())
            .or_default()
            .push((a.agent, a.at_ms));
    }
    let mut per_fire: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    let mut accepted_once_by_its_agent = 0usize;
    for r in &runs {
        let got = received
            .get(r.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let right_agent = got
            .first()
            .and_then(|(i, _)| fleet.names.get(*i as usize))
            .is_some_and(|name| *name == r.agent);
        if got.len() == 1 && right_agent {
            accepted_once_by_its_agent += 1;
        }
        let Some(nominal) = r.nominal_time.as_ref() else {
            continue;
        };
        let nominal = syncfleet_proto::time::to_millis(nominal);
        if let Some((_, at)) = got.first() {
            per_fire
                .entry(nominal)
                .or_default()
                .push(at - nominal as f64);
        }
    }
    let complete: Vec<&Vec<f64>> = per_fire.values().filter(|v| v.len() == n).collect();
    let partial = per_fire.len() - complete.len();
    let all: Vec<f64> = complete.iter().flat_map(|v| v.iter().copied()).collect();
    let firsts: Vec<f64> = complete
        .iter()
        .filter_map(|v| v.iter().copied().min_by(f64::total_cmp))
        .collect();
    let lasts: Vec<f64> = complete
        .iter()
        .filter_map(|v| v.iter().copied().max_by(f64::total_cmp))
        .collect();
    let fires_note = format!(
        "{} complete fires of {n} runs (every {}); {partial} fires reached only some agents",
        complete.len(),
        humantime::format_duration(every)
    );
    let last_budget = if n <= 1000 { 50.0 } else { 500.0 };
    report.add(
        "schedule.lateness_p50_ms",
        "schedule lateness p50 (all runs)",
        percentile(&all, 50.0),
        "ms",
        Budget::None,
        fires_note.clone(),
    );
    report.add(
        "schedule.lateness_p99_ms",
        "schedule lateness p99 (all runs)",
        percentile(&all, 99.0),
        "ms",
        Budget::None,
        fires_note.clone(),
    );
    report.add(
        "schedule.first_run_p99_ms",
        "schedule lateness p99, first run of each fire",
        percentile(&firsts, 99.0),
        "ms",
        Budget::AtMost(5.0),
        fires_note.clone(),
    );
    report.add(
        "schedule.last_run_p99_ms",
        "schedule lateness p99, last run of each fire",
        percentile(&lasts, 99.0),
        "ms",
        Budget::AtMost(last_budget),
        fires_note,
    );
    report.check("schedule.agents", json!(n));
    report.check("schedule.complete_fires", json!(complete.len()));
    report.check("schedule.partial_fires", json!(partial));
    report.check(
        "schedule.runs_in_complete_fires",
        json!(complete.iter().map(|v| v.len()).sum::<usize>()),
    );
    report.check("schedule.runs", json!(runs.len()));
    report.check(
        "schedule.runs_accepted_once_by_their_agent",
        json!(accepted_once_by_its_agent),
    );
    report.context("schedule.cpu", cpu);
    report.context(
        "schedule.lateness_max_ms",
        json!(all.iter().copied().fold(f64::NAN, f64::max)),
    );
    Ok(())
}
