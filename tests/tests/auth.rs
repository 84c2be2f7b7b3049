//! Mutual TLS: the controller refuses clients without a certificate, with a certificate from
//! another CA, or with an identity of the wrong role — over real TLS on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Fleet, bin, foreign_pki, wait_for};
use syncfleet_proto::v1::{ListAgentsRequest, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

/// [`Fleet::channel`] with the client certificate and key read from files.
async fn channel(
    fleet: &Fleet,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Channel, tonic::transport::Error> {
    fleet
        .channel(
            identity.map(|(cert, key)| (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn only_certificates_of_this_ca_with_the_right_role_get_in() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();

    // The fleet's own operator certificate works.
    let op = fleet.pki().join("operators");
    let ch = channel(&fleet, Some((&op.join("admin.pem"), &op.join("admin.key"))))
        .await
        .unwrap();
    FleetServiceClient::new(ch)
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap();

    // No client certificate: TLS is set up, but every syncfleet call is refused.
    let ch = channel(&fleet, None).await.unwrap();
    let err = FleetServiceClient::new(ch)
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{err:?}");

    // A certificate from another CA: the handshake or the call fails.
    let other = foreign_pki();
    let oop = other.path().join("pki/operators");
    let refused = match channel(
        &fleet,
        Some((&oop.join("admin.pem"), &oop.join("admin.key"))),
    )
    .await
    {
        Err(_) => true,
        Ok(ch) => FleetServiceClient::new(ch)
            .list_agents(ListAgentsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from a foreign CA was accepted");

    // An agent's certificate cannot use the operator API.
    let ad = fleet.agent_dir("sync-01");
    let ch = channel(&fleet, Some((&ad.join("agent.pem"), &ad.join("agent.key"))))
        .await
        .unwrap();
    let err = FleetServiceClient::new(ch)
        .list_agents(ListAgentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

#[test]
fn cli_with_a_foreign_certificate_fails_clearly() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let other = foreign_pki();
    let cfg = other.path().join("cli.toml");
    let pki = other.path().join("pki");
    std::fs::write(
        &cfg,
        format!(
            "current_context = \"x\"\n[contexts.x]\ncontroller = \"https://127.0.0.1:{}\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            fleet.grpc_port,
            fleet.pki().join("ca.pem"),
            pki.join("operators/admin.pem"),
            pki.join("operators/admin.key")
        ),
    )
    .unwrap();
    let out = Command::new(bin("syncfleet"))
        .arg("--config")
        .arg(&cfg)
        .args(["agents", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_reflection_needs_a_certificate_of_this_ca() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let list = || {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };

    // Without a certificate: refused, and the refusal is audited.
    let ch = channel(&fleet, None).await.unwrap();
    let err = ServerReflectionClient::new(ch)
        .server_reflection_info(list())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{err:?}");

    // Any fleet identity may use it: an operator and an agent.
    let op = fleet.pki().join("operators");
    let ad = fleet.agent_dir("sync-01");
    for (cert, key) in [
        (op.join("admin.pem"), op.join("admin.key")),
        (ad.join("agent.pem"), ad.join("agent.key")),
    ] {
        let ch = channel(&fleet, Some((&cert, &key))).await.unwrap();
        let mut stream = ServerReflectionClient::new(ch)
            .server_reflection_info(list())
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(services)) = resp.message_response else {
            panic!("{resp:?}");
        };
        assert!(
            services
                .service
                .iter()
                .any(|s| s.name == "syncfleet.v1.FleetService"),
            "{services:?}"
        );
    }

    // The refusal is audited by a task of its own (the reflection guard cannot wait for the
    // store), so the entry may land just after the answer.
    wait_for(
        "the audited reflection refusal",
        Duration::from_secs(10),
        || {
            let out = Command::new(bin("syncfleet"))
                .arg("--config")
                .arg(&fleet.cli_config)
                .args(["audit", "list", "-o", "json"])
                .output()
                .unwrap();
            let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            entries
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["action"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("ServerReflection")
                        && e["result"] == "denied"
                })
                .then_some(())
        },
    );
}
