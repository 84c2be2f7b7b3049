//! Test helpers of the executor: an executor on a simulated server with its journal in a
//! temporary folder, runs started through it, and the events they journal.

use std::sync::Arc;
use std::time::Duration;

use syncfleet_proto::v1::{self, agent_event::Kind};
use tokio::sync::Notify;

use super::{Executor, ExecutorOptions, RunMode};
use crate::engine::SyncEngine;
use crate::engine::sim::{SimConfig, SimEngine};
use crate::journal::Journal;

pub(crate) struct Harness {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) journal: Arc<Journal>,
    pub(crate) exec: Arc<Executor>,
}

/// An executor on a simulated server with its journal in a temporary folder.
pub(crate) async fn build(cfg: SimConfig, opts: ExecutorOptions) -> (Harness, Arc<SimEngine>) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("agent.db")).unwrap());
    let sim = Arc::new(SimEngine::new(cfg));
    let engine: Arc<dyn SyncEngine> = sim.clone();
    let exec = Arc::new(Executor::new(
        engine,
        Arc::clone(&journal),
        Arc::new(Notify::new()),
        opts,
    ));
    exec.refresh_inventory().await.unwrap();
    (
        Harness {
            _dir: dir,
            journal,
            exec,
        },
        sim,
    )
}

pub(super) async fn harness(mode: RunMode) -> Harness {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 0.002;
    let opts = ExecutorOptions {
        run_mode: mode,
        stagger: Duration::from_millis(1),
        busy_poll: Duration::from_millis(5),
        ..ExecutorOptions::default()
    };
    build(cfg, opts).await.0
}

pub(super) fn start(h: &Harness, id: &str, steps: &[(&str, &str)]) {
    let run = v1::StartRun {
        run_id: id.into(),
        steps: steps
            .iter()
            .map(|(ma, p)| v1::StepSpec {
                ma: (*ma).into(),
                profile: (*p).into(),
            })
            .collect(),
        ..Default::default()
    };
    h.journal.accept_run(&run).unwrap();
    h.exec.start(run);
}

pub(super) async fn wait_all(h: &Harness) -> Vec<v1::AgentEvent> {
    for _ in 0..6000 {
        if h.exec.runs_in_flight().is_empty() && h.journal.unfinished_runs().unwrap().is_empty() {
            return h.journal.events_after(0, 100_000).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("runs did not finish");
}

/// A quiet server (no source changes by themselves) with a handle on the sim engine.
pub(super) async fn quiet() -> (Harness, Arc<SimEngine>) {
    quiet_with(ExecutorOptions {
        stagger: Duration::from_millis(1),
        busy_poll: Duration::from_millis(5),
        ..ExecutorOptions::default()
    })
    .await
}

pub(super) async fn quiet_with(opts: ExecutorOptions) -> (Harness, Arc<SimEngine>) {
    let mut cfg = SimConfig::example(1);
    cfg.time_scale = 0.001;
    for m in &mut cfg.mas {
        m.change_rate_per_hour = 0.0;
    }
    build(cfg, opts).await
}

pub(super) fn step(
    ma: &str,
    profile: &str,
    only_if: v1::Condition,
    guard: Option<v1::Guard>,
) -> v1::PlanStep {
    v1::PlanStep {
        ma: ma.into(),
        profile: profile.into(),
        only_if: only_if as i32,
        guard,
    }
}

pub(super) fn start_plan(
    h: &Harness,
    id: &str,
    stages: Vec<Vec<v1::PlanStep>>,
    tweak: impl FnOnce(&mut v1::StartRun),
) {
    let mut run = v1::StartRun {
        run_id: id.into(),
        stages: stages
            .into_iter()
            .map(|steps| v1::PlanStage { steps })
            .collect(),
        ..Default::default()
    };
    tweak(&mut run);
    h.journal.accept_run(&run).unwrap();
    h.exec.start(run);
}

pub(super) fn finished(events: &[v1::AgentEvent], id: &str) -> v1::RunFinished {
    events
        .iter()
        .filter(|e| e.run_id == id)
        .find_map(|e| match &e.kind {
            Some(Kind::RunFinished(f)) => Some(f.clone()),
            _ => None,
        })
        .unwrap()
}

pub(super) fn skipped(events: &[v1::AgentEvent], id: &str) -> Vec<u32> {
    events
        .iter()
        .filter(|e| e.run_id == id)
        .filter_map(|e| match &e.kind {
            Some(Kind::StepSkipped(s)) => Some(s.index),
            _ => None,
        })
        .collect()
}

pub(super) fn step_finished(events: &[v1::AgentEvent], id: &str, index: u32) -> v1::StepFinished {
    events
        .iter()
        .filter(|e| e.run_id == id)
        .find_map(|e| match &e.kind {
            Some(Kind::StepFinished(s)) if s.index == index => Some(s.clone()),
            _ => None,
        })
        .unwrap()
}
