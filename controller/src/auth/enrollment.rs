//! Enrollment: one-time tokens, and enrolling agents with them (failed attempts are limited per
//! address by `failure_window.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use syncfleet_proto::digest::sha256_hex;
use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;

use super::identity::Role;
use super::{AuthError, Security};
use crate::store::keys;

/// A stored enrollment token (the secret only as a hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    agent: String,
    labels: std::collections::BTreeMap<String, String>,
    secret_sha256: String,
    expires_ms: i64,
    created_by: String,
    #[serde(default)]
    used_ms: Option<i64>,
}

/// Longest allowed token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(1800);

impl Security {
    /// Create a one-time enrollment token on behalf of `created_by` (the operator, as the audit
    /// log names callers).
    pub async fn create_token(
        &self,
        created_by: &str,
        req: v1::CreateTokenRequest,
    ) -> Result<v1::CreateTokenResponse, AuthError> {
        super::ca::check_name(&req.agent)?;
        check_labels(&req.labels)?;
        let ttl = if req.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(AuthError::TokenTtlTooLong(ttl));
        }
        let id: String = (0..6)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        let secret: String = (0..32)
            .map(|_| {
                let c = rand::random::<u8>() % 36;
                char::from(if c < 10 { b'0' + c } else { b'a' + c - 10 })
            })
            .collect();
        let expires_ms =
            Utc::now().timestamp_millis() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let rec = TokenRecord {
            agent: req.agent.clone(),
            labels: req.labels.into_iter().collect(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            expires_ms,
            created_by: created_by.to_string(),
            used_ms: None,
        };
        let body = serde_json::to_vec(&rec).map_err(AuthError::EncodeToken)?;
        let key = keys::token(&id);
        self.fleet.store.put_state(&key, &body).await?;
        Ok(v1::CreateTokenResponse {
            token: format!("{id}.{secret}"),
            token_id: id,
            expires_at: Some(from_millis(expires_ms)),
            ca_pin: self.ca.pin(),
        })
    }

    /// How long `ip` must wait before its next enrollment attempt (`failure_window.rs`).
    fn enroll_retry_after(&self, ip: Option<IpAddr>) -> Option<Duration> {
        self.enroll_failures.retry_after(ip?, Instant::now())
    }

