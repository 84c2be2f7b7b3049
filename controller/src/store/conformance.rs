//! One behaviour for every [`Store`]: each check below runs against the SQLite store (a
//! temporary file) and the PostgreSQL store (a database of its own on a real server started by
//! `syncfleet_tests::postgres`), as `store::conformance::{sqlite,postgres}::<check>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed call fails the test with its error"
)]

use std::sync::Arc;

use syncfleet_proto::time::from_millis;
use syncfleet_proto::v1;

use super::{
    AuditQuery, EventBatch, Listing, PruneKind, RunQuery, Store, StoreError, StoredDocument,
};

fn run(id: &str, agent: &str, created: i64, state: v1::RunState) -> v1::Run {
    v1::Run {
        id: id.into(),
        agent: agent.into(),
        state: state as i32,
        created_at: Some(from_millis(created)),
        ..Default::default()
    }
}

fn agent(name: &str, hostname: &str) -> v1::Agent {
    v1::Agent {
        name: name.into(),
        hostname: hostname.into(),
        ..Default::default()
    }
}

fn ids(runs: &[v1::Run]) -> Vec<&str> {
    runs.iter().map(|r| r.id.as_str()).collect()
}

fn ev(seq: u64, run_id: &str) -> v1::AgentEvent {
    v1::AgentEvent {
        seq,
        run_id: run_id.into(),
        ..Default::default()
    }
}

fn audit_entry(who: &str, at: i64, method: &str) -> v1::AuditEntry {
    v1::AuditEntry {
        who: who.into(),
        at: Some(from_millis(at)),
        action: method.into(),
        ..Default::default()
    }
}

/// Agents: insert, replace (keeping the event seq), list by name.
async fn agents(s: &dyn Store) {
    assert!(s.get_agent("b").await.unwrap().is_none());
    s.put_agent(&agent("b", "h1")).await.unwrap();
    s.put_agent(&agent("a", "h0")).await.unwrap();
    s.commit_agent_events("b", &[ev(4, "r")], &[])
        .await
        .unwrap();
    s.put_agent(&agent("b", "h2")).await.unwrap();
    let b = s.get_agent("b").await.unwrap().unwrap();
    assert_eq!(b.agent.hostname, "h2");
    assert_eq!(b.last_event_seq, 4, "put_agent keeps the stored seq");
    let names: Vec<String> = s
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
}

