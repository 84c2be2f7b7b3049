//! The audit log: appending entries, recording outcomes, request ids.

use syncfleet_proto::time::now;
use syncfleet_proto::v1;
use tonic::Status;

use super::identity::PeerIdentity;
use super::{MAX_NOTE, Security};

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
        if let Err(e) = self.fleet.store.append_audit(&entry).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
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
}
