//! Notifications: `Notifier` fleet documents send the fleet's problems (held runs, failed runs,
//! lost agents, unhealthy engines, saturated schedules) to a webhook or by e-mail.
//!
//! Contracts:
//! - **Nothing missed**: the problems are read from the store and the live fleet view on every
//!   evaluation ([`problems::current`]); run updates of [`Fleet::subscribe`] only trigger an
//!   evaluation sooner, so a dropped update delays a message by at most [`RECONCILE_EVERY`].
//! - **One message per problem until it clears** (deduplication): each problem a notifier has
//!   seen is a record in the store (`keys::notifier_problem`), written after its delivery, so
//!   neither a second evaluation nor a controller restart or leader change sends it again. A
//!   crash between a delivery and its record can send it once more (at least once). When the
//!   problem clears the record goes, after a "resolved" message when the notifier asks for one;
//!   a new occurrence is a new problem. Failed runs never clear: their records go when the run
//!   leaves [`problems::FAILED_WINDOW`]. Failed runs that ended before a notifier was first
//!   seen are not sent (no flood of history when a notifier is applied).
//! - **Retried with backoff**: a failed attempt is retried after [`RETRY_FIRST`], doubling up
//!   to [`RETRY_MAX`], at most [`MAX_ATTEMPTS`] times, then given up (counted). Every outcome is
//!   counted in the notifier's status record (`keys::notifier_status`), which
//!   `syncfleet notifiers list|show` and `syncfleet_notifications_total` read.
//! - **Leader only**: [`Notifier::run`] is part of the leader's term (`server::leader_term`),
//!   under its epoch, so followers never send and a fenced old leader cannot write records.

pub mod deliver;
pub mod problems;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use syncfleet_proto::time::to_proto;
use syncfleet_proto::v1;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::documents::model::{Document, NotifierDoc, NotifyOn};
use crate::fleet::Fleet;
use crate::limits::echo;
use crate::schedule::scheduler::Scheduler;
use crate::store::{Store, StoreError, keys};
use deliver::Outgoing;
use problems::Problem;

/// Longest time between two evaluations.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// First retry delay after a failed delivery.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// Delivery attempts per message before it is given up.
pub const MAX_ATTEMPTS: u32 = 10;
/// Most problems one notifier sends per evaluation (the rest wait for the next one, so a
/// storm of failures cannot hold the loop for long).
const MAX_SENDS_PER_EVALUATION: usize = 50;

/// Why a notifier operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOT_FOUND`.
    #[error("no notifier named {}; see them with 'syncfleet notifiers list'", echo(.0))]
    NotFound(String),
    /// `INTERNAL`.
    #[error("stored notifier {name} is unreadable: {problem}")]
    Unreadable { name: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A notifier's counts and last outcome, kept in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusRecord {
    /// When the notifier was first evaluated (failed runs that ended before are not sent).
    pub since_ms: i64,
    pub sent: u64,
    pub resolved: u64,
    pub failed: u64,
    pub given_up: u64,
    pub last_delivery_ms: Option<i64>,
    pub last_error_ms: Option<i64>,
    pub last_error: String,
}

/// One problem a notifier knows about, kept in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProblemRecord {
    pub title: String,
    pub since_ms: i64,
    /// The message about the problem was delivered.
    pub delivered: bool,
    /// The problem cleared and the "resolved" message is still to be delivered.
    #[serde(default)]
    pub clearing: bool,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: String,
    /// No more attempts.
    #[serde(default)]
    pub given_up: bool,
    /// The text of the problem, for the "resolved" message.
    #[serde(default)]
    pub kind: String,
}

fn decode<T: for<'de> Deserialize<'de> + Default>(b: &[u8]) -> T {
    serde_json::from_slice(b).unwrap_or_default()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

/// How long saturated schedules found by an evaluation are reused: saturation is the median of
/// a schedule's last runs and moves slowly, and finding it reads each schedule's recent runs.
pub const SATURATION_EVERY: Duration = Duration::from_secs(60);

/// The leader's notifier loop and evaluations.
#[derive(Debug)]
pub struct Notifier {
    fleet: Arc<Fleet>,
    scheduler: Arc<Scheduler>,
    /// Saturated schedules of the last look and when it was taken.
    saturated: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<Problem>)>>,
}

