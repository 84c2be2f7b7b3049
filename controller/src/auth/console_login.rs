//! Credentials of the web console: one-time sign-in links minted for an authenticated operator
//! (`CreateConsoleLogin`, `dev`'s banner), and the secrets of browser sessions.
//!
//! A link's secret is 32 random bytes (base64url); the store keeps only its SHA-256 with the
//! operator identity and the expiry (`console-login/<hash>`), so a link minted by one controller
//! of an HA pair is redeemed at another, and a copy of the store holds no usable link.
//! Redeeming marks the record used in one atomic read-modify-write, so two browsers racing with
//! one link get one session between them; used and expired records are swept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AuthError, OperatorRole, PeerIdentity, Role};
use crate::store::{Store, keys};

/// How long a link from `CreateConsoleLogin` (`syncfleet ui`) can be redeemed.
pub const LOGIN_TTL: Duration = Duration::from_secs(5 * 60);

/// How long the link in `dev`'s banner can be redeemed (a banner is read later than a
/// command's output).
pub const DEV_LOGIN_TTL: Duration = Duration::from_secs(3600);

/// An operator identity as a session or sign-in link stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    /// Operator name (`operator/<name>` in the audit log).
    pub name: String,
    /// `viewer`, `operator` or `admin`; empty for a certificate without a role.
    pub role: String,
    /// When the operator's certificate was issued (Unix ms), for the revocation check.
    pub issued_ms: Option<i64>,
}

impl StoredIdentity {
    /// The identity of an operator; `None` for an agent (agents have no console).
    pub fn of(who: &PeerIdentity) -> Option<Self> {
        (who.role == Role::Operator).then(|| Self {
            name: who.name.clone(),
            role: who
                .operator_role
                .map(OperatorRole::as_str)
                .unwrap_or("")
                .to_string(),
            issued_ms: who.issued_ms,
        })
    }

    /// Back to the identity authorization checks.
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity {
            role: Role::Operator,
            name: self.name.clone(),
            operator_role: OperatorRole::parse(&self.role),
            issued_ms: self.issued_ms,
        }
    }
}

/// 32 random bytes, base64url without padding (43 characters): sign-in secrets, session ids and
/// CSRF tokens.
pub fn random_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a secret: SHA-256, lower-case hex.
pub fn hash_token(token: &str) -> String {
    syncfleet_proto::digest::sha256_hex(token.as_bytes())
}

/// Unix ms `ttl` after `now_ms`.
pub fn expiry(now_ms: i64, ttl: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

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
    now_ms: i64,
) -> Result<Minted, AuthError> {
    let token = random_token();
    let expires_ms = expiry(now_ms, ttl);
    let record = LoginRecord {
        who,
        expires_ms,
        used: false,
    };
    let json = serde_json::to_vec(&record).map_err(AuthError::EncodeToken)?;
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
    /// What happened, as a sentence for the person holding the link.
    pub fn sentence(self) -> &'static str {
        match self {
            Unredeemable::Unknown => "This sign-in link is not known to the controller.",
            Unredeemable::Used => "This sign-in link was used already: each link works once.",
            Unredeemable::Expired => "This sign-in link has expired.",
        }
    }

    pub fn label(self) -> &'static str {
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
) -> Result<Result<StoredIdentity, Unredeemable>, AuthError> {
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
pub async fn sweep(store: &dyn Store, now_ms: i64) -> Result<usize, AuthError> {
    Ok(crate::store::expiring::sweep_expired(store, keys::CONSOLE_LOGINS_ALL, now_ms).await?)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_base64url_and_stored_hashed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert_ne!(h, a);
        assert_eq!(h, hash_token(&a));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_stored_identity_round_trips() {
        let who = PeerIdentity {
            role: Role::Operator,
            name: "vic".into(),
            operator_role: Some(OperatorRole::Viewer),
            issued_ms: Some(42),
        };
        let s = StoredIdentity::of(&who).unwrap();
        assert_eq!(s.role, "viewer");
        assert_eq!(s.identity(), who);
        let agent = PeerIdentity {
            role: Role::Agent,
            operator_role: None,
            ..who
        };
        assert_eq!(StoredIdentity::of(&agent), None);
    }

    /// A link redeems once; a second use, an expired link and an unknown one are told apart;
    /// the sweep deletes what expired.
    #[tokio::test]
    async fn a_link_redeems_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("db")).unwrap();
        let who = StoredIdentity {
            name: "ada".into(),
            role: "admin".into(),
            issued_ms: Some(1),
        };
        let now = 1_000_000;
        let m = mint(&store, "https://h:7444/", who.clone(), LOGIN_TTL, now)
            .await
            .unwrap();
        assert!(
            m.url.starts_with("https://h:7444/login?token="),
            "{}",
            m.url
        );
        let token = m.url.rsplit_once('=').unwrap().1.to_string();
        assert_eq!(
            redeem(&store, &token, now + 1).await.unwrap(),
            Ok(who.clone())
        );
        assert_eq!(
            redeem(&store, &token, now + 2).await.unwrap(),
            Err(Unredeemable::Used)
        );
        assert_eq!(
            redeem(&store, "nope", now).await.unwrap(),
            Err(Unredeemable::Unknown)
        );
        let m2 = mint(&store, "https://h:7444", who, LOGIN_TTL, now)
            .await
            .unwrap();
        let token2 = m2.url.rsplit_once('=').unwrap().1.to_string();
        let later = m2.expires_ms;
        assert_eq!(
            redeem(&store, &token2, later).await.unwrap(),
            Err(Unredeemable::Expired)
        );
        assert_eq!(sweep(&store, later).await.unwrap(), 2);
        assert_eq!(
            redeem(&store, &token, later).await.unwrap(),
            Err(Unredeemable::Unknown)
        );
    }
}
