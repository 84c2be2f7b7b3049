//! `AgentService`: agents' session streams and certificate renewal.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use syncfleet_proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use super::authorize::{caller, deny, new_request_id, peer_of, status_with_request_id};
use super::status::require;
use crate::auth::{AuthError, Role, Security};
use crate::fleet::session_protocol::{self, AgentPeer, SessionAuthority};
use crate::fleet::{Fleet, FleetError};

/// `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    pub fleet: Arc<Fleet>,
    pub fleet_name: String,
    pub security: Arc<Security>,
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

    type SessionStream =
        futures::stream::MapErr<session_protocol::Outbound, fn(FleetError) -> Status>;

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
        let who = id.to_string();
        let agent = AgentPeer {
            name: &id.name,
            who: &who,
            address: &peer,
        };
        let outbound =
            session_protocol::open(&self.fleet, &*self.security, agent, request.into_inner())
                .await?;
        Ok(Response::new(
            outbound.map_err(Status::from as fn(FleetError) -> Status),
        ))
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
