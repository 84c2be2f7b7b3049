//! One ad-hoc run on each simulated agent: the `StartRuns` RPC when the controller serves it,
//! else one `StartRun` call per agent, many in flight at once.

use futures::StreamExt;
use syncfleet_proto::v1::{self, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

use super::enroll::LABEL;
use super::error::{BenchError, Result};
use super::sim::{MA, PROFILE};

/// Most `StartRun` calls in flight at once on the operator's connection: the controller's
/// HTTP/2 server sends GOAWAY (`ENHANCE_YOUR_CALM`, too many data frames) to a client with
/// 10,000 calls in flight on one connection.
const IN_FLIGHT: usize = 256;

/// How the runs were started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    StartRuns,
    ConcurrentStartRun,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::StartRuns => "one StartRuns call",
            Method::ConcurrentStartRun => {
                "StartRun calls, one per agent, 256 in flight (StartRuns not served)"
            }
        }
    }
}

fn steps() -> Vec<v1::StepSpec> {
    vec![v1::StepSpec {
        ma: MA.into(),
        profile: PROFILE.into(),
    }]
}

/// Starts one run on each of `names` (the agents labelled by the benchmark token).
pub async fn start_one_each(
    operator: &FleetServiceClient<Channel>,
    names: &[String],
) -> Result<(Vec<v1::Run>, Method)> {
    let mut op = operator.clone();
    let req = v1::StartRunsRequest {
        agents: Vec::new(),
        selector: format!("{}={}", LABEL.0, LABEL.1),
        all: false,
        steps: steps(),
        sequence: String::new(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    match op.start_runs(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if let Some(refused) = r.refused.first() {
                return Err(BenchError::Failed(format!(
                    "StartRuns refused {} agents, e.g. {}: {}",
                    r.refused.len(),
                    refused.agent,
                    refused.reason
                )));
            }
            return Ok((r.runs, Method::StartRuns));
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => return Err(BenchError::rpc("StartRuns")(s)),
    }
    let results: Vec<Result<v1::Run>> = futures::stream::iter(names.iter().cloned())
        .map(|agent| {
            let mut op = operator.clone();
            async move {
                op.start_run(v1::StartRunRequest {
                    agent: agent.clone(),
                    steps: steps(),
                    sequence: String::new(),
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(BenchError::rpc(format!("StartRun on {agent}")))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let runs = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((runs, Method::ConcurrentStartRun))
}
