//! Sign-in without new secrets: the controller mints a one-time link for an operator who is
//! already authenticated (the `CreateConsoleLogin` RPC behind `syncfleet ui`, or `dev`'s
//! banner; the links themselves are `crate::auth::console_login`'s); the browser exchanges it
//! once at `GET /login?token=…` for a session cookie.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::error::ConsoleError;
use super::session;
use super::{ClientAddr, Console, now_ms};
use crate::auth::console_login::{Unredeemable, redeem};

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    token: Option<String>,
}

/// A small page in the console's style (no script, no inline style: the CSP forbids both).
fn page(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · syncfleet</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}</head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n"
    )
}

/// `GET /login?token=…`: redeem the link, start a session, and send the browser to the
/// console with a page (meta refresh and a link) rather than a redirect: a SameSite=Strict
/// cookie set on a redirect that began on another site (a chat, a mail client) would not be
/// sent on the next request.
pub async fn login(
    State(console): State<Arc<Console>>,
    axum::Extension(ClientAddr(peer)): axum::Extension<ClientAddr>,
    Query(q): Query<LoginQuery>,
) -> Response {
    match login_inner(&console, peer, q.token.as_deref()).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in failed");
            let (status, _) = e.parts();
            (
                status,
                Html(page(
                    "Sign-in failed",
                    "",
                    &format!(
                        "<p>{}</p><p>Run <code>syncfleet ui</code> for a new link.</p>",
                        html_escape(&e.to_string())
                    ),
                )),
            )
                .into_response()
        }
    }
}

async fn login_inner(
    console: &Console,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<Response, ConsoleError> {
    let store = console.store.as_ref();
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token.filter(|t| t.len() <= 128) else {
        return Ok(refused(Unredeemable::Unknown));
    };
    let now = now_ms();
    let who = match redeem(store, token, now).await? {
        Ok(who) => who,
        Err(why) => {
            console
                .audit_refusal(
                    "anonymous",
                    "ConsoleSignIn",
                    "console",
                    &format!("sign-in link {}", why.label()),
                    "",
                    peer,
                )
                .await;
            return Ok(refused(why));
        }
    };
    let lifetime = console.settings.session_lifetime;
    let (cookie, _) = session::create(store, who.clone(), lifetime, now).await?;
    console
        .security
        .audit(
            &who.identity().to_string(),
            "ConsoleSignIn",
            "console",
            "ok",
            &format!("session for {}", humantime::format_duration(lifetime)),
            "",
            &peer.to_string(),
        )
        .await;
    let mut resp = Html(page(
        "Signed in",
        "<meta http-equiv=\"refresh\" content=\"0; url=/\">",
        &format!(
            "<p>Signed in as {} ({}). Opening the console… <a href=\"/\">Continue to the console</a>.</p>",
            html_escape(&who.identity().to_string()),
            html_escape(&who.role)
        ),
    ))
    .into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&session::session_cookie(&cookie, lifetime.as_secs())) {
        headers.insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// The 401 page of a link that cannot be redeemed: what happened, and how to get a new one.
fn refused(why: Unredeemable) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html(page(
            "Sign-in link not valid",
            "",
            &format!(
                "<p>{}</p><p>Run <code>syncfleet ui</code> for a new link.</p>",
                why.sentence()
            ),
        )),
    )
        .into_response()
}

/// Text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
