//! Agent autonomy, the controller's side: what agents covered on their own while no
//! controller was reachable, and the schedule sets that let them.
//!
//! - Hand-over: an agent's `Hello` reports, per schedule, the latest nominal time it covered
//!   (fired or counted as a skip) on its own. [`Fleet::record_handover`] records it before the
//!   `Welcome` is sent (the Welcome is the agent's signal to stop firing) and before the
//!   session's runs are dispatched, and adds the agent's counts to the schedule's counters. From
//!   then on the scheduler fires and catches up only nominal times after it for that agent
//!   ([`Fleet::covered_until`]), and a run the controller had created for a covered time (while
//!   the agent was away) is not dispatched: the agent's own run with the same derived id reports
//!   into it.
//! - Runs the agent started on its own are recorded from their `RunStarted` event
//!   (origin `autonomous`, [`autonomous_run`]).
//! - Schedule sets: the scheduler builds each agent's set; the fleet sends it after the
//!   session opened ([`Fleet::subscribe_connected`]) and whenever it changes.
//!
//! The covered times are kept in memory: they matter until the scheduler's cursor has passed
//! them, which happens within one interval of the hand-over.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use syncfleet_proto::sync::lock;
use syncfleet_proto::time::{from_proto, now};
use syncfleet_proto::v1::{self, controller_message::Msg as CtrlMsg};
use tokio::sync::broadcast;

use super::Fleet;

/// How long a reconnected agent gets to replay its outbox before a pending run it covered
/// without reporting it is taken as skipped.
const REPLAY_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The origin of runs an agent started on its own.
pub const AUTONOMOUS: &str = "autonomous";

/// The controller's record of agents' autonomy.
#[derive(Debug)]
pub(super) struct Handover {
    /// (schedule, agent) → the latest nominal time the agent covered on its own.
    covered: std::sync::Mutex<HashMap<(String, String), DateTime<Utc>>>,
    /// Agents whose session just opened (after their Welcome).
    connected: broadcast::Sender<String>,
    /// Agent → version of the schedule set it acknowledged.
    acked: std::sync::Mutex<HashMap<String, u64>>,
}

