//! `AgentService`: agents' session streams and certificate renewal.

use std::sync::Arc;

use syncfleet_proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use super::authorize::{caller, deny, new_request_id, peer_of, status_with_request_id};
use super::status::require;
use crate::auth::{AuthError, Role, Security};
use crate::fleet::{Fleet, session_protocol};

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

    type SessionStream = session_protocol::Outbound;

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
        let outbound = session_protocol::open(
            &self.fleet,
            &self.security,
            &id,
            &peer,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(outbound))
    }
}
