//! The console's reads: each calls `FleetSvc`'s own `FleetService` methods as the session's
//! operator, and answers the JSON shapes `syncfleet … -o json` prints for the same data
//! (`crate::views`), wrapped as the console's API describes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use syncfleet_proto::v1::{self, fleet_service_server::FleetService};

use super::error::ConsoleError;
use super::session::Session;
use super::{ClientAddr, Console};
use crate::auth::permits;
use crate::views::json::{
    agent_json, fleet_status_json, guard_json, run_json, schedule_status_json,
};

/// Most runs `/api/runs` returns.
pub const MAX_RUNS: u32 = 1000;

/// Page size of the agent and document listings the console follows (their maximum).
const PAGE_SIZE: u32 = 1000;

/// Most runs the timeline reads (the CLI's limit).
const MAX_TIMELINE_RUNS: usize = crate::views::timeline::MAX_RUNS;

type ApiResult = Result<Json<Value>, ConsoleError>;

/// What every API read starts with: the session (401 without one) and the browser's address.
pub struct Caller {
    pub session: Session,
    pub peer: std::net::SocketAddr,
}

impl Caller {
    pub async fn of(
        console: &Console,
        headers: &HeaderMap,
        peer: ClientAddr,
    ) -> Result<Self, ConsoleError> {
        Ok(Self {
            session: console.session(headers).await?,
            peer: peer.0,
        })
    }

    pub fn req<T>(&self, console: &Console, msg: T) -> tonic::Request<T> {
        console.request(&self.session, self.peer, msg)
    }
}