impl Default for Handover {
    fn default() -> Self {
        Self {
            covered: std::sync::Mutex::new(HashMap::new()),
            connected: broadcast::channel(1024).0,
            acked: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

/// The run record of a run an agent started on its own, from its `RunStarted` event.
pub(super) fn autonomous_run(agent: &str, ev: &v1::AgentEvent) -> Option<v1::Run> {
    let Some(v1::agent_event::Kind::RunStarted(started)) = &ev.kind else {
        return None;
    };
    let origin = started.autonomous.as_ref()?;
    let mut steps = Vec::new();
    for (stage, st) in origin.stages.iter().enumerate() {
        for p in &st.steps {
            steps.push(v1::Step {
                index: u32::try_from(steps.len()).unwrap_or(u32::MAX),
                ma: p.ma.clone(),
                profile: p.profile.clone(),
                stage: u32::try_from(stage).unwrap_or(u32::MAX),
                only_if: p.only_if,
                guard: p.guard,
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            });
        }
    }
    Some(v1::Run {
        id: ev.run_id.clone(),
        agent: agent.to_string(),
        state: v1::RunState::Dispatched as i32,
        origin: AUTONOMOUS.to_string(),
        created_at: origin.nominal_time.or(ev.at),
        steps,
        schedule: origin.schedule.clone(),
        sequence: origin.sequence.clone(),
        nominal_time: origin.nominal_time,
        requested_by: format!("agent/{agent}"),
        ..Default::default()
    })
}

impl Fleet {
    /// Record what `hello`'s agent covered on its own (before its Welcome), and add its counts
    /// to the schedules' counters.
    pub async fn record_handover(&self, hello: &v1::Hello) {
        if hello.autonomy.is_empty() {
            return;
        }
        for r in &hello.autonomy {
            let Some(t) = r.last_nominal.as_ref().and_then(from_proto) else {
                continue;
            };
            {
                let mut covered = lock(&self.autonomy.covered);
                let e = covered
                    .entry((r.schedule.clone(), hello.name.clone()))
                    .or_insert(t);
                *e = (*e).max(t);
            }
            let deltas: Vec<(&str, u64)> = r
                .counters
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.as_str(), *n))
                .collect();
            if !deltas.is_empty()
                && let Err(e) = self.store.bump_counters(&r.schedule, &deltas).await
            {
                tracing::error!(schedule = %r.schedule, agent = %hello.name, error = %e, "cannot count what the agent did on its own");
            }
            tracing::info!(schedule = %r.schedule, agent = %hello.name, last_nominal = %t, counters = ?r.counters, "agent hands its schedule back");
        }
    }

    /// The latest nominal time of `schedule` that `agent` covered on its own, if any: the
    /// scheduler does not fire it (or anything earlier) for that agent.
    pub fn covered_until(&self, schedule: &str, agent: &str) -> Option<DateTime<Utc>> {
        lock(&self.autonomy.covered)
            .get(&(schedule.to_string(), agent.to_string()))
            .copied()
    }

    /// Whether `run` is for a nominal time its agent covered on its own (so it is not sent).
    pub(super) fn covered_by_agent(&self, run: &v1::Run) -> bool {
        let Some(nominal) = run.nominal_time.as_ref().and_then(from_proto) else {
            return false;
        };
        !run.schedule.is_empty()
            && run.origin != AUTONOMOUS
            && self
                .covered_until(&run.schedule, &run.agent)
                .is_some_and(|c| nominal <= c)
    }

    /// A pending run the controller created for a nominal time its agent covered on its own
    /// and did not report as run (it skipped it: overlap, pause, blackout): once the agent has
    /// had [`REPLAY_SETTLE`] to replay its outbox, the run ends `skipped`, saying why. Returns
    /// whether it ended (until then it is not dispatched, and the pending deadline applies).
    pub(super) async fn end_covered(&self, run: &v1::Run) -> bool {
        if self
            .connected_for(&run.agent)
            .is_none_or(|d| d < REPLAY_SETTLE)
        {
            return false;
        }
        let msg = format!(
            "agent {} covered this fire time on its own while no controller was reachable and \
             did not run it (see the schedule's counters); the run was never started",
            run.agent
        );
        match self
            .finish_run_here(&run.id, v1::RunState::Skipped, msg)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(run_id = %run.id, error = %e, "cannot end a run its agent covered");
                false
            }
        }
    }

    /// Agents whose session just opened, to send their schedule sets to.
    pub fn subscribe_connected(&self) -> broadcast::Receiver<String> {
        self.autonomy.connected.subscribe()
    }

    pub fn announce_connected(&self, agent: &str) {
        // Nobody listening (no scheduler) is fine.
        let _ = self.autonomy.connected.send(agent.to_string());
    }

    /// Send `agent` its schedule set over its session; false when it is not connected.
    pub async fn send_schedule_set(&self, agent: &str, set: v1::ScheduleSet) -> bool {
        let Some(tx) = self.session_tx(agent) else {
            return false;
        };
        tx.send(Ok(v1::ControllerMessage {
            msg: Some(CtrlMsg::ScheduleSet(set)),
        }))
        .await
        .is_ok()
    }

    pub(super) fn schedule_set_acked(&self, agent: &str, version: u64) {
        tracing::debug!(agent, version, "agent stored its schedule set");
        lock(&self.autonomy.acked).insert(agent.to_string(), version);
    }

    /// The version of the schedule set `agent` acknowledged last (this controller process).
    pub fn schedule_set_version(&self, agent: &str) -> Option<u64> {
        lock(&self.autonomy.acked).get(agent).copied()
    }
}

/// The autonomy fields of an agent's view: while it is away for longer than its
/// `autonomy_after`, it is presumably firing its schedules on its own.
pub(super) fn overlay_autonomy(agent: &mut v1::Agent, connected: bool) {
    if connected || agent.autonomy_after_seconds == 0 {
        agent.autonomous = false;
        return;
    }
    let Some(since) = agent.state_since.as_ref().and_then(from_proto) else {
        return;
    };
    let after = chrono::Duration::seconds(i64::try_from(agent.autonomy_after_seconds).unwrap_or(0));
    let Some(expected) = since.checked_add_signed(after) else {
        return;
    };
    if from_proto(&now()).is_some_and(|n| n >= expected) {
        agent.autonomous = true;
        agent.autonomous_since = Some(syncfleet_proto::time::to_proto(expected));
        agent.autonomous_until = None;
    }
}

#[cfg(test)]
mod tests {
    use syncfleet_proto::time::{from_millis, to_proto};
    use syncfleet_proto::v1::agent_event::Kind;
    use tokio::sync::mpsc;

