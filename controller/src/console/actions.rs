//! The console's actions: approve, reject or cancel a run, pause or resume a schedule, drain or resume
//! an agent, and sign-out. Each passes the checks of [`super::csrf`] first (a refusal is
//! audited as `denied` under the RPC it would have called, naming the problem), then calls the
//! `FleetService` method the CLI calls, as the session's operator: the role table, the
//! revocation check and the audit entry of the outcome are the gRPC API's own.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use syncfleet_proto::v1::{self, fleet_service_server::FleetService};

use super::api::{Caller, run_detail_json, schedule_json};
use super::csrf;
use super::error::{ConsoleError, Refusal};
use super::session::{self, Session};
use super::{ClientAddr, Console};
use crate::limits::clip;
use crate::views::json::agent_json;

/// The body of every action: an optional note (the reason recorded with it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    #[serde(default)]
    pub note: String,
}

/// Audit a refused mutating request and answer 401/403 with its request id (anonymous ones
/// within [`super::budget`]).
async fn deny(
    console: &Console,
    session: Option<&Session>,
    peer: ClientAddr,
    rpc: &str,
    target: &str,
    error: ConsoleError,
) -> Refusal {
    let who = session.map_or_else(|| "anonymous".to_string(), |s| s.who().to_string());
    let request_id = crate::api::authorize::new_request_id();
    console
        .audit_refusal(&who, rpc, target, &error.to_string(), &request_id, peer.0)
        .await;
    Refusal {
        error,
        request_id: Some(request_id),
    }
}

/// The checks before any action: the console's own `Origin` (when sent), a session, its CSRF
/// token, a JSON body; then the body itself.
async fn checked(
    console: &Console,
    headers: &HeaderMap,
    peer: ClientAddr,
    rpc: &str,
    target: &str,
    body: &Bytes,
) -> Result<(Caller, NoteBody), Refusal> {
    let session = console.session(headers).await;
    let known = session.as_ref().ok();
    if let Err(e) = csrf::check_origin(headers, console.origin()) {
        return Err(deny(
            console,
            known,
            peer,
            rpc,
            target,
            ConsoleError::Forbidden(e.to_string()),
        )
        .await);
    }
    let session = match session {
        Ok(s) => s,
        Err(e) => return Err(deny(console, None, peer, rpc, target, e).await),
    };
    if let Err(e) =
        csrf::check_token(headers, &session.record.csrf).and_then(|()| csrf::check_json(headers))
    {
        return Err(deny(
            console,
            Some(&session),
            peer,
            rpc,
            target,
            ConsoleError::Forbidden(e.to_string()),
        )
        .await);
    }
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        NoteBody::default()
    } else {
        serde_json::from_slice::<NoteBody>(body).map_err(|e| Refusal {
            error: ConsoleError::BadRequest(format!(
                "the body must be a JSON object like {{\"note\": \"why\"}}: {e}"
            )),
            request_id: None,
        })?
    };
    Ok((
        Caller {
            session,
            peer: peer.0,
        },
        note,
    ))
}

type ActionResult = Result<Json<Value>, Refusal>;

fn rpc_err(s: tonic::Status) -> Refusal {
    Refusal {
        error: ConsoleError::Rpc(s),
        request_id: None,
    }
}

/// `POST /api/runs/{id}/approve` `{"note"}`: `ApproveRun`; answers the run that continues it.
pub async fn approve_run(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    let target = format!("run/{}", clip(&id));
    let (c, b) = checked(&console, &headers, peer, "ApproveRun", &target, &body).await?;
    let run = console
        .svc
        .approve_run(c.req(&console, v1::ApproveRunRequest { id, note: b.note }))
        .await
        .map_err(rpc_err)?
        .into_inner();
    Ok(Json(run_detail_json(&run)))
}

