//! The LDAP change source against a real OpenLDAP server ([`syncfleet_tests::slapd`]): what
//! counts as a change, what does not, and that the cursor and the event are stored together
//! (a restarted poller reports each change exactly once).
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected errors"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use syncfleet_agent::change::status::backoff;
use syncfleet_agent::change::watcher::Poller;
use syncfleet_agent::change::{Watcher, ldap::LISTING_EVERY};
use syncfleet_agent::config::Credential;
use syncfleet_agent::journal::Journal;
use syncfleet_proto::schedule_model::{ChangeSourceDoc, ChangeStamp, LdapSourceDoc};
use syncfleet_proto::v1;
use syncfleet_tests::slapd::{OTHER, PEOPLE, ROOT_DN, ROOT_PASSWORD, TestSlapd};
use tokio::sync::Notify;

fn source(slapd: &TestSlapd, tweak: impl FnOnce(&mut LdapSourceDoc)) -> ChangeSourceDoc {
    let mut ldap = LdapSourceDoc {
        url: slapd.url(),
        start_tls: None,
        base: PEOPLE.to_string(),
        scope: Default::default(),
        object_classes: vec!["inetOrgPerson".to_string()],
        filter: None,
        ignore_attributes: Vec::new(),
        watch_attributes: Vec::new(),
        change_stamp: ChangeStamp::Auto,
        credential: Some("directory".to_string()),
    };
    tweak(&mut ldap);
    ChangeSourceDoc {
        name: "people".to_string(),
        poll: Some(Duration::from_millis(200)),
        ldap: Some(ldap),
        sql: None,
        http: None,
    }
}

/// `[credentials.directory]`: the root DN with `password` in a file under `dir`.
fn credentials(dir: &Path, password: &str) -> BTreeMap<String, Credential> {
    let file = dir.join("directory.pw");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    BTreeMap::from([(
        "directory".to_string(),
        Credential {
            username: Some(ROOT_DN.to_string()),
            password_file: Some(file),
            ..Credential::default()
        },
    )])
}

struct Fixture {
    slapd: TestSlapd,
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
}

impl Fixture {
    fn new() -> Self {
        let slapd = TestSlapd::start();
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
        Self {
            slapd,
            dir,
            journal,
        }
    }

    fn poller(&self, doc: ChangeSourceDoc) -> Poller {
        Poller::new(
            Arc::clone(&self.journal),
            Arc::new(Notify::new()),
            credentials(self.dir.path(), ROOT_PASSWORD),
            "people-sync",
            doc,
        )
        .unwrap()
    }
}

fn detected(ev: Option<v1::AgentEvent>) -> Option<v1::ChangeDetected> {
    let ev = ev?;
    assert_eq!(ev.run_id, "", "a change event belongs to no run");
    match ev.kind {
        Some(v1::agent_event::Kind::ChangeDetected(d)) => Some(d),
        other => panic!("not a ChangeDetected: {other:?}"),
    }
}

#[tokio::test]
async fn an_added_user_is_one_change_and_an_ignored_attribute_or_another_branch_is_none() {
    let f = Fixture::new();
    let alice = f.slapd.add_person(PEOPLE, "alice");
    let mut p = f.poller(source(&f.slapd, |l| {
        l.ignore_attributes = vec!["Description".to_string()];
    }));
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    assert_eq!(
        detected(p.poll_once().await.unwrap()),
        None,
        "nothing changed"
    );

    let bob = f.slapd.add_person(PEOPLE, "bob");
    let d = detected(p.poll_once().await.unwrap()).expect("the add is seen");
    assert_eq!(
        (d.schedule.as_str(), d.source.as_str()),
        ("people-sync", "people")
    );
    assert_eq!((d.changes, d.examples), (1, vec![bob.clone()]));
    assert!(!d.cursor.is_empty());
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "seen once");

    // Only an ignored attribute (case-insensitive) changes: no change.
    f.slapd.replace(&alice, "description", "logged on at 10:02");
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    // Outside the base: no change.
    f.slapd.add_person(OTHER, "carol");
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    // A watched attribute: one change.
    f.slapd.replace(&alice, "telephoneNumber", "+1 555 0100");
    let d = detected(p.poll_once().await.unwrap()).expect("the modify is seen");
    assert_eq!((d.changes, d.examples), (1, vec![alice]));

    let status = p.status().snapshot();
    assert_eq!(status.changes_total, 2);
    assert_eq!(status.kind, "ldap");
    assert!(status.target.contains(PEOPLE), "{}", status.target);
    assert_eq!((status.error.as_str(), status.consecutive_errors), ("", 0));
}

