//! Watermark change sources against real servers: a PostgreSQL query
//! ([`syncfleet_tests::postgres`]) and an HTTP JSON endpoint (an axum server in the test).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected errors"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use syncfleet_agent::change::watcher::Poller;
use syncfleet_agent::config::Credential;
use syncfleet_agent::journal::Journal;
use syncfleet_proto::schedule_model::{ChangeSourceDoc, HttpSourceDoc, SqlDriver, SqlSourceDoc};
use syncfleet_proto::v1;
use syncfleet_tests::postgres::TestPostgres;
use tokio::sync::Notify;

fn detected(ev: Option<v1::AgentEvent>) -> Option<v1::ChangeDetected> {
    match ev?.kind {
        Some(v1::agent_event::Kind::ChangeDetected(d)) => Some(d),
        other => panic!("not a ChangeDetected: {other:?}"),
    }
}

fn poller(
    dir: &tempfile::TempDir,
    credentials: BTreeMap<String, Credential>,
    doc: ChangeSourceDoc,
) -> (Arc<Journal>, Poller) {
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let p = Poller::new(
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        credentials,
        "hr-sync",
        doc,
    )
    .unwrap();
    (journal, p)
}

#[tokio::test]
async fn a_moved_postgres_watermark_is_one_change_and_an_unmoved_one_none() {
    let pg = TestPostgres::shared();
    let url = pg.create_database("change");
    pg.psql(
        &url,
        "CREATE TABLE person (id int PRIMARY KEY, updated_at timestamptz NOT NULL);
         INSERT INTO person VALUES (1, '2026-12-01T10:00:00Z'), (2, '2026-12-02T10:00:00Z');",
    );
    let dir = tempfile::tempdir().unwrap();
    let doc = ChangeSourceDoc {
        name: "person".into(),
        poll: None,
        ldap: None,
        sql: Some(SqlSourceDoc {
            driver: SqlDriver::Postgres,
            connection: url.clone(),
            query: "SELECT max(updated_at) FROM person".into(),
            credential: None,
        }),
        http: None,
    };
    let (journal, mut p) = poller(&dir, BTreeMap::new(), doc);
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    assert_eq!(p.status().snapshot().cursor, "2026-12-02 10:00:00+00");
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "no update");
    // An update that does not move the watermark is no change either.
    pg.psql(
        &url,
        "UPDATE person SET updated_at = '2026-12-01T11:00:00Z' WHERE id = 1",
    );
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    pg.psql(
        &url,
        "UPDATE person SET updated_at = '2026-12-07T09:30:00Z' WHERE id = 1",
    );
    let d = detected(p.poll_once().await.unwrap()).expect("the moved watermark");
    assert_eq!(d.changes, 1);
    assert_eq!(d.examples, vec!["2026-12-07 09:30:00+00".to_string()]);
    assert_eq!(d.cursor, "2026-12-07 09:30:00+00");
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    assert_eq!(journal.events_after(0, 10).unwrap().len(), 1);

    // A query error is reported in the status.
    let bad = ChangeSourceDoc {
        name: "broken".into(),
        poll: None,
        ldap: None,
        sql: Some(SqlSourceDoc {
            driver: SqlDriver::Postgres,
            connection: url,
            query: "SELECT max(updated) FROM nowhere".into(),
            credential: None,
        }),
        http: None,
    };
    let dir2 = tempfile::tempdir().unwrap();
    let (_, mut p) = poller(&dir2, BTreeMap::new(), bad);
    assert!(p.poll_once().await.is_err());
    let status = p.status().snapshot();
    assert!(status.error.contains("nowhere"), "{}", status.error);
    assert_eq!(status.consecutive_errors, 1);
}

/// An HTTP endpoint answering `{"value":[{"changeNumber":N}]}` to the bearer token `tok-1`
/// (401 otherwise), or a body of `big` bytes when set.
async fn serve(number: Arc<AtomicU64>, big: Arc<AtomicUsize>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/changes",
        axum::routing::get(move |headers: HeaderMap| {
            let number = Arc::clone(&number);
            let big = Arc::clone(&big);
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if auth != "Bearer tok-1" {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let size = big.load(Ordering::SeqCst);
                if size > 0 {
                    return (StatusCode::OK, format!("\"{}\"", "x".repeat(size)));
                }
                let n = number.load(Ordering::SeqCst);
                (
                    StatusCode::OK,
                    format!("{{\"value\":[{{\"changeNumber\":{n}}}]}}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/changes")
}

#[tokio::test]
async fn a_moved_http_watermark_is_one_change_with_the_bearer_token_from_the_configuration() {
    let number = Arc::new(AtomicU64::new(41));
    let big = Arc::new(AtomicUsize::new(0));
    let url = serve(Arc::clone(&number), Arc::clone(&big)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let credentials = BTreeMap::from([
        (
            "graph".to_string(),
            Credential {
                token_file: Some(token),
                ..Credential::default()
            },
        ),
        (
            "wrong".to_string(),
            Credential {
                username: Some("u".into()),
                password_file: Some(dir.path().join("token")),
                ..Credential::default()
            },
        ),
    ]);
    let doc = |credential: &str, pointer: &str| ChangeSourceDoc {
        name: "graph".into(),
        poll: None,
        ldap: None,
        sql: None,
        http: Some(HttpSourceDoc {
            url: url.clone(),
            pointer: pointer.into(),
            credential: Some(credential.into()),
        }),
    };
    let (journal, mut p) = poller(
        &dir,
        credentials.clone(),
        doc("graph", "/value/0/changeNumber"),
    );
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "unchanged");
    number.store(42, Ordering::SeqCst);
    let d = detected(p.poll_once().await.unwrap()).expect("the moved watermark");
    assert_eq!(
        (d.changes, d.examples, d.cursor),
        (1, vec!["42".to_string()], "42".to_string())
    );
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    assert_eq!(journal.events_after(0, 10).unwrap().len(), 1);

    // A body over the bound is refused, not read whole.
    big.store(2 * 1024 * 1024, Ordering::SeqCst);
    let err = p.poll_once().await.unwrap_err().to_string();
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    big.store(0, Ordering::SeqCst);

    // Basic credentials the server refuses; a pointer to nothing: errors in the status.
    let dir2 = tempfile::tempdir().unwrap();
    let (_, mut p) = poller(
        &dir2,
        credentials.clone(),
        doc("wrong", "/value/0/changeNumber"),
    );
    let err = p.poll_once().await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    let dir3 = tempfile::tempdir().unwrap();
    let (_, mut p) = poller(&dir3, credentials, doc("graph", "/value/9/changeNumber"));
    assert!(p.poll_once().await.is_err());
    let status = p.status().snapshot();
    assert!(
        status.error.contains("nothing at JSON pointer"),
        "{}",
        status.error
    );
}
