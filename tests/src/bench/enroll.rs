//! Enrollment of the simulated agents, each with its own key and certificate: an operator
//! creates a one-time token per agent (`CreateToken`), the agent generates a P-256 key and a CSR
//! with rcgen (as the real agent does) and exchanges them over the real `Enroll` RPC.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use syncfleet_proto::v1::{self, enroll_service_client::EnrollServiceClient};

use super::controller::{Access, error_chain};
use super::error::{BenchError, Result};

/// Label every simulated agent gets from its token; the benchmark schedule selects it.
pub const LABEL: (&str, &str) = ("bench", "fleet");

/// One enrolled agent's identity.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What enrolling the fleet cost.
#[derive(Debug, Clone, Copy)]
pub struct EnrollCost {
    /// Wall time of the whole enrollment.
    pub wall: Duration,
    /// Time spent generating keys and CSRs (summed over agents).
    pub keygen: Duration,
}

/// The name of simulated agent `i`.
pub fn agent_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// A fresh P-256 key and a CSR whose CN is `name`: (key PEM, CSR PEM).
fn key_and_csr(name: &str) -> Result<(String, String)> {
    let fail = |e: rcgen::Error| BenchError::Failed(format!("cannot make a CSR for {name}: {e}"));
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(fail)?
        .pem()
        .map_err(fail)?;
    Ok((key.serialize_pem(), csr))
}

/// Enrolls agents `names` with at most `parallelism` enrollments in flight.
pub async fn enroll_all(
    access: &Access,
    names: Vec<String>,
    parallelism: usize,
) -> Result<(Vec<AgentIdentity>, EnrollCost)> {
    let start = Instant::now();
    let operator = access.operator().await?;
    let channel = access
        .endpoint(access.tls(None))?
        .connect()
        .await
        .map_err(|e| BenchError::Connect {
            url: access.url.clone(),
            cause: error_chain(&e),
        })?;
    let enroller = EnrollServiceClient::new(channel);
    let results: Vec<Result<(AgentIdentity, Duration)>> = futures::stream::iter(names)
        .map(|name| {
            let mut operator = operator.clone();
            let mut enroller = enroller.clone();
            async move {
                let token = operator
                    .create_token(v1::CreateTokenRequest {
                        agent: name.clone(),
                        labels: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
                        ttl_seconds: 3600,
                    })
                    .await
                    .map_err(BenchError::rpc(format!("CreateToken for {name}")))?
                    .into_inner();
                let t = Instant::now();
                let (key_pem, csr_pem) = key_and_csr(&name)?;
                let keygen = t.elapsed();
                let cert = enroller
                    .enroll(v1::EnrollRequest {
                        token: token.token,
                        agent: name.clone(),
                        csr_pem,
                    })
                    .await
                    .map_err(BenchError::rpc(format!("Enroll of {name}")))?
                    .into_inner();
                Ok((
                    AgentIdentity {
                        name,
                        cert_pem: cert.cert_pem,
                        key_pem,
                    },
                    keygen,
                ))
            }
        })
        .buffered(parallelism.max(1))
        .collect()
        .await;
    let mut ids = Vec::with_capacity(results.len());
    let mut keygen = Duration::ZERO;
    for r in results {
        let (id, k) = r?;
        keygen += k;
        ids.push(id);
    }
    Ok((
        ids,
        EnrollCost {
            wall: start.elapsed(),
            keygen,
        },
    ))
}
