//! The problems of the fleet a notifier may send, read from the store and the live fleet view
//! (never from the run-update broadcast alone, which drops updates under load), and the text of
//! their messages.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use syncfleet_proto::time::from_proto;
use syncfleet_proto::v1;

use crate::documents::model::{Document, NotifierDoc, NotifyOn};
use crate::fleet::Fleet;
use crate::schedule::saturation::{recent_durations, saturation, saturation_warning};
use crate::schedule::scheduler::Scheduler;
use crate::store::{RunQuery, StoreError};

/// How far back failed runs are looked for (older ones are not sent, and their records are
/// dropped).
pub const FAILED_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// At most this many failed runs are read per evaluation.
const FAILED_PAGE: usize = 500;
/// Saturation above which a schedule is a problem (the same threshold as `schedules show`).
const SATURATED_ABOVE: f64 = 0.8;

/// One problem, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub kind: NotifyOn,
    /// `kind/subject`: the deduplication key.
    pub key: String,
    pub agent: String,
    pub schedule: String,
    pub sequence: String,
    pub run_id: String,
    /// One line: the subject of an e-mail.
    pub title: String,
    /// What happened, what tripped, what to do.
    pub text: String,
    /// `syncfleet runs approve ...` for held runs, else empty.
    pub approve_command: String,
    /// When a failed run ended (filters runs that ended before the notifier existed).
    pub ended_at: Option<DateTime<Utc>>,
}

/// Everything that is wrong in the fleet now.
pub async fn current(
    fleet: &Fleet,
    scheduler: &Scheduler,
    now: DateTime<Utc>,
    wanted: &[NotifyOn],
) -> Result<(Vec<Problem>, HashMap<String, HashMap<String, String>>), StoreError> {
    let store = &fleet.store;
    let mut out = Vec::new();
    let agents = store.list_agents().await?;
    let labels: HashMap<String, HashMap<String, String>> = agents
        .iter()
        .map(|a| (a.name.clone(), a.labels.clone()))
        .collect();
    if wanted.contains(&NotifyOn::Held) {
        for r in store.runs_in_states(None, &[v1::RunState::Held]).await? {
            if r.continued_in.is_empty() {
                out.push(held(&r));
            }
        }
    }
    if wanted.contains(&NotifyOn::Failed) {
        let page = store
            .list_runs(&RunQuery {
                states: vec![
                    v1::RunState::Failed,
                    v1::RunState::CompletedWithErrors,
                    v1::RunState::Unknown,
                ],
                since_ms: Some((now - FAILED_WINDOW).timestamp_millis()),
                limit: FAILED_PAGE,
                ..RunQuery::default()
            })
            .await?;
        out.extend(page.runs.iter().map(failed));
    }
    if wanted.contains(&NotifyOn::AgentLost) || wanted.contains(&NotifyOn::EngineUnhealthy) {
        for a in agents {
            let a = fleet.agent_view(a);
            let state = v1::AgentState::try_from(a.state).unwrap_or(v1::AgentState::Unspecified);
            if state == v1::AgentState::Lost {
                out.push(Problem {
                    kind: NotifyOn::AgentLost,
                    key: format!("agent_lost/{}", a.name),
                    title: format!("[syncfleet] agent {} lost", a.name),
                    text: format!(
                        "Agent {} has had no session with the controller since {}; its runs in flight ended unknown. Check the syncfleet-agent service and the network on {}; see it with: syncfleet agents show {}",
                        a.name,
                        when(a.state_since.as_ref()),
                        if a.hostname.is_empty() { &a.name } else { &a.hostname },
                        a.name
                    ),
                    agent: a.name,
                    ..blank(NotifyOn::AgentLost)
                });
            } else if fleet.is_connected(&a.name) && !a.engine_healthy {
                out.push(Problem {
                    kind: NotifyOn::EngineUnhealthy,
                    key: format!("engine_unhealthy/{}", a.name),
                    title: format!("[syncfleet] sync engine on {} unhealthy", a.name),
                    text: format!(
                        "The sync engine on agent {} did not answer its health probe: {}. No run starts there until it does; see it with: syncfleet agents show {}",
                        a.name,
                        if a.engine_detail.is_empty() { "no detail" } else { &a.engine_detail },
                        a.name
                    ),
                    agent: a.name,
                    ..blank(NotifyOn::EngineUnhealthy)
                });
            }
        }
    }
    if wanted.contains(&NotifyOn::ScheduleSaturated) {
        for d in store.list_documents(Some("Schedule")).await? {
            let durations = recent_durations(store.as_ref(), &d.name).await?;
            let interval = scheduler.interval(&d.name).await;
            let sat = saturation(&durations, interval);
            if sat > SATURATED_ABOVE {
                out.push(Problem {
                    kind: NotifyOn::ScheduleSaturated,
                    key: format!("schedule_saturated/{}", d.name),
                    title: format!(
                        "[syncfleet] schedule {} saturated ({:.0} %)",
                        d.name,
                        sat * 100.0
                    ),
                    text: format!(
                        "Schedule {}: {}. See it with: syncfleet schedules show {}",
                        d.name,
                        saturation_warning(sat, interval),
                        d.name
                    ),
                    schedule: d.name,
                    ..blank(NotifyOn::ScheduleSaturated)
                });
            }
        }
    }
    Ok((out, labels))
}

