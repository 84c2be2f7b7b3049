//! Who may do what, and the record of it.
//!
//! - **Authentication**: the caller's client certificate, verified by TLS against the fleet CA;
//!   its identity (`spiffe://<fleet>/<agent|operator>/<name>`, plus a role URN for operators)
//!   is read by [`crate::services::caller`]. A certificate issued before its agent was revoked
//!   is refused ([`Security::check_revoked`]).
//! - **Authorization**: operator roles are cumulative: `viewer` reads everything, `operator`
//!   also runs, cancels, approves, pauses, resumes and drains, `admin` also applies and deletes
//!   fleet files, creates tokens and operators, and revokes agents. A denial names the missing
//!   permission and is audited.
//! - **Audit**: every mutating call, every denial, enrollment, renewal and revocation is
//!   appended to the store's audit log with who, what, target, when, result, peer and a request
//!   id (also returned as `x-request-id` metadata and logged). Token secrets and keys never
//!   appear in it.
//! - **Enrollment**: one-time tokens `<id>.<secret>` bound to an agent name, with a TTL; only a
//!   SHA-256 of the secret is stored; consuming a token is atomic. Failed `Enroll` calls are rate
//!   limited per peer address; successful ones do not count.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use syncfleet_proto::digest::sha256_hex;
use syncfleet_proto::time::{from_millis, now};
use syncfleet_proto::v1;
use tonic::Status;

use crate::fleet::{Fleet, store_status};
use crate::pki::{Ca, OperatorRole, PeerIdentity, Role};
use crate::store::{self, keys};

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read anything.
    Read,
    /// Run, cancel, approve, pause, resume, drain.
    Operate,
    /// Apply/delete fleet files, tokens, operators, revocation.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Admin => "admin",
        }
    }

    fn needs(self) -> OperatorRole {
        match self {
            Permission::Read => OperatorRole::Viewer,
            Permission::Operate => OperatorRole::Operator,
            Permission::Admin => OperatorRole::Admin,
        }
    }
}

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

/// Security state and services of one controller.
pub struct Security {
    pub fleet: Arc<Fleet>,
    pub ca: Arc<Ca>,
    pub fleet_name: String,
    pub agent_cert_lifetime: Duration,
    /// Failed enrollments per peer address within the last [`ENROLL_WINDOW`].
    enroll_failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("fleet", &self.fleet_name)
            .finish_non_exhaustive()
    }
}

/// Failed enrollments allowed per peer address within [`ENROLL_WINDOW`]; then the address
/// waits until the oldest failure leaves the window. Successes are not counted: provisioning
/// many agents from one host must not be slowed by a few mistyped tokens.
pub const ENROLL_FAILURES_PER_WINDOW: usize = 10;
/// The sliding window of [`ENROLL_FAILURES_PER_WINDOW`].
pub const ENROLL_WINDOW: Duration = Duration::from_secs(60);
/// Longest allowed token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(1800);
/// Longest note, label or name accepted from clients.
pub const MAX_NOTE: usize = crate::limits::MAX_TEXT;

/// Context of one authorized call.
#[derive(Debug, Clone)]
pub struct CallCtx {
    pub who: PeerIdentity,
    pub request_id: String,
    pub peer: String,
}

impl CallCtx {
    pub fn who(&self) -> String {
        self.who.to_string()
    }
}

/// Attach the request id to a response.
pub fn with_request_id<T>(mut resp: tonic::Response<T>, id: &str) -> tonic::Response<T> {
    if let Ok(v) = id.parse() {
        resp.metadata_mut().insert("x-request-id", v);
    }
    resp
}

/// Attach the request id to an error.
pub fn status_with_request_id(mut status: Status, id: &str) -> Status {
    if let Ok(v) = id.parse() {
        status.metadata_mut().insert("x-request-id", v);
    }
    status
}

