//! Renewal: agents renew their own certificates; operators get credentials for CSRs.

use std::time::Duration;

use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;
use tonic::Status;

use super::Security;
use super::audit::status_with_request_id;
use super::identity::{PeerIdentity, Role};
use super::roles::OperatorRole;

impl Security {
    /// Renew the calling agent's certificate.
    pub async fn renew(
        &self,
        who: &PeerIdentity,
        peer: &str,
        req: v1::RenewRequest,
    ) -> Result<v1::CertificateResponse, Status> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let target = format!("agent/{}", who.name);
        if let Err(s) = self.check_revoked(who).await {
            self.audit(
                &who.to_string(),
                "Renew",
                &target,
                "denied",
                s.message(),
                &request_id,
                peer,
            )
            .await;
            return Err(status_with_request_id(s, &request_id));
        }
        match self.ca.sign_csr(
            &req.csr_pem,
            Role::Agent,
            &who.name,
            None,
            self.agent_cert_lifetime,
        ) {
            Ok((cert_pem, not_after)) => {
                self.audit(
                    &who.to_string(),
                    "Renew",
                    &target,
                    "ok",
                    "",
                    &request_id,
                    peer,
                )
                .await;
                Ok(v1::CertificateResponse {
                    cert_pem,
                    ca_pem: self.ca.cert_pem().to_string(),
                    not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
                    identity: format!("spiffe://{}/agent/{}", self.fleet_name, who.name),
                    labels: self.assigned_labels(&who.name).await.into_iter().collect(),
                })
            }
            Err(e) => {
                let msg = e.to_string();
                self.audit(
                    &who.to_string(),
                    "Renew",
                    &target,
                    "error",
                    &msg,
                    &request_id,
                    peer,
                )
                .await;
                Err(status_with_request_id(
                    Status::invalid_argument(msg),
                    &request_id,
                ))
            }
        }
    }

    /// Issue an operator credential for a CSR.
    pub fn create_operator(
        &self,
        req: &v1::CreateOperatorRequest,
    ) -> Result<v1::CertificateResponse, Status> {
        super::ca::check_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let role = match v1::Role::try_from(req.role).unwrap_or(v1::Role::Unspecified) {
            v1::Role::Viewer => OperatorRole::Viewer,
            v1::Role::Operator => OperatorRole::Operator,
            v1::Role::Admin => OperatorRole::Admin,
            v1::Role::Unspecified => {
                return Err(Status::invalid_argument(
                    "give a role: viewer, operator or admin",
                ));
            }
        };
        let ttl = if req.ttl_seconds == 0 {
            Duration::from_secs(90 * 86_400)
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        let (cert_pem, not_after) = self
            .ca
            .sign_csr(&req.csr_pem, Role::Operator, &req.name, Some(role), ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
            identity: format!("spiffe://{}/operator/{}", self.fleet_name, req.name),
            labels: Default::default(),
        })
    }
}
