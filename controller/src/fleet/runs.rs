//! Creating runs (ad hoc, scheduled, approval continuations), approving held runs, cancelling,
//! and the revocation checks that keep runs away from a revoked agent.

use std::sync::Arc;

use syncfleet_proto::time::now;
use syncfleet_proto::v1;
use tonic::Status;

use super::dispatch::cancel_command;
use super::{Fleet, state_of, store_status};
use crate::documents::{
    self,
    model::{Document, SequenceDoc},
};
use crate::limits::echo;
use crate::store::{StoreError, keys};

/// What a new run is made of (see [`Fleet::create_run`]).
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// Fixed id (scheduled runs derive theirs from schedule, agent and nominal time); new UUID
    /// when `None`.
    pub id: Option<String>,
    pub agent: String,
    pub steps: Vec<v1::Step>,
    pub origin: String,
    pub requested_by: String,
    pub schedule: String,
    pub sequence: String,
    pub nominal_time: Option<prost_types::Timestamp>,
    pub on_failure: v1::OnFailure,
    pub continuation_of: String,
    pub approved_steps: Vec<u32>,
    pub skip_steps: Vec<u32>,
    pub jitter_ms: u64,
}

/// The steps of a run of a sequence: the plan flattened, each step knowing its stage.
pub fn steps_of(doc: &crate::documents::model::SequenceDoc) -> Vec<v1::Step> {
    let mut out = Vec::new();
    for (si, stage) in doc.plan().into_iter().enumerate() {
        for step in stage.steps {
            out.push(v1::Step {
                index: u32::try_from(out.len()).unwrap_or(u32::MAX),
                stage: u32::try_from(si).unwrap_or(u32::MAX),
                ma: step.ma,
                profile: step.profile,
                only_if: step.only_if,
                guard: step.guard,
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            });
        }
    }
    out
}