impl Notifier {
    pub fn new(fleet: Arc<Fleet>, scheduler: Arc<Scheduler>) -> Self {
        Self {
            fleet,
            scheduler,
            saturated: tokio::sync::Mutex::new(None),
        }
    }

    /// Evaluate on every run update that may be a problem (soon after it) and every
    /// [`RECONCILE_EVERY`], until `term` is cancelled.
    pub async fn run(self, term: CancellationToken) {
        let mut updates = self.fleet.subscribe();
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = updates.recv() => match r {
                    Ok(run) if !is_problem_update(&run) => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Let the rest of a burst arrive, then evaluate once.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while updates.try_recv().is_ok() {}
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = term.cancelled() => return,
            }
            if let Err(e) = self.evaluate(Utc::now()).await {
                tracing::warn!(error = %e, "notifications: evaluation failed; retrying on the next one");
            }
        }
    }

    /// One evaluation: read the problems, send what is new (and what cleared, when asked),
    /// retry what is due, and record it all.
    pub async fn evaluate(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let docs = problems::notifier_docs(&self.fleet).await?;
        forget_deleted(self.fleet.store.as_ref(), &docs).await?;
        if docs.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<NotifyOn> = docs.iter().flat_map(|d| d.on.iter().copied()).collect();
        wanted.sort();
        wanted.dedup();
        let mut saturated = self.saturated.lock().await;
        let reuse = wanted.contains(&NotifyOn::ScheduleSaturated)
            && saturated
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < SATURATION_EVERY);
        if reuse {
            wanted.retain(|k| *k != NotifyOn::ScheduleSaturated);
        }
        let (mut all, labels) =
            problems::current(&self.fleet, &self.scheduler, now, &wanted).await?;
        if reuse {
            if let Some((_, cached)) = saturated.as_ref() {
                all.extend(cached.iter().cloned());
            }
        } else if wanted.contains(&NotifyOn::ScheduleSaturated) {
            let found = all
                .iter()
                .filter(|p| p.kind == NotifyOn::ScheduleSaturated)
                .cloned()
                .collect();
            *saturated = Some((tokio::time::Instant::now(), found));
        }
        drop(saturated);
        let store = Arc::clone(&self.fleet.store);
        let jobs = docs.into_iter().map(|doc| {
            let store = Arc::clone(&store);
            let mine: Vec<&Problem> = all
                .iter()
                .filter(|p| problems::wants(&doc, p, &labels))
                .collect();
            async move { evaluate_one(store.as_ref(), &doc, &mine, now).await }
        });
        for r in futures::future::join_all(jobs).await {
            r?;
        }
        Ok(())
    }
}

/// Drop the records of notifiers whose document was deleted (a notifier applied again later
/// starts afresh).
async fn forget_deleted(store: &dyn Store, docs: &[NotifierDoc]) -> Result<(), StoreError> {
    let live: std::collections::HashSet<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    let mut gone = std::collections::BTreeSet::new();
    for (key, _) in store.list_state(keys::NOTIFIERS_ALL).await? {
        if let Some(name) = key
            .strip_prefix(keys::NOTIFIERS_ALL)
            .and_then(|rest| rest.split('/').next())
            && !live.contains(name)
        {
            gone.insert(name.to_string());
        }
    }
    for name in gone {
        store
            .delete_state_prefix(&keys::notifier_prefix(&name))
            .await?;
    }
    Ok(())
}

fn is_problem_update(run: &v1::Run) -> bool {
    matches!(
        v1::RunState::try_from(run.state).unwrap_or(v1::RunState::Unspecified),
        v1::RunState::Held
            | v1::RunState::Failed
            | v1::RunState::CompletedWithErrors
            | v1::RunState::Unknown
    )
}

