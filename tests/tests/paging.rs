//! Listings at fleet scale: `ListAgents`, `ListAudit` and `GetDocuments` answer in bounded
//! pages, the CLI follows them (`-o json` printed page by page, still one JSON array), and
//! pages neither skip nor repeat entries written between them. The records are written into
//! the controller's store with the controller's own store API before it starts, so 10,000
//! agents cost no 10,000 processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Fleet;
use prost::Message as _;
use syncfleet_controller::store::sqlite::SqliteStore;
use syncfleet_controller::store::{Store, StoredDocument};
use syncfleet_proto::v1::{self, fleet_service_client::FleetServiceClient};
use tonic::transport::Channel;

/// An agent record as the controller stores it after a connection, about 500 bytes encoded
/// (labels and inventory of a real sync server), so 10,000 of them are more than a 4 MiB reply.
fn agent_record(name: &str) -> v1::Agent {
    let labels: BTreeMap<String, String> = [
        ("env", "prod"),
        ("site", "frankfurt-dc2"),
        ("tier", "identity"),
        ("owner", "iam-operations"),
        ("note", &"x".repeat(350)),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    v1::Agent {
        name: name.to_string(),
        hostname: format!("{name}.corp.example.com"),
        agent_version: "0.9.0".into(),
        labels: labels.into_iter().collect(),
        management_agents: vec![v1::ManagementAgent {
            name: "Contoso AD".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Writes `names` as agents into the (stopped) controller's store, many writes in flight at
/// once so the store commits them in groups.
async fn write_agents(fleet: &Fleet, names: &[String]) -> usize {
    let store = SqliteStore::open(&fleet.data_dir().join("controller.db")).unwrap();
    let mut bytes = 0;
    for chunk in names.chunks(1000) {
        let records: Vec<v1::Agent> = chunk.iter().map(|n| agent_record(n)).collect();
        bytes += records.iter().map(|a| a.encoded_len()).sum::<usize>();
        futures::future::try_join_all(records.iter().map(|a| store.put_agent(a)))
            .await
            .unwrap();
    }
    bytes
}

/// An admin gRPC client with tonic's default 4 MiB decode limit (the CLI's).
async fn admin(fleet: &Fleet) -> FleetServiceClient<Channel> {
    let op = fleet.pki().join("operators");
    let cert = std::fs::read(op.join("admin.pem")).unwrap();
    let key = std::fs::read(op.join("admin.key")).unwrap();
    FleetServiceClient::new(fleet.channel(Some((cert, key))).await.unwrap())
}

/// One `ListAgents` page.
async fn agents_page(
    client: &mut FleetServiceClient<Channel>,
    page_size: u32,
    page_token: &str,
) -> Result<v1::ListAgentsResponse, tonic::Status> {
    client
        .list_agents(v1::ListAgentsRequest {
            page_size,
            page_token: page_token.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Elements of a JSON array printed by the CLI, as names.
fn names_of(array: &serde_json::Value) -> Vec<String> {
    array
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v["name"].as_str().expect("a name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agents_are_listed_through_pages() {
    let mut fleet = Fleet::init(&[]);
    let names: Vec<String> = (0..10_000).map(|i| format!("sync-{i:05}")).collect();
    let bytes = write_agents(&fleet, &names).await;
    assert!(
        bytes > 4 * 1024 * 1024,
        "the agents ({bytes} bytes) must not fit one 4 MiB reply"
    );
    fleet.start_controller();

    // The controller pages: a client that asks for no page size (as clients older than
    // paging do) gets a bounded first page and a token.
    let mut client = admin(&fleet).await;
    let first = agents_page(&mut client, 0, "").await.unwrap();
    assert_eq!(first.agents.len(), 500);
    assert!(!first.next_page_token.is_empty());
    // A page size above the maximum is clamped.
    let big = agents_page(&mut client, 1_000_000, "").await.unwrap();
    assert_eq!(big.agents.len(), 1000);

    // The CLI follows the pages: every agent exactly once, by name, in one JSON array.
    let out = fleet.cli(&["agents", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "agents list failed: {}",
        common::stderr(&out)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let listed = names_of(&listed);
    assert_eq!(listed.len(), 10_000);
    assert_eq!(listed, names, "each agent exactly once, by name");

    // The table lists them all too (a header and one row each).
    let table = fleet.cli(&["agents", "list"]);
    assert!(table.status.success(), "{}", common::stderr(&table));
    assert_eq!(common::stdout(&table).lines().count(), 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pages_neither_skip_nor_repeat_while_agents_join() {
    // Two real agents that join between pages: one sorts before the second page, one after.
    let mut fleet = Fleet::init(&["aaa-late", "zzz-late"]);
    let names: Vec<String> = (0..2_500).map(|i| format!("m-{i:04}")).collect();
    write_agents(&fleet, &names).await;
    fleet.start_controller();
    let mut client = admin(&fleet).await;

    let first = agents_page(&mut client, 1000, "").await.unwrap();
    let mut seen: Vec<String> = first.agents.into_iter().map(|a| a.name).collect();
    assert_eq!(seen.first().map(String::as_str), Some("m-0000"));
    fleet.start_agent("aaa-late", 0, 0.01);
    fleet.start_agent("zzz-late", 1, 0.01);
    fleet.wait_connected(&["aaa-late", "zzz-late"]);

    let mut token = first.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let page = agents_page(&mut client, 1000, &token).await.unwrap();
        pages += 1;
        seen.extend(page.agents.into_iter().map(|a| a.name));
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no agent repeated");
    let mut expected = names.clone();
    expected.push("zzz-late".into());
    assert_eq!(
        seen, expected,
        "none skipped; the late agent after the position is seen"
    );

    // A token that is not one the controller gave is refused, naming it.
    let bad = agents_page(&mut client, 10, "sync-01").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("invalid page token \"sync-01\"")
            && bad.message().contains("next_page_token"),
        "{}",
        bad.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_audit_and_document_pages() {
    let mut fleet = Fleet::init(&[]);
    let store = SqliteStore::open(&fleet.data_dir().join("controller.db")).unwrap();
    // 1,500 audit entries, oldest first.
    let entries: Vec<v1::AuditEntry> = (0..1500)
        .map(|i| v1::AuditEntry {
            at: Some(syncfleet_proto::time::from_millis(1_700_000_000_000 + i)),
            who: "operator/bulk".into(),
            action: format!("Bulk{i:04}"),
            result: "ok".into(),
            ..Default::default()
        })
        .collect();
    for chunk in entries.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|e| store.append_audit(e)))
            .await
            .unwrap();
    }
    // 1,200 sequences, canonical JSON as `apply` stores it.
    let template = syncfleet_controller::documents::load::parse_str(
        "seq.yaml",
        "kind: Sequence\nname: template\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n",
    )
    .unwrap();
    let template = syncfleet_controller::documents::to_json_value(&template[0].doc);
    let seq_names: Vec<String> = (0..1200).map(|i| format!("seq-{i:04}")).collect();
    let docs: Vec<StoredDocument> = seq_names
        .iter()
        .map(|n| {
            let mut v = template.clone();
            v["name"] = serde_json::Value::String(n.clone());
            StoredDocument {
                kind: "Sequence".into(),
                name: n.clone(),
                json: v.to_string(),
            }
        })
        .collect();
    store.write_documents(&docs, &[]).await.unwrap();
    // The log's order (newest first, by id) as the store reads it: the appends above were in
    // flight together, so their ids need not follow their numbers.
    let newest_first: Vec<String> = store
        .list_audit(None, Some("operator/bulk"), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(newest_first.len(), 1500);
    drop(store);
    fleet.start_controller();

    // `audit list --limit 1200`: two pages (1000 + 200), newest first, each entry once.
    let audit = fleet.cli_json(&[
        "audit",
        "list",
        "--who",
        "operator/bulk",
        "--limit",
        "1200",
        "-o",
        "json",
    ]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, newest_first[..1200]);
    // Without --limit: the newest 100, as before paging.
    let newest = fleet.cli_json(&["audit", "list", "--who", "operator/bulk", "-o", "json"]);
    assert_eq!(newest.as_array().unwrap().len(), 100);
    assert_eq!(newest[0]["action"], newest_first[0].as_str());

    // `get sequences`: two pages, every sequence once, by name, as JSON and as YAML.
    let listed = fleet.cli_json(&["get", "sequences", "-o", "json"]);
    assert_eq!(names_of(&listed), seq_names);
    let yaml = fleet.cli(&["get", "sequences"]);
    assert!(yaml.status.success(), "{}", common::stderr(&yaml));
    assert_eq!(
        common::stdout(&yaml).matches("kind: Sequence").count(),
        1200
    );

    // GetDocuments over gRPC: a bounded first page for a client that asks no page size.
    let mut client = admin(&fleet).await;
    let first = client
        .get_documents(v1::GetDocumentsRequest {
            kind: "Sequence".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.documents.len(), 100);
    assert!(!first.next_page_token.is_empty());
    let bad = client
        .list_audit(v1::ListAuditRequest {
            page_token: "audit:nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("\"audit:nope\""),
        "{}",
        bad.message()
    );
}
