//! `AgentService`: agents' session streams and certificate renewal.

use std::sync::Arc;

use syncfleet_proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

use super::status::require;
use crate::auth::{Role, Security, caller, status_with_request_id};
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
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let id = match caller(&request, &self.fleet_name)
            .and_then(|id| require(&id, Role::Agent).map(|()| id))
        {
            Ok(id) => id,
            Err(status) => {
                let request_id = uuid::Uuid::new_v4().to_string();
                let who = caller(&request, &self.fleet_name)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|_| "anonymous".into());
                self.security
                    .audit(
                        &who,
                        "Renew",
                        "",
                        "denied",
                        status.message(),
                        &request_id,
                        &peer,
                    )
                    .await;
                return Err(status_with_request_id(status, &request_id));
            }
        };
        let resp = self
            .security
            .renew(&id, &peer, request.into_inner())
            .await?;
        Ok(Response::new(resp))
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