/// `POST /api/runs/{id}/reject` `{"note"}`: `RejectRun` (the note is required); answers the
/// rejected run, still held, with the decision recorded.
pub async fn reject_run(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    let target = format!("run/{}", clip(&id));
    let (c, b) = checked(&console, &headers, peer, "RejectRun", &target, &body).await?;
    let run = console
        .svc
        .reject_run(c.req(&console, v1::RejectRunRequest { id, note: b.note }))
        .await
        .map_err(rpc_err)?
        .into_inner();
    Ok(Json(run_detail_json(&run)))
}

/// `POST /api/runs/{id}/cancel` `{"note"}`: `CancelRun` with the note as its reason.
pub async fn cancel_run(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    let target = format!("run/{}", clip(&id));
    let (c, b) = checked(&console, &headers, peer, "CancelRun", &target, &body).await?;
    let run = console
        .svc
        .cancel_run(c.req(&console, v1::CancelRunRequest { id, reason: b.note }))
        .await
        .map_err(rpc_err)?
        .into_inner();
    Ok(Json(run_detail_json(&run)))
}

async fn schedule_pause(
    console: Arc<Console>,
    peer: ClientAddr,
    name: String,
    headers: HeaderMap,
    body: Bytes,
    pause: bool,
) -> ActionResult {
    let rpc = if pause {
        "PauseSchedule"
    } else {
        "ResumeSchedule"
    };
    let target = format!("schedule/{}", clip(&name));
    let (c, b) = checked(&console, &headers, peer, rpc, &target, &body).await?;
    let req = c.req(&console, v1::PauseScheduleRequest { name, note: b.note });
    let s = if pause {
        console.svc.pause_schedule(req).await
    } else {
        console.svc.resume_schedule(req).await
    }
    .map_err(rpc_err)?
    .into_inner();
    Ok(Json(schedule_json(&s)))
}

/// `POST /api/schedules/{name}/pause` `{"note"}`.
pub async fn pause_schedule(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    schedule_pause(console, peer, name, headers, body, true).await
}

/// `POST /api/schedules/{name}/resume` `{"note"}`.
pub async fn resume_schedule(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    schedule_pause(console, peer, name, headers, body, false).await
}

async fn drain(
    console: Arc<Console>,
    peer: ClientAddr,
    name: String,
    headers: HeaderMap,
    body: Bytes,
    draining: bool,
) -> ActionResult {
    let rpc = if draining {
        "DrainAgent"
    } else {
        "ResumeAgent"
    };
    let target = format!("agent/{}", clip(&name));
    let (c, b) = checked(&console, &headers, peer, rpc, &target, &body).await?;
    let req = c.req(&console, v1::DrainAgentRequest { name, note: b.note });
    let a = if draining {
        console.svc.drain_agent(req).await
    } else {
        console.svc.resume_agent(req).await
    }
    .map_err(rpc_err)?
    .into_inner();
    Ok(Json(agent_json(&a)))
}

/// `POST /api/agents/{name}/drain` `{"note"}`.
pub async fn drain_agent(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    drain(console, peer, name, headers, body, true).await
}

/// `POST /api/agents/{name}/resume` `{"note"}`.
pub async fn resume_agent(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ActionResult {
    drain(console, peer, name, headers, body, false).await
}

/// `POST /logout`: ends the session (CSRF-checked like every POST: another site must not sign
/// an operator out) and clears the cookie; 204.
pub async fn logout(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let session = console.session(&headers).await;
    if let Ok(s) = &session {
        if let Err(e) = csrf::check_origin(&headers, console.origin())
            .and_then(|()| csrf::check_token(&headers, &s.record.csrf))
        {
            return Err(deny(
                &console,
                Some(s),
                peer,
                "ConsoleSignOut",
                "console",
                ConsoleError::Forbidden(e.to_string()),
            )
            .await);
        }
        session::delete(console.store.as_ref(), s)
            .await
            .map_err(|e| Refusal {
                error: e,
                request_id: None,
            })?;
        console
            .security
            .audit(
                &s.who().to_string(),
                "ConsoleSignOut",
                "console",
                "ok",
                "",
                "",
                &peer.0.to_string(),
            )
            .await;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&session::cleared_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}
