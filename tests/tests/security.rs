//! Security end to end: enrollment with one-time tokens, short-lived certificates renewed over
//! the live session, revocation, operator roles and the audit log — through the real binaries.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait for real child processes by polling with short blocking sleeps"
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Fleet, bin, cli_with_config, foreign_pki, run_followed, stdout, wait_for};
use syncfleet_proto::v1::{ListAgentsRequest, fleet_service_client::FleetServiceClient};

fn audit(fleet: &Fleet) -> Vec<serde_json::Value> {
    fleet
        .cli_json(&["audit", "list", "--limit", "1000", "-o", "json"])
        .as_array()
        .unwrap()
        .clone()
}

fn has_entry(entries: &[serde_json::Value], action: &str, result: &str, detail_part: &str) -> bool {
    entries.iter().any(|e| {
        e["action"] == action
            && e["result"] == result
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(detail_part)
    })
}

fn token(fleet: &Fleet, agent: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["tokens", "create", "--agent", agent, "-o", "json"];
    args.extend_from_slice(extra);
    let t = fleet.cli_json(&args);
    (
        t["token"].as_str().unwrap().to_string(),
        t["ca_pin"].as_str().unwrap().to_string(),
    )
}

fn enroll(fleet: &Fleet, agent: &str, token: &str, pin: &str) -> std::process::Output {
    Command::new(bin("syncfleet-agent"))
        .args([
            "enroll",
            "--controller",
            &format!("https://127.0.0.1:{}", fleet.grpc_port),
        ])
        .args([
            "--token",
            token,
            "--ca-pin",
            pin,
            "--name",
            agent,
            "--data-dir",
        ])
        .arg(fleet.dir.path().join("enrolled").join(agent))
        .output()
        .unwrap()
}

/// Start an agent from an enrolled data folder.
fn start_enrolled(fleet: &mut Fleet, agent: &str, extra: &str) {
    let dir = fleet.dir.path().join("enrolled").join(agent);
    fleet.start_agent_with(
        agent,
        &format!(
            "{extra}\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
            dir.join("ca.pem"),
            dir.join("agent.pem"),
            dir.join("agent.key")
        ),
    );
}