#[tokio::test]
async fn fifty_adds_between_two_polls_are_one_event_of_fifty() {
    let f = Fixture::new();
    let mut p = f.poller(source(&f.slapd, |_| {}));
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    let ldif: String = (0..50)
        .map(|i| {
            format!(
                "dn: uid=user{i},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: user{i}\ncn: user{i}\nsn: user{i}\n\n"
            )
        })
        .collect();
    f.slapd.add(&ldif);
    let d = detected(p.poll_once().await.unwrap()).expect("the adds are seen");
    assert_eq!(d.changes, 50);
    assert_eq!(d.examples.len(), 5, "examples are capped");
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    assert_eq!(f.journal.events_after(0, 100).unwrap().len(), 1);
}

#[tokio::test]
async fn a_restarted_poller_reports_each_change_exactly_once() {
    let f = Fixture::new();
    let path = f.dir.path().join("agent.db");
    let doc = source(&f.slapd, |_| {});
    {
        let mut p = f.poller(doc.clone());
        assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
        f.slapd.add_person(PEOPLE, "dave");
        assert_eq!(detected(p.poll_once().await.unwrap()).unwrap().changes, 1);
    }
    let erin = f.slapd.add_person(PEOPLE, "erin");
    // The agent restarts: a new journal handle on the same file, a new poller.
    let journal = Arc::new(Journal::open(&path).unwrap());
    let mut p = Poller::new(
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        credentials(f.dir.path(), ROOT_PASSWORD),
        "people-sync",
        doc.clone(),
    )
    .unwrap();
    assert!(
        !p.status().snapshot().cursor.is_empty(),
        "resumes from the stored cursor"
    );
    let d = detected(p.poll_once().await.unwrap()).expect("the change made while down");
    assert_eq!((d.changes, d.examples), (1, vec![erin]));
    assert_eq!(detected(p.poll_once().await.unwrap()), None);
    let events = journal.events_after(0, 100).unwrap();
    assert_eq!(events.len(), 2, "dave once, erin once: {events:?}");

    // A changed definition starts a new baseline instead of comparing with the old state.
    let mut changed = doc;
    changed.ldap.as_mut().unwrap().ignore_attributes = vec!["mail".to_string()];
    let mut p = Poller::new(
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        credentials(f.dir.path(), ROOT_PASSWORD),
        "people-sync",
        changed,
    )
    .unwrap();
    assert_eq!(p.status().snapshot().cursor, "");
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "new baseline");
}

#[tokio::test]
async fn a_deleted_entry_counts_once_the_dn_listing_runs() {
    let f = Fixture::new();
    let frank = f.slapd.add_person(PEOPLE, "frank");
    f.slapd.add_person(PEOPLE, "gina");
    let mut p = f.poller(source(&f.slapd, |_| {}));
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    f.slapd.delete(&frank);
    let mut seen = Vec::new();
    for _ in 0..LISTING_EVERY {
        if let Some(d) = detected(p.poll_once().await.unwrap()) {
            seen.push(d);
        }
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].changes, 1);
    assert_eq!(seen[0].examples, vec![frank.to_ascii_lowercase()]);
}