/// New runs are inserted or ignored (never replaced), pages are newest first with ties broken
/// by id, page tokens continue exactly where the previous page ended.
async fn runs_insert_and_page(s: &dyn Store) {
    let inserted = s
        .insert_runs(&[
            run("r0", "a", 1000, v1::RunState::Pending),
            run("r1", "a", 1001, v1::RunState::Pending),
            run("r0", "a", 5, v1::RunState::Failed),
        ])
        .await
        .unwrap();
    assert_eq!(inserted, [true, true, false]);
    for i in 2..5 {
        assert!(
            s.insert_run(&run(&format!("r{i}"), "a", 1000 + i, v1::RunState::Pending))
                .await
                .unwrap()
        );
    }
    assert!(
        !s.insert_run(&run("r0", "a", 1, v1::RunState::Failed))
            .await
            .unwrap()
    );
    let r0 = s.get_run("r0").await.unwrap().unwrap();
    assert_eq!(r0.state, v1::RunState::Pending as i32);
    assert!(s.get_run("nope").await.unwrap().is_none());

    let page = |token: Option<String>| RunQuery {
        limit: 2,
        page_token: token,
        ..Default::default()
    };
    let p1 = s.list_runs(&page(None)).await.unwrap();
    assert_eq!(ids(&p1.runs), ["r4", "r3"]);
    assert_eq!(p1.next_page_token.as_deref(), Some("1003_r3"));
    let p2 = s.list_runs(&page(p1.next_page_token)).await.unwrap();
    assert_eq!(ids(&p2.runs), ["r2", "r1"]);
    let p3 = s.list_runs(&page(p2.next_page_token)).await.unwrap();
    assert_eq!(ids(&p3.runs), ["r0"]);
    assert!(p3.next_page_token.is_none());
    for bad in ["garbage", "x_r1", ""] {
        assert!(
            matches!(
                s.list_runs(&page(Some(bad.into()))).await,
                Err(StoreError::BadPageToken { .. })
            ),
            "token {bad:?}"
        );
    }

    // Runs created in the same millisecond page by id, descending, without loss or repeat.
    for id in ["t-a", "t-b", "t-c"] {
        s.insert_run(&run(id, "b", 2000, v1::RunState::Running))
            .await
            .unwrap();
    }
    let q = |token| RunQuery {
        agent: Some("b".into()),
        limit: 1,
        page_token: token,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let p = s.list_runs(&q(token)).await.unwrap();
        seen.extend(p.runs.into_iter().map(|r| r.id));
        token = p.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["t-c", "t-b", "t-a"]);
    // A limit is clamped to 1..=1000.
    let all = s
        .list_runs(&RunQuery {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.runs.len(), 1);
}

/// Filters of `list_runs` (agent, schedule, states, time range) and `runs_in_states`.
async fn runs_filters(s: &dyn Store) {
    let mut scheduled = run("s1", "a", 10, v1::RunState::Succeeded);
    scheduled.schedule = "nightly".into();
    s.insert_runs(&[
        scheduled,
        run("s2", "a", 20, v1::RunState::Running),
        run("s3", "b", 30, v1::RunState::Pending),
        run("s4", "b", 40, v1::RunState::Running),
    ])
    .await
    .unwrap();
    let list = |q: RunQuery| async move {
        let q = RunQuery { limit: 100, ..q };
        s.list_runs(&q)
            .await
            .unwrap()
            .runs
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(RunQuery {
            agent: Some("a".into()),
            ..Default::default()
        })
        .await,
        ["s2", "s1"]
    );
    assert_eq!(
        list(RunQuery {
            schedule: Some("nightly".into()),
            ..Default::default()
        })
        .await,
        ["s1"]
    );
    assert_eq!(
        list(RunQuery {
            states: vec![v1::RunState::Running, v1::RunState::Pending],
            ..Default::default()
        })
        .await,
        ["s4", "s3", "s2"]
    );
    assert_eq!(
        list(RunQuery {
            since_ms: Some(20),
            until_ms: Some(40),
            ..Default::default()
        })
        .await,
        ["s3", "s2"]
    );
    let running = s
        .runs_in_states(None, &[v1::RunState::Running])
        .await
        .unwrap();
    assert_eq!(ids(&running), ["s2", "s4"], "oldest first");
    let running_b = s
        .runs_in_states(Some("b"), &[v1::RunState::Running, v1::RunState::Pending])
        .await
        .unwrap();
    assert_eq!(ids(&running_b), ["s3", "s4"]);
    assert!(s.runs_in_states(None, &[]).await.unwrap().is_empty());

    // put_runs replaces by id (state column included).
    s.put_runs(&[
        run("s2", "a", 20, v1::RunState::Failed),
        run("s5", "c", 50, v1::RunState::Running),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.get_run("s2").await.unwrap().unwrap().state,
        v1::RunState::Failed as i32
    );
    let running = s
        .runs_in_states(None, &[v1::RunState::Running])
        .await
        .unwrap();
    assert_eq!(ids(&running), ["s4", "s5"]);
}

/// `run_ids_with_prefix`: byte-order, case-sensitive, no wildcards, limited.
async fn run_id_prefixes(s: &dyn Store) {
    for id in ["ab_1", "ab_2", "abX", "ab%", "AB_3", "ab_0", "b"] {
        s.insert_run(&run(id, "a", 1, v1::RunState::Pending))
            .await
            .unwrap();
    }
    assert_eq!(
        s.run_ids_with_prefix("ab_", 10).await.unwrap(),
        ["ab_0", "ab_1", "ab_2"]
    );
    assert_eq!(
        s.run_ids_with_prefix("ab_", 2).await.unwrap(),
        ["ab_0", "ab_1"]
    );
    assert_eq!(
        s.run_ids_with_prefix("ab", 10).await.unwrap(),
        ["ab%", "abX", "ab_0", "ab_1", "ab_2"],
        "byte order: % < X < _"
    );
    assert_eq!(s.run_ids_with_prefix("ab%", 10).await.unwrap(), ["ab%"]);
    assert!(s.run_ids_with_prefix("zz", 10).await.unwrap().is_empty());
}

/// Event batches: one transaction for several agents, each agent's seq advanced on its own,
/// the runs they changed written with them.
async fn event_batches(s: &dyn Store) {
    for a in ["a", "b"] {
        s.put_agent(&agent(a, "")).await.unwrap();
    }
    s.insert_runs(&[
        run("ra", "a", 1, v1::RunState::Dispatched),
        run("rb", "b", 1, v1::RunState::Dispatched),
    ])
    .await
    .unwrap();
    let seq = s
        .commit_agent_events(
            "a",
            &[ev(1, "ra"), ev(2, "ra")],
            &[run("ra", "a", 1, v1::RunState::Running)],
        )
        .await
        .unwrap();
    assert_eq!(seq, 2);
    let seqs = s
        .commit_event_batches(&[
            EventBatch {
                agent: "a".into(),
                events: vec![ev(3, "ra")],
                runs: vec![run("ra", "a", 1, v1::RunState::Succeeded)],
                ..EventBatch::default()
            },
            EventBatch {
                agent: "b".into(),
                events: vec![ev(7, "rb")],
                runs: vec![run("rb", "b", 1, v1::RunState::Running)],
                states: vec![("changes/s/b".into(), b"{\"changes\":3}".to_vec())],
                counters: vec![("s".into(), "changes_detected".into(), 3)],
            },
        ])
        .await
        .unwrap();
    assert_eq!(seqs, [3, 7]);
    // What the events decided is committed with them.
    assert_eq!(
        s.get_state("changes/s/b").await.unwrap(),
        Some(b"{\"changes\":3}".to_vec())
    );
    assert!(
        s.counters("s")
            .await
            .unwrap()
            .contains(&("changes_detected".to_string(), 3))
    );
    assert_eq!(s.get_agent("a").await.unwrap().unwrap().last_event_seq, 3);
    assert_eq!(s.get_agent("b").await.unwrap().unwrap().last_event_seq, 7);
    assert_eq!(
        s.get_run("ra").await.unwrap().unwrap().state,
        v1::RunState::Succeeded as i32
    );
    // An empty batch keeps the stored seq.
    assert_eq!(s.commit_agent_events("b", &[], &[]).await.unwrap(), 7);
    // A batch of an agent with no record stores its events and reports their seq.
    assert_eq!(
        s.commit_agent_events("ghost", &[ev(9, "x")], &[])
            .await
            .unwrap(),
        9
    );
}

/// Fleet documents: upserts and deletes together, listed by kind then name.
async fn documents(s: &dyn Store) {
    let doc = |kind: &str, name: &str, json: &str| StoredDocument {
        kind: kind.into(),
        name: name.into(),
        json: json.into(),
    };
    s.write_documents(
        &[
            doc("Schedule", "b", "{}"),
            doc("Schedule", "a", "{}"),
            doc("Agent", "z", "{}"),
        ],
        &[],
    )
    .await
    .unwrap();
    s.write_documents(
        &[doc("Schedule", "a", "{\"v\":2}")],
        &[
            ("Agent".into(), "z".into()),
            ("Agent".into(), "none".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        s.list_documents(None).await.unwrap(),
        [
            doc("Schedule", "a", "{\"v\":2}"),
            doc("Schedule", "b", "{}")
        ]
    );
    assert!(s.list_documents(Some("Agent")).await.unwrap().is_empty());
    assert_eq!(s.list_documents(Some("Schedule")).await.unwrap().len(), 2);
}

/// State records: get/put, prefixes that do not spill into longer names, deletes by prefix,
/// schedule state and counters in one call.
async fn state_and_counters(s: &dyn Store) {
    assert!(s.get_state("pause/fleet").await.unwrap().is_none());
    s.put_state("pause/fleet", b"1").await.unwrap();
    s.put_state("pause/fleet", b"2").await.unwrap();
    assert_eq!(
        s.get_state("pause/fleet").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    for key in [
        "buffered/k/b",
        "buffered/k/a",
        "buffered/k2/a",
        "buffered_x",
    ] {
        s.put_state(key, key.as_bytes()).await.unwrap();
    }
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list_state("buffered/k/").await.unwrap()),
        ["buffered/k/a", "buffered/k/b"]
    );
    assert_eq!(
        keys(s.list_state("buffered/").await.unwrap()),
        ["buffered/k/a", "buffered/k/b", "buffered/k2/a"]
    );
    s.delete_state_prefix("buffered/k/").await.unwrap();
    assert_eq!(
        keys(s.list_state("buffered").await.unwrap()),
        ["buffered/k2/a", "buffered_x"]
    );

    s.put_state("catchup/k", b"c").await.unwrap();
    s.put_state("buffered/k/z", b"z").await.unwrap();
    s.commit_schedule_state(
        "k",
        &[
            ("cursor/k".into(), Some(b"5".to_vec())),
            ("catchup/k".into(), None),
        ],
        &[("fired", 1), ("skipped_overlap", 2)],
        Some("buffered/k/"),
    )
    .await
    .unwrap();
    assert!(s.list_state("buffered/k/").await.unwrap().is_empty());
    assert!(s.get_state("catchup/k").await.unwrap().is_none());
    assert_eq!(
        s.get_state("cursor/k").await.unwrap().as_deref(),
        Some(&b"5"[..])
    );
    s.bump_counters("k", &[("fired", 2)]).await.unwrap();
    s.bump_counters("other", &[("fired", 9)]).await.unwrap();
    assert_eq!(
        s.counters("k").await.unwrap(),
        [("fired".to_string(), 3), ("skipped_overlap".to_string(), 2)]
    );
    assert!(s.counters("none").await.unwrap().is_empty());
}

/// `update_state` writes what the function accepts and nothing else.
async fn update_state_decisions(s: &dyn Store) {
    s.put_state("token/t", b"fresh").await.unwrap();
    let consume = |cur: Option<&[u8]>| match cur {
        Some(b"fresh") => Ok(b"used".to_vec()),
        Some(_) => Err("already used".to_string()),
        None => Err("unknown".to_string()),
    };
    assert_eq!(
        s.update_state("token/t", Box::new(consume)).await.unwrap(),
        Ok(b"used".to_vec())
    );
    assert_eq!(
        s.update_state("token/t", Box::new(consume)).await.unwrap(),
        Err("already used".to_string())
    );
    assert_eq!(
        s.update_state("token/none", Box::new(consume))
            .await
            .unwrap(),
        Err("unknown".to_string())
    );
    assert_eq!(
        s.get_state("token/t").await.unwrap().as_deref(),
        Some(&b"used"[..])
    );
    assert_eq!(s.get_state("token/none").await.unwrap(), None);
    // A missing record can be created by the function.
    assert_eq!(
        s.update_state(
            "token/new",
            Box::new(|cur| Ok(cur.map_or(b"1".to_vec(), <[u8]>::to_vec)))
        )
        .await
        .unwrap(),
        Ok(b"1".to_vec())
    );
    assert_eq!(
        s.get_state("token/new").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// Concurrent read-modify-writes of one key never lose an update, also when the key does not
/// exist yet (the first calls all start before any has written it).
async fn update_state_is_atomic(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                s.update_state(
                    "counter/x",
                    Box::new(|cur| {
                        // Holds the transaction open so that calls overlap: without the
                        // store's locking, several would read the same value.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        let n: u32 = cur
                            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                            .unwrap_or(0);
                        Ok((n + 1).to_string().into_bytes())
                    }),
                )
                .await
                .unwrap()
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        s.get_state("counter/x").await.unwrap().as_deref(),
        Some(&b"16"[..])
    );
}

/// Audit: ids assigned in increasing order, listed newest first, filtered by time and caller.
async fn audit(s: &dyn Store) {
    let mut ids = Vec::new();
    for (who, at, method) in [
        ("op/a", 100, "M1"),
        ("op/b", 200, "M2"),
        ("op/a", 300, "M3"),
        ("op/a", 400, "M4"),
    ] {
        ids.push(s.append_audit(&audit_entry(who, at, method)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let methods = |v: Vec<v1::AuditEntry>| v.into_iter().map(|e| e.action).collect::<Vec<_>>();
    let all = s.list_audit(None, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(methods(all), ["M4", "M3", "M2", "M1"]);
    assert_eq!(
        methods(s.list_audit(Some(200), None, 100).await.unwrap()),
        ["M4", "M3", "M2"]
    );
    assert_eq!(
        methods(s.list_audit(None, Some("op/a"), 2).await.unwrap()),
        ["M4", "M3"]
    );
    assert!(
        s.list_audit(None, Some("nobody"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// What [`reopen_keeps_everything`] writes before the store is closed.
async fn fill_before_reopen(s: &dyn Store) -> u64 {
    s.put_agent(&agent("a", "h")).await.unwrap();
    s.insert_run(&run("r", "a", 7, v1::RunState::Pending))
        .await
        .unwrap();
    s.commit_agent_events(
        "a",
        &[ev(3, "r")],
        &[run("r", "a", 7, v1::RunState::Running)],
    )
    .await
    .unwrap();
    s.put_state("pause/fleet", b"p").await.unwrap();
    s.bump_counters("k", &[("fired", 1)]).await.unwrap();
    s.append_audit(&audit_entry("op/a", 1, "M")).await.unwrap()
}

/// Everything committed is there after the store is closed and opened again; new audit ids
/// continue after the old ones.
async fn reopen_keeps_everything(s: &dyn Store, audit_id: u64) {
    let a = s.get_agent("a").await.unwrap().unwrap();
    assert_eq!((a.agent.hostname.as_str(), a.last_event_seq), ("h", 3));
    assert_eq!(
        s.get_run("r").await.unwrap().unwrap().state,
        v1::RunState::Running as i32
    );
    assert_eq!(
        s.get_state("pause/fleet").await.unwrap().as_deref(),
        Some(&b"p"[..])
    );
    assert_eq!(s.counters("k").await.unwrap(), [("fired".to_string(), 1)]);
    let audit = s.list_audit(None, None, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].id, audit_id);
    assert!(s.append_audit(&audit_entry("op/a", 2, "N")).await.unwrap() > audit_id);
}

fn with_steps(mut r: v1::Run, n: usize) -> v1::Run {
    r.steps = (0..n)
        .map(|i| v1::Step {
            index: u32::try_from(i).unwrap(),
            ma: "AD".into(),
            profile: format!("Delta Import {i}"),
            ..Default::default()
        })
        .collect();
    r
}

/// Runs keep their steps, in order, through every write and read path: a step changed, steps
/// added and removed, a run written twice in one call.
async fn runs_keep_their_steps(s: &dyn Store) {
    let a = with_steps(run("a", "x", 1, v1::RunState::Pending), 3);
    let b = with_steps(run("b", "x", 2, v1::RunState::Pending), 0);
    assert_eq!(
        s.insert_runs(&[a.clone(), b.clone(), a.clone()])
            .await
            .unwrap(),
        [true, true, false]
    );
    assert_eq!(s.get_run("a").await.unwrap().unwrap(), a);
    let mut a2 = a.clone();
    a2.steps[1].result = "success".into();
    a2.state = v1::RunState::Running as i32;
    let b2 = with_steps(b.clone(), 5);
    s.put_agent(&agent("x", "h")).await.unwrap();
    let batch = EventBatch {
        agent: "x".into(),
        events: vec![ev(1, "a")],
        runs: vec![a.clone(), a2.clone(), b2.clone()],
        ..EventBatch::default()
    };
    assert_eq!(s.commit_event_batches(&[batch]).await.unwrap(), [1]);
    assert_eq!(s.get_run("a").await.unwrap().unwrap(), a2);
    assert_eq!(s.get_run("b").await.unwrap().unwrap(), b2);
    let mut a3 = a2.clone();
    a3.steps.truncate(1);
    s.put_runs(&[a3.clone()]).await.unwrap();
    let page = s
        .list_runs(&RunQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.runs, [b2.clone(), a3.clone()]);
    assert_eq!(
        s.runs_in_states(Some("x"), &[v1::RunState::Running, v1::RunState::Pending])
            .await
            .unwrap(),
        [a3, b2]
    );
}

/// Pruning: ended runs (with their steps), events and audit entries older than the cutoff go,
/// in batches of at most `limit`; newer rows, runs not ended and held runs stay.
async fn prune_by_age(s: &dyn Store) {
    s.put_agent(&agent("a", "")).await.unwrap();
    let old = [
        run("old-1", "a", 100, v1::RunState::Succeeded),
        run("old-2", "a", 200, v1::RunState::Failed),
        run("old-3", "a", 300, v1::RunState::Cancelled),
        with_steps(run("old-4", "a", 400, v1::RunState::CompletedWithErrors), 3),
        run("old-running", "a", 100, v1::RunState::Running),
        run("old-pending", "a", 100, v1::RunState::Pending),
        run("old-held", "a", 100, v1::RunState::Held),
    ];
    s.insert_runs(&old).await.unwrap();
    s.insert_runs(&[run("new", "a", 5_000, v1::RunState::Succeeded)])
        .await
        .unwrap();
    let at = |mut e: v1::AgentEvent, ms: i64| {
        e.at = Some(from_millis(ms));
        e
    };
    s.commit_agent_events(
        "a",
        &[
            at(ev(1, "old-1"), 100),
            at(ev(2, "old-1"), 200),
            at(ev(3, "old-2"), 300),
            at(ev(4, "new"), 5_000),
        ],
        &[],
    )
    .await
    .unwrap();
    for (who, ms) in [("x", 100), ("y", 200), ("z", 5_000)] {
        s.append_audit(&audit_entry(who, ms, "/m")).await.unwrap();
    }

    // Runs: a batch of 3, then the last one, then nothing.
    assert_eq!(s.prune(PruneKind::Runs, 1_000, 3).await.unwrap(), 3);
    assert_eq!(s.prune(PruneKind::Runs, 1_000, 3).await.unwrap(), 1);
    assert_eq!(s.prune(PruneKind::Runs, 1_000, 3).await.unwrap(), 0);
    for gone in ["old-1", "old-2", "old-3", "old-4"] {
        assert!(s.get_run(gone).await.unwrap().is_none(), "{gone}");
    }
    for kept in ["old-running", "old-pending", "old-held", "new"] {
        assert!(s.get_run(kept).await.unwrap().is_some(), "{kept}");
    }
    // A new run under a pruned id starts with no steps of the old one.
    s.insert_runs(&[run("old-4", "a", 6_000, v1::RunState::Pending)])
        .await
        .unwrap();
    assert!(s.get_run("old-4").await.unwrap().unwrap().steps.is_empty());

    // Events: by the event's time; the agent's stored seq is kept.
    assert_eq!(s.prune(PruneKind::Events, 1_000, 2).await.unwrap(), 2);
    assert_eq!(s.prune(PruneKind::Events, 1_000, 2).await.unwrap(), 1);
    assert_eq!(s.prune(PruneKind::Events, 1_000, 2).await.unwrap(), 0);
    assert_eq!(s.get_agent("a").await.unwrap().unwrap().last_event_seq, 4);

    // Audit: the old entries go, the newer one stays.
    assert_eq!(s.prune(PruneKind::Audit, 1_000, 10).await.unwrap(), 2);
    let left: Vec<String> = s
        .list_audit(None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.who)
        .collect();
    assert_eq!(left, ["z"]);
}

/// Agents page by name: every agent exactly once across pages, agents added meanwhile before
/// the current position are not seen and those after it are, and bad tokens are refused.
async fn agents_page(s: &dyn Store) {
    for i in (0..7).rev() {
        s.put_agent(&agent(&format!("ag-{i:02}"), "h"))
            .await
            .unwrap();
    }
    let names = |p: &super::Page<v1::Agent>| -> Vec<String> {
        p.items.iter().map(|a| a.name.clone()).collect()
    };
    let p1 = s.list_agents_page(None, 3).await.unwrap();
    assert_eq!(names(&p1), ["ag-00", "ag-01", "ag-02"]);
    assert_eq!(p1.next_page_token.as_deref(), Some("agent:ag-02"));
    // Added between pages: one before the position (not in a later page), one after it.
    s.put_agent(&agent("ag-01a", "h")).await.unwrap();
    s.put_agent(&agent("ag-03a", "h")).await.unwrap();
    let p2 = s
        .list_agents_page(p1.next_page_token.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!(names(&p2), ["ag-03", "ag-03a", "ag-04"]);
    let p3 = s
        .list_agents_page(p2.next_page_token.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!(names(&p3), ["ag-05", "ag-06"]);
    assert!(p3.next_page_token.is_none(), "the last page has no token");
    // A page that ends exactly at the last agent has no token either.
    let all = s.list_agents_page(None, 9).await.unwrap();
    assert_eq!(all.items.len(), 9);
    assert!(all.next_page_token.is_none());
    // A limit above the maximum is clamped, 0 reads one.
    assert_eq!(s.list_agents_page(None, 0).await.unwrap().items.len(), 1);
    assert_eq!(
        s.list_agents_page(None, 1_000_000)
            .await
            .unwrap()
            .items
            .len(),
        9
    );
    for bad in [
        "",
        "agent:",
        "ag-02",
        "document:ag-02",
        "audit:5",
        "agent:\u{7}",
    ] {
        match s.list_agents_page(Some(bad), 3).await {
            Err(StoreError::BadPageToken { token }) => assert_eq!(token, bad),
            other => panic!("token {bad:?}: {other:?}"),
        }
    }
}

/// Documents page by name within their kind; tokens of another listing are refused.
async fn documents_page(s: &dyn Store) {
    let doc = |kind: &str, name: &str| StoredDocument {
        kind: kind.into(),
        name: name.into(),
        json: format!("{{\"name\":\"{name}\"}}"),
    };
    let upserts: Vec<StoredDocument> = ["d", "a", "c", "b", "e"]
        .iter()
        .map(|n| doc("Schedule", n))
        .chain([doc("Sequence", "a0"), doc("Sequence", "z")])
        .collect();
    s.write_documents(&upserts, &[]).await.unwrap();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = s
            .list_documents_page("Schedule", token.as_deref(), 2)
            .await
            .unwrap();
        pages += 1;
        assert!(p.items.iter().all(|d| d.kind == "Schedule"));
        seen.extend(p.items.into_iter().map(|d| d.name));
        match p.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);
    let seq = s.list_documents_page("Sequence", None, 100).await.unwrap();
    assert_eq!(seq.items.len(), 2);
    assert!(seq.next_page_token.is_none());
    assert!(matches!(
        s.list_documents_page("Schedule", Some("agent:a"), 2).await,
        Err(StoreError::BadPageToken { .. })
    ));
}

/// The audit log pages newest first by id; entries appended between pages are not seen by
/// later pages (they are newer than the first), and the filters apply to every page.
async fn audit_page(s: &dyn Store) {
    for i in 0..7 {
        let who = if i % 2 == 0 { "op/even" } else { "op/odd" };
        s.append_audit(&audit_entry(who, 100 + i, &format!("m{i}")))
            .await
            .unwrap();
    }
    let actions = |p: &super::Page<v1::AuditEntry>| -> Vec<String> {
        p.items.iter().map(|e| e.action.clone()).collect()
    };
    let q = |token: Option<String>| AuditQuery {
        limit: 3,
        page_token: token,
        ..Default::default()
    };
    let p1 = s.list_audit_page(&q(None)).await.unwrap();
    assert_eq!(actions(&p1), ["m6", "m5", "m4"]);
    s.append_audit(&audit_entry("op/odd", 200, "late"))
        .await
        .unwrap();
    let p2 = s.list_audit_page(&q(p1.next_page_token)).await.unwrap();
    assert_eq!(actions(&p2), ["m3", "m2", "m1"]);
    let p3 = s.list_audit_page(&q(p2.next_page_token)).await.unwrap();
    assert_eq!(actions(&p3), ["m0"]);
    assert!(p3.next_page_token.is_none());
    // Filtered: only op/even entries at or after 102, two to a page.
    let fq = |token: Option<String>| AuditQuery {
        since_ms: Some(102),
        who: Some("op/even".into()),
        limit: 2,
        page_token: token,
    };
    let f1 = s.list_audit_page(&fq(None)).await.unwrap();
    assert_eq!(actions(&f1), ["m6", "m4"]);
    let f2 = s.list_audit_page(&fq(f1.next_page_token)).await.unwrap();
    assert_eq!(actions(&f2), ["m2"]);
    assert!(f2.next_page_token.is_none());
    for bad in ["audit:x", "audit:-1", "audit:0", "agent:5", "5"] {
        assert!(
            matches!(
                s.list_audit_page(&q(Some(bad.into()))).await,
                Err(StoreError::BadPageToken { .. })
            ),
            "token {bad:?}"
        );
    }
    assert_eq!(Listing::audit_id("audit:42").unwrap(), 42);
}

/// Each check as `sqlite::<check>` and `postgres::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            use crate::store::sqlite::SqliteStore;
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SqliteStore::open(&dir.path().join("controller.db")).unwrap();
                    super::$check(&store).await;
                }
            )*

            #[tokio::test]
            async fn update_state_is_atomic() {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("controller.db")).unwrap();
                super::update_state_is_atomic(std::sync::Arc::new(store)).await;
            }

            #[tokio::test]
            async fn reopen_keeps_everything() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("controller.db");
                let id = super::fill_before_reopen(&SqliteStore::open(&path).unwrap()).await;
                super::reopen_keeps_everything(&SqliteStore::open(&path).unwrap(), id).await;
            }
        }

        mod postgres {
            use crate::store::postgres::PgStore;
            use syncfleet_tests::postgres::TestPostgres;
            $(
                #[tokio::test]
                async fn $check() {
                    let pg = TestPostgres::shared();
                    let store = PgStore::connect(&pg.create_database("conformance")).await.unwrap();
                    super::$check(&store).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn update_state_is_atomic() {
                let pg = TestPostgres::shared();
                let store = PgStore::connect(&pg.create_database("conformance")).await.unwrap();
                super::update_state_is_atomic(std::sync::Arc::new(store)).await;
            }

            #[tokio::test]
            async fn reopen_keeps_everything() {
                let pg = TestPostgres::shared();
                let url = pg.create_database("conformance");
                let id = {
                    let store = PgStore::connect(&url).await.unwrap();
                    super::fill_before_reopen(&store).await
                };
                super::reopen_keeps_everything(&PgStore::connect(&url).await.unwrap(), id).await;
            }
        }
    };
}

conformance!(
    agents,
    runs_insert_and_page,
    runs_filters,
    run_id_prefixes,
    event_batches,
    documents,
    state_and_counters,
    update_state_decisions,
    audit,
    agents_page,
    documents_page,
    audit_page,
    runs_keep_their_steps,
    prune_by_age,
);