impl Fleet {
    /// Create and store an ad-hoc run, then dispatch it if its agent is connected.
    pub async fn start_run(
        &self,
        agent: &str,
        steps: Vec<v1::StepSpec>,
        origin: &str,
        requested_by: &str,
    ) -> Result<v1::Run, Status> {
        if steps.is_empty() {
            return Err(Status::invalid_argument(
                "a run needs at least one step (MA and run profile)",
            ));
        }
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                v1::Step {
                    index: i,
                    stage: i,
                    ma: s.ma,
                    profile: s.profile,
                    state: v1::StepState::Waiting as i32,
                    ..Default::default()
                }
            })
            .collect();
        let (run, _) = self
            .create_run(
                NewRun {
                    agent: agent.to_string(),
                    steps,
                    origin: origin.to_string(),
                    requested_by: requested_by.to_string(),
                    ..NewRun::default()
                },
                true,
            )
            .await?;
        Ok(run)
    }

    /// Store a new run (validated against the agent's inventory) and dispatch it when its time
    /// has come and the agent is connected. Returns the run and whether it was new: a run whose
    /// id exists already (a duplicate scheduled fire) is returned unchanged.
    pub async fn create_run(&self, new: NewRun, validate: bool) -> Result<(v1::Run, bool), Status> {
        if new.steps.is_empty() {
            return Err(Status::invalid_argument("a run needs at least one step"));
        }
        let name = new.agent.clone();
        let stored = self.store.get_agent(&name).await.map_err(store_status)?;
        let Some(stored) = stored else {
            let known = self
                .store
                .list_agents()
                .await
                .map_err(store_status)?
                .into_iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Status::not_found(format!(
                "no agent named {:?}; known agents: {}",
                new.agent,
                if known.is_empty() { "none yet" } else { &known }
            )));
        };
        self.check_not_revoked(&new.agent).await?;
        let schedule = (!new.schedule.is_empty() && new.continuation_of.is_empty())
            .then_some(new.schedule.as_str());
        if let Some(blocked) = self
            .run_blocked(&new.agent, schedule)
            .await
            .map_err(store_status)?
        {
            return Err(Status::failed_precondition(blocked.to_string()));
        }
        if validate {
            let specs: Vec<v1::StepSpec> = new
                .steps
                .iter()
                .map(|s| v1::StepSpec {
                    ma: s.ma.clone(),
                    profile: s.profile.clone(),
                })
                .collect();
            check_steps(&stored.agent, &specs)?;
        }
        let agent = new.agent.clone();
        let run = v1::Run {
            // Random (v4), not time-ordered (v7): the first 8 characters, which progress lines
            // show and `runs show` accepts as a prefix, must differ between runs created
            // together. Listings order by `created_at`.
            id: new.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            agent: new.agent,
            state: v1::RunState::Pending as i32,
            origin: new.origin,
            created_at: Some(now()),
            steps: new.steps,
            message: if self.is_connected(&agent) {
                String::new()
            } else {
                format!(
                    "agent {agent} is not connected; the run waits up to {} for it",
                    humantime::format_duration(self.settings.pending_deadline)
                )
            },
            requested_by: new.requested_by,
            schedule: new.schedule,
            sequence: new.sequence,
            nominal_time: new.nominal_time,
            on_failure: new.on_failure as i32,
            continuation_of: new.continuation_of,
            approved_steps: new.approved_steps,
            skip_steps: new.skip_steps,
            jitter_ms: new.jitter_ms,
            ..Default::default()
        };
        // The run's root span; its traceparent is stored with the run and sent in StartRun.
        let (run, span) = crate::telemetry::open_run_span(run);
        let inserted = self.store.insert_run(&run).await.map_err(store_status)?;
        if !inserted {
            let id = run.id.clone();
            let existing = self.store.get_run(&id).await.map_err(store_status)?;
            return Ok((existing.unwrap_or(run), false));
        }
        self.publish(&run);
        tracing::info!(parent: &span, run_id = %run.id, agent, steps = run.steps.len(), origin = %run.origin, "run created");
        tracing::Instrument::instrument(self.send_start(run.clone()), span).await;
        let id = run.id.clone();
        let current = self.store.get_run(&id).await.map_err(store_status)?;
        Ok((current.unwrap_or(run), true))
    }

    /// Approve a held run: create its continuation (the held step once with the guard lifted,
    /// then the rest of the plan) and link the two.
    pub async fn approve_run(&self, id: &str, who: &str, note: &str) -> Result<v1::Run, Status> {
        let rid = id.to_string();
        let held = self
            .store
            .get_run(&rid)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        if state_of(&held) != v1::RunState::Held {
            return Err(Status::failed_precondition(format!(
                "run {id} is {}, not held; only held runs can be approved",
                state_of(&held).label()
            )));
        }
        if !held.continued_in.is_empty() {
            return Err(Status::failed_precondition(format!(
                "run {id} was already approved by {}; its continuation is run {}",
                held.approved_by, held.continued_in
            )));
        }
        let approved: Vec<u32> = held
            .steps
            .iter()
            .filter(|s| s.state == v1::StepState::Held as i32)
            .map(|s| s.index)
            .collect();
        let skip: Vec<u32> = held
            .steps
            .iter()
            .filter(|s| {
                s.state == v1::StepState::Done as i32 || s.state == v1::StepState::Skipped as i32
            })
            .map(|s| s.index)
            .collect();
        let steps = held
            .steps
            .iter()
            .map(|s| v1::Step {
                index: s.index,
                stage: s.stage,
                ma: s.ma.clone(),
                profile: s.profile.clone(),
                only_if: s.only_if,
                guard: s.guard,
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            })
            .collect();
        let (run, _) = self
            .create_run(
                NewRun {
                    agent: held.agent.clone(),
                    steps,
                    origin: "approval".into(),
                    requested_by: who.to_string(),
                    schedule: held.schedule.clone(),
                    sequence: held.sequence.clone(),
                    on_failure: v1::OnFailure::try_from(held.on_failure).unwrap_or_default(),
                    continuation_of: held.id.clone(),
                    approved_steps: approved,
                    skip_steps: skip,
                    ..NewRun::default()
                },
                false,
            )
            .await?;
        {
            let _guard = self.run_lock.lock().await;
            let rid = id.to_string();
            let cont = run.id.clone();
            let who = who.to_string();
            let note = note.to_string();
            let updated = {
                let s = &self.store;
                async move {
                    let Some(mut h) = s.get_run(&rid).await? else {
                        return Ok::<_, StoreError>(None);
                    };
                    h.continued_in = cont;
                    h.approved_by = who;
                    h.approved_at = Some(now());
                    if !note.is_empty() {
                        h.message = format!("{} (approved: {note})", h.message);
                    }
                    s.put_runs(std::slice::from_ref(&h)).await?;
                    Ok(Some(h))
                }
            }
            .await
            .map_err(store_status)?;
            if let Some(h) = updated {
                self.publish(&h);
            }
        }
        Ok(run)
    }

    /// Cancel a run. Pending runs end at once; dispatched or running runs are stopped by their
    /// agent (now, or when it reconnects).
    pub async fn cancel_run(&self, id: &str, reason: &str, who: &str) -> Result<v1::Run, Status> {
        let rid = id.to_string();
        let run = self
            .store
            .get_run(&rid)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        let state = state_of(&run);
        if state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "run {id} already ended ({}); nothing to cancel",
                state.label()
            )));
        }
        let why = if reason.is_empty() {
            format!("cancelled by {who}")
        } else {
            format!("cancelled by {who}: {reason}")
        };
        if state == v1::RunState::Pending {
            return self
                .finish_run_here(id, v1::RunState::Cancelled, why)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::aborted("the run changed state meanwhile; try again"));
        }
        let updated = {
            let _guard = self.run_lock.lock().await;
            let rid = id.to_string();
            let msg = why.clone();
            {
                let s = &self.store;
                async move {
                    let Some(mut run) = s.get_run(&rid).await? else {
                        return Ok::<_, StoreError>(None);
                    };
                    run.cancel_requested = true;
                    run.message = msg;
                    s.put_runs(std::slice::from_ref(&run)).await?;
                    Ok(Some(run))
                }
            }
            .await
            .map_err(store_status)?
        };
        let run = updated.ok_or_else(|| Status::not_found(format!("no run with id {id:?}")))?;
        self.publish(&run);
        if let Some(tx) = self.session_tx(&run.agent) {
            let _ = tx.send(Ok(cancel_command(id, &why))).await;
        }
        Ok(run)
    }

    /// The revocation of `agent` when it was revoked and has not enrolled again since.
    pub async fn revocation(&self, agent: &str) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(&keys::revoked(agent)).await
    }

    /// Fail with FAILED_PRECONDITION when `agent` was revoked and has not enrolled again: its
    /// runs could never be dispatched.
    pub async fn check_not_revoked(&self, agent: &str) -> Result<(), Status> {
        let Some(r) = self.revocation(agent).await.map_err(store_status)? else {
            return Ok(());
        };
        Err(Status::failed_precondition(format!(
            "agent {agent} was revoked{}{}{}; it takes no runs until it enrols again with a new token ('syncfleet tokens create --agent {agent}', then 'syncfleet-agent enroll' on the server)",
            r.at.as_ref()
                .map(|at| format!(" at {}", syncfleet_proto::time::rfc3339(at)))
                .unwrap_or_default(),
            if r.by.is_empty() {
                String::new()
            } else {
                format!(" by {}", r.by)
            },
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            },
        )))
    }

    /// Fail the runs still pending for `agent` (just revoked): they could never be sent, and
    /// must not be sent to whatever enrols under its name later.
    pub async fn fail_pending_runs_of_revoked(&self, agent: &str) {
        let name = agent.to_string();
        let runs = match self
            .store
            .runs_in_states(Some(&name), &[v1::RunState::Pending])
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(agent, error = %e, "cannot list the pending runs of a revoked agent");
                return;
            }
        };
        for run in runs {
            let msg = format!(
                "agent {agent} was revoked before this run started; the run was never started"
            );
            if let Err(e) = self
                .finish_run_here(&run.id, v1::RunState::Failed, msg)
                .await
            {
                tracing::error!(error = %e, "cannot fail a pending run of a revoked agent");
            }
        }
    }
}

