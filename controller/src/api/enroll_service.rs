//! `EnrollService`: a new agent trades a one-time token and a CSR for its first certificate.

use std::sync::Arc;

use syncfleet_proto::v1::{self};
use tonic::{Request, Response, Status};

use super::authorize::{new_request_id, status_with_request_id};
use crate::auth::{AuthError, Security};

/// `EnrollService`: the only syncfleet service callable without a client certificate.
#[derive(Debug, Clone)]
pub struct EnrollSvc {
    pub security: Arc<Security>,
}

#[tonic::async_trait]
impl syncfleet_proto::v1::enroll_service_server::EnrollService for EnrollSvc {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::CertificateResponse>, Status> {
        let peer = request.remote_addr();
        let request_id = new_request_id();
        match self
            .security
            .enroll(peer, &request_id, request.into_inner())
            .await
        {
            Ok(resp) => Ok(Response::new(resp)),
            // Store failures are not audited, so there is no entry for a request id to name.
            Err(e @ AuthError::Store(_)) => Err(e.into()),
            Err(e) => Err(status_with_request_id(e.into(), &request_id)),
        }
    }
}
