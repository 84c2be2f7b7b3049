//! Durable agent events stored per second. In rounds: one ad-hoc run per agent is started and
//! held (not timed); then every agent sends `events_per_run` events for it at once (RunStarted,
//! StepStarted, StepProgress..., StepFinished, RunFinished); the round ends when every agent has
//! an EventAck covering its last event. The controller acknowledges only what it has stored, so
//! events acknowledged per second of the timed part is durable throughput.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use syncfleet_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use super::error::{BenchError, Result, wait_until};
use super::fanout::start_one_each;
use super::procfs;
use super::report::{Budget, Report};
use super::sim::{Control, RunMode, SimFleet, now_us};

pub async fn measure(
    op: &FleetServiceClient<Channel>,
    fleet: &SimFleet,
    duration: Duration,
    events_per_run: u32,
    controller_pid: Option<u32>,
    report: &mut Report,
) -> Result<()> {
    let n = fleet.len();
    let shared = &fleet.shared;
    let wall = Instant::now();
    let mut timed = Duration::ZERO;
    let mut acked = 0u64;
    let mut rounds = 0u32;
    let mut controller_cpu = 0.0;
    let mut sim_cpu = 0.0;
    let timeout = Duration::from_secs(60) + Duration::from_millis(10) * n as u32;
    while rounds == 0 || wall.elapsed() < duration {
        shared.set_mode(RunMode::Hold);
        let before = shared.accepted_count();
        let (runs, _) = start_one_each(op, &fleet.names).await?;
        wait_until(
            format!(
                "{} runs of the events phase to reach their agents",
                runs.len()
            ),
            timeout,
            || (shared.accepted_count() >= before + runs.len()).then_some(()),
        )
        .await?;
        shared.set_mode(RunMode::Complete);
        // Earlier events (other measurements' runs) are acknowledged before the round starts,
        // so that the round counts only its own.
        wait_until("earlier events to be acknowledged", timeout, || {
            (shared.events_acked.load(Ordering::SeqCst)
                >= shared.events_sent.load(Ordering::SeqCst))
            .then_some(())
        })
        .await?;
        let done0 = shared.rounds_done.load(Ordering::SeqCst);
        let acked0 = shared.round_events_acked.load(Ordering::SeqCst);
        let ctl0 = controller_pid.and_then(|p| procfs::sample(p).ok());
        let sim0 = procfs::own().ok();
        let t = now_us();
        fleet.broadcast(Control::Emit);
        wait_until(
            format!(
                "every agent's {events_per_run} events of round {} to be acknowledged",
                rounds + 1
            ),
            timeout,
            || (shared.rounds_done.load(Ordering::SeqCst) >= done0 + n as u64).then_some(()),
        )
        .await
        .map_err(|e| {
            BenchError::Failed(format!("{e} (last session error: {})", shared.last_error()))
        })?;
        // The round ends with the last agent's acknowledgement, not when this poll saw it.
        let end = shared.last_round_done_us.load(Ordering::SeqCst).max(t);
        timed += Duration::from_micros(end - t);
        acked += shared.round_events_acked.load(Ordering::SeqCst) - acked0;
        if let (Some(c0), Some(p)) = (ctl0, controller_pid) {
            controller_cpu += procfs::sample(p).map_or(0.0, |s| s.cpu_seconds) - c0.cpu_seconds;
        }
        if let Some(s0) = sim0 {
            sim_cpu += procfs::own().map_or(0.0, |s| s.cpu_seconds) - s0.cpu_seconds;
        }
        rounds += 1;
    }
    let secs = timed.as_secs_f64().max(1e-9);
    report.add(
        "events.per_second",
        "durable agent events stored",
        Some((acked as f64 / secs).round()),
        "events/s",
        Budget::AtLeast(50_000.0),
        format!(
            "{rounds} rounds × {n} agents × {events_per_run} events, acknowledged after commit"
        ),
    );
    let without = shared.rounds_without_run.load(Ordering::SeqCst);
    report.check("events.rounds", json!(rounds));
    report.check("events.acked_in_phase", json!(acked));
    report.check(
        "events.expected_in_phase",
        json!(
            u64::from(rounds) * n as u64 * u64::from(events_per_run)
                - without * u64::from(events_per_run)
        ),
    );
    report.check("events.rounds_without_run", json!(without));
    report.check(
        "events.round_events_sent",
        json!(shared.round_events_sent.load(Ordering::SeqCst)),
    );
    report.context(
        "events.cpu",
        json!({
            "timed_s": timed.as_secs_f64(),
            "controller_cores": controller_pid.map(|_| controller_cpu / secs),
            "simulator_cores": sim_cpu / secs,
        }),
    );
    Ok(())
}
