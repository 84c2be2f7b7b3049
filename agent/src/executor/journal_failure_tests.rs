//! A journal that cannot be written (its SQLite file capped at its size, so writes fail with
//! SQLite's own "database or disk is full") loses no run result: held events are written when
//! space returns, and a restart completes the run from the engine's run history.

use super::*;
use crate::engine::MaStatus;
use crate::engine::sim::{SimConfig, SimEngine};
use crate::journal::Accept;

fn sim() -> Arc<SimEngine> {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 0.02;
    for m in &mut cfg.mas {
        m.change_rate_per_hour = 0.0;
    }
    Arc::new(SimEngine::new(cfg))
}

fn executor(journal: &Arc<Journal>, sim: &Arc<SimEngine>) -> Arc<Executor> {
    let engine: Arc<dyn SyncEngine> = sim.clone();
    Arc::new(Executor::new(
        engine,
        Arc::clone(journal),
        Arc::new(Notify::new()),
        ExecutorOptions {
            stagger: Duration::from_millis(1),
            busy_poll: Duration::from_millis(20),
            progress_interval: Duration::from_millis(1),
            ..ExecutorOptions::default()
        },
    ))
}

fn start_run(journal: &Journal, exec: &Arc<Executor>, id: &str, ma: &str, profile: &str) {
    let run = v1::StartRun {
        run_id: id.into(),
        steps: vec![v1::StepSpec {
            ma: ma.into(),
            profile: profile.into(),
        }],
        ..Default::default()
    };
    assert_eq!(journal.accept_run(&run).unwrap(), Accept::New);
    exec.start(run);
}

fn events(journal: &Journal, id: &str) -> Vec<v1::AgentEvent> {
    journal
        .events_after(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.run_id == id)
        .collect()
}

fn run_finished(evs: &[v1::AgentEvent]) -> Option<v1::RunFinished> {
    evs.iter().find_map(|e| match &e.kind {
        Some(Kind::RunFinished(f)) => Some(f.clone()),
        _ => None,
    })
}

fn step_finished(evs: &[v1::AgentEvent]) -> Option<v1::StepFinished> {
    evs.iter().find_map(|e| match &e.kind {
        Some(Kind::StepFinished(f)) => Some(f.clone()),
        _ => None,
    })
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn engine_idle(sim: &SimEngine, ma: &str) {
    for _ in 0..1500 {
        if sim.status(ma).await.unwrap() == MaStatus::Idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{ma} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_journal_refuses_are_held_in_order_and_written_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let sim = sim();
    sim.inject_source_changes("AD", 30_000, 0, 0).unwrap();
    let exec = executor(&journal, &sim);
    exec.refresh_inventory().await.unwrap();
    start_run(&journal, &exec, "r1", "AD", "Delta Import");
    until("the step to start", || {
        events(&journal, "r1")
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::StepStarted(_))))
    })
    .await;
    journal.fill_disk();
    // The engine finishes the step while the disk is full.
    engine_idle(&sim, "AD").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run_finished(&events(&journal, "r1")), None);
    assert_eq!(journal.unfinished_runs().unwrap().len(), 1);
    // Space returns: everything held reaches the journal, in order.
    journal.free_disk();
    until("the held events to be journaled", || {
        run_finished(&events(&journal, "r1")).is_some()
    })
    .await;
    let evs = events(&journal, "r1");
    let kinds: Vec<&str> = evs
        .iter()
        .map(|e| match e.kind {
            Some(Kind::RunStarted(_)) => "run-started",
            Some(Kind::StepStarted(_)) => "step-started",
            Some(Kind::StepProgress(_)) => "progress",
            Some(Kind::StepFinished(_)) => "step-finished",
            Some(Kind::RunFinished(_)) => "run-finished",
            _ => "other",
        })
        .filter(|k| *k != "progress")
        .collect();
    assert_eq!(
        kinds,
        [
            "run-started",
            "step-started",
            "step-finished",
            "run-finished"
        ]
    );
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let f = step_finished(&evs).unwrap();
    assert_eq!(f.result, "success", "{f:?}");
    assert_eq!(
        f.counters.as_ref().unwrap().counters.get("stage-add"),
        Some(&30_000)
    );
    let rf = run_finished(&evs).unwrap();
    assert_eq!(rf.state, v1::RunState::Succeeded as i32, "{rf:?}");
    until("the run to be marked finished", || {
        journal.unfinished_runs().unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_journal_fails_new_runs_are_refused_and_the_agent_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let sim = sim();
    let exec = executor(&journal, &sim);
    exec.refresh_inventory().await.unwrap();
    assert_eq!(exec.journal_problem(), None);
    journal.fill_disk();
    start_run(
        &Journal::open(&dir.path().join("other.db")).unwrap(),
        &exec,
        "r1",
        "HR",
        "Delta Import",
    );
    until("the journal failure to be reported", || {
        exec.journal_problem().is_some()
    })
    .await;
    let problem = exec.journal_problem().unwrap();
    assert!(
        problem.contains("database or disk is full") && problem.contains("refused"),
        "{problem}"
    );
    let cmd = |id: &str| v1::Command {
        command_id: format!("c-{id}"),
        kind: Some(v1::command::Kind::StartRun(v1::StartRun {
            run_id: id.into(),
            steps: vec![v1::StepSpec {
                ma: "HR".into(),
                profile: "Delta Import".into(),
            }],
            ..Default::default()
        })),
    };
    let ack = crate::session::handle_command(cmd("r2"), &journal, &exec);
    assert!(!ack.accepted);
    assert!(
        ack.reason.contains("journal cannot be written"),
        "{}",
        ack.reason
    );
    // Writes succeed again: the agent recovers by itself and accepts runs.
    journal.free_disk();
    until("the journal to recover", || {
        exec.journal_problem().is_none()
    })
    .await;
    let ack = crate::session::handle_command(cmd("r3"), &journal, &exec);
    assert!(ack.accepted, "{}", ack.reason);
    until("r1's events to be journaled", || {
        run_finished(&events(&journal, "r1")).is_some()
    })
    .await;
}

/// An agent process that dies: its runtime, with every task of the executor, goes away.
fn first_process(path: &std::path::Path, sim: &Arc<SimEngine>, then: impl FnOnce(&Arc<Journal>)) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let journal = Arc::new(Journal::open(path).unwrap());
        let exec = executor(&journal, sim);
        exec.refresh_inventory().await.unwrap();
        start_run(&journal, &exec, "r1", "AD", "Delta Import");
        until("the step's run number to be journaled", || {
            journal
                .steps_of("r1")
                .unwrap()
                .first()
                .is_some_and(|s| s.run_number > 0)
        })
        .await;
        then(&journal);
        engine_idle(sim, "AD").await;
    });
    rt.shutdown_background();
}