    use super::*;
    use crate::fleet::fixtures::fleet;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + secs, 0).unwrap()
    }

    fn scheduled(id: &str, nominal: DateTime<Utc>) -> v1::Run {
        v1::Run {
            id: id.into(),
            agent: "a".into(),
            state: v1::RunState::Pending as i32,
            origin: "schedule".into(),
            schedule: "s".into(),
            nominal_time: Some(to_proto(nominal)),
            created_at: Some(to_proto(nominal)),
            steps: vec![v1::Step {
                ma: "AD".into(),
                profile: "Delta Import".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn started(seq: u64, run_id: &str, nominal: DateTime<Utc>) -> v1::AgentEvent {
        v1::AgentEvent {
            seq,
            at: Some(from_millis(nominal.timestamp_millis() + 100)),
            run_id: run_id.into(),
            kind: Some(Kind::RunStarted(v1::RunStarted {
                autonomous: Some(v1::AutonomousOrigin {
                    schedule: "s".into(),
                    sequence: "quick".into(),
                    nominal_time: Some(to_proto(nominal)),
                    stages: vec![v1::PlanStage {
                        steps: vec![v1::PlanStep {
                            ma: "AD".into(),
                            profile: "Delta Import".into(),
                            ..Default::default()
                        }],
                    }],
                }),
            })),
        }
    }

    #[tokio::test]
    async fn the_hand_over_is_recorded_before_the_welcome_and_covered_runs_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        let hello = v1::Hello {
            name: "a".into(),
            autonomy: vec![v1::AutonomyReport {
                schedule: "s".into(),
                last_nominal: Some(to_proto(at(20))),
                counters: [("autonomous".to_string(), 2u64)].into_iter().collect(),
            }],
            autonomous_since: Some(to_proto(at(5))),
            autonomy_after_seconds: 40,
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        fleet.on_connect(&hello, tx).await.unwrap();
        assert_eq!(fleet.covered_until("s", "a"), Some(at(20)));
        assert_eq!(fleet.covered_until("s", "b"), None);
        assert_eq!(
            store.counters("s").await.unwrap(),
            vec![("autonomous".to_string(), 2)]
        );
        let agent = fleet.agent_view(store.get_agent("a").await.unwrap().unwrap().agent);
        assert_eq!(agent.autonomous_since, Some(to_proto(at(5))));
        assert!(agent.autonomous_until.is_some() && !agent.autonomous);

        // A run the controller created for 20 s while the agent was away is not sent; 30 s is.
        for (id, t) in [("r20", at(20)), ("r30", at(30))] {
            store.insert_run(&scheduled(id, t)).await.unwrap();
        }
        fleet.dispatch_for_agent("a").await;
        let mut sent = Vec::new();
        while let Ok(Ok(m)) = rx.try_recv() {
            if let Some(CtrlMsg::Command(c)) = m.msg
                && let Some(v1::command::Kind::StartRun(s)) = c.kind
            {
                sent.push(s.run_id);
            }
        }
        assert_eq!(sent, vec!["r30".to_string()]);

        // The agent's events: its run of 20 s reports into the controller's record (now origin
        // autonomous); its run of 10 s, unknown to the controller, is recorded from RunStarted.
        fleet
            .apply_events(
                "a",
                vec![started(1, "r20", at(20)), started(2, "r10", at(10))],
                0,
            )
            .await
            .unwrap();
        let r20 = store.get_run("r20").await.unwrap().unwrap();
        assert_eq!(r20.origin, AUTONOMOUS);
        assert_eq!(r20.state, v1::RunState::Running as i32);
        let r10 = store.get_run("r10").await.unwrap().unwrap();
        assert_eq!(
            (
                r10.agent.as_str(),
                r10.origin.as_str(),
                r10.schedule.as_str()
            ),
            ("a", AUTONOMOUS, "s")
        );
        assert_eq!(r10.nominal_time, Some(to_proto(at(10))));
        assert_eq!(r10.steps.len(), 1);
        assert_eq!(r10.state, v1::RunState::Running as i32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_covered_run_the_agent_never_reported_ends_skipped_after_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        // Ahead of the wall clock, so the pending deadline (1 s here) does not interfere.
        let t = Utc::now() + chrono::Duration::seconds(60);
        let hello = v1::Hello {
            name: "a".into(),
            autonomy: vec![v1::AutonomyReport {
                schedule: "s".into(),
                last_nominal: Some(to_proto(t)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (tx, _rx) = mpsc::channel(16);
        fleet.on_connect(&hello, tx).await.unwrap();
        store.insert_run(&scheduled("r20", t)).await.unwrap();
        fleet.sweep().await;
        let r = store.get_run("r20").await.unwrap().unwrap();
        assert_eq!(
            r.state,
            v1::RunState::Pending as i32,
            "the agent may still report it"
        );
        assert_eq!(fleet.covered_until("s", "a"), Some(t));
        tokio::time::advance(REPLAY_SETTLE).await;
        fleet.sweep().await;
        let r = store.get_run("r20").await.unwrap().unwrap();
        assert_eq!(r.state, v1::RunState::Skipped as i32);
        assert!(
            r.message.contains("covered this fire time on its own"),
            "{}",
            r.message
        );
    }
}
