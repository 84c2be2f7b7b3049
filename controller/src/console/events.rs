//! `GET /api/events`: live run updates as server-sent events, from the same feed `WatchRuns`
//! streams (authorized as a `WatchRuns` call): `event: run` with a run's JSON each time it or
//! one of its steps changes; `event: lagged` when this stream fell behind and updates were
//! dropped (the page re-reads what it shows); `event: signed_out` (then the end of the stream)
//! when the session ended or the operator was revoked. A comment every 15 s keeps proxies from
//! closing the connection. At most `console.max_event_streams` streams are open at once.

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
use crate::views::json::run_json;

/// Comment lines at least this often.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often an open stream checks that its session still holds (not signed out, not
/// expired, operator not revoked).
pub const RECHECK: Duration = Duration::from_secs(15);

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
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(256);
    let console = Arc::clone(&console);
    tokio::spawn(async move {
        let _permit = permit;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.reset();
        loop {
            let event = tokio::select! {
                r = rx.recv() => match r {
                    Ok(run) => Event::default().event("run").data(run_json(&run).to_string()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(format!("{{\"skipped\":{n}}}"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
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
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(out))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
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