/// Refuse steps that name an MA or run profile missing from the agent's last inventory, with
/// the names that do exist.
fn check_steps(agent: &v1::Agent, steps: &[v1::StepSpec]) -> Result<(), Status> {
    if agent.management_agents.is_empty() {
        return Ok(());
    }
    for s in steps {
        let Some(ma) = agent.management_agents.iter().find(|m| m.name == s.ma) else {
            let known: Vec<&str> = agent
                .management_agents
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(Status::invalid_argument(format!(
                "agent {} has no management agent {:?}; its MAs are: {}",
                agent.name,
                s.ma,
                known.join(", ")
            )));
        };
        if !ma.run_profiles.iter().any(|p| p.name == s.profile) {
            let known: Vec<&str> = ma.run_profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "management agent {:?} on {} has no run profile {:?}; its run profiles are: {}",
                s.ma,
                agent.name,
                s.profile,
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Start a stored sequence on an agent now (manual run; same engine rules as scheduled runs).
pub async fn start_sequence(
    fleet: &Arc<Fleet>,
    agent: &str,
    sequence: &str,
    who: &str,
) -> Result<v1::Run, Status> {
    let s = sequence.to_string();
    let docs = fleet
        .store
        .list_documents(Some("Sequence"))
        .await
        .map_err(store_status)?;
    let doc = docs.into_iter().find(|d| d.name == s).ok_or_else(|| {
        Status::not_found(format!(
            "no sequence named {}; see 'syncfleet get sequences'",
            echo(sequence)
        ))
    })?;
    let seq: SequenceDoc = match documents::from_json("Sequence", &doc.json) {
        Ok(Document::Sequence(s)) => s,
        _ => {
            return Err(Status::internal(format!(
                "stored sequence {sequence} is unreadable"
            )));
        }
    };
    fleet.check_not_paused(agent).await?;
    let (run, _) = fleet
        .create_run(
            NewRun {
                agent: agent.to_string(),
                steps: steps_of(&seq),
                origin: "manual".into(),
                requested_by: who.to_string(),
                sequence: seq.name.clone(),
                on_failure: seq.on_failure_proto(),
                ..NewRun::default()
            },
            true,
        )
        .await?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_steps_are_refused_with_the_known_names() {
        let agent = v1::Agent {
            name: "sync-01".into(),
            management_agents: vec![v1::ManagementAgent {
                name: "AD".into(),
                run_profiles: vec![v1::RunProfile {
                    name: "Delta Import".into(),
                    step_types: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bad = [v1::StepSpec {
            ma: "AD".into(),
            profile: "Delta Imprt".into(),
        }];
        let err = check_steps(&agent, &bad).unwrap_err();
        assert!(err.message().contains("Delta Import"), "{}", err.message());
        let bad = [v1::StepSpec {
            ma: "HR".into(),
            profile: "x".into(),
        }];
        assert!(
            check_steps(&agent, &bad)
                .unwrap_err()
                .message()
                .contains("AD")
        );
    }
}
