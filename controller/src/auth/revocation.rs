//! Revocation: refusing a revoked agent's certificates, and revoking agents.

use syncfleet_proto::time::now;
use syncfleet_proto::v1;
use tonic::Status;

use super::Security;
use super::audit::CallCtx;
use super::identity::{PeerIdentity, Role};
use crate::fleet::store_status;
use crate::store::keys;

impl Security {
    /// Refuse an agent certificate issued before the agent was revoked.
    pub async fn check_revoked(&self, who: &PeerIdentity) -> Result<(), Status> {
        if who.role != Role::Agent {
            return Ok(());
        }
        let key = keys::revoked(&who.name);
        let raw = self
            .fleet
            .store
            .get_state(&key)
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

    /// Revoke an agent: record it, close its live session, fail its pending runs.
    pub async fn revoke(&self, ctx: &CallCtx, name: &str, note: &str) -> Result<v1::Agent, Status> {
        let n = name.to_string();
        let agent = self
            .fleet
            .store
            .get_agent(&n)
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
        self.fleet
            .store
            .put_state(&key, &body)
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