async fn evaluate_one(
    store: &dyn Store,
    doc: &NotifierDoc,
    current: &[&Problem],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = now.timestamp_millis();
    let status_key = keys::notifier_status(&doc.name);
    let mut status: StatusRecord = match store.get_state(&status_key).await? {
        Some(b) => decode(&b),
        None => StatusRecord {
            since_ms: now_ms,
            ..StatusRecord::default()
        },
    };
    let status_before = encode(&status);
    let prefix = keys::notifier_problems(&doc.name);
    let mut stored: BTreeMap<String, ProblemRecord> = store
        .list_state(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), decode(&v))))
        .collect();
    let mut sends = 0usize;
    let mut seen = std::collections::HashSet::new();
    for p in current {
        if p.kind == NotifyOn::Failed
            && p.ended_at
                .is_some_and(|t| t.timestamp_millis() < status.since_ms)
        {
            continue;
        }
        seen.insert(p.key.clone());
        let mut rec = stored.remove(&p.key).unwrap_or_else(|| ProblemRecord {
            title: p.title.clone(),
            since_ms: now_ms,
            kind: p.kind.as_str().to_string(),
            ..ProblemRecord::default()
        });
        let before = encode(&rec);
        if rec.clearing {
            // Back before its "resolved" message went out: it is the same open problem.
            rec.clearing = false;
            rec.attempts = 0;
            rec.given_up = !rec.delivered && rec.given_up;
        }
        if !rec.delivered
            && !rec.given_up
            && rec.next_attempt_ms <= now_ms
            && sends < MAX_SENDS_PER_EVALUATION
        {
            sends += 1;
            let msg = outgoing(doc, p, false, now);
            attempt(doc, &msg, &mut rec, &mut status, now_ms, false).await;
        }
        if encode(&rec) != before {
            store
                .put_state(&keys::notifier_problem(&doc.name, &p.key), &encode(&rec))
                .await?;
        }
    }
    // Problems that cleared.
    for (key, mut rec) in stored {
        let send_resolved = doc.resolved == Some(true)
            && rec.delivered
            && rec.kind != NotifyOn::Failed.as_str()
            && !rec.given_up;
        if send_resolved && sends < MAX_SENDS_PER_EVALUATION {
            if !rec.clearing {
                rec.clearing = true;
                rec.attempts = 0;
                rec.next_attempt_ms = 0;
                rec.last_error.clear();
            }
            if rec.next_attempt_ms <= now_ms {
                sends += 1;
                // A held run's decision (who approved or rejected it) goes into the message; a
                // store error only leaves it out.
                let decision = match key.strip_prefix("held/") {
                    Some(id) => store
                        .get_run(id)
                        .await
                        .ok()
                        .flatten()
                        .as_ref()
                        .and_then(problems::held_decision),
                    None => None,
                };
                let p = resolved_problem(&key, &rec, decision.as_deref());
                let msg = outgoing(doc, &p, true, now);
                attempt(doc, &msg, &mut rec, &mut status, now_ms, true).await;
            }
            if rec.clearing && !rec.given_up {
                store
                    .put_state(&keys::notifier_problem(&doc.name, &key), &encode(&rec))
                    .await?;
                continue;
            }
        } else if send_resolved {
            continue;
        }
        // `/` ends the key, so the prefix deletes this record only.
        store
            .delete_state_prefix(&keys::notifier_problem(&doc.name, &key))
            .await?;
    }
    if encode(&status) != status_before {
        store.put_state(&status_key, &encode(&status)).await?;
    }
    Ok(())
}

/// One delivery attempt; the record and the counts say how it went.
async fn attempt(
    doc: &NotifierDoc,
    msg: &Outgoing,
    rec: &mut ProblemRecord,
    status: &mut StatusRecord,
    now_ms: i64,
    resolved: bool,
) {
    let result = match (&doc.webhook, &doc.email) {
        (Some(w), _) => deliver::webhook(w, msg).await,
        (None, Some(e)) => deliver::email(e, msg).await,
        (None, None) => Err(deliver::DeliveryError::Message(
            "the notifier has no transport".to_string(),
        )),
    };
    rec.attempts += 1;
    match result {
        Ok(()) => {
            if resolved {
                status.resolved += 1;
                rec.clearing = false;
                rec.given_up = true; // done: the caller deletes it
            } else {
                status.sent += 1;
                rec.delivered = true;
            }
            rec.last_error.clear();
            status.last_delivery_ms = Some(now_ms);
            tracing::info!(notifier = %doc.name, title = %msg.subject, resolved, "notification delivered");
        }
        Err(e) => {
            let text = bounded_error(&e.to_string());
            status.failed += 1;
            status.last_error = text.clone();
            status.last_error_ms = Some(now_ms);
            rec.last_error = text;
            if rec.attempts >= MAX_ATTEMPTS {
                rec.given_up = true;
                status.given_up += 1;
                tracing::error!(notifier = %doc.name, title = %msg.subject, error = %e, "notification given up after {MAX_ATTEMPTS} attempts");
            } else {
                let wait = backoff(rec.attempts);
                rec.next_attempt_ms = now_ms + wait.as_millis() as i64;
                tracing::warn!(notifier = %doc.name, title = %msg.subject, error = %e, retry_in = ?wait, "notification failed; retrying");
            }
        }
    }
}

