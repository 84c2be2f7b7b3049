//! The status of one schedule for `syncfleet schedules show` (next fire times, recent runs,
//! saturation, interval advice per schedule and per server, resolved targets) and pausing or
//! resuming a schedule.

use syncfleet_proto::time::{now, to_millis, to_proto};
use syncfleet_proto::v1;

use std::collections::HashMap;

use super::ScheduleError;
use super::advice::{self, Measured};
use super::saturation::{saturation, saturation_warning};
use super::scheduler::Scheduler;
use crate::documents::apply::schedule_doc;
use crate::documents::model::{Document, ScheduleDoc};
use crate::documents::trigger::Trigger;
use crate::fleet::Fleet;
use crate::store::{RunQuery, Store, StoreError};

/// Durations (ms) of a schedule's newest finished runs, at most [`advice::RUNS_MEASURED`].
async fn measured_durations(store: &dyn Store, schedule: &str) -> Result<Vec<i64>, StoreError> {
    let page = store
        .list_runs(&RunQuery {
            schedule: Some(schedule.to_string()),
            states: vec![
                v1::RunState::Succeeded,
                v1::RunState::CompletedWithErrors,
                v1::RunState::Failed,
            ],
            limit: advice::RUNS_MEASURED,
            ..RunQuery::default()
        })
        .await?;
    Ok(page
        .runs
        .iter()
        .filter_map(|r| {
            let s = to_millis(r.started_at.as_ref()?);
            let f = to_millis(r.finished_at.as_ref()?);
            (f > s).then_some(f - s)
        })
        .collect())
}

/// Interval advice for `doc` alone and on each server it targets now, with every other
/// schedule that targets the same server measured too.
async fn interval_advice(
    store: &dyn Store,
    doc: &ScheduleDoc,
    interval: Option<std::time::Duration>,
    targets: &[(String, HashMap<String, String>)],
    now_utc: chrono::DateTime<chrono::Utc>,
) -> Result<(v1::IntervalAdvice, Vec<v1::ServerAdvice>), StoreError> {
    let this = Measured {
        name: doc.name.clone(),
        durations_ms: measured_durations(store, &doc.name).await?,
        interval,
    };
    let schedule = advice::schedule_advice(&this);
    // The other schedules, each measured once, and which of this schedule's servers they
    // target.
    let mut others: Vec<(Measured, Vec<usize>)> = Vec::new();
    for stored in store.list_documents(Some("Schedule")).await? {
        if stored.name == doc.name {
            continue;
        }
        let Ok(Document::Schedule(other)) = crate::documents::from_json("Schedule", &stored.json)
        else {
            continue;
        };
        let shared: Vec<usize> = targets
            .iter()
            .enumerate()
            .filter(|(_, (name, labels))| other.targets.matches(name, labels))
            .map(|(i, _)| i)
            .collect();
        if shared.is_empty() {
            continue;
        }
        let interval = Trigger::compile(&other)
            .ok()
            .and_then(|t| t.interval_hint(now_utc));
        others.push((
            Measured {
                name: other.name.clone(),
                durations_ms: measured_durations(store, &other.name).await?,
                interval,
            },
            shared,
        ));
    }
    let mut servers: Vec<v1::ServerAdvice> = targets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let on_it: Vec<&Measured> = others
                .iter()
                .filter(|(_, shared)| shared.contains(&i))
                .map(|(m, _)| m)
                .collect();
            advice::server_advice(name, &this, &on_it)
        })
        .collect();
    servers.sort_by(|a, b| {
        b.load_p95
            .total_cmp(&a.load_p95)
            .then_with(|| a.agent.cmp(&b.agent))
    });
    servers.truncate(advice::MAX_SERVERS);
    Ok((schedule, servers))
}

pub async fn get_schedule(
    fleet: &Fleet,
    scheduler: &Scheduler,
    name: &str,
) -> Result<v1::ScheduleStatus, ScheduleError> {
    let (doc, json) = schedule_doc(fleet.store.as_ref(), name).await?;
    let trigger = Trigger::compile(&doc).map_err(|source| ScheduleError::BadTrigger {
        name: name.to_string(),
        source,
    })?;
    let now_utc = scheduler.clock().now();
    let pause = fleet.schedule_pause_record(name).await?;
    let n = name.to_string();
    let page = fleet
        .store
        .list_runs(&RunQuery {
            schedule: Some(n),
            limit: 10,
            ..RunQuery::default()
        })
        .await?;
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
                coalesced_changes: r.coalesced_changes,
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
        fleet.store.counters(&n).await?
    };
    let agents = fleet.store.list_agents().await?;
    let targeted: Vec<(String, HashMap<String, String>)> = agents
        .iter()
        .map(|a| (a.name.clone(), a.labels.clone().into_iter().collect()))
        .filter(|(name, labels)| doc.targets.matches(name, labels))
        .collect();
    let targets = targeted.iter().map(|(name, _)| name.clone()).collect();
    let (advice, servers) =
        interval_advice(fleet.store.as_ref(), &doc, interval, &targeted, now_utc).await?;
    let change_sources = match &doc.trigger.on_change {
        Some(on_change) => change_views(fleet, &doc.name, on_change, &targeted).await?,
        None => Vec::new(),
    };
    Ok(v1::ScheduleStatus {
        change_sources,
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
        advice: Some(advice),
        servers,
    })
}

