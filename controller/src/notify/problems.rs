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
            // Approved (continued) or rejected: decided, so no longer waiting for anyone.
            if is_undecided(&r) {
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

/// Whether a held run still waits for an operator: neither approved nor rejected.
fn is_undecided(r: &v1::Run) -> bool {
    r.continued_in.is_empty() && r.rejected_by.is_empty() && r.rejected_at.is_none()
}

/// What an operator decided about a held run, for the "resolved" message: "rejected by WHO at
/// WHEN: NOTE" or "approved by WHO; it continues as run ID"; `None` while undecided.
pub fn held_decision(r: &v1::Run) -> Option<String> {
    if !r.rejected_by.is_empty() || r.rejected_at.is_some() {
        Some(format!(
            "rejected by {} at {}: {}",
            r.rejected_by,
            when(r.rejected_at.as_ref()),
            r.reject_note
        ))
    } else if !r.continued_in.is_empty() {
        Some(format!(
            "approved by {}; it continues as run {}",
            r.approved_by, r.continued_in
        ))
    } else {
        None
    }
}

/// The message of a held run: which step, what tripped, and the approve and reject commands.
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
    let reject = format!(
        "syncfleet runs reject {} --note \"why this change is wrong\"",
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
            "Run {} on agent {}{} is held{what}. Nothing of that step ran. If the change is expected, approve it (the held step runs once with the guard rail lifted, then the rest of the run):\n\n    {approve}\n\nIf the change is wrong, reject it (the run stays held and nothing of it runs; its schedule stays paused until resumed):\n\n    {reject}\n\nDetails: syncfleet runs show {}",
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;

    fn held_run(id: &str) -> v1::Run {
        v1::Run {
            id: id.into(),
            agent: "sync-01".into(),
            state: v1::RunState::Held as i32,
            steps: vec![v1::Step {
                index: 0,
                ma: "AD".into(),
                profile: "Export".into(),
                state: v1::StepState::Held as i32,
                detail: "612 pending export deletes, more than 2% of 10000".into(),
                ..v1::Step::default()
            }],
            ..v1::Run::default()
        }
    }

    #[tokio::test]
    async fn a_rejected_or_approved_held_run_is_not_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let mut approved = held_run("approved");
        approved.continued_in = "cont".into();
        approved.approved_by = "operator/alice".into();
        store
            .insert_runs(&[held_run("waiting"), held_run("rejected"), approved])
            .await
            .unwrap();
        let fleet = Fleet::new(
            Arc::clone(&store),
            crate::fleet::Settings {
                heartbeat_interval: Duration::from_secs(1),
                agent_lost_after: Duration::from_secs(5),
                pending_deadline: Duration::from_secs(3600),
            },
        );
        let scheduler = Scheduler::new(
            Arc::clone(&fleet),
            crate::schedule::scheduler::Clock::System,
        );
        let keys = |found: &[Problem]| {
            let mut k: Vec<String> = found.iter().map(|p| p.key.clone()).collect();
            k.sort();
            k
        };
        let (found, _) = current(&fleet, &scheduler, Utc::now(), &[NotifyOn::Held])
            .await
            .unwrap();
        assert_eq!(keys(&found), ["held/rejected", "held/waiting"]);
        let text = &found[0].text;
        assert!(
            text.contains("syncfleet runs approve rejected --note")
                && text.contains("syncfleet runs reject rejected --note"),
            "{text}"
        );

        let run = fleet
            .reject_run("rejected", "operator/bob", "  wrong HR feed ")
            .await
            .unwrap();
        assert_eq!(run.state(), v1::RunState::Held);
        assert_eq!(run.rejected_by, "operator/bob");
        assert_eq!(run.reject_note, "wrong HR feed");
        assert!(run.rejected_at.is_some());
        assert!(
            run.message.ends_with("(rejected: wrong HR feed)"),
            "{}",
            run.message
        );
        let (found, _) = current(&fleet, &scheduler, Utc::now(), &[NotifyOn::Held])
            .await
            .unwrap();
        assert_eq!(keys(&found), ["held/waiting"]);

        // The decision is final either way, and a rejection needs a reason.
        let err = fleet
            .approve_run("rejected", "operator/alice", "")
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::fleet::FleetError::AlreadyRejected { ref by, .. } if by == "operator/bob"),
            "{err:?}"
        );
        let err = fleet
            .reject_run("approved", "operator/bob", "too late")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already approved by operator/alice"),
            "{err}"
        );
        let err = fleet
            .reject_run("waiting", "operator/bob", " ")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--note"), "{err}");
        let stored = store.get_run("waiting").await.unwrap().unwrap();
        assert!(stored.rejected_by.is_empty() && stored.rejected_at.is_none());
    }
}