#[tokio::test]
async fn a_wrong_password_is_a_bind_error_in_the_status_with_growing_backoff() {
    let f = Fixture::new();
    let doc = source(&f.slapd, |_| {});
    let poll = doc.poll();
    let mut p = Poller::new(
        Arc::clone(&f.journal),
        Arc::new(Notify::new()),
        credentials(f.dir.path(), "not-the-password"),
        "people-sync",
        doc,
    )
    .unwrap();
    let mut waits = Vec::new();
    for n in 1..=4u32 {
        let err = p.poll_once().await.unwrap_err().to_string();
        assert!(err.contains("bind as cn=admin,dc=example,dc=org"), "{err}");
        let status = p.status().snapshot();
        assert_eq!(status.consecutive_errors, n);
        assert!(status.error.contains("bind"), "{}", status.error);
        assert!(
            !status.error.contains("not-the-password"),
            "no secret in the status"
        );
        waits.push(backoff(poll, status.consecutive_errors));
    }
    assert_eq!(waits, [poll, poll * 2, poll * 4, poll * 8]);
    assert!(f.journal.events_after(0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_credential_is_reported_in_the_status() {
    let f = Fixture::new();
    let mut p = Poller::new(
        Arc::clone(&f.journal),
        Arc::new(Notify::new()),
        BTreeMap::new(),
        "people-sync",
        source(&f.slapd, |l| l.credential = Some("corp-ldap".to_string())),
    )
    .unwrap();
    assert!(p.poll_once().await.is_err());
    let status = p.status().snapshot();
    assert!(
        status
            .error
            .contains("credential \"corp-ldap\" is not in the agent's configuration; add [credentials.corp-ldap]"),
        "{}",
        status.error
    );
}

/// The watcher follows the schedule set: a schedule with `on_change` gets a running poller
/// whose events reach the journal; a set without it stops the poller.
#[tokio::test]
async fn the_watcher_runs_the_sources_of_the_schedule_set() {
    let f = Fixture::new();
    let outbox = Arc::new(Notify::new());
    let watcher = Watcher::new(
        Arc::clone(&f.journal),
        Arc::clone(&outbox),
        credentials(f.dir.path(), ROOT_PASSWORD),
    );
    let doc = serde_json::json!({
        "name": "people-sync",
        "sequence": "delta",
        "targets": {"agents": ["sync01"]},
        "trigger": {"on_change": {"sources": [source(&f.slapd, |_| {})]}},
    });
    let set = v1::ScheduleSet {
        version: 1,
        schedules: vec![v1::AgentSchedule {
            schedule_json: doc.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(set);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&watcher).run(rx, shutdown.clone()));
    // The baseline is taken (a first poll that worked), then a change is made.
    wait_for(|| {
        watcher
            .statuses()
            .first()
            .is_some_and(|s| s.last_poll.is_some() && s.error.is_empty())
    })
    .await;
    let henry = f.slapd.add_person(PEOPLE, "henry");
    wait_for(|| !f.journal.events_after(0, 10).unwrap().is_empty()).await;
    let events = f.journal.events_after(0, 10).unwrap();
    let d = detected(events.into_iter().next()).unwrap();
    assert_eq!((d.changes, d.examples), (1, vec![henry]));
    assert_eq!(watcher.statuses()[0].changes_total, 1);

    // A changed definition restarts the poller from a new baseline (which reports nothing).
    let changed = serde_json::json!({
        "name": "people-sync",
        "sequence": "delta",
        "targets": {"agents": ["sync01"]},
        "trigger": {"on_change": {"sources": [source(&f.slapd, |l| {
            l.ignore_attributes = vec!["mail".to_string()];
        })]}},
    });
    tx.send_replace(v1::ScheduleSet {
        version: 2,
        schedules: vec![v1::AgentSchedule {
            schedule_json: changed.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    });
    wait_for(|| {
        watcher
            .statuses()
            .first()
            .is_some_and(|s| s.changes_total == 0 && s.last_poll.is_some())
    })
    .await;
    let iris = f.slapd.add_person(PEOPLE, "iris");
    wait_for(|| f.journal.events_after(0, 10).unwrap().len() == 2).await;
    let events = f.journal.events_after(1, 10).unwrap();
    let d = detected(events.into_iter().next()).unwrap();
    assert_eq!((d.changes, d.examples), (1, vec![iris]));

    tx.send_replace(v1::ScheduleSet {
        version: 3,
        ..Default::default()
    });
    wait_for(|| watcher.statuses().is_empty()).await;
    // The removed source's state is forgotten.
    let digest = syncfleet_agent::change::definition_digest(&source(&f.slapd, |l| {
        l.ignore_attributes = vec!["mail".to_string()];
    }));
    assert_eq!(
        f.journal
            .change_state("people-sync", "people", &digest)
            .unwrap(),
        None
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// Wait (bounded) until `cond` holds.
async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// LDAPS and StartTLS, trusting the directory's CA through the credential's `ca_file`; without
/// it the certificate is refused and the status says why.
#[tokio::test]
async fn ldaps_and_start_tls_trust_the_credentials_ca_file() {
    let slapd = TestSlapd::start_with_tls();
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let mut creds = credentials(dir.path(), ROOT_PASSWORD);
    let mut trusted = creds["directory"].clone();
    trusted.ca_file = Some(slapd.ca_file());
    creds.insert("trusted".to_string(), trusted);
    let ldaps = |credential: &str, start_tls: bool| {
        let url = if start_tls {
            slapd.url()
        } else {
            slapd.ldaps_url()
        };
        let mut doc = source(&slapd, |l| {
            l.url = url;
            l.start_tls = Some(start_tls);
            l.credential = Some(credential.to_string());
        });
        doc.name = format!("{credential}-{start_tls}");
        doc
    };
    let mut over_ldaps = Poller::new(
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        creds.clone(),
        "people-sync",
        ldaps("trusted", false),
    )
    .unwrap();
    let mut over_start_tls = Poller::new(
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        creds.clone(),
        "people-sync",
        ldaps("trusted", true),
    )
    .unwrap();
    assert_eq!(detected(over_ldaps.poll_once().await.unwrap()), None);
    assert_eq!(detected(over_start_tls.poll_once().await.unwrap()), None);
    let ivan = slapd.add_person(PEOPLE, "ivan");
    for p in [&mut over_ldaps, &mut over_start_tls] {
        let d = detected(p.poll_once().await.unwrap()).expect("the add is seen");
        assert_eq!((d.changes, d.examples.clone()), (1, vec![ivan.clone()]));
    }

    // Without the CA, both refuse the server's certificate (so StartTLS did upgrade).
    for start_tls in [false, true] {
        let mut untrusted = Poller::new(
            Arc::clone(&journal),
            Arc::new(Notify::new()),
            creds.clone(),
            "people-sync",
            ldaps("directory", start_tls),
        )
        .unwrap();
        let err = untrusted.poll_once().await.unwrap_err().to_string();
        assert!(err.contains("connect to ldap"), "{err}");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }
}

/// Baseline and DN listing read every page of a directory larger than one page (500 entries):
/// a deletion on the last page is one change, and nothing else is taken for deleted.
#[tokio::test]
async fn searches_read_every_page_of_a_large_directory() {
    let f = Fixture::new();
    let ldif: String = (0..1200)
        .map(|i| {
            format!(
                "dn: uid=bulk{i},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: bulk{i}\ncn: bulk{i}\nsn: bulk{i}\n\n"
            )
        })
        .collect();
    f.slapd.add(&ldif);
    let mut p = f.poller(source(&f.slapd, |_| {}));
    assert_eq!(detected(p.poll_once().await.unwrap()), None, "baseline");
    let last = format!("uid=bulk1199,{PEOPLE}");
    f.slapd.delete(&last);
    let mut total = 0;
    for _ in 0..LISTING_EVERY {
        if let Some(d) = detected(p.poll_once().await.unwrap()) {
            assert_eq!(d.examples, vec![last.to_ascii_lowercase()]);
            total += d.changes;
        }
    }
    assert_eq!(total, 1);
}