/// One view per target agent and source of `on_change`: the agent's own description (from
/// heartbeats) beside what the controller received and started.
async fn change_views(
    fleet: &Fleet,
    schedule: &str,
    on_change: &syncfleet_proto::schedule_model::OnChangeDoc,
    targeted: &[(String, HashMap<String, String>)],
) -> Result<Vec<v1::ChangeSourceView>, StoreError> {
    let records: HashMap<String, crate::fleet::changes::PendingChanges> = fleet
        .all_changes(Some(schedule))
        .await?
        .into_iter()
        .map(|(_, agent, r)| (agent, r))
        .collect();
    let statuses: HashMap<(String, String), v1::ChangeSourceStatus> = fleet
        .change_source_status(schedule)
        .into_iter()
        .map(|(agent, s)| ((agent, s.source.clone()), s))
        .collect();
    let ts = |ms: i64| (ms > 0).then(|| syncfleet_proto::time::from_millis(ms));
    let mut out = Vec::new();
    for (agent, _) in targeted.iter().take(advice::MAX_SERVERS) {
        let record = records.get(agent);
        for source in &on_change.sources {
            let seen = record.and_then(|r| r.seen.get(&source.name));
            let last_run = record.and_then(|r| r.last_run.as_ref());
            out.push(v1::ChangeSourceView {
                agent: agent.clone(),
                status: statuses.get(&(agent.clone(), source.name.clone())).cloned(),
                source: source.name.clone(),
                last_reported: seen.and_then(|s| ts(s.at_ms)),
                reported_cursor: seen.map(|s| s.cursor.clone()).unwrap_or_default(),
                examples: seen.map(|s| s.examples.clone()).unwrap_or_default(),
                pending_changes: record.map_or(0, |r| r.changes),
                last_run_id: last_run.map(|r| r.run_id.clone()).unwrap_or_default(),
                last_run_at: last_run.and_then(|r| ts(r.nominal_ms)),
                last_run_changes: last_run.map_or(0, |r| r.changes),
            });
        }
    }
    Ok(out)
}

pub async fn set_schedule_pause(
    fleet: &Fleet,
    scheduler: &Scheduler,
    name: &str,
    paused: bool,
    note: &str,
    who: &str,
) -> Result<v1::ScheduleStatus, ScheduleError> {
    schedule_doc(fleet.store.as_ref(), name).await?;
    if paused && note.trim().is_empty() {
        return Err(ScheduleError::PauseNeedsNote);
    }
    let pause = v1::Pause {
        paused,
        note: note.to_string(),
        by: who.to_string(),
        at: Some(now()),
    };
    fleet.set_schedule_pause(name, &pause).await?;
    // The agents' schedule sets carry the pause.
    scheduler.reload();
    tracing::info!(
        schedule = name,
        paused,
        by = who,
        note,
        "schedule pause changed"
    );
    get_schedule(fleet, scheduler, name).await
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::documents::DocumentError;

    #[tokio::test(start_paused = true)]
    async fn a_pause_needs_a_note_and_an_existing_schedule() {
        let w = every_10s("k", &["a1"], "").await;
        let (s, _stop) = start_scheduler(&w, w.start);
        let e = set_schedule_pause(&w.fleet, &s, "k", true, " ", "operator/admin")
            .await
            .unwrap_err();
        assert!(matches!(e, ScheduleError::PauseNeedsNote), "{e:?}");
        assert_eq!(
            e.to_string(),
            "say why the schedule is paused: pass --note TEXT"
        );
        let e = get_schedule(&w.fleet, &s, "nope").await.unwrap_err();
        assert!(
            matches!(e, ScheduleError::Document(DocumentError::NotFound { .. })),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "no schedule named \"nope\"");
        let paused = set_schedule_pause(&w.fleet, &s, "k", true, "MIM hotfix", "operator/admin")
            .await
            .unwrap();
        assert!(
            paused
                .pause
                .is_some_and(|p| p.paused && p.note == "MIM hotfix")
        );
        w.shutdown.cancel();
    }
}