/// Longest delivery error kept (characters).
const MAX_ERROR_CHARS: usize = 1000;

fn bounded_error(e: &str) -> String {
    if e.chars().count() <= MAX_ERROR_CHARS {
        return e.to_string();
    }
    let cut: String = e.chars().take(MAX_ERROR_CHARS).collect();
    format!("{cut}…")
}

fn resolved_problem(key: &str, rec: &ProblemRecord, decision: Option<&str>) -> Problem {
    let (kind, subject) = key.split_once('/').unwrap_or((key, ""));
    let kind = match kind {
        "held" => NotifyOn::Held,
        "agent_lost" => NotifyOn::AgentLost,
        "engine_unhealthy" => NotifyOn::EngineUnhealthy,
        "schedule_saturated" => NotifyOn::ScheduleSaturated,
        _ => NotifyOn::Failed,
    };
    let (agent, run_id, schedule) = match kind {
        NotifyOn::Held => (String::new(), subject.to_string(), String::new()),
        NotifyOn::ScheduleSaturated => (String::new(), String::new(), subject.to_string()),
        _ => (subject.to_string(), String::new(), String::new()),
    };
    Problem {
        kind,
        key: key.to_string(),
        agent,
        schedule,
        sequence: String::new(),
        run_id,
        title: format!(
            "[syncfleet] resolved: {}",
            rec.title.trim_start_matches("[syncfleet] ")
        ),
        text: format!(
            "Resolved: {} (open since {}).{}",
            rec.title.trim_start_matches("[syncfleet] "),
            DateTime::<Utc>::from_timestamp_millis(rec.since_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            decision.map_or_else(String::new, |d| format!(" The run was {d}."))
        ),
        approve_command: String::new(),
        ended_at: None,
    }
}

/// The message of `p` for `doc`: e-mail subject and text, and the webhook JSON, whose `text`
/// is what Slack and Teams incoming webhooks show and whose `syncfleet` object carries the
/// fields for generic receivers.
pub fn outgoing(doc: &NotifierDoc, p: &Problem, resolved: bool, now: DateTime<Utc>) -> Outgoing {
    let text = deliver::bounded(&p.text);
    let json = serde_json::json!({
        "text": format!("{}\n\n{}", p.title, text),
        "title": p.title,
        "syncfleet": {
            "notifier": doc.name,
            "status": if resolved { "resolved" } else { "firing" },
            "kind": p.kind.as_str(),
            "key": p.key,
            "agent": p.agent,
            "run_id": p.run_id,
            "schedule": p.schedule,
            "sequence": p.sequence,
            "approve_command": p.approve_command,
            "message": text,
            "at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    });
    Outgoing {
        subject: p.title.clone(),
        text,
        json,
    }
}

fn ts(ms: Option<i64>) -> Option<prost_types::Timestamp> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(to_proto)
}

fn destination(doc: &NotifierDoc) -> (String, String) {
    match (&doc.webhook, &doc.email) {
        (Some(w), _) => {
            let shown = reqwest::Url::parse(&w.url)
                .ok()
                .map(|u| {
                    format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""))
                        + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
                })
                .unwrap_or_default();
            ("webhook".to_string(), shown)
        }
        (None, Some(e)) => (
            "email".to_string(),
            format!("smtp {} → {}", e.server, e.to.join(", ")),
        ),
        (None, None) => (String::new(), String::new()),
    }
}

/// The status of one stored notifier document, with its problems when `with_problems`.
async fn status_of(
    store: &dyn Store,
    doc: &NotifierDoc,
    with_problems: bool,
) -> Result<v1::NotifierStatus, StoreError> {
    let status: StatusRecord = store
        .get_state(&keys::notifier_status(&doc.name))
        .await?
        .map(|b| decode(&b))
        .unwrap_or_default();
    let prefix = keys::notifier_problems(&doc.name);
    let recs: Vec<(String, ProblemRecord)> = store
        .list_state(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), decode(&v))))
        .collect();
    let (transport, destination) = destination(doc);
    let open = recs.iter().filter(|(_, r)| !r.clearing).count();
    let undelivered = recs
        .iter()
        .filter(|(_, r)| !r.clearing && !r.delivered)
        .count();
    Ok(v1::NotifierStatus {
        name: doc.name.clone(),
        transport,
        destination,
        on: doc.on.iter().map(|k| k.as_str().to_string()).collect(),
        sent: status.sent,
        resolved: status.resolved,
        failed: status.failed,
        given_up: status.given_up,
        last_delivery: ts(status.last_delivery_ms),
        last_error_at: ts(status.last_error_ms),
        last_error: status.last_error,
        open_problems: u32::try_from(open).unwrap_or(u32::MAX),
        undelivered: u32::try_from(undelivered).unwrap_or(u32::MAX),
        since: ts((status.since_ms > 0).then_some(status.since_ms)),
        problems: if with_problems {
            recs.into_iter()
                .map(|(key, r)| v1::NotifierProblem {
                    key,
                    title: r.title,
                    since: ts(Some(r.since_ms)),
                    delivered: r.delivered,
                    attempts: r.attempts,
                    last_error: r.last_error,
                    next_attempt: ts((!r.delivered && !r.given_up && r.next_attempt_ms > 0)
                        .then_some(r.next_attempt_ms)),
                })
                .collect()
        } else {
            Vec::new()
        },
    })
}