async fn list_agents(fleet: &Fleet, identity: Option<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
    match fleet.channel(identity).await {
        Err(e) => Err(format!("connect: {e:?}")),
        Ok(ch) => FleetServiceClient::new(ch)
            .list_agents(ListAgentsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn strangers_and_revoked_agents_get_nothing_but_health_and_are_audited() {
    let fleet = Fleet::started(&["sync-01"], 0.01);

    // Health answers anyone with TLS.
    let ch = fleet.channel(None).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // No certificate.
    let err = list_agents(&fleet, None).await.unwrap_err();
    assert!(err.starts_with("Unauthenticated"), "{err}");
    // A self-signed certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mallory".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://e2e/operator/mallory".try_into().unwrap(),
    ));
    let selfsigned = params.self_signed(&key).unwrap();
    let err = list_agents(
        &fleet,
        Some((
            selfsigned.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )),
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    // A certificate from another CA.
    let other = foreign_pki();
    let op = other.path().join("pki/operators");
    let foreign = (
        std::fs::read(op.join("admin.pem")).unwrap(),
        std::fs::read(op.join("admin.key")).unwrap(),
    );
    assert!(list_agents(&fleet, Some(foreign)).await.is_err());

    // Revocation closes the live session and refuses the agent from then on.
    let out = fleet.cli(&[
        "agents",
        "revoke",
        "sync-01",
        "--note",
        "server decommissioned",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the revoked agent to drop", Duration::from_secs(30), || {
        let s = fleet.agent_states()?;
        (s.get("sync-01").map(String::as_str) != Some("connected")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = fleet.agent_states().unwrap();
    assert_ne!(
        s["sync-01"], "connected",
        "a revoked agent must not reconnect"
    );
    let ad = fleet.agent_dir("sync-01");
    let agent_cert = (
        std::fs::read(ad.join("agent.pem")).unwrap(),
        std::fs::read(ad.join("agent.key")).unwrap(),
    );
    let ch = fleet.channel(Some(agent_cert)).await.unwrap();
    let err = syncfleet_proto::v1::agent_service_client::AgentServiceClient::new(ch)
        .renew(syncfleet_proto::v1::RenewRequest {
            csr_pem: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("revoked"), "{err:?}");

    let entries = audit(&fleet);
    assert!(
        has_entry(&entries, "ListAgents", "denied", "no client certificate"),
        "{entries:#?}"
    );
    let handshakes = entries
        .iter()
        .filter(|e| e["action"] == "TlsHandshake" && e["result"] == "denied")
        .count();
    assert!(
        handshakes >= 2,
        "self-signed and foreign handshakes audited: {entries:#?}"
    );
    assert!(
        has_entry(&entries, "RevokeAgent", "ok", "server decommissioned"),
        "{entries:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| (e["action"] == "Session" || e["action"] == "Renew")
                && e["result"] == "denied"
                && e["detail"].as_str().unwrap_or_default().contains("revoked")),
        "{entries:#?}"
    );
    // Secrets never reach the audit log.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
}

#[test]
fn tokens_are_single_use_bound_to_a_name_and_expire() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let (tok, pin) = token(&fleet, "sync-07", &["--labels", "env=e2e,role=staging"]);
    // A wrong pin is refused before anything is sent.
    let bad_pin = "00".repeat(32);
    let out = enroll(&fleet, "sync-07", &tok, &bad_pin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match --ca-pin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The wrong name.
    let out = enroll(&fleet, "sync-08", &tok, &pin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("created for agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The right one works once.
    let out = enroll(&fleet, "sync-07", &tok, &pin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = enroll(&fleet, "sync-07", &tok, &pin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An expired token.
    let (short, _) = token(&fleet, "sync-09", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = enroll(&fleet, "sync-09", &short, &pin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The enrolled agent connects with the token's labels.
    start_enrolled(
        &mut fleet,
        "sync-07",
        "[engine]\nkind = \"sim\"\ntime_scale = 0.01\n",
    );
    fleet.wait_connected(&["sync-07"]);
    let a = fleet.cli_json(&["agents", "show", "sync-07", "-o", "json"]);
    assert_eq!(a["labels"]["role"], "staging", "{a:#}");
    let entries = audit(&fleet);
    assert!(has_entry(&entries, "Enroll", "ok", "token"), "{entries:#?}");
    assert!(
        has_entry(&entries, "Enroll", "denied", "already used"),
        "{entries:#?}"
    );
    assert!(
        has_entry(&entries, "Enroll", "denied", "expired"),
        "{entries:#?}"
    );
    let text = serde_json::to_string(&entries).unwrap();
    let secret = tok.split_once('.').unwrap().1;
    assert!(
        !text.contains(secret),
        "the token secret leaked into the audit log"
    );
}

#[test]
fn a_viewer_reads_but_cannot_run_and_the_denial_is_audited() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let cfg = fleet.dir.path().join("alice").join("config.toml");
    let out = fleet.cli(&[
        "operators",
        "create",
        "alice",
        "--role",
        "viewer",
        "--out",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_alice = cli_with_config(&cfg);
    let out = as_alice(&["agents", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("sync-01"));
    assert!(as_alice(&["runs", "list"]).status.success());
    let out = as_alice(&["run", "sync-01", "--step", "AD:Delta Import"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("operate"),
        "the denial names the missing permission: {err}"
    );
    let entries = audit(&fleet);
    assert!(
        entries.iter().any(|e| e["who"] == "operator/alice"
            && e["action"] == "StartRun"
            && e["result"] == "denied"),
        "{entries:#?}"
    );
    assert!(
        has_entry(&entries, "CreateOperator", "ok", "viewer"),
        "{entries:#?}"
    );
}

#[test]
fn ten_second_certificates_renew_while_a_run_streams_without_dropping_the_session() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller_with(&["--agent-cert-lifetime", "10s"]);
    let (tok, pin) = token(&fleet, "sync-05", &[]);
    let out = enroll(&fleet, "sync-05", &tok, &pin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A full import of 25,000 objects at 0.6× streams progress for about 30 s.
    start_enrolled(
        &mut fleet,
        "sync-05",
        "[engine]\nkind = \"sim\"\ntime_scale = 0.6\n",
    );
    fleet.wait_connected(&["sync-05"]);
    let run = run_followed(
        |a| fleet.cli(a),
        "sync-05",
        &["AD:Full Import", "AD:Delta Sync"],
    );
    assert_eq!(run["state"], "succeeded");
    // Every step's events arrived: both steps done with their counters.
    for s in run["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "done", "{run:#}");
        assert!(
            s["counters"].as_object().is_some_and(|c| !c.is_empty()),
            "{run:#}"
        );
    }
    let entries = audit(&fleet);
    let renewals: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "Renew" && e["result"] == "ok")
        .collect();
    assert!(renewals.len() >= 2, "renewed {} times", renewals.len());
    // Every renewal came over the live session's connection: one peer address (and port).
    let peers: std::collections::BTreeSet<&str> = renewals
        .iter()
        .map(|e| e["peer"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        peers.len(),
        1,
        "renewals from several connections: {peers:?}"
    );
    // One session all along.
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert_eq!(log.matches("agent connected").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_speak_for_another_agent() {
    use syncfleet_proto::v1::{self, agent_message::Msg, agent_service_client::AgentServiceClient};
    let mut fleet = Fleet::init(&["sync-01", "sync-02"]);
    fleet.start_controller();
    // sync-02 has been here (so runs can be created for it) and then left.
    fleet.start_agent("sync-02", 1, 0.01);
    fleet.wait_connected(&["sync-02"]);
    fleet.agents.get_mut("sync-02").unwrap().kill9();
    let out = fleet.cli(&["run", "sync-02", "--step", "AD:Delta Import"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_run = stdout(&out);

    let a = fleet.agent_dir("sync-01");
    let a_cert = (
        std::fs::read(a.join("agent.pem")).unwrap(),
        std::fs::read(a.join("agent.key")).unwrap(),
    );
    let hello = |name: &str| v1::AgentMessage {
        msg: Some(Msg::Hello(v1::Hello {
            name: name.to_string(),
            ..Default::default()
        })),
    };
    // 1. Claiming to be sync-02 with sync-01's certificate.
    let ch = fleet.channel(Some(a_cert.clone())).await.unwrap();
    let err = AgentServiceClient::new(ch)
        .session(tokio_stream::iter(vec![hello("sync-02")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // 2. Reporting sync-02's run as sync-01.
    let ch = fleet.channel(Some(a_cert)).await.unwrap();
    let forged = v1::AgentMessage {
        msg: Some(Msg::Event(v1::AgentEvent {
            seq: 1,
            at: None,
            run_id: b_run.clone(),
            kind: Some(v1::agent_event::Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Succeeded as i32,
                result: "success".into(),
                message: String::new(),
            })),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("sync-01")).await.unwrap();
    let mut inbound = AgentServiceClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let _welcome = inbound.message().await.unwrap();
    tx.send(forged).await.unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop(tx);
    let run = fleet.run_json(&b_run).unwrap();
    assert_eq!(
        run["state"], "pending",
        "the forged event changed nothing: {run:#}"
    );
    let entries = audit(&fleet);
    assert!(
        entries.iter().any(|e| e["action"] == "Session"
            && e["result"] == "denied"
            && e["who"] == "agent/sync-01"),
        "{entries:#?}"
    );
    assert!(
        entries.iter().any(|e| e["action"] == "RunEvent"
            && e["result"] == "denied"
            && e["who"] == "agent/sync-01"),
        "{entries:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_denials_are_audited() {
    use syncfleet_proto::v1::{RenewRequest, agent_service_client::AgentServiceClient};
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let renew = RenewRequest {
        csr_pem: "x".into(),
    };
    // Without a certificate.
    let ch = fleet.channel(None).await.unwrap();
    let err = AgentServiceClient::new(ch)
        .renew(renew.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.metadata().get("x-request-id").is_some(), "{err:?}");
    // With an operator's certificate: renewal is for agents.
    let op = fleet.pki().join("operators");
    let admin = (
        std::fs::read(op.join("admin.pem")).unwrap(),
        std::fs::read(op.join("admin.key")).unwrap(),
    );
    let ch = fleet.channel(Some(admin)).await.unwrap();
    let err = AgentServiceClient::new(ch).renew(renew).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let entries = audit(&fleet);
    assert!(
        entries.iter().any(|e| e["action"] == "Renew"
            && e["result"] == "denied"
            && e["who"] == "anonymous"
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("no client certificate")),
        "{entries:#?}"
    );
    assert!(
        entries.iter().any(|e| e["action"] == "Renew"
            && e["result"] == "denied"
            && e["who"] == "operator/admin"),
        "{entries:#?}"
    );
}

#[test]
fn enrollment_rate_limit_counts_failures_not_successes_and_says_when_to_retry() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let (_, pin) = token(&fleet, "sync-00", &[]);
    let wrong = |fleet: &Fleet| {
        let out = enroll(fleet, "sync-00", "abcdef.wrongsecret", &pin);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Nine failures, then more successful enrollments than the limit of ten attempts a minute.
    for _ in 0..9 {
        let err = wrong(&fleet);
        assert!(err.contains("not known"), "{err}");
    }
    for i in 1..=3 {
        let agent = format!("sync-1{i}");
        let (tok, pin) = token(&fleet, &agent, &[]);
        let out = enroll(&fleet, &agent, &tok, &pin);
        assert!(
            out.status.success(),
            "{agent}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The tenth failure still gets its real answer; from then on the address waits.
    let err = wrong(&fleet);
    assert!(err.contains("not known"), "{err}");
    let (tok, pin) = token(&fleet, "sync-20", &[]);
    let out = enroll(&fleet, "sync-20", &tok, &pin);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let secs: u64 = err
        .split("retry in ")
        .nth(1)
        .and_then(|s| s.split(" s").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("the refusal says when to retry: {err}"));
    assert!((1..=60).contains(&secs), "{err}");
    assert!(
        has_entry(&audit(&fleet), "Enroll", "denied", "too many failed"),
        "refusals are audited"
    );
}

/// Revoking an agent that does not exist is refused as `NOT_FOUND`, and the refused attempt is
/// still in the audit log with the operator's note and the reason.
#[test]
fn revoking_an_unknown_agent_is_refused_and_audited() {
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller();
    let out = fleet.cli(&["agents", "revoke", "ghost-9", "--note", "typo check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no agent named \"ghost-9\""), "{err}");
    let entries = audit(&fleet);
    assert!(
        entries.iter().any(|e| e["action"] == "RevokeAgent"
            && e["result"] == "error"
            && e["target"] == "agent/ghost-9"
            && e["detail"] == "typo check: no agent named \"ghost-9\""),
        "{entries:#?}"
    );
}