    fn enroll_failed(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.enroll_failures.failed(ip, Instant::now());
        }
    }

    /// Enroll an agent with a one-time token. Every outcome but a store failure is audited
    /// under `request_id` (with the token id, never the secret); refusals other than the rate
    /// limit itself count as failures of `peer`'s address.
    pub async fn enroll(
        &self,
        peer: Option<std::net::SocketAddr>,
        request_id: &str,
        req: v1::EnrollRequest,
    ) -> Result<v1::CertificateResponse, AuthError> {
        let ip = peer.map(|p| p.ip());
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        let target = format!("agent/{}", req.agent);
        let result = self.enroll_unaudited(ip, req).await;
        match &result {
            Ok((_, detail)) => {
                self.audit(&target, "Enroll", &target, "ok", detail, request_id, &peer)
                    .await;
            }
            Err(AuthError::Store(_)) => {}
            Err(e) => {
                if !matches!(e, AuthError::EnrollRateLimited { .. }) {
                    self.enroll_failed(ip);
                }
                let msg = e.to_string();
                self.audit(
                    "anonymous",
                    "Enroll",
                    &target,
                    "denied",
                    &msg,
                    request_id,
                    &peer,
                )
                .await;
            }
        }
        result.map(|(resp, _)| resp)
    }

    /// [`enroll`](Self::enroll) without the audit and the failure count: the certificate and
    /// the audit detail of a success.
    async fn enroll_unaudited(
        &self,
        ip: Option<IpAddr>,
        req: v1::EnrollRequest,
    ) -> Result<(v1::CertificateResponse, String), AuthError> {
        if let Some(wait) = self.enroll_retry_after(ip) {
            // Whole seconds, rounded up: retrying after the given time succeeds.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(AuthError::EnrollRateLimited {
                retry_in_secs: secs.max(1),
            });
        }
        let Some((id, secret)) = req.token.trim().split_once('.') else {
            return Err(AuthError::MalformedToken);
        };
        let id = id.to_string();
        let hash = sha256_hex(secret.as_bytes());
        let agent = req.agent.clone();
        let now_ms = Utc::now().timestamp_millis();
        let key = keys::token(&id);
        // Check and consume in one transaction: two enrollments with one token cannot both win.
        let id2 = id.clone();
        let consume: crate::store::StateUpdate = Box::new(move |cur| {
            let unknown = || {
                format!(
                    "enrollment token {id2} is not known: check that it was copied whole, or create a new one"
                )
            };
            let Some(cur) = cur else {
                return Err(unknown());
            };
            let Ok(mut rec) = serde_json::from_slice::<TokenRecord>(cur) else {
                return Err(unknown());
            };
            if rec.secret_sha256 != hash {
                return Err(unknown());
            }
            if let Some(used) = rec.used_ms {
                return Err(format!(
                    "enrollment token {id2} was already used at {}; tokens are single-use: create a new one with 'syncfleet tokens create --agent {}'",
                    syncfleet_proto::time::rfc3339(&from_millis(used)),
                    rec.agent
                ));
            }
            if rec.expires_ms <= now_ms {
                return Err(format!(
                    "enrollment token {id2} expired at {}; create a new one with 'syncfleet tokens create --agent {}'",
                    syncfleet_proto::time::rfc3339(&from_millis(rec.expires_ms)),
                    rec.agent
                ));
            }
            if rec.agent != agent {
                return Err(format!(
                    "enrollment token {id2} was created for agent {:?}, not {agent:?}",
                    rec.agent
                ));
            }
            rec.used_ms = Some(now_ms);
            serde_json::to_vec(&rec).map_err(|e| format!("cannot encode token record: {e}"))
        });
        let rec = self
            .fleet
            .store
            .update_state(&key, consume)
            .await?
            .and_then(|body| {
                serde_json::from_slice::<TokenRecord>(&body)
                    .map_err(|e| format!("cannot decode token record: {e}"))
            })
            .map_err(AuthError::TokenRefused)?;
        let issued = self.ca.sign_csr(
            &req.csr_pem,
            Role::Agent,
            &req.agent,
            None,
            self.agent_cert_lifetime,
        );
        let (cert_pem, not_after) = issued.map_err(|source| AuthError::CsrRefusedAfterConsume {
            token_id: id.clone(),
            source,
        })?;
        // A revoked agent that enrolled again takes runs again. The revocation time stays, so
        // certificates issued before it remain refused (`ensure_not_revoked`).
        let rk = keys::revoked(&req.agent);
        let reinstate: crate::store::StateUpdate = Box::new(|cur| {
            let Some(mut rec) = cur.and_then(|b| <v1::Pause as prost::Message>::decode(b).ok())
            else {
                return Err("not revoked".into());
            };
            if !rec.paused {
                return Err("not revoked".into());
            }
            rec.paused = false;
            Ok(prost::Message::encode_to_vec(&rec))
        });
        // `Err` here only means there was no revocation to lift.
        let _ = self.fleet.store.update_state(&rk, reinstate).await?;
        // Labels assigned by the token are kept for the agent's sessions.
        let labels_key = keys::labels(&req.agent);
        let labels = serde_json::to_vec(&rec.labels).unwrap_or_default();
        self.fleet.store.put_state(&labels_key, &labels).await?;
        let detail = format!("token {id} (created by {})", rec.created_by);
        let resp = v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(syncfleet_proto::time::from_millis(
                not_after.unix_timestamp() * 1000,
            )),
            identity: format!("spiffe://{}/agent/{}", self.fleet_name, req.agent),
            labels: rec.labels.into_iter().collect(),
        };
        Ok((resp, detail))
    }

    /// Labels a token assigned to an agent at enrollment.
    pub async fn assigned_labels(&self, agent: &str) -> std::collections::BTreeMap<String, String> {
        let key = keys::labels(agent);
        match self.fleet.store.get_state(&key).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => Default::default(),
        }
    }
}

/// Refuse oversized labels.
pub fn check_labels(labels: &HashMap<String, String>) -> Result<(), AuthError> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || v.len() > 253 {
            return Err(AuthError::BadLabel {
                key: crate::limits::echo(k),
                value: crate::limits::echo(v),
            });
        }
    }
    if labels.len() > 64 {
        return Err(AuthError::TooManyLabels);
    }
    Ok(())
}