fn blank(kind: NotifyOn) -> Problem {
    Problem {
        kind,
        key: String::new(),
        agent: String::new(),
        schedule: String::new(),
        sequence: String::new(),
        run_id: String::new(),
        title: String::new(),
        text: String::new(),
        approve_command: String::new(),
        ended_at: None,
    }
}

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(from_proto)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "an unknown time".to_string())
}

fn origin(r: &v1::Run) -> String {
    match (r.schedule.is_empty(), r.sequence.is_empty()) {
        (false, _) => format!(" (schedule {}, sequence {})", r.schedule, r.sequence),
        (true, false) => format!(" (sequence {})", r.sequence),
        (true, true) => String::new(),
    }
}

/// The message of a held run: which step, what tripped, and the approve command.
pub fn held(r: &v1::Run) -> Problem {
    let step = r.steps.iter().find(|s| s.state() == v1::StepState::Held);
    let what = match step {
        Some(s) if !s.detail.is_empty() => format!(
            " before step {} {}: {}, because its guard rail tripped: {}",
            s.index + 1,
            s.ma,
            s.profile,
            s.detail
        ),
        Some(s) => format!(" before step {} {}: {}", s.index + 1, s.ma, s.profile),
        None if !r.message.is_empty() => format!(": {}", r.message),
        None => String::new(),
    };
    let approve = format!(
        "syncfleet runs approve {} --note \"why this is expected\"",
        r.id
    );
    Problem {
        key: format!("held/{}", r.id),
        agent: r.agent.clone(),
        schedule: r.schedule.clone(),
        sequence: r.sequence.clone(),
        run_id: r.id.clone(),
        title: format!("[syncfleet] run {} on {} held", short(&r.id), r.agent),
        text: format!(
            "Run {} on agent {}{} is held{what}. Nothing of that step ran. If the change is expected, approve it (the held step runs once with the guard rail lifted, then the rest of the run):\n\n    {approve}\n\nOtherwise leave it held and find out why. Details: syncfleet runs show {}",
            r.id,
            r.agent,
            origin(r),
            r.id
        ),
        approve_command: approve,
        ..blank(NotifyOn::Held)
    }
}

fn failed(r: &v1::Run) -> Problem {
    let state = v1::RunState::try_from(r.state).unwrap_or(v1::RunState::Unspecified);
    let word = match state {
        v1::RunState::CompletedWithErrors => "completed with errors",
        v1::RunState::Unknown => "ended with an unknown outcome",
        _ => "failed",
    };
    let step = r
        .steps
        .iter()
        .filter(|s| {
            !s.result.is_empty()
                && !matches!(
                    syncfleet_proto::vocab::classify(&s.result),
                    syncfleet_proto::vocab::ResultClass::Success
                        | syncfleet_proto::vocab::ResultClass::Warning
                )
        })
        .map(|s| {
            format!(
                " Step {} {}: {} returned {}.",
                s.index + 1,
                s.ma,
                s.profile,
                s.result
            )
        })
        .next()
        .unwrap_or_default();
    let message = if r.message.is_empty() {
        String::new()
    } else {
        format!(" {}.", r.message.trim_end_matches('.'))
    };
    Problem {
        key: format!("failed/{}", r.id),
        agent: r.agent.clone(),
        schedule: r.schedule.clone(),
        sequence: r.sequence.clone(),
        run_id: r.id.clone(),
        title: format!("[syncfleet] run {} on {} {word}", short(&r.id), r.agent),
        text: format!(
            "Run {} on agent {}{} {word}.{step}{message} Details: syncfleet runs show {}",
            r.id,
            r.agent,
            origin(r),
            r.id
        ),
        ended_at: r.finished_at.as_ref().and_then(from_proto),
        ..blank(NotifyOn::Failed)
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Whether `doc` sends `p`: its kind is listed, its agent is targeted (when `targets` is
/// given) and its schedule is listed (when `schedules` is given; manual runs and agent
/// problems have no schedule and pass only without a schedule list for runs, always for agents).
pub fn wants(
    doc: &NotifierDoc,
    p: &Problem,
    labels: &HashMap<String, HashMap<String, String>>,
) -> bool {
    if !doc.on.contains(&p.kind) {
        return false;
    }
    if let Some(t) = &doc.targets
        && !p.agent.is_empty()
    {
        let empty = HashMap::new();
        if !t.matches(&p.agent, labels.get(&p.agent).unwrap_or(&empty)) {
            return false;
        }
    }
    if !doc.schedules.is_empty()
        && matches!(
            p.kind,
            NotifyOn::Held | NotifyOn::Failed | NotifyOn::ScheduleSaturated
        )
        && !doc.schedules.contains(&p.schedule)
    {
        return false;
    }
    true
}

/// The notifier documents in the store (unreadable ones are logged and left out).
pub async fn notifier_docs(fleet: &Fleet) -> Result<Vec<NotifierDoc>, StoreError> {
    let mut out = Vec::new();
    for d in fleet.store.list_documents(Some("Notifier")).await? {
        match crate::documents::from_json(&d.kind, &d.json) {
            Ok(Document::Notifier(n)) => out.push(n),
            Ok(_) => {}
            Err(e) => tracing::error!(name = %d.name, error = %e, "stored notifier unreadable"),
        }
    }
    Ok(out)
}