#[test]
fn after_a_restart_a_run_gets_its_result_from_the_engines_run_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.db");
    let sim = sim();
    sim.inject_source_changes("AD", 20_000, 0, 0).unwrap();
    // The disk fills while the step runs; the engine finishes it; the agent is restarted.
    first_process(&path, &sim, |j| j.fill_disk());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let journal = Arc::new(Journal::open(&path).unwrap());
        journal.free_disk();
        let exec = executor(&journal, &sim);
        exec.refresh_inventory().await.unwrap();
        assert_eq!(exec.recover_interrupted().unwrap(), 1);
        until("the run to be completed", || {
            run_finished(&events(&journal, "r1")).is_some()
        })
        .await;
        let evs = events(&journal, "r1");
        let rf = run_finished(&evs).unwrap();
        assert_eq!(rf.state, v1::RunState::Succeeded as i32, "{rf:?}");
        let f = step_finished(&evs).unwrap();
        assert_eq!(f.result, "success");
        assert!(f.run_number > 0);
        assert_eq!(
            f.counters.as_ref().unwrap().counters.get("stage-add"),
            Some(&20_000),
            "{f:?}"
        );
        assert!(f.detail.contains("run history"), "{}", f.detail);
        until("the run to be marked finished", || {
            journal.unfinished_runs().unwrap().is_empty()
        })
        .await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_engine_still_runs_after_a_restart_is_waited_for_and_unknown_only_without_history()
 {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let sim = sim();
    // What a previous agent process left: a run whose step is run n, still running.
    let n = sim.start_unmanaged("AD", "Full Import").unwrap();
    for (id, run_number) in [("live", n), ("gone", 999)] {
        journal
            .accept_run(&v1::StartRun {
                run_id: id.into(),
                steps: vec![v1::StepSpec {
                    ma: "AD".into(),
                    profile: "Full Import".into(),
                }],
                ..Default::default()
            })
            .unwrap();
        journal.record_step_run(id, 0, "AD", run_number).unwrap();
    }
    let exec = executor(&journal, &sim);
    exec.refresh_inventory().await.unwrap();
    assert_eq!(exec.recover_interrupted().unwrap(), 2);
    assert!(exec.runs_in_flight().contains(&"live".to_string()));
    // A new run on the same MA waits for the engine run of the interrupted step.
    start_run(&journal, &exec, "next", "AD", "Delta Import");
    until("the new run to wait", || {
        events(&journal, "next").iter().any(|e| {
            matches!(&e.kind, Some(Kind::StepWaiting(w))
                if w.reason.contains("started for syncfleet run live before the agent restarted"))
        })
    })
    .await;
    until("both runs to be completed", || {
        run_finished(&events(&journal, "live")).is_some()
            && run_finished(&events(&journal, "gone")).is_some()
    })
    .await;
    let live = events(&journal, "live");
    assert!(
        live.iter().any(
            |e| matches!(&e.kind, Some(Kind::StepWaiting(w)) if w.reason.contains("still running"))
        ),
        "{live:#?}"
    );
    assert_eq!(step_finished(&live).unwrap().run_number, n);
    assert_eq!(
        run_finished(&live).unwrap().state,
        v1::RunState::Succeeded as i32
    );
    until("the new run to be completed", || {
        run_finished(&events(&journal, "next")).is_some()
    })
    .await;
    assert_eq!(
        run_finished(&events(&journal, "next")).unwrap().state,
        v1::RunState::Succeeded as i32
    );
    let gone = run_finished(&events(&journal, "gone")).unwrap();
    assert_eq!(gone.state, v1::RunState::Unknown as i32, "{gone:?}");
    assert!(gone.message.contains("run history"), "{}", gone.message);
}
