//! Authorization and audit of gRPC calls: who is calling (the client certificate of the
//! request), whether they may (the one RPC table, [`crate::auth::roles::RPC_ACCESS`]), the audit
//! entry of every denial and of every mutating call's outcome, and the request id that ties a
//! response or error to its audit entry (`x-request-id` metadata).
//!
//! `crate::auth` decides without knowing gRPC; this module reads requests and writes statuses.

use std::future::Future;

use tonic::{Request, Response, Status};

use crate::auth::{PeerIdentity, Security, identify, permits};

/// Context of one authorized call.
#[derive(Debug, Clone)]
pub struct CallCtx {
    pub who: PeerIdentity,
    pub request_id: String,
    pub peer: String,
}

impl CallCtx {
    /// The caller as the audit log names it (`operator/<name>`, `agent/<name>`).
    pub fn who(&self) -> String {
        self.who.to_string()
    }
}

/// A fresh request id.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The operator behind a web console request, put in the request's extensions by the console
/// (`crate::console`) when it calls a `FleetService` method for a signed-in browser. Extensions
/// exist only inside the process (nothing on the wire sets them), so a gRPC client cannot
/// claim one; with it, the call is authorized, revocation-checked and audited exactly as the
/// operator's own gRPC call would be, with the browser's address as the audit peer.
#[derive(Debug, Clone)]
pub struct ConsoleCaller {
    /// The operator the console session was created for.
    pub who: PeerIdentity,
    /// The browser's address.
    pub peer: std::net::SocketAddr,
}

/// The caller's network address as the audit log records it (empty when unknown).
pub fn peer_of<T>(req: &Request<T>) -> String {
    if let Some(c) = req.extensions().get::<ConsoleCaller>() {
        return c.peer.to_string();
    }
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// The verified identity of a caller (a console session's operator, else the client
/// certificate), or `UNAUTHENTICATED` naming what is missing.
pub fn caller<T>(req: &Request<T>, fleet: &str) -> Result<PeerIdentity, Status> {
    if let Some(c) = req.extensions().get::<ConsoleCaller>() {
        return Ok(c.who.clone());
    }
    let certs = req.peer_certs();
    Ok(identify(certs.as_deref().map(Vec::as_slice), fleet)?)
}

/// Attach the request id to a response.
pub fn with_request_id<T>(mut resp: Response<T>, id: &str) -> Response<T> {
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

/// Audit a denied call (`who` as the audit log names callers, `anonymous` without an
/// identity) with the status message as detail, and return the status tagged with its
/// request id.
pub(super) async fn deny(
    security: &Security,
    who: &str,
    action: &str,
    target: &str,
    status: Status,
    request_id: &str,
    peer: &str,
) -> Status {
    security
        .audit(
            who,
            action,
            target,
            "denied",
            status.message(),
            request_id,
            peer,
        )
        .await;
    status_with_request_id(status, request_id)
}

/// The authorization and audit layer of [`Security`] that operator handlers call.
pub trait Authorize {
    /// Authenticate and authorize an operator call to `FleetService` method `rpc` on `target`
    /// (for the audit log), with the permission [`crate::auth::roles::RPC_ACCESS`] gives it.
    /// Denials are audited and come back as UNAUTHENTICATED / PERMISSION_DENIED naming the
    /// problem, tagged with the call's request id.
    fn authorize<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        target: &str,
    ) -> impl Future<Output = Result<CallCtx, Status>> + Send;

    /// Record the outcome of an authorized mutating call: `ok` with `detail`, or `error` with
    /// `detail: <status message>`.
    fn record<T>(
        &self,
        ctx: &CallCtx,
        action: &str,
        target: &str,
        detail: &str,
        result: &Result<T, Status>,
    ) -> impl Future<Output = ()> + Send;
}

impl Authorize for Security {
    // The request is read before the returned future, which therefore holds no part of it and
    // is `Send` whatever the message type (streaming requests included).
    fn authorize<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        target: &str,
    ) -> impl Future<Output = Result<CallCtx, Status>> + Send {
        let request_id = new_request_id();
        let peer = peer_of(req);
        let who = caller(req, &self.fleet_name);
        async move {
            let who = match who {
                Ok(w) => w,
                Err(status) => {
                    return Err(
                        deny(self, "anonymous", rpc, target, status, &request_id, &peer).await,
                    );
                }
            };
            let allowed = match self.ensure_not_revoked(&who).await {
                Ok(()) => permits(&who, rpc),
                Err(e) => Err(e),
            };
            if let Err(e) = allowed {
                let status = Status::from(e);
                return Err(deny(
                    self,
                    &who.to_string(),
                    rpc,
                    target,
                    status,
                    &request_id,
                    &peer,
                )
                .await);
            }
            Ok(CallCtx {
                who,
                request_id,
                peer,
            })
        }
    }

    // The outcome is read before the returned future, which therefore holds no part of it and
    // is `Send` whatever the response type.
    fn record<T>(
        &self,
        ctx: &CallCtx,
        action: &str,
        target: &str,
        detail: &str,
        result: &Result<T, Status>,
    ) -> impl Future<Output = ()> + Send {
        let (res, det) = match result {
            Ok(_) => ("ok", detail.to_string()),
            Err(s) => ("error", format!("{}: {}", detail, s.message())),
        };
        async move {
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
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::auth::AuthError;

    /// Each kind of auth failure keeps its gRPC code; the message is the error's text.
    #[test]
    fn auth_errors_keep_their_status_codes() {
        let cases = [
            (AuthError::NoClientCertificate, Code::Unauthenticated),
            (
                AuthError::Revoked {
                    name: "a".into(),
                    at: String::new(),
                    by: String::new(),
                    note: String::new(),
                },
                Code::Unauthenticated,
            ),
            (
                AuthError::NotInPermissionTable { rpc: "X".into() },
                Code::Internal,
            ),
            (AuthError::MalformedToken, Code::PermissionDenied),
            (AuthError::TokenRefused("t".into()), Code::PermissionDenied),
            (
                AuthError::EnrollRateLimited { retry_in_secs: 1 },
                Code::ResourceExhausted,
            ),
            (AuthError::NoRole, Code::InvalidArgument),
            (AuthError::TooManyLabels, Code::InvalidArgument),
            (AuthError::NoSuchAgent("a".into()), Code::NotFound),
        ];
        for (e, code) in cases {
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
        let tagged = status_with_request_id(Status::internal("x"), "abc");
        assert_eq!(
            tagged.metadata().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
    }
}
