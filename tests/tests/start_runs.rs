//! `StartRuns`: one request starts a run on each agent of a selection (names, a label
//! selector, all), refusing the agents that cannot take one with the reason, once per
//! idempotency key — over real gRPC and mTLS against the real controller and agents.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::time::Duration;

use common::Fleet;
use syncfleet_proto::v1::{
    ListRunsRequest, StartRunRequest, StartRunsRequest, StartRunsResponse, StepSpec,
    fleet_service_client::FleetServiceClient,
};
use tonic::transport::Channel;

fn step(ma: &str, profile: &str) -> StepSpec {
    StepSpec {
        ma: ma.into(),
        profile: profile.into(),
    }
}

fn names(resp: &StartRunsResponse) -> (Vec<String>, Vec<(String, String)>) {
    (
        resp.runs.iter().map(|r| r.agent.clone()).collect(),
        resp.refused
            .iter()
            .map(|r| (r.agent.clone(), r.reason.clone()))
            .collect(),
    )
}

async fn admin(fleet: &Fleet) -> FleetServiceClient<Channel> {
    let op = fleet.pki().join("operators");
    let ch = fleet
        .channel(Some((
            std::fs::read(op.join("admin.pem")).unwrap(),
            std::fs::read(op.join("admin.key")).unwrap(),
        )))
        .await
        .unwrap();
    FleetServiceClient::new(ch)
}

async fn run_count(client: &mut FleetServiceClient<Channel>) -> usize {
    client
        .list_runs(ListRunsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_runs_selects_refuses_with_reasons_and_is_idempotent() {
    let mut fleet = Fleet::init(&["sync-01", "sync-02", "sync-03"]);
    fleet.start_controller();
    let sim =
        |server: usize| format!("[engine]\nkind = \"sim\"\nserver = {server}\ntime_scale = 0.01\n");
    fleet.start_agent_with("sync-01", &sim(0));
    fleet.start_agent_with("sync-02", &sim(1));
    // sync-03 alone carries site=eu (the extra lines go into its [labels] table first).
    fleet.start_agent_with("sync-03", &format!("site = \"eu\"\n{}", sim(2)));
    fleet.wait_connected(&["sync-01", "sync-02", "sync-03"]);
    let out = fleet.cli(&["agents", "drain", "sync-02", "--note", "patching"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut client = admin(&fleet).await;
    let steps = vec![step("AD", "Delta Import")];

    // All: the draining agent is refused with its reason; the others get a run each, in
    // agent-name order, and it runs to the end.
    let all = client
        .start_runs(StartRunsRequest {
            all: true,
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (runs, refused) = names(&all);
    assert_eq!(runs, ["sync-01", "sync-03"], "{all:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "sync-02");
    assert!(
        refused[0].1.contains("draining") && refused[0].1.contains("patching"),
        "{refused:?}"
    );
    for run in &all.runs {
        fleet.wait_run_state(&run.id, &["succeeded"], Duration::from_secs(60));
    }

    // A label selector.
    let eu = client
        .start_runs(StartRunsRequest {
            selector: "site=eu".into(),
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&eu).0, ["sync-03"], "{eu:?}");
    assert!(eu.refused.is_empty(), "{eu:?}");

    // Names, one unknown: refused by name, the known one runs.
    let named = client
        .start_runs(StartRunsRequest {
            agents: vec!["sync-01".into(), "nope".into()],
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (runs, refused) = names(&named);
    assert_eq!(runs, ["sync-01"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "nope");
    assert!(refused[0].1.contains("no agent named"), "{refused:?}");

    // An MA the agent does not have: refused with the MAs it has.
    let bad = client
        .start_runs(StartRunsRequest {
            agents: vec!["sync-01".into()],
            steps: vec![step("Nope MA", "Delta Import")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(bad.runs.is_empty(), "{bad:?}");
    assert!(
        bad.refused[0].reason.contains("has no management agent"),
        "{bad:?}"
    );

    // Idempotency: a retry with the same key returns the same runs and creates nothing.
    let first = client
        .start_runs(StartRunsRequest {
            all: true,
            steps: steps.clone(),
            idempotency_key: "deploy-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let before = run_count(&mut client).await;
    let again = client
        .start_runs(StartRunsRequest {
            all: true,
            steps: steps.clone(),
            idempotency_key: "deploy-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids = |r: &StartRunsResponse| r.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first).len(), 2);
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(names(&first).1, names(&again).1);
    assert_eq!(
        run_count(&mut client).await,
        before,
        "the retry created runs"
    );

    // Both steps and a sequence: refused, saying so.
    let err = client
        .start_runs(StartRunsRequest {
            all: true,
            steps: steps.clone(),
            sequence: "nightly".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not both"), "{err:?}");

    // No selection, or two: refused, naming what was given.
    let err = client
        .start_runs(StartRunsRequest {
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("none was given"), "{err:?}");
    let err = client
        .start_runs(StartRunsRequest {
            all: true,
            selector: "env=e2e".into(),
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("a selector and all"), "{err:?}");

    // A selector matching nothing, and one that does not parse.
    let err = client
        .start_runs(StartRunsRequest {
            selector: "site=mars".into(),
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = client
        .start_runs(StartRunsRequest {
            selector: "site".into(),
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("key=value"), "{err:?}");

    // More names than one call may carry: refused with the limit.
    let many: Vec<String> = (0..10_001).map(|i| format!("a{i}")).collect();
    let err = client
        .start_runs(StartRunsRequest {
            agents: many,
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("10000"), "{err:?}");

    // The single StartRun shares the path: a draining agent's refusal is its error.
    let err = client
        .start_run(StartRunRequest {
            agent: "sync-02".into(),
            steps: steps.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("draining"), "{err:?}");

    // Audited like StartRun.
    let audit = fleet.cli_json(&["audit", "list", "-o", "json"]);
    let text = audit.to_string();
    assert!(text.contains("StartRuns"), "{text}");
}
