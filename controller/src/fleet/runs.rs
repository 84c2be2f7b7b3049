//! Creating runs (ad hoc, scheduled, approval continuations), approving held runs, cancelling,
//! and the revocation checks that keep runs away from a revoked agent.

use std::sync::Arc;

use syncfleet_proto::time::now;
use syncfleet_proto::v1;

use super::dispatch::cancel_command;
use super::{Fleet, FleetError, state_of};
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
    /// Runs started by changes: how many changes, from which sources.
    pub coalesced_changes: u64,
    pub change_sources: Vec<String>,
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
    /// Create and store an ad-hoc run, then dispatch it if its agent is connected (the
    /// `StartRuns` path with one agent, [`Fleet::start_one`]).
    pub async fn start_run(
        self: &Arc<Self>,
        agent: &str,
        steps: Vec<v1::StepSpec>,
        requested_by: &str,
    ) -> Result<v1::Run, FleetError> {
        self.start_one(agent, &super::fanout::Plan::Steps(steps), requested_by)
            .await
    }

    /// Store a new run (validated against the agent's inventory) and dispatch it when its time
    /// has come and the agent is connected. Returns the run and whether it was new: a run whose
    /// id exists already (a duplicate scheduled fire) is returned unchanged.
    pub async fn create_run(
        &self,
        new: NewRun,
        validate: bool,
    ) -> Result<(v1::Run, bool), FleetError> {
        if new.steps.is_empty() {
            return Err(FleetError::NoSteps);
        }
        let name = new.agent.clone();
        let stored = self.store.get_agent(&name).await?;
        let Some(stored) = stored else {
            return Err(self.unknown_agent(new.agent).await?);
        };
        self.check_not_revoked(&new.agent).await?;
        let schedule = (!new.schedule.is_empty() && new.continuation_of.is_empty())
            .then_some(new.schedule.as_str());
        if let Some(blocked) = self.run_blocked(&new.agent, schedule).await? {
            return Err(FleetError::Blocked(blocked));
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
        let (run, span) = self.new_run_record(new, false);
        let inserted = self.store.insert_run(&run).await?;
        if !inserted {
            let id = run.id.clone();
            let existing = self.store.get_run(&id).await?;
            return Ok((existing.unwrap_or(run), false));
        }
        self.publish(&run);
        tracing::info!(parent: &span, run_id = %run.id, agent, steps = run.steps.len(), origin = %run.origin, "run created");
        tracing::Instrument::instrument(self.send_start(run.clone()), span).await;
        let id = run.id.clone();
        let current = self.store.get_run(&id).await?;
        Ok((current.unwrap_or(run), true))
    }

    /// Approve a held run: create its continuation (the held step once with the guard lifted,
    /// then the rest of the plan) and link the two. A rejected run is refused. The decision is
    /// claimed under the run's lock (approver and time stored first), so a concurrent rejection
    /// or second approval is refused rather than also succeeding; the claim is withdrawn when
    /// the continuation cannot be created.
    pub async fn approve_run(
        &self,
        id: &str,
        who: &str,
        note: &str,
    ) -> Result<v1::Run, FleetError> {
        let held = {
            let _guard = self.run_locks.lock(id).await;
            let mut held = self.stored_run(id).await?;
            if state_of(&held) != v1::RunState::Held {
                return Err(FleetError::NotHeld {
                    id: id.to_string(),
                    state: state_of(&held),
                });
            }
            if !held.continued_in.is_empty() || !held.approved_by.is_empty() {
                return Err(FleetError::AlreadyApproved {
                    id: id.to_string(),
                    by: held.approved_by,
                    continuation: held.continued_in,
                });
            }
            if let Some(e) = rejected_error(&held) {
                return Err(e);
            }
            held.approved_by = who.to_string();
            held.approved_at = Some(now());
            self.store.put_runs(std::slice::from_ref(&held)).await?;
            held
        };
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
        let created = self
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
            .await;
        let run = match created {
            Ok((run, _)) => run,
            Err(e) => {
                // Withdraw the claim: the run is undecided again.
                self.update_stored_run(id, |h| {
                    h.approved_by.clear();
                    h.approved_at = None;
                })
                .await?;
                return Err(e);
            }
        };
        let continuation = run.id.clone();
        self.update_stored_run(id, |h| {
            h.continued_in = continuation;
            h.approved_by = who.to_string();
            h.approved_at = Some(now());
            if !note.is_empty() {
                h.message = format!("{} (approved: {note})", h.message);
            }
        })
        .await?;
        Ok(run)
    }

    /// Reject a held run: record who decided, when and why (`note`, required), and append
    /// "(rejected: NOTE)" to its message. The run stays `held` (it has ended; the rejection is
    /// a decision on it), is no longer reported as waiting for approval, and can no longer be
    /// approved. The schedule its guard rail paused stays paused: resuming it is a separate
    /// decision. Checked and stored under the run's lock, so it cannot race an approval.
    pub async fn reject_run(&self, id: &str, who: &str, note: &str) -> Result<v1::Run, FleetError> {
        let note = note.trim();
        if note.is_empty() {
            return Err(FleetError::RejectNeedsNote);
        }
        let _guard = self.run_locks.lock(id).await;
        let mut run = self.stored_run(id).await?;
        check_rejectable(&run)?;
        run.rejected_by = who.to_string();
        run.rejected_at = Some(now());
        run.reject_note = note.to_string();
        run.message = if run.message.is_empty() {
            format!("(rejected: {note})")
        } else {
            format!("{} (rejected: {note})", run.message)
        };
        self.store.put_runs(std::slice::from_ref(&run)).await?;
        self.publish(&run);
        tracing::info!(run_id = %run.id, agent = %run.agent, by = who, "held run rejected");
        Ok(run)
    }

    /// Cancel a run. Pending runs end at once; dispatched or running runs are stopped by their
    /// agent (now, or when it reconnects).
    pub async fn cancel_run(
        &self,
        id: &str,
        reason: &str,
        who: &str,
    ) -> Result<v1::Run, FleetError> {
        let run = self.stored_run(id).await?;
        let state = state_of(&run);
        if state.is_terminal() {
            return Err(FleetError::AlreadyEnded {
                id: id.to_string(),
                state,
            });
        }
        let why = if reason.is_empty() {
            format!("cancelled by {who}")
        } else {
            format!("cancelled by {who}: {reason}")
        };
        if state == v1::RunState::Pending {
            return self
                .finish_run_here(id, v1::RunState::Cancelled, why)
                .await?
                .ok_or(FleetError::ChangedMeanwhile);
        }
        let msg = why.clone();
        let run = self
            .update_stored_run(id, |run| {
                run.cancel_requested = true;
                run.message = msg;
            })
            .await?
            .ok_or_else(|| FleetError::NoSuchRun(id.to_string()))?;
        if let Some(tx) = self.session_tx(&run.agent) {
            let _ = tx.send(Ok(cancel_command(id, &why))).await;
        }
        Ok(run)
    }

    /// Send the cancel command of run `id`, whose cancellation another controller (a follower,
    /// which then woke this one) stored, to its agent if its session is here; nothing when the
    /// run has ended. The cancellation is stored again under the run's lock first: the
    /// follower's write is not under this controller's lock, so a batch of the agent's events
    /// read before it and stored after it can have dropped it, and the run would end without
    /// saying that it was cancelled on request.
    pub async fn send_stored_cancel(&self, id: &str) {
        let run = {
            let _guard = self.run_locks.lock(id).await;
            let mut run = match self.store.get_run(id).await {
                Ok(Some(run)) => run,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(run = id, error = %e, "cannot read a cancelled run");
                    return;
                }
            };
            if state_of(&run).is_terminal() {
                return;
            }
            if !run.cancel_requested {
                run.cancel_requested = true;
                if let Err(e) = self.store.put_runs(std::slice::from_ref(&run)).await {
                    tracing::error!(run = id, error = %e, "cannot store a run's cancellation");
                    return;
                }
                self.publish(&run);
            }
            run
        };
        if let Some(tx) = self.session_tx(&run.agent) {
            let _ = tx.send(Ok(cancel_command(id, &run.message))).await;
        }
    }

    /// [`FleetError::UnknownAgent`] for `name`, listing the agents that do exist.
    pub(super) async fn unknown_agent(&self, name: String) -> Result<FleetError, StoreError> {
        let known = self
            .store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| a.name)
            .collect();
        Ok(FleetError::UnknownAgent { name, known })
    }

    /// The stored run with (full) id `id`; `NoSuchRun` when there is none.
    async fn stored_run(&self, id: &str) -> Result<v1::Run, FleetError> {
        self.store
            .get_run(id)
            .await?
            .ok_or_else(|| FleetError::NoSuchRun(id.to_string()))
    }

    /// Change the stored run `id` with `change` under the run's lock (so agent events, cancels
    /// and the sweeper never overwrite each other's changes), store it and publish it. `None`
    /// when the run is gone.
    async fn update_stored_run(
        &self,
        id: &str,
        change: impl FnOnce(&mut v1::Run),
    ) -> Result<Option<v1::Run>, StoreError> {
        let _guard = self.run_locks.lock(id).await;
        let Some(mut run) = self.store.get_run(id).await? else {
            return Ok(None);
        };
        change(&mut run);
        self.store.put_runs(std::slice::from_ref(&run)).await?;
        self.publish(&run);
        Ok(Some(run))
    }

    /// The revocation of `agent` when it was revoked and has not enrolled again since.
    pub async fn revocation(&self, agent: &str) -> Result<Option<v1::Pause>, StoreError> {
        self.get_pause(&keys::revoked(agent)).await
    }

    /// Every agent revoked and not enrolled again since, from one listing of the revocation
    /// records.
    pub async fn revoked_agents(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let prefix = keys::revoked_prefix();
        let mut out = std::collections::HashSet::new();
        for (key, raw) in self.store.list_state(&prefix).await? {
            let pause = <v1::Pause as prost::Message>::decode(raw.as_slice()).map_err(|e| {
                StoreError::Corrupt {
                    what: key.clone(),
                    detail: e.to_string(),
                }
            })?;
            if pause.paused
                && let Some(agent) = key.strip_prefix(&prefix)
            {
                out.insert(agent.to_string());
            }
        }
        Ok(out)
    }

    /// Fail with [`FleetError::Revoked`] when `agent` was revoked and has not enrolled again:
    /// its runs could never be dispatched.
    pub async fn check_not_revoked(&self, agent: &str) -> Result<(), FleetError> {
        let Some(revocation) = self.revocation(agent).await? else {
            return Ok(());
        };
        Err(FleetError::Revoked {
            agent: agent.to_string(),
            revocation,
        })
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
pub(super) fn check_steps(agent: &v1::Agent, steps: &[v1::StepSpec]) -> Result<(), FleetError> {
    if agent.management_agents.is_empty() {
        return Ok(());
    }
    for s in steps {
        let Some(ma) = agent.management_agents.iter().find(|m| m.name == s.ma) else {
            return Err(FleetError::UnknownMa {
                agent: agent.name.clone(),
                ma: s.ma.clone(),
                known: agent
                    .management_agents
                    .iter()
                    .map(|m| m.name.clone())
                    .collect(),
            });
        };
        if !ma.run_profiles.iter().any(|p| p.name == s.profile) {
            return Err(FleetError::UnknownProfile {
                agent: agent.name.clone(),
                ma: s.ma.clone(),
                profile: s.profile.clone(),
                known: ma.run_profiles.iter().map(|p| p.name.clone()).collect(),
            });
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
) -> Result<v1::Run, FleetError> {
    fleet
        .start_one(
            agent,
            &super::fanout::Plan::Sequence(sequence.to_string()),
            who,
        )
        .await
}

/// `AlreadyRejected` when `run` was rejected.
fn rejected_error(run: &v1::Run) -> Option<FleetError> {
    (!run.rejected_by.is_empty() || run.rejected_at.is_some()).then(|| {
        FleetError::AlreadyRejected {
            id: run.id.clone(),
            by: run.rejected_by.clone(),
            at: decided_at(run.rejected_at.as_ref()),
            note: run.reject_note.clone(),
        }
    })
}

/// When a decision was recorded, RFC 3339 (UTC), for refusal messages.
fn decided_at(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(
        || "an unknown time".to_string(),
        syncfleet_proto::time::rfc3339,
    )
}

/// Whether `run` may be rejected: held, neither approved nor rejected yet.
fn check_rejectable(run: &v1::Run) -> Result<(), FleetError> {
    let state = state_of(run);
    if state != v1::RunState::Held {
        return Err(FleetError::NotHeldToReject {
            id: run.id.clone(),
            state,
        });
    }
    if !run.continued_in.is_empty() || !run.approved_by.is_empty() {
        return Err(FleetError::ApprovedBeforeReject {
            id: run.id.clone(),
            by: run.approved_by.clone(),
            at: decided_at(run.approved_at.as_ref()),
            continuation: run.continued_in.clone(),
        });
    }
    match rejected_error(run) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_run() -> v1::Run {
        v1::Run {
            id: "r1".into(),
            state: v1::RunState::Held as i32,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_cancellation_dropped_by_a_concurrent_write_is_stored_again_and_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = super::super::fixtures::fleet(dir.path()).await;
        let (tx, mut agent) = tokio::sync::mpsc::channel(8);
        let hello = v1::Hello {
            name: "a".into(),
            ..Default::default()
        };
        fleet.on_connect(&hello, tx).await.unwrap();
        // A follower stored the cancellation; a batch of the agent's events read before it was
        // stored after it, so the stored run no longer says so.
        let mut run = super::super::fixtures::run();
        run.state = v1::RunState::Running as i32;
        run.message = "cancelled by operator/admin: through the follower".into();
        store.insert_run(&run).await.unwrap();

        fleet.send_stored_cancel("r").await;
        let stored = store.get_run("r").await.unwrap().unwrap();
        assert!(stored.cancel_requested, "the cancellation is stored again");
        let sent = agent.recv().await.unwrap().unwrap();
        let Some(v1::controller_message::Msg::Command(cmd)) = sent.msg else {
            panic!("{sent:?}");
        };
        assert!(
            matches!(cmd.kind, Some(v1::command::Kind::CancelRun(ref c)) if c.run_id == "r"),
            "{cmd:?}"
        );

        // A run that has ended is left alone.
        let mut ended = stored;
        ended.state = v1::RunState::Succeeded as i32;
        ended.cancel_requested = false;
        store.put_runs(std::slice::from_ref(&ended)).await.unwrap();
        fleet.send_stored_cancel("r").await;
        assert!(!store.get_run("r").await.unwrap().unwrap().cancel_requested);
        assert!(agent.try_recv().is_err());
    }

    #[test]
    fn only_an_undecided_held_run_can_be_rejected() {
        assert!(check_rejectable(&held_run()).is_ok());

        let mut running = held_run();
        running.state = v1::RunState::Running as i32;
        assert_eq!(
            check_rejectable(&running).unwrap_err().to_string(),
            "run r1 is running, not held; only held runs can be rejected"
        );

        let mut approved = held_run();
        approved.approved_by = "alice".into();
        approved.approved_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        approved.continued_in = "r2".into();
        let msg = check_rejectable(&approved).unwrap_err().to_string();
        assert!(
            msg.contains("already approved by alice at 2023-11-14T22:13:20")
                && msg.contains("continuation is run r2"),
            "{msg}"
        );

        let mut rejected = held_run();
        rejected.rejected_by = "bob".into();
        rejected.rejected_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        rejected.reject_note = "wrong HR feed".into();
        let msg = check_rejectable(&rejected).unwrap_err().to_string();
        assert!(
            msg.starts_with("run r1 was already rejected by bob at 2023-11-14T22:13:20")
                && msg.contains(": wrong HR feed;"),
            "{msg}"
        );
        assert!(matches!(
            rejected_error(&rejected),
            Some(FleetError::AlreadyRejected { .. })
        ));
        assert!(rejected_error(&held_run()).is_none());
    }

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
        assert!(
            matches!(&err, FleetError::UnknownProfile { known, .. } if known == &["Delta Import"]),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "management agent \"AD\" on sync-01 has no run profile \"Delta Imprt\"; its run profiles are: Delta Import"
        );
        let bad = [v1::StepSpec {
            ma: "HR".into(),
            profile: "x".into(),
        }];
        assert_eq!(
            check_steps(&agent, &bad).unwrap_err().to_string(),
            "agent sync-01 has no management agent \"HR\"; its MAs are: AD"
        );
    }
}
