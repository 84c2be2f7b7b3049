//! Renewal: agents renew their own certificates; operators get credentials for CSRs.

use std::time::Duration;

use super::identity::{PeerIdentity, Role};
use super::roles::OperatorRole;
use super::{AuthError, Security};
use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;

impl Security {
    /// Renew the calling agent's certificate: refused with [`AuthError::Revoked`] for a
    /// certificate issued before the agent was revoked, with [`AuthError::Pki`] for a CSR the
    /// CA refuses. The caller audits the outcome.
    pub async fn renew(
        &self,
        who: &PeerIdentity,
        req: v1::RenewRequest,
    ) -> Result<v1::CertificateResponse, AuthError> {
        self.ensure_not_revoked(who).await?;
        let (cert_pem, not_after) = self.ca.sign_csr(
            &req.csr_pem,
            Role::Agent,
            &who.name,
            None,
            self.agent_cert_lifetime,
        )?;
        Ok(v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
            identity: format!("spiffe://{}/agent/{}", self.fleet_name, who.name),
            labels: self.assigned_labels(&who.name).await.into_iter().collect(),
        })
    }

    /// Issue an operator credential for a CSR.
    pub fn create_operator(
        &self,
        req: &v1::CreateOperatorRequest,
    ) -> Result<v1::CertificateResponse, AuthError> {
        super::ca::check_name(&req.name)?;
        let role = match v1::Role::try_from(req.role).unwrap_or(v1::Role::Unspecified) {
            v1::Role::Viewer => OperatorRole::Viewer,
            v1::Role::Operator => OperatorRole::Operator,
            v1::Role::Admin => OperatorRole::Admin,
            v1::Role::Unspecified => {
                return Err(AuthError::NoRole);
            }
        };
        let ttl = if req.ttl_seconds == 0 {
            Duration::from_secs(90 * 86_400)
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        let (cert_pem, not_after) =
            self.ca
                .sign_csr(&req.csr_pem, Role::Operator, &req.name, Some(role), ttl)?;
        Ok(v1::CertificateResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            not_after: Some(from_millis(not_after.unix_timestamp() * 1000)),
            identity: format!("spiffe://{}/operator/{}", self.fleet_name, req.name),
            labels: Default::default(),
        })
    }
}
