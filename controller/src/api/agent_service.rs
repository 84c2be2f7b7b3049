//! `AgentService`: agents' session streams and certificate renewal.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use syncfleet_proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use super::authorize::{caller, deny, new_request_id, peer_of, status_with_request_id};
use super::status::require;
use crate::auth::{AuthError, Role, Security};
use crate::fleet::Fleet;
use crate::fleet::session_protocol::{self, AgentPeer, SessionAuthority};
use crate::leader::Leadership;

/// Metadata key of a follower's `UNAVAILABLE` answer to `Session`: the leader's address
/// (its `advertise_url`), where the agent goes next.
pub const LEADER_METADATA: &str = "syncfleet-leader";

/// `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    pub fleet: Arc<Fleet>,
    pub fleet_name: String,
    pub security: Arc<Security>,
    /// Only the leader serves sessions; followers send agents to it.
    pub leadership: Leadership,
}

/// The `UNAVAILABLE` a follower answers `Session` with, naming the leader in
/// [`LEADER_METADATA`] when one is known.
fn follower_refusal(leader_url: &str) -> Status {
    if leader_url.is_empty() {
        return Status::unavailable(
            "this controller is a follower and no leader is known yet; retry shortly or try another controller",
        );
    }
    let mut status = Status::unavailable(format!(
        "this controller is a follower; the leader is {leader_url}"
    ));
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(leader_url) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
    status
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::CertificateResponse>, Status> {
        let peer = peer_of(&request);
        let request_id = new_request_id();
        let id = match caller(&request, &self.fleet_name)
            .and_then(|id| require(&id, Role::Agent).map(|()| id))
        {
            Ok(id) => id,
            Err(status) => {
                let who = caller(&request, &self.fleet_name)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|_| "anonymous".into());
                return Err(deny(
                    &self.security,
                    &who,
                    "Renew",
                    "",
                    status,
                    &request_id,
                    &peer,
                )
                .await);
            }
        };
        let who = id.to_string();
        let target = format!("agent/{}", id.name);
        match self.security.renew(&id, request.into_inner()).await {
            Ok(resp) => {
                self.security
                    .audit(&who, "Renew", &target, "ok", "", &request_id, &peer)
                    .await;
                Ok(Response::new(resp))
            }
            // A CSR the CA refuses is the agent's error; anything else refuses the agent.
            Err(e @ AuthError::Pki(_)) => {
                let status = Status::from(e);
                self.security
                    .audit(
                        &who,
                        "Renew",
                        &target,
                        "error",
                        status.message(),
                        &request_id,
                        &peer,
                    )
                    .await;
                Err(status_with_request_id(status, &request_id))
            }
            Err(e) => Err(deny(
                &self.security,
                &who,
                "Renew",
                &target,
                e.into(),
                &request_id,
                &peer,
            )
            .await),
        }
    }

    type SessionStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::ControllerMessage, Status>> + Send + 'static>,
    >;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let id = match caller(&request, &self.fleet_name)
            .and_then(|id| require(&id, Role::Agent).map(|()| id))
        {
            Ok(id) => id,
            Err(status) => {
                let who = caller(&request, &self.fleet_name)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|_| "anonymous".into());
                self.security
                    .audit(&who, "Session", "", "denied", status.message(), "", &peer)
                    .await;
                return Err(status);
            }
        };
        if let Err(status) = self
            .security
            .ensure_not_revoked(&id)
            .await
            .map_err(Status::from)
        {
            self.security
                .audit(
                    &id.to_string(),
                    "Session",
                    &format!("agent/{}", id.name),
                    "denied",
                    status.message(),
                    "",
                    &peer,
                )
                .await;
            return Err(status);
        }
        let leading = self.leadership.state();
        if !leading.leader {
            return Err(follower_refusal(&leading.leader_url));
        }
        let who = id.to_string();
        let agent = AgentPeer {
            name: &id.name,
            who: &who,
            address: &peer,
        };
        // The session is leader-only work: its writes carry this term's epoch, and it ends
        // when the term does (the agent reconnects, to the new leader).
        let epoch = leading.epoch;
        let outbound = crate::store::fence::with_epoch(
            epoch,
            session_protocol::open(&self.fleet, &*self.security, agent, request.into_inner()),
        )
        .await?;
        let mut leadership = self.leadership.subscribe();
        let term_over = async move {
            let _ = leadership.wait_for(|s| !s.leader || s.epoch != epoch).await;
        };
        Ok(Response::new(Box::pin(
            outbound.map_err(Status::from).take_until(term_over),
        )))
    }
}

/// The session protocol audits its refusals and reads assigned labels through the security
/// layer.
impl SessionAuthority for Security {
    async fn audit_denied(&self, peer: AgentPeer<'_>, target: &str, detail: &str) {
        self.audit(
            peer.who,
            "Session",
            target,
            "denied",
            detail,
            "",
            peer.address,
        )
        .await;
    }

    async fn assigned_labels(&self, agent: &str) -> BTreeMap<String, String> {
        Security::assigned_labels(self, agent).await
    }
}