/// Every agent, by name: `ListAgents` page after page (the console shows the whole fleet).
async fn all_agents(console: &Console, c: &Caller) -> Result<Vec<v1::Agent>, ConsoleError> {
    let mut agents = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = console
            .svc
            .list_agents(c.req(
                console,
                v1::ListAgentsRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        let got = resp.agents.len();
        agents.extend(resp.agents);
        // An empty page with a token would loop forever; the last page has no token.
        if resp.next_page_token.is_empty() || got == 0 {
            return Ok(agents);
        }
        page_token = resp.next_page_token;
    }
}

/// Every stored document of `kind`, by name: `GetDocuments` page after page.
async fn all_documents(
    console: &Console,
    c: &Caller,
    kind: &str,
) -> Result<Vec<v1::FleetDocument>, ConsoleError> {
    let mut docs = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = console
            .svc
            .get_documents(c.req(
                console,
                v1::GetDocumentsRequest {
                    kind: kind.to_string(),
                    name: String::new(),
                    page_size: PAGE_SIZE,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        let got = resp.documents.len();
        docs.extend(resp.documents);
        if resp.next_page_token.is_empty() || got == 0 {
            return Ok(docs);
        }
        page_token = resp.next_page_token;
    }
}

/// `GET /api/session`: who is signed in, what they may do, the CSRF token for actions.
pub async fn session(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    // Authorized like any read: a revoked operator's session ends here too.
    console
        .svc
        .get_version(c.req(&console, v1::GetVersionRequest {}))
        .await?;
    let who = c.session.who();
    let may = |rpc: &str| permits(&who, rpc).is_ok();
    let record = &c.session.record;
    Ok(Json(json!({
        "operator": who.name,
        "role": record.who.role,
        "fleet": console.fleet_name,
        "csrf_token": record.csrf,
        "expires_at": rfc3339_ms(record.expires_ms),
        "actions": {
            "approve": may("ApproveRun"),
            "reject": may("RejectRun"),
            "cancel": may("CancelRun"),
            "pause_schedule": may("PauseSchedule"),
            "drain_agent": may("DrainAgent"),
            "start_run": may("StartRun"),
        },
        "trace_url": console.settings.trace_url,
    })))
}

/// `GET /api/fleet`: the fleet's pause state and every agent with what it runs now and its
/// last ended run.
pub async fn fleet(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let status = console
        .svc
        .get_fleet_status(c.req(&console, v1::GetFleetStatusRequest {}))
        .await?
        .into_inner();
    let agents = all_agents(&console, &c).await?;
    let active = [
        v1::RunState::Pending,
        v1::RunState::Dispatched,
        v1::RunState::Running,
    ];
    let running = console
        .svc
        .list_runs(c.req(
            &console,
            v1::ListRunsRequest {
                states: active.iter().map(|s| *s as i32).collect(),
                page_size: MAX_RUNS,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .runs;
    let ended: Vec<i32> = [
        v1::RunState::Succeeded,
        v1::RunState::CompletedWithErrors,
        v1::RunState::Failed,
        v1::RunState::Skipped,
        v1::RunState::Cancelled,
        v1::RunState::Unknown,
        v1::RunState::Held,
    ]
    .iter()
    .map(|s| *s as i32)
    .collect();
    // Pending exports per MA from the agents' last heartbeats (held by the controller that has
    // their sessions; absent elsewhere, and the page then reads them from the last run).
    let heartbeat_pending = console.svc.fleet.pending_exports.snapshot();
    let mut out = Vec::with_capacity(agents.len());
    for a in &agents {
        let last = console
            .svc
            .list_runs(c.req(
                &console,
                v1::ListRunsRequest {
                    agent: a.name.clone(),
                    states: ended.clone(),
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner()
            .runs;
        let mut j = agent_json(a);
        if let Value::Object(m) = &mut j {
            m.insert(
                "running".into(),
                Value::Array(
                    running
                        .iter()
                        .filter(|r| r.agent == a.name)
                        .map(run_json)
                        .collect(),
                ),
            );
            m.insert(
                "last_run".into(),
                last.first().map_or(Value::Null, run_json),
            );
            if let Some(mas) = heartbeat_pending.get(&a.name) {
                m.insert("pending_exports".into(), pending_exports_json(mas));
            }
        }
        out.push(j);
    }
    Ok(Json(json!({
        "status": fleet_status_json(&status),
        "agents": out,
    })))
}

/// `{"<MA>": {"add": n, "update": n, "delete": n}}`: exports pending per management agent.
fn pending_exports_json(mas: &crate::pending::MaExports) -> Value {
    Value::Object(
        mas.iter()
            .map(|(ma, [add, update, delete])| {
                (
                    ma.clone(),
                    json!({"add": add, "update": update, "delete": delete}),
                )
            })
            .collect(),
    )
}

/// `GET /api/agents/{name}`.
pub async fn agent(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let a = console
        .svc
        .get_agent(c.req(&console, v1::GetAgentRequest { name }))
        .await?
        .into_inner();
    Ok(Json(agent_json(&a)))
}

/// Query of `/api/runs`.
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    /// How far back (`1h`, `30m`, `2d`); unset: no limit.
    pub since: Option<String>,
    pub agent: Option<String>,
    /// A run state label (`running`, `held`, …).
    pub state: Option<String>,
    pub schedule: Option<String>,
    /// At most this many (default 200, at most 1000).
    pub limit: Option<u32>,
}

/// A `since` duration (`1h`) as the instant it names.
pub fn since_of(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<prost_types::Timestamp, ConsoleError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        ConsoleError::BadRequest(format!(
            "since={text:?} is not a duration ({e}); use e.g. 1h, 30m or 2d"
        ))
    })?;
    let d = chrono::Duration::from_std(d)
        .map_err(|_| ConsoleError::BadRequest(format!("since={text:?} is too long")))?;
    Ok(syncfleet_proto::time::to_proto(now - d))
}

/// `GET /api/runs?since=&agent=&state=&schedule=&limit=`: `{"runs": [run…]}`, newest first.
pub async fn runs(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(since_of(s, chrono::Utc::now())?),
        None => None,
    };
    let states = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => vec![v1::RunState::from_label(s).ok_or_else(|| {
            ConsoleError::BadRequest(format!(
                "state={s:?} is not a run state; use pending, dispatched, running, succeeded, completed_with_errors, failed, skipped, cancelled, unknown or held"
            ))
        })? as i32],
        None => Vec::new(),
    };
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > MAX_RUNS {
        return Err(ConsoleError::BadRequest(format!(
            "limit={limit} is outside 1..={MAX_RUNS}"
        )));
    }
    let runs = console
        .svc
        .list_runs(c.req(
            &console,
            v1::ListRunsRequest {
                agent: q.agent.unwrap_or_default(),
                schedule: q.schedule.unwrap_or_default(),
                states,
                since,
                page_size: limit,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .runs;
    Ok(Json(
        json!({ "runs": runs.iter().map(run_json).collect::<Vec<_>>() }),
    ))
}

/// The held step of a run: which step, why, and the guard rail's limits; `null` when no step
/// is held.
pub fn held_json(run: &v1::Run) -> Value {
    run.steps
        .iter()
        .find(|s| s.state == v1::StepState::Held as i32)
        .map_or(Value::Null, |s| {
            json!({
                "step": s.index,
                "ma": s.ma,
                "profile": s.profile,
                "reason": s.detail,
                "guard": s.guard.as_ref().map_or(Value::Null, guard_json),
                "pending_before": s.pending_before.as_ref().map(crate::views::json::pending_json),
                "decision": decision_json(run),
            })
        })
}

/// What an operator decided about a held run: `{"kind": "approved", by, at, continued_in}`,
/// `{"kind": "rejected", by, at, note}`, or `null` while it waits for a decision.
fn decision_json(run: &v1::Run) -> Value {
    use crate::views::json::timestamp_json;
    if !run.rejected_by.is_empty() || run.rejected_at.is_some() {
        json!({
            "kind": "rejected",
            "by": run.rejected_by,
            "at": timestamp_json(run.rejected_at.as_ref()),
            "note": run.reject_note,
        })
    } else if !run.continued_in.is_empty() {
        json!({
            "kind": "approved",
            "by": run.approved_by,
            "at": timestamp_json(run.approved_at.as_ref()),
            "continued_in": run.continued_in,
        })
    } else {
        Value::Null
    }
}

/// `GET /api/runs/{id}`: the run (`runs show -o json`, object errors and incidents per step
/// included) with `held`: the step a guard rail held and why.
pub async fn run(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let run = console
        .svc
        .get_run(c.req(&console, v1::GetRunRequest { id }))
        .await?
        .into_inner();
    Ok(Json(run_detail_json(&run)))
}

/// A run with its `held` details.
pub fn run_detail_json(run: &v1::Run) -> Value {
    let mut j = run_json(run);
    if let Value::Object(m) = &mut j {
        m.insert("held".into(), held_json(run));
    }
    j
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineQuery {
    /// `1h`, `6h` or `24h` (default `1h`).
    pub since: Option<String>,
}

/// `GET /api/timeline?since=1h|6h|24h`: `syncfleet timeline --since … -o json`.
pub async fn timeline(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Query(q): Query<TimelineQuery>,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let window = q.since.as_deref().unwrap_or("1h");
    let hours = match window {
        "1h" => 1,
        "6h" => 6,
        "24h" => 24,
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "since={other:?}: the timeline shows 1h, 6h or 24h"
            )));
        }
    };
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::hours(hours);
    let agents = all_agents(&console, &c).await?;
    let mut runs: Vec<v1::Run> = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = console
            .svc
            .list_runs(c.req(
                &console,
                v1::ListRunsRequest {
                    since: Some(syncfleet_proto::time::to_proto(since)),
                    page_size: MAX_RUNS,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let got = resp.runs.len();
        runs.extend(resp.runs);
        if runs.len() >= MAX_TIMELINE_RUNS {
            runs.truncate(MAX_TIMELINE_RUNS);
            break;
        }
        if resp.next_page_token.is_empty() || got == 0 {
            break;
        }
        page_token = resp.next_page_token;
    }
    let placed = crate::views::timeline::place(&agents, &runs, now);
    Ok(Json(crate::views::timeline::timeline_json(
        since, now, &placed,
    )))
}

/// A schedule's status (`schedules show -o json`) with `next_local`: its next fire times in
/// the schedule's own time zone (RFC 3339 with that zone's offset).
pub fn schedule_json(s: &v1::ScheduleStatus) -> Value {
    let mut j = schedule_status_json(s);
    let tz: Option<chrono_tz::Tz> = s.time_zone.parse().ok();
    let local: Vec<Value> = s
        .next
        .iter()
        .filter_map(syncfleet_proto::time::from_proto)
        .map(|t| {
            Value::String(match tz {
                Some(tz) => t.with_timezone(&tz).to_rfc3339(),
                None => t.to_rfc3339(),
            })
        })
        .collect();
    if let Value::Object(m) = &mut j {
        m.insert("next_local".into(), Value::Array(local));
    }
    j
}

/// `GET /api/schedules`: `{"schedules": [schedule…]}` by name.
pub async fn schedules(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let docs = all_documents(&console, &c, "Schedule").await?;
    let mut by_name = BTreeMap::new();
    for d in docs {
        match console
            .svc
            .get_schedule(c.req(
                &console,
                v1::GetScheduleRequest {
                    name: d.name.clone(),
                },
            ))
            .await
        {
            Ok(s) => {
                by_name.insert(d.name, schedule_json(s.get_ref()));
            }
            // Deleted since the list was read.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    Ok(Json(
        json!({ "schedules": by_name.into_values().collect::<Vec<_>>() }),
    ))
}

/// `GET /api/schedules/{name}`.
pub async fn schedule(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let c = Caller::of(&console, &headers, peer).await?;
    let s = console
        .svc
        .get_schedule(c.req(&console, v1::GetScheduleRequest { name }))
        .await?
        .into_inner();
    Ok(Json(schedule_json(&s)))
}

/// Unix ms as RFC 3339 UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    syncfleet_proto::time::rfc3339(&syncfleet_proto::time::from_millis(ms))
}