impl Security {
    pub fn new(
        fleet: Arc<Fleet>,
        ca: Arc<Ca>,
        fleet_name: String,
        agent_cert_lifetime: Duration,
    ) -> Self {
        Self {
            fleet,
            ca,
            fleet_name,
            agent_cert_lifetime,
            enroll_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Append an audit entry. Failures are logged (an unwritable store fails the call paths
    /// elsewhere anyway). The arguments are the entry's fields, in the order `audit list`
    /// shows them.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per audit entry field, in the order audit list shows them"
    )]
    pub async fn audit(
        &self,
        who: &str,
        action: &str,
        target: &str,
        result: &str,
        detail: &str,
        request_id: &str,
        peer: &str,
    ) {
        let entry = v1::AuditEntry {
            id: 0,
            at: Some(now()),
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
            detail: detail.chars().take(MAX_NOTE).collect(),
            request_id: request_id.to_string(),
            peer: peer.to_string(),
        };
        tracing::info!(
            who, action, target, result, detail, request_id, peer, "audit"
        );
        if let Err(e) = store::blocking(&self.fleet.store, move |s| s.append_audit(&entry)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Authenticate and authorize an operator call. Denials are audited and come back as
    /// UNAUTHENTICATED / PERMISSION_DENIED naming the problem.
    pub async fn authorize<T>(
        &self,
        req: &tonic::Request<T>,
        perm: Permission,
        action: &str,
        target: &str,
    ) -> Result<CallCtx, Status> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let who = match crate::services::caller(req, &self.fleet_name) {
            Ok(w) => w,
            Err(status) => {
                self.audit(
                    "anonymous",
                    action,
                    target,
                    "denied",
                    status.message(),
                    &request_id,
                    &peer,
                )
                .await;
                return Err(status_with_request_id(status, &request_id));
            }
        };
        if let Err(status) = self.check_revoked(&who).await {
            self.audit(
                &who.to_string(),
                action,
                target,
                "denied",
                status.message(),
                &request_id,
                &peer,
            )
            .await;
            return Err(status_with_request_id(status, &request_id));
        }
        let denied = match (who.role, who.operator_role) {
            (Role::Operator, Some(r)) if r >= perm.needs() => None,
            (Role::Operator, r) => Some(format!(
                "{who} has role {}; {action} needs the '{}' permission (role {} or higher)",
                r.map_or("none", OperatorRole::as_str),
                perm.as_str(),
                perm.needs().as_str()
            )),
            (Role::Agent, _) => Some(format!(
                "{who} is an agent; {action} is for operators ('{}' permission)",
                perm.as_str()
            )),
        };
        if let Some(msg) = denied {
            self.audit(
                &who.to_string(),
                action,
                target,
                "denied",
                &msg,
                &request_id,
                &peer,
            )
            .await;
            return Err(status_with_request_id(
                Status::permission_denied(msg),
                &request_id,
            ));
        }
        Ok(CallCtx {
            who,
            request_id,
            peer,
        })
    }

    /// Record the outcome of an authorized mutating call.
    pub async fn record<T>(
        &self,
        ctx: &CallCtx,
        action: &str,
        target: &str,
        detail: &str,
        result: &Result<T, Status>,
    ) {
        let (res, det) = match result {
            Ok(_) => ("ok", detail.to_string()),
            Err(s) => ("error", format!("{}: {}", detail, s.message())),
        };
        self.audit(
            &ctx.who(),
            action,
            target,
            res,
            &det,
            &ctx.request_id,
            &ctx.peer,
        )
        .await;
    }

    /// Refuse an agent certificate issued before the agent was revoked.
    pub async fn check_revoked(&self, who: &PeerIdentity) -> Result<(), Status> {
        if who.role != Role::Agent {
            return Ok(());
        }
        let key = keys::revoked(&who.name);
        let raw = store::blocking(&self.fleet.store, move |s| s.get_state(&key))
            .await
            .map_err(store_status)?;
        let Some(raw) = raw else {
            return Ok(());
        };
        let rec = <v1::Pause as prost::Message>::decode(raw.as_slice()).unwrap_or_default();
        let revoked_ms = rec
            .at
            .as_ref()
            .map(syncfleet_proto::time::to_millis)
            .unwrap_or(i64::MAX);
        if who.issued_ms.is_none_or(|issued| issued <= revoked_ms) {
            return Err(Status::unauthenticated(format!(
                "agent {} was revoked at {} by {}{}; its certificates are refused: enroll it again with a new token ('syncfleet tokens create --agent {}')",
                who.name,
                syncfleet_proto::time::rfc3339(&rec.at.unwrap_or_default()),
                rec.by,
                if rec.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", rec.note)
                },
                who.name
            )));
        }
        Ok(())
    }

    /// Create a one-time enrollment token.
    pub async fn create_token(
        &self,
        ctx: &CallCtx,
        req: v1::CreateTokenRequest,
    ) -> Result<v1::CreateTokenResponse, Status> {
        crate::pki::check_name(&req.agent).map_err(|e| Status::invalid_argument(e.to_string()))?;
        check_labels(&req.labels)?;
        let ttl = if req.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "token lifetime {} is longer than the maximum {}; enrollment tokens are meant to be used at once",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_TOKEN_TTL)
            )));
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
            created_by: ctx.who(),
            used_ms: None,
        };
        let body = serde_json::to_vec(&rec).map_err(|e| Status::internal(e.to_string()))?;
        let key = keys::token(&id);
        store::blocking(&self.fleet.store, move |s| s.put_state(&key, &body))
            .await
            .map_err(store_status)?;
        Ok(v1::CreateTokenResponse {
            token: format!("{id}.{secret}"),
            token_id: id,
            expires_at: Some(from_millis(expires_ms)),
            ca_pin: self.ca.pin(),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.enroll_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` must wait before its next enrollment attempt, when it has failed
    /// [`ENROLL_FAILURES_PER_WINDOW`] times within [`ENROLL_WINDOW`].
    fn enroll_retry_after(&self, ip: Option<IpAddr>) -> Option<Duration> {
        let ip = ip?;
        let now = Instant::now();
        let mut map = self.failures();
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= ENROLL_WINDOW)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = map.get(&ip)?;
        if q.len() < ENROLL_FAILURES_PER_WINDOW {
            return None;
        }
        q.front()
            .map(|oldest| ENROLL_WINDOW.saturating_sub(now.duration_since(*oldest)))
    }

    fn enroll_failed(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.failures()
                .entry(ip)
                .or_default()
                .push_back(Instant::now());
        }
    }

    /// Enroll an agent with a one-time token. Every outcome is audited (with the token id, never
    /// the secret).
    pub async fn enroll(
        &self,
        peer: Option<std::net::SocketAddr>,
        req: v1::EnrollRequest,
    ) -> Result<v1::CertificateResponse, Status> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
        let target = format!("agent/{}", req.agent);
        let deny = |msg: String| {
            let request_id = request_id.clone();
            let peer_s = peer_s.clone();
            let target = target.clone();
            self.enroll_failed(peer.map(|p| p.ip()));
            async move {
                self.audit(
                    "anonymous",
                    "Enroll",
                    &target,
                    "denied",
                    &msg,
                    &request_id,
                    &peer_s,
                )
                .await;
                Err(status_with_request_id(
                    Status::permission_denied(msg),
                    &request_id,
                ))
            }
        };
        if let Some(wait) = self.enroll_retry_after(peer.map(|p| p.ip())) {
            // Whole seconds, rounded up: retrying after the given time succeeds.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let msg = format!(
                "too many failed enrollment attempts from this address ({ENROLL_FAILURES_PER_WINDOW} in the last {}); retry in {} s",
                humantime::format_duration(ENROLL_WINDOW),
                secs.max(1)
            );
            self.audit(
                "anonymous",
                "Enroll",
                &target,
                "denied",
                &msg,
                &request_id,
                &peer_s,
            )
            .await;
            return Err(status_with_request_id(
                Status::resource_exhausted(msg),
                &request_id,
            ));
        }
        let Some((id, secret)) = req.token.trim().split_once('.') else {
            return deny("malformed enrollment token: expected <id>.<secret> as printed by 'syncfleet tokens create'".into()).await;
        };
        let id = id.to_string();
        let hash = sha256_hex(secret.as_bytes());
        let agent = req.agent.clone();
        let now_ms = Utc::now().timestamp_millis();
        let key = keys::token(&id);
        // Check and consume in one transaction: two enrollments with one token cannot both win.
        let id2 = id.clone();
        let res = store::blocking(&self.fleet.store, move |s| {
            let mut outcome_local: Result<TokenRecord, String> =
                Err(format!("enrollment token {id2} is not known: check that it was copied whole, or create a new one"));
            s.update_state(&key, &mut |cur| {
                let Some(cur) = cur else { return (None, false) };
                let Ok(mut rec) = serde_json::from_slice::<TokenRecord>(cur) else {
                    return (None, false);
                };
                if rec.secret_sha256 != hash {
                    return (None, false);
                }
                if let Some(used) = rec.used_ms {
                    outcome_local = Err(format!(
                        "enrollment token {id2} was already used at {}; tokens are single-use: create a new one with 'syncfleet tokens create --agent {}'",
                        syncfleet_proto::time::rfc3339(&from_millis(used)),
                        rec.agent
                    ));
                    return (None, false);
                }
                if rec.expires_ms <= now_ms {
                    outcome_local = Err(format!(
                        "enrollment token {id2} expired at {}; create a new one with 'syncfleet tokens create --agent {}'",
                        syncfleet_proto::time::rfc3339(&from_millis(rec.expires_ms)),
                        rec.agent
                    ));
                    return (None, false);
                }
                if rec.agent != agent {
                    outcome_local = Err(format!(
                        "enrollment token {id2} was created for agent {:?}, not {agent:?}",
                        rec.agent
                    ));
                    return (None, false);
                }
                rec.used_ms = Some(now_ms);
                let body = serde_json::to_vec(&rec).unwrap_or_default();
                outcome_local = Ok(rec);
                (Some(body), true)
            })?;
            Ok(outcome_local)
        })
        .await;
        let outcome = res.map_err(store_status)?;
        let rec = match outcome {
            Ok(r) => r,
            Err(msg) => return deny(msg).await,
        };
        let issued = self.ca.sign_csr(
            &req.csr_pem,
            Role::Agent,
            &req.agent,
            None,
            self.agent_cert_lifetime,
        );
        let (cert_pem, not_after) = match issued {
            Ok(x) => x,
            Err(e) => {
                return deny(format!("token {id} consumed, but the CSR was refused: {e}")).await;
            }
        };
        // A revoked agent that enrolled again takes runs again. The revocation time stays, so
        // certificates issued before it remain refused (`check_revoked`).
        let rk = keys::revoked(&req.agent);
        store::blocking(&self.fleet.store, move |s| {
            s.update_state(&rk, &mut |cur| {
                let Some(mut rec) = cur.and_then(|b| <v1::Pause as prost::Message>::decode(b).ok())
                else {
                    return (None, false);
                };
                if !rec.paused {
                    return (None, false);
                }
                rec.paused = false;
                (Some(prost::Message::encode_to_vec(&rec)), true)
            })
        })
        .await
        .map_err(store_status)?;
        // Labels assigned by the token are kept for the agent's sessions.
        let labels_key = keys::labels(&req.agent);
        let labels = serde_json::to_vec(&rec.labels).unwrap_or_default();
        store::blocking(&self.fleet.store, move |s| {
            s.put_state(&labels_key, &labels)
        })
        .await
        .map_err(store_status)?;
        let detail = format!("token {id} (created by {})", rec.created_by);
        self.audit(
            &format!("agent/{}", req.agent),
            "Enroll",
            &format!("agent/{}", req.agent),
            "ok",
            &detail,
            &request_id,
            &peer.map(|p| p.to_string()).unwrap_or_default(),
        )
        .await;
        Ok(v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(syncfleet_proto::time::from_millis(
                not_after.unix_timestamp() * 1000,
            )),
            identity: format!("spiffe://{}/agent/{}", self.fleet_name, req.agent),
            labels: rec.labels.into_iter().collect(),
        })
    }

    /// Labels a token assigned to an agent at enrollment.
    pub async fn assigned_labels(&self, agent: &str) -> std::collections::BTreeMap<String, String> {
        let key = keys::labels(agent);
        match store::blocking(&self.fleet.store, move |s| s.get_state(&key)).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => Default::default(),
        }
    }

    /// Renew the calling agent's certificate.
    pub async fn renew(
        &self,
        who: &PeerIdentity,
        peer: &str,
        req: v1::RenewRequest,
    ) -> Result<v1::CertificateResponse, Status> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let target = format!("agent/{}", who.name);
        if let Err(s) = self.check_revoked(who).await {
            self.audit(
                &who.to_string(),
                "Renew",
                &target,
                "denied",
                s.message(),
                &request_id,
                peer,
            )
            .await;
            return Err(status_with_request_id(s, &request_id));
        }
        match self.ca.sign_csr(
            &req.csr_pem,
            Role::Agent,
            &who.name,
            None,
            self.agent_cert_lifetime,
        ) {
            Ok((cert_pem, not_after)) => {
                self.audit(
                    &who.to_string(),
                    "Renew",
                    &target,
                    "ok",
                    "",
                    &request_id,
                    peer,
                )
                .await;
                Ok(v1::CertificateResponse {
                    cert_pem,
                    ca_pem: self.ca.cert_pem().to_string(),
                    not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
                    identity: format!("spiffe://{}/agent/{}", self.fleet_name, who.name),
                    labels: self.assigned_labels(&who.name).await.into_iter().collect(),
                })
            }
            Err(e) => {
                let msg = e.to_string();
                self.audit(
                    &who.to_string(),
                    "Renew",
                    &target,
                    "error",
                    &msg,
                    &request_id,
                    peer,
                )
                .await;
                Err(status_with_request_id(
                    Status::invalid_argument(msg),
                    &request_id,
                ))
            }
        }
    }

    /// Issue an operator credential for a CSR.
    pub fn create_operator(
        &self,
        req: &v1::CreateOperatorRequest,
    ) -> Result<v1::CertificateResponse, Status> {
        crate::pki::check_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let role = match v1::Role::try_from(req.role).unwrap_or(v1::Role::Unspecified) {
            v1::Role::Viewer => OperatorRole::Viewer,
            v1::Role::Operator => OperatorRole::Operator,
            v1::Role::Admin => OperatorRole::Admin,
            v1::Role::Unspecified => {
                return Err(Status::invalid_argument(
                    "give a role: viewer, operator or admin",
                ));
            }
        };
        let ttl = if req.ttl_seconds == 0 {
            Duration::from_secs(90 * 86_400)
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        let (cert_pem, not_after) = self
            .ca
            .sign_csr(&req.csr_pem, Role::Operator, &req.name, Some(role), ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
            identity: format!("spiffe://{}/operator/{}", self.fleet_name, req.name),
            labels: Default::default(),
        })
    }

    /// Revoke an agent: record it, close its live session, fail its pending runs.
    pub async fn revoke(&self, ctx: &CallCtx, name: &str, note: &str) -> Result<v1::Agent, Status> {
        let n = name.to_string();
        let agent = store::blocking(&self.fleet.store, move |s| s.get_agent(&n))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no agent named {name:?}")))?;
        let rec = v1::Pause {
            paused: true,
            note: note.to_string(),
            by: ctx.who(),
            at: Some(now()),
        };
        let key = keys::revoked(name);
        let body = prost::Message::encode_to_vec(&rec);
        store::blocking(&self.fleet.store, move |s| s.put_state(&key, &body))
            .await
            .map_err(store_status)?;
        self.fleet
            .close_session(
                name,
                "this agent was revoked; its certificates are no longer accepted",
            )
            .await;
        self.fleet.fail_pending_runs_of_revoked(name).await;
        Ok(self.fleet.agent_view(agent.agent))
    }
}

/// Refuse oversized labels.
pub fn check_labels(labels: &HashMap<String, String>) -> Result<(), Status> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || v.len() > 253 {
            return Err(Status::invalid_argument(format!(
                "label {}={}: keys must be 1-63 characters and values at most 253",
                crate::limits::echo(k),
                crate::limits::echo(v)
            )));
        }
    }
    if labels.len() > 64 {
        return Err(Status::invalid_argument("at most 64 labels"));
    }
    Ok(())
}

/// Refuse an oversized free-text field.
pub fn check_text(field: &str, value: &str) -> Result<(), Status> {
    crate::limits::check_text(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}
