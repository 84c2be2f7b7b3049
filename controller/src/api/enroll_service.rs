//! `EnrollService`: a new agent trades a one-time token and a CSR for its first certificate.

use std::sync::Arc;

use syncfleet_proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::auth::Security;

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
        let resp = self.security.enroll(peer, request.into_inner()).await?;
        Ok(Response::new(resp))
    }
}