fn parse_doc(name: &str, kind: &str, json: &str) -> Result<NotifierDoc, NotifyError> {
    match crate::documents::from_json(kind, json) {
        Ok(Document::Notifier(n)) => Ok(n),
        Ok(_) => Err(NotifyError::NotFound(name.to_string())),
        Err(problem) => Err(NotifyError::Unreadable {
            name: name.to_string(),
            problem,
        }),
    }
}

/// Every notifier with its counts (behind `ListNotifiers`), by name.
pub async fn list(store: &dyn Store) -> Result<Vec<v1::NotifierStatus>, NotifyError> {
    let mut out = Vec::new();
    for d in store.list_documents(Some("Notifier")).await? {
        let doc = parse_doc(&d.name, &d.kind, &d.json)?;
        out.push(status_of(store, &doc, false).await?);
    }
    Ok(out)
}

/// One notifier with its counts and open problems (behind `GetNotifier`).
pub async fn get(store: &dyn Store, name: &str) -> Result<v1::NotifierStatus, NotifyError> {
    let found = store
        .list_documents(Some("Notifier"))
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| NotifyError::NotFound(name.to_string()))?;
    let doc = parse_doc(&found.name, &found.kind, &found.json)?;
    Ok(status_of(store, &doc, true).await?)
}

