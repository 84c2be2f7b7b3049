//! The status of one schedule for `syncfleet schedules show` (next fire times, recent runs,
//! saturation, resolved targets) and pausing or resuming a schedule.

use syncfleet_proto::time::{now, to_millis, to_proto};
use syncfleet_proto::v1;
use tonic::Status;

use super::saturation::{saturation, saturation_warning};
use super::scheduler::Scheduler;
use super::trigger::Trigger;
use crate::documents::apply::schedule_doc;
use crate::fleet::{Fleet, store_status};
use crate::store::RunQuery;

pub async fn get_schedule(
    fleet: &Fleet,
    scheduler: &Scheduler,
    name: &str,
) -> Result<v1::ScheduleStatus, Status> {
    let (doc, json) = schedule_doc(fleet, name).await?;
    let trigger = Trigger::compile(&doc)
        .map_err(|e| Status::internal(format!("stored schedule {name}: {e}")))?;
    let now_utc = scheduler.clock().now();
    let pause = fleet
        .schedule_pause_record(name)
        .await
        .map_err(store_status)?;
    let n = name.to_string();
    let page = fleet
        .store
        .list_runs(&RunQuery {
            schedule: Some(n),
            limit: 10,
            ..RunQuery::default()
        })
        .await
        .map_err(store_status)?;
    let recent: Vec<v1::ScheduleRunSummary> = page
        .runs
        .iter()
        .map(|r| {
            let nominal = r.nominal_time.as_ref().map(to_millis);
            let started = r.started_at.as_ref().map(to_millis);
            let finished = r.finished_at.as_ref().map(to_millis);
            v1::ScheduleRunSummary {
                run_id: r.id.clone(),
                agent: r.agent.clone(),
                nominal_time: r.nominal_time,
                started_at: r.started_at,
                lateness_ms: match (nominal, started) {
                    (Some(n), Some(s)) => s - n,
                    _ => 0,
                },
                duration_ms: match (started, finished) {
                    (Some(s), Some(f)) => f - s,
                    _ => 0,
                },
                state: r.state,
                result: r.result.clone(),
                origin: r.origin.clone(),
            }
        })
        .collect();
    let durations: Vec<i64> = recent
        .iter()
        .filter(|r| r.duration_ms > 0)
        .map(|r| r.duration_ms)
        .collect();
    let interval = trigger.interval_hint(now_utc);
    let sat = saturation(&durations, interval);
    let counters = {
        let n = name.to_string();
        fleet.store.counters(&n).await.map_err(store_status)?
    };
    let agents = fleet.store.list_agents().await.map_err(store_status)?;
    let targets = agents
        .iter()
        .filter(|a| {
            doc.targets
                .matches(&a.name, &a.labels.clone().into_iter().collect())
        })
        .map(|a| a.name.clone())
        .collect();
    Ok(v1::ScheduleStatus {
        name: name.to_string(),
        json,
        pause,
        time_zone: trigger.time_zone_name().to_string(),
        next: trigger
            .upcoming(now_utc, 10)
            .into_iter()
            .map(to_proto)
            .collect(),
        recent,
        counters: counters.into_iter().collect(),
        saturation: sat,
        warning: saturation_warning(sat, interval),
        targets,
    })
}

pub async fn set_schedule_pause(
    fleet: &Fleet,
    scheduler: &Scheduler,
    name: &str,
    paused: bool,
    note: &str,
    who: &str,
) -> Result<v1::ScheduleStatus, Status> {
    schedule_doc(fleet, name).await?;
    if paused && note.trim().is_empty() {
        return Err(Status::invalid_argument(
            "say why the schedule is paused: pass --note TEXT",
        ));
    }
    let pause = v1::Pause {
        paused,
        note: note.to_string(),
        by: who.to_string(),
        at: Some(now()),
    };
    fleet
        .set_schedule_pause(name, &pause)
        .await
        .map_err(store_status)?;
    tracing::info!(
        schedule = name,
        paused,
        by = who,
        note,
        "schedule pause changed"
    );
    get_schedule(fleet, scheduler, name).await
}
