//! Sign-in without new secrets: the controller mints a one-time link for an operator who is
//! already authenticated (the `CreateConsoleLogin` RPC behind `syncfleet ui`, or `dev`'s
//! banner); the browser exchanges it once at `GET /login?token=…` for a session cookie.
//!
//! A link's secret is 32 random bytes; the store keeps only its SHA-256 with the operator
//! identity and the expiry (`console-login/<hash>`), so a link minted by one controller of an
//! HA pair is redeemed at another. Redeeming marks the record used in one atomic
//! read-modify-write, so two browsers racing with one link get one session between them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::ConsoleError;
use super::session::{self, StoredIdentity, hash_token, random_token};
use super::{ClientAddr, Console, now_ms};
use crate::store::{Store, keys};

/// How long a link from `CreateConsoleLogin` (`syncfleet ui`) can be redeemed.
pub const LOGIN_TTL: Duration = Duration::from_secs(5 * 60);

/// How long the link in `dev`'s banner can be redeemed (the banner is read later than a
/// command's output).
pub const DEV_LOGIN_TTL: Duration = Duration::from_secs(3600);

/// A sign-in link as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginRecord {
    who: StoredIdentity,
    expires_ms: i64,
    /// Redeemed already (kept until it expires, so a second use is told so).
    used: bool,
}

/// A minted sign-in link.
#[derive(Debug, Clone)]
pub struct Minted {
    /// `<base>/login?token=<secret>`.
    pub url: String,
    pub expires_ms: i64,
}

/// Mint a one-time sign-in link to the console at `base_url` for `who`, valid for `ttl`.
pub async fn mint(
    store: &dyn Store,
    base_url: &str,
    who: StoredIdentity,
    ttl: Duration,
) -> Result<Minted, ConsoleError> {
    let token = random_token();
    let expires_ms = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let record = LoginRecord {
        who,
        expires_ms,
        used: false,
    };
    let json = serde_json::to_vec(&record)
        .map_err(|e| ConsoleError::BadRequest(format!("cannot encode the sign-in link: {e}")))?;
    store
        .put_state(&keys::console_login(&hash_token(&token)), &json)
        .await?;
    Ok(Minted {
        url: format!("{}/login?token={token}", base_url.trim_end_matches('/')),
        expires_ms,
    })
}

/// Why a link could not be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unredeemable {
    Unknown,
    Used,
    Expired,
}

impl Unredeemable {
    fn sentence(self) -> &'static str {
        match self {
            Unredeemable::Unknown => "This sign-in link is not known to the controller.",
            Unredeemable::Used => "This sign-in link was used already: each link works once.",
            Unredeemable::Expired => "This sign-in link has expired.",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Unredeemable::Unknown => "unknown",
            Unredeemable::Used => "used",
            Unredeemable::Expired => "expired",
        }
    }
}

/// Redeem the link with secret `token` once: the identity it was minted for.
pub async fn redeem(
    store: &dyn Store,
    token: &str,
    now_ms: i64,
) -> Result<Result<StoredIdentity, Unredeemable>, ConsoleError> {
    let key = keys::console_login(&hash_token(token));
    let decided = store
        .update_state(
            &key,
            Box::new(move |current| {
                let Some(mut record) =
                    current.and_then(|raw| serde_json::from_slice::<LoginRecord>(raw).ok())
                else {
                    return Err(Unredeemable::Unknown.label().to_string());
                };
                if record.used {
                    return Err(Unredeemable::Used.label().to_string());
                }
                if record.expires_ms <= now_ms {
                    return Err(Unredeemable::Expired.label().to_string());
                }
                record.used = true;
                serde_json::to_vec(&record).map_err(|e| e.to_string())
            }),
        )
        .await?;
    Ok(match decided {
        Ok(raw) => serde_json::from_slice::<LoginRecord>(&raw)
            .map(|r| r.who)
            .map_err(|_| Unredeemable::Unknown),
        Err(why) if why == Unredeemable::Used.label() => Err(Unredeemable::Used),
        Err(why) if why == Unredeemable::Expired.label() => Err(Unredeemable::Expired),
        Err(_) => Err(Unredeemable::Unknown),
    })
}

/// Delete sign-in links past their expiry (used or not); returns how many.
pub async fn sweep(store: &dyn Store, now_ms: i64) -> Result<usize, ConsoleError> {
    let mut n = 0;
    for (key, raw) in store.list_state(keys::CONSOLE_LOGINS_ALL).await? {
        let expired = serde_json::from_slice::<LoginRecord>(&raw)
            .map(|r| r.expires_ms <= now_ms)
            .unwrap_or(true);
        if expired {
            store.delete_state_prefix(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}

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
                .security
                .audit(
                    "anonymous",
                    "ConsoleSignIn",
                    "console",
                    "denied",
                    &format!("sign-in link {}", why.label()),
                    "",
                    &peer.to_string(),
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
        "<p>Opening the console… <a href=\"/\">Continue to the console</a>.</p>",
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