/// `(notifier, outcome, count)` for `syncfleet_notifications_total`: outcomes `sent`,
/// `resolved`, `failed` (attempts) and `given_up`, from the status records.
pub async fn outcome_counts(
    store: &dyn Store,
) -> Result<Vec<(String, &'static str, u64)>, StoreError> {
    let mut out = Vec::new();
    let mut by_name: HashMap<String, StatusRecord> = HashMap::new();
    for d in store.list_documents(Some("Notifier")).await? {
        let s = store
            .get_state(&keys::notifier_status(&d.name))
            .await?
            .map(|b| decode(&b))
            .unwrap_or_default();
        by_name.insert(d.name, s);
    }
    let mut names: Vec<_> = by_name.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, s) in names {
        for (outcome, v) in [
            ("sent", s.sent),
            ("resolved", s.resolved),
            ("failed", s.failed),
            ("given_up", s.given_up),
        ] {
            out.push((name.clone(), outcome, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::documents::model::{Targets, WebhookDoc};
    use crate::store::sqlite::SqliteStore;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU16, Ordering};

    /// A webhook receiver on loopback answering `status` (changeable) and keeping the bodies.
    struct Receiver {
        url: String,
        bodies: Arc<Mutex<Vec<serde_json::Value>>>,
        status: Arc<AtomicU16>,
    }

    async fn receiver() -> Receiver {
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (b, s) = (Arc::clone(&bodies), Arc::clone(&status));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let code = s.load(Ordering::SeqCst);
                if code == 200 {
                    b.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                }
                axum::http::StatusCode::from_u16(code).unwrap()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            bodies,
            status,
        }
    }

    fn notifier(url: &str, on: Vec<NotifyOn>, resolved: bool) -> NotifierDoc {
        NotifierDoc {
            name: "ops".into(),
            description: String::new(),
            on,
            targets: None,
            schedules: Vec::new(),
            resolved: Some(resolved),
            webhook: Some(WebhookDoc {
                url: url.into(),
                ca_file: None,
                timeout: None,
            }),
            email: None,
        }
    }

    fn held_run(id: &str) -> Problem {
        let run = v1::Run {
            id: id.into(),
            agent: "sync-01".into(),
            state: v1::RunState::Held as i32,
            schedule: "nightly".into(),
            steps: vec![v1::Step {
                index: 1,
                ma: "AD".into(),
                profile: "Export".into(),
                state: v1::StepState::Held as i32,
                detail: "612 pending export deletes, more than 2% of 10000".into(),
                ..v1::Step::default()
            }],
            ..v1::Run::default()
        };
        problems::held(&run)
    }

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        (dir, s)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    async fn status(store: &dyn Store) -> StatusRecord {
        decode(
            &store
                .get_state(&keys::notifier_status("ops"))
                .await
                .unwrap()
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_problem_is_sent_once_until_it_clears_then_resolved_then_again() {
        let r = receiver().await;
        let (_dir, store) = store();
        let doc = notifier(&r.url, vec![NotifyOn::Held], true);
        let p = held_run("run-1");
        evaluate_one(store.as_ref(), &doc, &[&p], at(0))
            .await
            .unwrap();
        evaluate_one(store.as_ref(), &doc, &[&p], at(5))
            .await
            .unwrap();
        evaluate_one(store.as_ref(), &doc, &[&p], at(10))
            .await
            .unwrap();
        {
            let b = r.bodies.lock().unwrap();
            assert_eq!(b.len(), 1, "{b:#?}");
            assert_eq!(b[0]["syncfleet"]["status"], "firing");
            assert_eq!(
                b[0]["syncfleet"]["approve_command"],
                "syncfleet runs approve run-1 --note \"why this is expected\""
            );
            let text = b[0]["text"].as_str().unwrap();
            assert!(
                text.contains("held before step 2 AD: Export, because its guard rail tripped: 612 pending export deletes"),
                "{text}"
            );
        }
        // Cleared: one "resolved" message, and the record is gone.
        evaluate_one(store.as_ref(), &doc, &[], at(15))
            .await
            .unwrap();
        evaluate_one(store.as_ref(), &doc, &[], at(20))
            .await
            .unwrap();
        assert_eq!(r.bodies.lock().unwrap().len(), 2);
        assert_eq!(
            r.bodies.lock().unwrap()[1]["syncfleet"]["status"],
            "resolved"
        );
        assert!(
            store
                .list_state(&keys::notifier_problems("ops"))
                .await
                .unwrap()
                .is_empty()
        );
        // The same key again is a new problem.
        evaluate_one(store.as_ref(), &doc, &[&p], at(25))
            .await
            .unwrap();
        assert_eq!(r.bodies.lock().unwrap().len(), 3);
        let s = status(store.as_ref()).await;
        assert_eq!((s.sent, s.resolved, s.failed), (2, 1, 0));
    }

    #[tokio::test]
    async fn the_resolved_message_of_a_rejected_held_run_says_who_rejected_it() {
        let r = receiver().await;
        let (_dir, store) = store();
        let doc = notifier(&r.url, vec![NotifyOn::Held], true);
        let p = held_run("run-1");
        evaluate_one(store.as_ref(), &doc, &[&p], at(0))
            .await
            .unwrap();
        let run = v1::Run {
            id: "run-1".into(),
            agent: "sync-01".into(),
            state: v1::RunState::Held as i32,
            rejected_by: "operator/bob".into(),
            rejected_at: Some(to_proto(at(3))),
            reject_note: "wrong HR feed".into(),
            ..v1::Run::default()
        };
        store.insert_runs(&[run]).await.unwrap();
        evaluate_one(store.as_ref(), &doc, &[], at(5))
            .await
            .unwrap();
        let b = r.bodies.lock().unwrap();
        assert_eq!(b.len(), 2, "{b:#?}");
        assert_eq!(b[1]["syncfleet"]["status"], "resolved");
        let text = b[1]["text"].as_str().unwrap();
        assert!(
            text.contains(
                "The run was rejected by operator/bob at 2027-01-15T08:00:03Z: wrong HR feed."
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn failures_are_retried_with_backoff_then_given_up_and_counted() {
        let r = receiver().await;
        r.status.store(503, Ordering::SeqCst);
        let (_dir, store) = store();
        let doc = notifier(&r.url, vec![NotifyOn::Held], false);
        let p = held_run("run-2");
        let key = keys::notifier_problem("ops", "held/run-2");
        let rec = |store: Arc<dyn Store>| {
            let key = key.clone();
            async move {
                let b = store.get_state(&key).await.unwrap().unwrap();
                decode::<ProblemRecord>(&b)
            }
        };
        evaluate_one(store.as_ref(), &doc, &[&p], at(0))
            .await
            .unwrap();
        let first = rec(Arc::clone(&store)).await;
        assert_eq!((first.attempts, first.delivered), (1, false));
        assert_eq!(first.next_attempt_ms, at(2).timestamp_millis());
        assert!(
            first.last_error.contains("HTTP 503"),
            "{}",
            first.last_error
        );
        // Not due yet: no attempt.
        evaluate_one(store.as_ref(), &doc, &[&p], at(1))
            .await
            .unwrap();
        assert_eq!(rec(Arc::clone(&store)).await.attempts, 1);
        // Due: the second attempt, then the wait doubles.
        evaluate_one(store.as_ref(), &doc, &[&p], at(2))
            .await
            .unwrap();
        let second = rec(Arc::clone(&store)).await;
        assert_eq!(second.attempts, 2);
        assert_eq!(second.next_attempt_ms, at(6).timestamp_millis());
        // Every later attempt when due, until the last one.
        let mut t = 6;
        for _ in 2..MAX_ATTEMPTS {
            evaluate_one(store.as_ref(), &doc, &[&p], at(t))
                .await
                .unwrap();
            t += RETRY_MAX.as_secs() as i64;
        }
        let last = rec(Arc::clone(&store)).await;
        assert_eq!((last.attempts, last.given_up), (MAX_ATTEMPTS, true));
        let s = status(store.as_ref()).await;
        assert_eq!(
            (s.sent, s.failed, s.given_up),
            (0, u64::from(MAX_ATTEMPTS), 1)
        );
        // Given up: the receiver is back, but the message is not tried again.
        r.status.store(200, Ordering::SeqCst);
        evaluate_one(store.as_ref(), &doc, &[&p], at(t + 3600))
            .await
            .unwrap();
        assert!(r.bodies.lock().unwrap().is_empty());
        // The status the CLI shows.
        let shown = status_of(store.as_ref(), &doc, true).await.unwrap();
        assert_eq!(shown.failed, u64::from(MAX_ATTEMPTS));
        assert!(
            shown.last_error.contains("HTTP 503"),
            "{}",
            shown.last_error
        );
        assert_eq!(shown.undelivered, 1);
        assert_eq!(
            shown.destination,
            format!(
                "http://127.0.0.1:{}",
                reqwest::Url::parse(&r.url).unwrap().port().unwrap()
            )
        );
    }

    #[tokio::test]
    async fn failed_runs_that_ended_before_the_notifier_existed_are_not_sent() {
        let r = receiver().await;
        let (_dir, store) = store();
        let doc = notifier(&r.url, vec![NotifyOn::Failed], true);
        let old = Problem {
            ended_at: Some(at(-60)),
            ..held_run("old")
        };
        let old = Problem {
            kind: NotifyOn::Failed,
            key: "failed/old".into(),
            ..old
        };
        let new = Problem {
            kind: NotifyOn::Failed,
            key: "failed/new".into(),
            ended_at: Some(at(10)),
            ..held_run("new")
        };
        evaluate_one(store.as_ref(), &doc, &[&old], at(0))
            .await
            .unwrap();
        evaluate_one(store.as_ref(), &doc, &[&old, &new], at(10))
            .await
            .unwrap();
        let b = r.bodies.lock().unwrap().clone();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["syncfleet"]["key"], "failed/new");
        // A failed run leaving the window is no "resolved" message.
        drop(b);
        evaluate_one(store.as_ref(), &doc, &[], at(20))
            .await
            .unwrap();
        assert_eq!(r.bodies.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn records_of_deleted_notifiers_are_dropped_and_others_kept() {
        let r = receiver().await;
        let (_dir, store) = store();
        let doc = notifier(&r.url, vec![NotifyOn::Held], false);
        let other = NotifierDoc {
            name: "ops2".into(),
            ..doc.clone()
        };
        let p = held_run("run-3");
        evaluate_one(store.as_ref(), &doc, &[&p], at(0))
            .await
            .unwrap();
        evaluate_one(store.as_ref(), &other, &[&p], at(0))
            .await
            .unwrap();
        forget_deleted(store.as_ref(), std::slice::from_ref(&other))
            .await
            .unwrap();
        assert!(
            store
                .list_state(&keys::notifier_prefix("ops"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .list_state(&keys::notifier_prefix("ops2"))
                .await
                .unwrap()
                .len(),
            2,
            "status and one problem"
        );
    }

    #[tokio::test]
    async fn a_schedule_whose_runs_take_most_of_its_interval_is_a_saturation_problem() {
        let (_dir, store) = store();
        let docs = crate::documents::parse_str(
            "t.yaml",
            "kind: Sequence\nname: q\nstages: [{steps: [{ma: AD, profile: Delta Import}]}]\n---\nkind: Schedule\nname: busy\nsequence: q\ntargets: {agents: [a1]}\ntrigger: {every: 10m}\nstart_at: \"2099-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let stored: Vec<crate::store::StoredDocument> = docs
            .iter()
            .map(|d| crate::store::StoredDocument {
                kind: d.doc.kind().to_string(),
                name: d.doc.name().to_string(),
                json: crate::documents::canonical_json(&d.doc),
            })
            .collect();
        store.write_documents(&stored, &[]).await.unwrap();
        // Three runs of 9 minutes each: 90 % of the interval.
        let runs: Vec<v1::Run> = (0..3)
            .map(|i| {
                let start = at(i * 600);
                v1::Run {
                    id: format!("busy-{i}"),
                    agent: "a1".into(),
                    schedule: "busy".into(),
                    sequence: "q".into(),
                    state: v1::RunState::Succeeded as i32,
                    created_at: Some(to_proto(start)),
                    started_at: Some(to_proto(start)),
                    finished_at: Some(to_proto(start + chrono::Duration::minutes(9))),
                    ..v1::Run::default()
                }
            })
            .collect();
        store.insert_runs(&runs).await.unwrap();
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
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&scheduler).run(stop.clone()));
        for _ in 0..500 {
            if scheduler.interval("busy").await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (found, _) = problems::current(
            &fleet,
            &scheduler,
            Utc::now(),
            &[NotifyOn::ScheduleSaturated],
        )
        .await
        .unwrap();
        stop.cancel();
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, "schedule_saturated/busy");
        assert_eq!(found[0].title, "[syncfleet] schedule busy saturated (90 %)");
        assert!(
            found[0].text.contains(
                "runs take 9m0s of a 10m0s interval: lengthen the interval or split the sequence"
            ),
            "{}",
            found[0].text
        );
    }

    #[test]
    fn filters_select_by_kind_agent_labels_and_schedule() {
        let mut doc = notifier("http://x/", vec![NotifyOn::Held], false);
        let p = held_run("r");
        let mut labels = HashMap::new();
        labels.insert(
            "sync-01".to_string(),
            HashMap::from([("env".to_string(), "prod".to_string())]),
        );
        assert!(problems::wants(&doc, &p, &labels));
        doc.on = vec![NotifyOn::Failed];
        assert!(!problems::wants(&doc, &p, &labels));
        doc.on = vec![NotifyOn::Held];
        doc.targets = Some(Targets {
            agents: Vec::new(),
            selector: Some("env=test".into()),
        });
        assert!(!problems::wants(&doc, &p, &labels));
        doc.targets = Some(Targets {
            agents: Vec::new(),
            selector: Some("env=prod".into()),
        });
        assert!(problems::wants(&doc, &p, &labels));
        doc.schedules = vec!["hourly".into()];
        assert!(!problems::wants(&doc, &p, &labels));
        doc.schedules = vec!["nightly".into()];
        assert!(problems::wants(&doc, &p, &labels));
    }

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_longest() {
        assert_eq!(backoff(1), RETRY_FIRST);
        assert_eq!(backoff(2), RETRY_FIRST * 2);
        assert_eq!(backoff(3), RETRY_FIRST * 4);
        assert_eq!(backoff(30), RETRY_MAX);
    }
}
