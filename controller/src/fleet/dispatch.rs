//! Sending commands down agents' sessions: `StartRun` for runs whose dispatch time has come
//! (resent whenever the agent's session opens while the run is `pending` or `dispatched`),
//! `CancelRun` for runs whose cancellation is owed, and the holds that keep a pending run back.

use chrono::Utc;
use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1::{self, controller_message::Msg as CtrlMsg};

use super::{Fleet, state_of};
use crate::store::StoreError;

/// Prefix of the command id of a `StartRun`; the rest is the run id.
const START_COMMAND_PREFIX: &str = "start:";

/// Command id of the `StartRun` of `run_id`: the same for every resend of that run, so the
/// agent can tell a resend from a new command.
fn start_command_id(run_id: &str) -> String {
    format!("{START_COMMAND_PREFIX}{run_id}")
}

/// The run a `StartRun` command id was built for by [`start_command_id`]; `None` for the ids
/// of other commands. A `CommandAck` carries only the command id, so an agent's refusal of a
/// run is traced back to the run here, next to where the id is built.
pub(super) fn run_of_start_command(command_id: &str) -> Option<&str> {
    command_id.strip_prefix(START_COMMAND_PREFIX)
}

pub(super) fn start_command(run: &v1::Run) -> v1::ControllerMessage {
    // Steps carry their stage; consecutive steps of one stage form one plan stage.
    let mut stages: Vec<v1::PlanStage> = Vec::new();
    let mut current: Option<u32> = None;
    for s in &run.steps {
        if current != Some(s.stage) || stages.is_empty() {
            stages.push(v1::PlanStage::default());
            current = Some(s.stage);
        }
        if let Some(stage) = stages.last_mut() {
            stage.steps.push(v1::PlanStep {
                ma: s.ma.clone(),
                profile: s.profile.clone(),
                only_if: s.only_if,
                guard: s.guard,
            });
        }
    }
    v1::ControllerMessage {
        msg: Some(CtrlMsg::Command(v1::Command {
            command_id: start_command_id(&run.id),
            kind: Some(v1::command::Kind::StartRun(v1::StartRun {
                run_id: run.id.clone(),
                steps: Vec::new(),
                traceparent: run.traceparent.clone(),
                requested_at: run.created_at,
                stages,
                on_failure: run.on_failure,
                approved_steps: run.approved_steps.clone(),
                skip_steps: run.skip_steps.clone(),
                autonomous: None,
            })),
        })),
    }
}

pub(super) fn cancel_command(run_id: &str, reason: &str) -> v1::ControllerMessage {
    v1::ControllerMessage {
        msg: Some(CtrlMsg::Command(v1::Command {
            command_id: format!("cancel:{run_id}:{}", uuid::Uuid::new_v4()),
            kind: Some(v1::command::Kind::CancelRun(v1::CancelRun {
                run_id: run_id.to_string(),
                reason: reason.to_string(),
            })),
        })),
    }
}

impl Fleet {
    /// Send `StartRun` for every pending or dispatched run of a (re)connected agent, and
    /// `CancelRun` for runs whose cancellation is still owed.
    pub async fn dispatch_for_agent(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match self
            .store
            .runs_in_states(
                Some(&name),
                &[
                    v1::RunState::Pending,
                    v1::RunState::Dispatched,
                    v1::RunState::Running,
                ],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot load runs to dispatch");
                return;
            }
        };
        for run in runs {
            match state_of(&run) {
                v1::RunState::Pending | v1::RunState::Dispatched => {
                    self.send_start(run).await;
                }
                _ => {
                    if run.cancel_requested
                        && let Some(tx) = self.session_tx(agent)
                    {
                        let _ = tx
                            .send(Ok(cancel_command(&run.id, "cancel requested")))
                            .await;
                    }
                }
            }
        }
    }

    /// When a run may be dispatched: scheduled runs wait for nominal time + jitter.
    pub(super) fn dispatch_at_ms(run: &v1::Run) -> i64 {
        run.nominal_time.as_ref().map_or(0, |t| {
            to_millis(t).saturating_add(i64::try_from(run.jitter_ms).unwrap_or(0))
        })
    }

    /// Queue `StartRun` on the agent's session; a pending run becomes dispatched. A run whose
    /// dispatch time has not come is left pending (the sweeper and a timer send it later).
    pub async fn send_start(&self, run: v1::Run) {
        if self.covered_by_agent(&run) {
            // The agent ran this nominal time on its own with the same run id while no
            // controller was reachable; its events report into this run.
            tracing::info!(agent = %run.agent, run_id = %run.id, "run covered by the agent's autonomy; not dispatched");
            return;
        }
        let due = Self::dispatch_at_ms(&run);
        let now_ms = Utc::now().timestamp_millis();
        if due > now_ms && state_of(&run) == v1::RunState::Pending {
            return;
        }
        let Some(tx) = self.session_tx(&run.agent) else {
            return;
        };
        if state_of(&run) == v1::RunState::Pending && self.dispatch_blocked(&run.agent).await {
            // Paused fleet or draining agent: nothing new starts; the sweeper sends it after
            // the resume (or the pending deadline ends it).
            return;
        }
        if tx.send(Ok(start_command(&run))).await.is_err() {
            return;
        }
        if state_of(&run) == v1::RunState::Pending {
            let _guard = self.run_locks.lock(&run.id).await;
            let id = run.id.clone();
            let updated = {
                let s = &self.store;
                async move {
                    let Some(mut current) = s.get_run(&id).await? else {
                        return Ok::<_, StoreError>(None);
                    };
                    if state_of(&current) != v1::RunState::Pending {
                        return Ok(None);
                    }
                    current.state = v1::RunState::Dispatched as i32;
                    current.message.clear();
                    s.put_runs(std::slice::from_ref(&current)).await?;
                    Ok(Some(current))
                }
            }
            .await;
            match updated {
                Ok(Some(r)) => self.publish(&r),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot mark run dispatched"),
            }
        }
    }

    /// Whether new runs may not start on `agent` now (fleet paused or agent draining).
    async fn dispatch_blocked(&self, agent: &str) -> bool {
        if matches!(self.fleet_pause().await, Ok(Some(_))) {
            return true;
        }
        let name = agent.to_string();
        matches!(
            self.store.get_agent(&name).await,
            Ok(Some(a)) if a.agent.drain.as_ref().is_some_and(|d| d.paused)
        )
    }

    /// Dispatch a stored run now if it is still pending and due.
    pub async fn dispatch_run(&self, id: &str) {
        let id = id.to_string();
        if let Ok(Some(run)) = self.store.get_run(&id).await
            && state_of(&run) == v1::RunState::Pending
        {
            self.send_start(run).await;
        }
    }
}
