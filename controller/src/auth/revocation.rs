//! Revocation: refusing the certificates of revoked agents and operators, and revoking agents
//! (operators are revoked in `operators.rs`).

use super::identity::{PeerIdentity, Role};
use super::{AuthError, Security};
use crate::store::keys;
use syncfleet_proto::time::now;
use syncfleet_proto::v1;

impl Security {
    /// Refuse a certificate issued before its agent ([`AuthError::Revoked`]) or operator
    /// ([`AuthError::OperatorRevoked`]) was revoked. Every authorized call asks this, so a
    /// revoked operator is refused on every RPC.
    pub async fn ensure_not_revoked(&self, who: &PeerIdentity) -> Result<(), AuthError> {
        let operator = who.role == Role::Operator;
        let key = if operator {
            keys::operator_revoked(&who.name)
        } else {
            keys::revoked(&who.name)
        };
        let Some(raw) = self.fleet.store.get_state(&key).await? else {
            return Ok(());
        };
        let rec = <v1::Pause as prost::Message>::decode(raw.as_slice()).unwrap_or_default();
        let revoked_ms = rec
            .at
            .as_ref()
            .map(syncfleet_proto::time::to_millis)
            .unwrap_or(i64::MAX);
        // A certificate issued after the revocation (a re-enrolled agent, a re-issued operator
        // credential) is valid again.
        if who.issued_ms.is_some_and(|issued| issued > revoked_ms) {
            return Ok(());
        }
        let (name, at, by, note) = (
            who.name.clone(),
            syncfleet_proto::time::rfc3339(&rec.at.unwrap_or_default()),
            rec.by,
            rec.note,
        );
        Err(if operator {
            AuthError::OperatorRevoked { name, at, by, note }
        } else {
            AuthError::Revoked { name, at, by, note }
        })
    }

    /// Revoke an agent on behalf of `by` (the revoking operator, as the audit log names
    /// callers): record it, close its live session, fail its pending runs.
    pub async fn revoke(&self, by: &str, name: &str, note: &str) -> Result<v1::Agent, AuthError> {
        let agent = self
            .fleet
            .store
            .get_agent(name)
            .await?
            .ok_or_else(|| AuthError::NoSuchAgent(name.to_string()))?;
        let rec = v1::Pause {
            paused: true,
            note: note.to_string(),
            by: by.to_string(),
            at: Some(now()),
        };
        let key = keys::revoked(name);
        let body = prost::Message::encode_to_vec(&rec);
        self.fleet.store.put_state(&key, &body).await?;
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
