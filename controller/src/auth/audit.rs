//! The audit log: appending entries. Recording the outcome of a gRPC call and tagging it with
//! its request id happen at the API edge (`crate::api::authorize`).

use syncfleet_proto::time::now;
use syncfleet_proto::v1;

use super::{MAX_NOTE, Security};

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
}
