//! Browser sessions: a random id in an HttpOnly, Secure, SameSite=Strict cookie; the store keeps
//! only its SHA-256 with the operator identity, the CSRF token and the expiry (store key
//! `console-session/<hash>`), so any controller sharing the store knows the session and a copy
//! of the store holds no usable cookie.
//!
//! The identity in a session is the operator's certificate identity (name, role, issue time);
//! it is never trusted alone: every API call goes through `Authorize::authorize`, which checks
//! the operator's revocation (by the certificate's issue time) and the role table again.

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::ConsoleError;
use crate::auth::PeerIdentity;
use crate::auth::console_login::{StoredIdentity, expiry, hash_token, random_token};
use crate::store::{Store, keys};

/// The session cookie's name.
pub const COOKIE: &str = "syncfleet_session";

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub who: StoredIdentity,
    /// The token every mutating request must carry in `X-CSRF-Token`.
    pub csrf: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A signed-in request's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 (hex) of the cookie value: the session's store key.
    pub hash: String,
    pub record: SessionRecord,
}

impl Session {
    pub fn who(&self) -> PeerIdentity {
        self.record.who.identity()
    }
}

/// The `Set-Cookie` value of a new session: only sent over HTTPS, invisible to scripts, never
/// sent with a request another site starts, for the whole console, for `max_age_secs`.
pub fn session_cookie(value: &str, max_age_secs: u64) -> String {
    format!("{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age_secs}")
}

/// The `Set-Cookie` value that deletes the session cookie (sign-out).
pub fn cleared_cookie() -> String {
    session_cookie("", 0)
}

/// The session cookie's value among the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A new session for `who`, stored; returns the cookie value (the only copy of the id) and
/// the record.
pub async fn create(
    store: &dyn Store,
    who: StoredIdentity,
    lifetime: std::time::Duration,
    now_ms: i64,
) -> Result<(String, SessionRecord), ConsoleError> {
    let id = random_token();
    let record = SessionRecord {
        who,
        csrf: random_token(),
        created_ms: now_ms,
        expires_ms: expiry(now_ms, lifetime),
    };
    let json = serde_json::to_vec(&record)
        .map_err(|e| ConsoleError::BadRequest(format!("cannot encode the session: {e}")))?;
    store
        .put_state(&keys::console_session(&hash_token(&id)), &json)
        .await?;
    Ok((id, record))
}

/// The request's session: its cookie names a stored session that has not expired. An expired
/// one is deleted when met.
pub async fn of_request(
    store: &dyn Store,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Session, ConsoleError> {
    let Some(value) = cookie_value(headers) else {
        return Err(ConsoleError::NoSession(
            "not signed in: open a sign-in link (run `syncfleet ui` for one)".into(),
        ));
    };
    let hash = hash_token(&value);
    let key = keys::console_session(&hash);
    let record = store
        .get_state(&key)
        .await?
        .and_then(|raw| serde_json::from_slice::<SessionRecord>(&raw).ok());
    let Some(record) = record else {
        return Err(ConsoleError::NoSession(
            "this console session has ended (signed out, expired or unknown): run `syncfleet ui` for a new sign-in link".into(),
        ));
    };
    if record.expires_ms <= now_ms {
        store.delete_state_prefix(&key).await?;
        return Err(ConsoleError::NoSession(
            "this console session has expired: run `syncfleet ui` for a new sign-in link".into(),
        ));
    }
    Ok(Session { hash, record })
}

/// End a session (sign-out).
pub async fn delete(store: &dyn Store, session: &Session) -> Result<(), ConsoleError> {
    store
        .delete_state_prefix(&keys::console_session(&session.hash))
        .await?;
    Ok(())
}

/// Delete expired sessions; returns how many.
pub async fn sweep(store: &dyn Store, now_ms: i64) -> Result<usize, ConsoleError> {
    Ok(crate::store::expiring::sweep_expired(store, keys::CONSOLE_SESSIONS_ALL, now_ms).await?)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_http_only_secure_strict_for_the_whole_console() {
        assert_eq!(
            session_cookie("abc", 3600),
            "syncfleet_session=abc; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=3600"
        );
        assert!(cleared_cookie().ends_with("Max-Age=0"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; syncfleet_session=xyz ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "syncfleet_sessionx=1".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), None);
        assert_eq!(cookie_value(&HeaderMap::new()), None);
    }

    /// A stored session is found by its cookie, refused (and deleted) once expired, and swept.
    #[tokio::test]
    async fn sessions_are_found_by_cookie_and_end_when_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap();
        let who = StoredIdentity {
            name: "ada".into(),
            role: "admin".into(),
            issued_ms: Some(1),
        };
        let now = 1_000_000;
        let (cookie, record) = create(&store, who.clone(), std::time::Duration::from_secs(60), now)
            .await
            .unwrap();
        assert_eq!(record.expires_ms, now + 60_000);
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            format!("{COOKIE}={cookie}").parse().unwrap(),
        );
        let s = of_request(&store, &h, now + 1).await.unwrap();
        assert_eq!(s.record.who, who);
        assert_eq!(s.record.csrf.len(), 43);
        let e = of_request(&store, &h, now + 60_000).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = of_request(&store, &h, now + 1).await.unwrap_err();
        assert!(e.to_string().contains("has ended"), "{e}");
        let (_, _) = create(&store, who, std::time::Duration::from_secs(60), now)
            .await
            .unwrap();
        assert_eq!(sweep(&store, now + 1).await.unwrap(), 0);
        assert_eq!(sweep(&store, now + 60_000).await.unwrap(), 1);
    }
}
