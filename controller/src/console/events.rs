//! `GET /api/events`: live run updates as server-sent events, from the same feed `WatchRuns`
//! streams (authorized as a `WatchRuns` call): `event: run` with a run's JSON each time it or
//! one of its steps changes; `event: agent` with an agent's JSON when its state, drain, engine
//! health, autonomy or what it runs changed (agents are compared every [`AGENT_CHECK`], and at
//! once when one connects; heartbeats alone send nothing); `event: lagged` when this stream
//! fell behind and updates were dropped (the page re-reads what it shows); `event: signed_out`
//! (then the end of the stream) when the session ended or the operator was revoked. A comment
//! every 15 s keeps proxies from closing the connection. At most `console.max_event_streams`
//! streams are open at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use syncfleet_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::api::Caller;
use super::error::ConsoleError;
use super::{ClientAddr, Console, now_ms, session};
use crate::api::authorize::Authorize as _;
use crate::views::json::{agent_json, run_json};

/// Comment lines at least this often.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often an open stream checks that its session still holds (not signed out, not
/// expired, operator not revoked).
pub const RECHECK: Duration = Duration::from_secs(15);

/// How often an open stream compares the agents with what it sent last.
pub const AGENT_CHECK: Duration = Duration::from_secs(3);

/// What of an agent's JSON makes an `agent` event: everything but the heartbeat's time.
fn agent_fingerprint(agent: &serde_json::Value) -> String {
    let mut a = agent.clone();
    if let Some(m) = a.as_object_mut() {
        m.remove("last_seen");
    }
    a.to_string()
}

/// Agents whose JSON changed since `known` (updated), as events.
fn agent_events(
    agents: &[v1::Agent],
    known: &mut std::collections::HashMap<String, String>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for a in agents {
        let j = agent_json(a);
        let print = agent_fingerprint(&j);
        if known.get(&a.name) != Some(&print) {
            known.insert(a.name.clone(), print);
            out.push(Event::default().event("agent").data(j.to_string()));
        }
    }
    out
}

pub async fn events(
    State(console): State<Arc<Console>>,
    axum::Extension(peer): axum::Extension<ClientAddr>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let c = Caller::of(&console, &headers, peer).await?;
    let permit = Arc::clone(&console.streams).try_acquire_owned().map_err(|_| {
        ConsoleError::Busy(format!(
            "{} live-update streams are open already (console.max_event_streams); close other console tabs or raise the setting",
            console.settings.max_event_streams
        ))
    })?;
    let req = c.req(&console, v1::WatchRunsRequest::default());
    console
        .svc
        .security
        .authorize(&req, "WatchRuns", "")
        .await?;
    let mut rx = console.svc.fleet.subscribe();
    let mut connected = console.svc.fleet.subscribe_connected();
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(256);
    let console = Arc::clone(&console);
    tokio::spawn(async move {
        let _permit = permit;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.reset();
        let mut agent_check = tokio::time::interval(AGENT_CHECK);
        let mut known = std::collections::HashMap::new();
        // What the agents are now, without events: the page read them with /api/fleet.
        if let Ok(agents) = console.svc.fleet.store.list_agents().await {
            let views: Vec<v1::Agent> = agents
                .into_iter()
                .map(|a| console.svc.fleet.agent_view(a))
                .collect();
            agent_events(&views, &mut known);
        }
        agent_check.reset();
        loop {
            let events = tokio::select! {
                r = rx.recv() => match r {
                    Ok(run) => vec![Event::default().event("run").data(run_json(&run).to_string())],
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        vec![Event::default().event("lagged").data(format!("{{\"skipped\":{n}}}"))]
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = agent_check.tick() => changed_agents(&console, &mut known).await,
                r = connected.recv() => match r {
                    Err(broadcast::error::RecvError::Closed) => return,
                    _ => changed_agents(&console, &mut known).await,
                },
                _ = recheck.tick() => {
                    if still_signed_in(&console, &c).await {
                        continue;
                    }
                    let _ = tx.send(Ok(Event::default().event("signed_out").data("{}"))).await;
                    return;
                }
                () = tx.closed() => return,
            };
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(out))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// `agent` events for the agents that changed since `known`.
async fn changed_agents(
    console: &Console,
    known: &mut std::collections::HashMap<String, String>,
) -> Vec<Event> {
    match console.svc.fleet.store.list_agents().await {
        Ok(agents) => {
            let views: Vec<v1::Agent> = agents
                .into_iter()
                .map(|a| console.svc.fleet.agent_view(a))
                .collect();
            agent_events(&views, known)
        }
        // A store hiccup sends nothing; the next check compares again.
        Err(_) => Vec::new(),
    }
}

/// The stream's session is still stored and unexpired, and its operator still authorized.
async fn still_signed_in(console: &Console, c: &Caller) -> bool {
    let key = crate::store::keys::console_session(&c.session.hash);
    let live = match console.store.get_state(&key).await {
        Ok(Some(raw)) => serde_json::from_slice::<session::SessionRecord>(&raw)
            .is_ok_and(|r| r.expires_ms > now_ms()),
        Ok(None) => false,
        // A store hiccup does not end the stream; the next check decides.
        Err(_) => true,
    };
    if !live {
        return false;
    }
    let req = c.req(console, v1::WatchRunsRequest::default());
    match console.svc.security.authorize(&req, "WatchRuns", "").await {
        Ok(_) => true,
        Err(s) => s.code() == tonic::Code::Internal || s.code() == tonic::Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat alone sends nothing; a change of state does, once.
    #[test]
    fn agent_events_follow_changes_not_heartbeats() {
        let mut known = std::collections::HashMap::new();
        let mut a = v1::Agent {
            name: "sync-01".into(),
            state: v1::AgentState::Connected as i32,
            last_seen: Some(syncfleet_proto::time::from_millis(1_000)),
            ..Default::default()
        };
        assert_eq!(agent_events(std::slice::from_ref(&a), &mut known).len(), 1);
        a.last_seen = Some(syncfleet_proto::time::from_millis(2_000));
        assert!(agent_events(std::slice::from_ref(&a), &mut known).is_empty());
        a.state = v1::AgentState::Disconnected as i32;
        assert_eq!(agent_events(std::slice::from_ref(&a), &mut known).len(), 1);
        assert!(agent_events(std::slice::from_ref(&a), &mut known).is_empty());
    }
}
