//! Agent events and how runs end: applying events to runs ([`apply_event`], pure), storing a
//! batch of them with the runs they change ([`Fleet::apply_events`]), an agent's refusal of a
//! command, and runs ended by the controller itself.

use std::collections::HashMap;

use syncfleet_proto::step_errors::StepErrors;
use syncfleet_proto::time::now;
use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab;

use super::autonomy::{AUTONOMOUS, autonomous_run};
use super::dispatch::run_of_start_command;
use super::{Fleet, state_of};
use crate::store::StoreError;

/// Apply one agent event to a run. Pure: the caller stores the result.
pub fn apply_event(run: &mut v1::Run, ev: &v1::AgentEvent) {
    let at = ev.at.unwrap_or_else(now);
    let step_mut = |run: &mut v1::Run, index: u32| -> Option<usize> {
        let i = usize::try_from(index).ok()?;
        (i < run.steps.len()).then_some(i)
    };
    match &ev.kind {
        Some(Kind::RunStarted(_)) if !state_of(run).is_terminal() => {
            run.state = v1::RunState::Running as i32;
            run.started_at.get_or_insert(at);
        }
        Some(Kind::RunStarted(_)) => {}
        Some(Kind::StepWaiting(w)) => {
            if let Some(i) = step_mut(run, w.index) {
                run.steps[i].state = v1::StepState::Waiting as i32;
                run.steps[i].detail.clone_from(&w.reason);
                note_wait(&mut run.steps[i], &w.reason, at);
            }
        }
        Some(Kind::StepStarted(s)) => {
            if let Some(i) = step_mut(run, s.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Running as i32;
                end_wait(step, at);
                step.started_at = Some(at);
                step.detail.clear();
                if s.run_number != 0 {
                    step.run_number = s.run_number;
                }
                if s.pending.is_some() {
                    step.pending_before = s.pending;
                }
                step.attempts = s.attempt.max(1);
            }
        }
        Some(Kind::StepProgress(p)) => {
            if let Some(i) = step_mut(run, p.index) {
                let step = &mut run.steps[i];
                step.progress.clone_from(&p.progress);
                if p.counters.is_some() {
                    step.counters.clone_from(&p.counters);
                }
            }
        }
        Some(Kind::StepFinished(f)) => {
            if let Some(i) = step_mut(run, f.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Done as i32;
                step.result.clone_from(&f.result);
                step.started_at = f.started_at.or(step.started_at);
                step.finished_at = f.finished_at.or(Some(at));
                step.counters = f.counters.clone().or(step.counters.take());
                step.run_number = f.run_number;
                step.connection_result.clone_from(&f.connection_result);
                step.error_count = f.error_count;
                step.detail.clone_from(&f.detail);
                step.progress.clear();
                // Bounded again here: the agent is on the network, and what is stored here is
                // returned by every GetRun and ListRuns.
                StepErrors::of_finished(f).bounded().store_in(step);
            }
        }
        Some(Kind::StepSkipped(k)) => {
            if let Some(i) = step_mut(run, k.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Skipped as i32;
                step.detail.clone_from(&k.reason);
                step.started_at = None;
                step.finished_at = Some(at);
            }
        }
        Some(Kind::StepHeld(h)) => {
            if let Some(i) = step_mut(run, h.index) {
                let step = &mut run.steps[i];
                step.state = v1::StepState::Held as i32;
                step.detail.clone_from(&h.reason);
                if h.pending.is_some() {
                    step.pending_before = h.pending;
                }
            }
        }
        Some(Kind::RunFinished(f)) => {
            run.message.clone_from(&f.message);
            end_run(run, f.state(), &f.result, at);
        }
        // Not about a run: recorded by the change tracking of `apply_events`.
        Some(Kind::ChangeDetected(_)) | None => {}
    }
}

/// End a run: its state, end time and result, and every step that did not end becomes
/// `not_run`.
///
/// The result is set here and only here, so a run has a result exactly when it has ended: the
/// agent's final result, or else the most severe result of its finished steps. An `unknown`
/// run has no result (its outcome was not observed; the steps that finished keep theirs). A
/// step that is `not_run` has no start, end, counters or progress: whatever it showed while it
/// ran was never confirmed, and a start without an end would read as a growing duration.
/// Records that a step waits for `reason` from `at` (the first wait's time is kept; the reason
/// is the latest), so that it stays visible after the step starts (`detail` is cleared then).
fn note_wait(step: &mut v1::Step, reason: &str, at: prost_types::Timestamp) {
    if reason.is_empty() {
        return;
    }
    if step.waiting_since.is_none() {
        step.waiting_since = Some(at);
    }
    step.wait_reason = reason.to_string();
}

/// A step that waited starts at `at`: how long it waited.
fn end_wait(step: &mut v1::Step, at: prost_types::Timestamp) {
    if let Some(since) = &step.waiting_since {
        let ms = syncfleet_proto::time::to_millis(&at)
            .saturating_sub(syncfleet_proto::time::to_millis(since));
        step.waited_ms = u64::try_from(ms).unwrap_or(0);
    }
}

fn end_run(run: &mut v1::Run, state: v1::RunState, result: &str, at: prost_types::Timestamp) {
    run.state = state as i32;
    run.finished_at = Some(at);
    run.result = if state == v1::RunState::Unknown {
        String::new()
    } else if !result.is_empty() {
        result.to_string()
    } else {
        vocab::most_severe(
            run.steps
                .iter()
                .filter(|s| s.state == v1::StepState::Done as i32 && !s.result.is_empty())
                .map(|s| s.result.as_str()),
        )
        .unwrap_or_default()
        .to_string()
    };
    for step in &mut run.steps {
        let state = v1::StepState::try_from(step.state).unwrap_or(v1::StepState::Unspecified);
        if matches!(
            state,
            v1::StepState::Waiting | v1::StepState::Running | v1::StepState::Unspecified
        ) {
            if state == v1::StepState::Running && step.detail.is_empty() {
                step.detail =
                    "was running when the run ended; its outcome was not observed".to_string();
            }
            step.state = v1::StepState::NotRun as i32;
            step.started_at = None;
            step.finished_at = None;
            step.counters = None;
            step.progress.clear();
        }
    }
}

impl Fleet {
    /// Apply a batch of events from `agent`'s session, store them with the runs they change,
    /// and return the highest seq now stored. Events at or below `stored_seq` are replays and
    /// are skipped; events about runs of other agents are refused (identity binding).
    pub async fn apply_events(
        &self,
        agent: &str,
        events: Vec<v1::AgentEvent>,
        stored_seq: u64,
    ) -> Result<u64, StoreError> {
        let fresh: Vec<v1::AgentEvent> =
            events.into_iter().filter(|e| e.seq > stored_seq).collect();
        if fresh.is_empty() {
            return Ok(stored_seq);
        }
        // The runs and change records this batch touches, and only those, locked (in stripe
        // order).
        let change_keys = super::changes::change_keys(agent, &fresh);
        let _guards = self
            .run_locks
            .lock_many(
                fresh
                    .iter()
                    .filter(|e| !e.run_id.is_empty())
                    .map(|e| e.run_id.as_str())
                    .chain(change_keys.iter().map(String::as_str)),
            )
            .await;
        let agent_name = agent.to_string();
        let s = &self.store;
        let (seq, changed, moved) = async {
            let mut runs: HashMap<String, v1::Run> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let changes = self.change_records(&agent_name, &fresh).await?;
            for ev in &fresh {
                if matches!(ev.kind, Some(Kind::ChangeDetected(_))) {
                    continue;
                }
                if !runs.contains_key(&ev.run_id) {
                    match s.get_run(&ev.run_id).await? {
                        Some(mut r) if r.agent == agent_name => {
                            // A run the controller created for a nominal time the agent ran
                            // on its own: it was executed autonomously.
                            if autonomous_run(&agent_name, ev).is_some()
                                && !state_of(&r).is_terminal()
                            {
                                r.origin = AUTONOMOUS.to_string();
                            }
                            order.push(r.id.clone());
                            runs.insert(r.id.clone(), r);
                        }
                        Some(r) => {
                            tracing::warn!(agent = %agent_name, run_id = %ev.run_id, owner = %r.agent, "event about another agent's run refused");
                            s.append_audit(&v1::AuditEntry {
                                at: Some(now()),
                                who: format!("agent/{agent_name}"),
                                action: "RunEvent".into(),
                                target: format!("run/{}", ev.run_id),
                                result: "denied".into(),
                                detail: format!(
                                    "event seq {} about a run of agent {} refused: agents may only report their own runs",
                                    ev.seq, r.agent
                                ),
                                ..Default::default()
                            }).await?;
                            continue;
                        }
                        None => match autonomous_run(&agent_name, ev) {
                            Some(r) => {
                                tracing::info!(agent = %agent_name, run_id = %ev.run_id, schedule = %r.schedule, "run the agent started on its own recorded");
                                order.push(r.id.clone());
                                runs.insert(r.id.clone(), r);
                            }
                            None => {
                                tracing::warn!(agent = %agent_name, run_id = %ev.run_id, "event about an unknown run ignored");
                                continue;
                            }
                        },
                    }
                }
                if let Some(run) = runs.get_mut(&ev.run_id) {
                    apply_event(run, ev);
                }
            }
            let changed: Vec<v1::Run> = order.iter().filter_map(|id| runs.remove(id)).collect();
            let batch = crate::store::EventBatch {
                agent: agent_name.clone(),
                events: fresh.clone(),
                runs: changed.clone(),
                states: changes.states,
                counters: changes.counters,
            };
            let seq = s
                .commit_event_batches(std::slice::from_ref(&batch))
                .await?
                .first()
                .copied()
                .unwrap_or(stored_seq);
            Ok::<_, StoreError>((seq, changed, changes.moved))
        }
        .await?;
        for run in &changed {
            self.publish(run);
        }
        self.changes_moved(&moved);
        Ok(seq)
    }

    /// The agent refused a command.
    pub async fn command_refused(&self, agent: &str, ack: &v1::CommandAck) {
        tracing::warn!(agent, command = %ack.command_id, reason = %ack.reason, "agent refused a command");
        let Some(run_id) = run_of_start_command(&ack.command_id) else {
            return;
        };
        let message = format!("agent {agent} refused the run: {}", ack.reason);
        let _ = self
            .finish_run_here(run_id, v1::RunState::Failed, message)
            .await;
    }

    /// End a non-terminal run on the controller side (deadline, refusal, pending cancel).
    pub(super) async fn finish_run_here(
        &self,
        run_id: &str,
        state: v1::RunState,
        message: String,
    ) -> Result<Option<v1::Run>, StoreError> {
        let _guard = self.run_locks.lock(run_id).await;
        let id = run_id.to_string();
        let updated = {
            let s = &self.store;
            async move {
                let Some(mut run) = s.get_run(&id).await? else {
                    return Ok::<_, StoreError>(None);
                };
                if state_of(&run).is_terminal() {
                    return Ok(None);
                }
                run.message = message;
                end_run(&mut run, state, "", now());
                s.put_runs(std::slice::from_ref(&run)).await?;
                Ok(Some(run))
            }
        }
        .await?;
        if let Some(r) = &updated {
            self.publish(r);
        }
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use syncfleet_proto::time::from_millis;

    use super::*;
    use crate::fleet::fixtures::run;

    fn ev(kind: Kind) -> v1::AgentEvent {
        v1::AgentEvent {
            seq: 1,
            at: Some(from_millis(1000)),
            run_id: "r".into(),
            kind: Some(kind),
        }
    }

    fn ev_at(ms: i64, kind: Kind) -> v1::AgentEvent {
        v1::AgentEvent {
            at: Some(from_millis(ms)),
            ..ev(kind)
        }
    }

    #[test]
    fn a_step_keeps_when_and_why_it_waited_after_it_starts() {
        let mut r = run();
        apply_event(
            &mut r,
            &ev_at(1_000, Kind::RunStarted(v1::RunStarted::default())),
        );
        let wait = |reason: &str| {
            Kind::StepWaiting(v1::StepWaiting {
                index: 0,
                reason: reason.into(),
            })
        };
        apply_event(
            &mut r,
            &ev_at(2_000, wait("MA AD is running \"Full Sync\"")),
        );
        apply_event(&mut r, &ev_at(5_000, wait("MA AD is running \"Export\"")));
        assert_eq!(r.steps[0].waiting_since, Some(from_millis(2_000)));
        assert_eq!(r.steps[0].waited_ms, 0, "still waiting");
        apply_event(
            &mut r,
            &ev_at(
                9_500,
                Kind::StepStarted(v1::StepStarted {
                    index: 0,
                    ..Default::default()
                }),
            ),
        );
        let s = &r.steps[0];
        assert_eq!(s.detail, "", "the live detail is cleared");
        assert_eq!(s.wait_reason, "MA AD is running \"Export\"");
        assert_eq!(s.waiting_since, Some(from_millis(2_000)));
        assert_eq!(s.waited_ms, 7_500);
        // A step that never waited has no wait.
        assert_eq!(r.steps[1].waiting_since, None);
        assert_eq!(r.steps[1].waited_ms, 0);
    }

    #[test]
    fn events_drive_the_run_to_its_end() {
        let mut r = run();
        apply_event(&mut r, &ev(Kind::RunStarted(v1::RunStarted::default())));
        assert_eq!(r.state, v1::RunState::Running as i32);
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 0,
                result: "stopped-connectivity".into(),
                counters: Some(v1::StepCounters {
                    counters: [("stage-add".to_string(), 3u64)].into_iter().collect(),
                    outbound: Default::default(),
                }),
                ..Default::default()
            })),
        );
        assert_eq!(r.result, "", "no result before the run ends");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Failed as i32,
                result: "stopped-connectivity".into(),
                message: "step 1 stopped".into(),
            })),
        );
        assert_eq!(r.state, v1::RunState::Failed as i32);
        assert_eq!(r.steps[0].state, v1::StepState::Done as i32);
        assert_eq!(r.steps[1].state, v1::StepState::NotRun as i32);
        assert_eq!(
            r.steps[0].counters.as_ref().unwrap().counters["stage-add"],
            3
        );
        // An event for a step index out of range changes nothing and does not panic.
        apply_event(
            &mut r,
            &ev(Kind::StepStarted(v1::StepStarted {
                index: 99,
                ..Default::default()
            })),
        );
    }

    #[test]
    fn an_interrupted_run_has_no_result_and_its_unfinished_steps_no_numbers() {
        let mut r = run();
        apply_event(&mut r, &ev(Kind::RunStarted(v1::RunStarted::default())));
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 0,
                result: "success".into(),
                ..Default::default()
            })),
        );
        apply_event(
            &mut r,
            &ev(Kind::StepStarted(v1::StepStarted {
                index: 1,
                ..Default::default()
            })),
        );
        apply_event(
            &mut r,
            &ev(Kind::StepProgress(v1::StepProgress {
                index: 1,
                progress: "10/200".into(),
                counters: Some(v1::StepCounters {
                    counters: [("stage-update".to_string(), 10u64)].into_iter().collect(),
                    outbound: Default::default(),
                }),
            })),
        );
        assert_eq!(r.state, v1::RunState::Running as i32);
        assert_eq!(r.result, "", "one of two steps done is not a success");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Unknown as i32,
                result: String::new(),
                message: "the agent restarted".into(),
            })),
        );
        assert_eq!(r.state, v1::RunState::Unknown as i32);
        assert_eq!(r.result, "", "an unobserved outcome is not a success");
        assert_eq!(r.steps[0].result, "success");
        let s = &r.steps[1];
        assert_eq!(s.state, v1::StepState::NotRun as i32);
        assert!(s.started_at.is_none() && s.finished_at.is_none(), "{s:?}");
        assert!(s.counters.is_none() && s.progress.is_empty(), "{s:?}");
        assert!(s.detail.contains("not observed"), "{s:?}");
    }

    #[test]
    fn a_run_ended_without_a_final_result_takes_its_most_severe_step_result() {
        let mut r = run();
        for (index, result) in [(0, "completed-warnings"), (1, "success")] {
            apply_event(
                &mut r,
                &ev(Kind::StepFinished(v1::StepFinished {
                    index,
                    result: result.into(),
                    ..Default::default()
                })),
            );
        }
        assert_eq!(r.result, "");
        apply_event(
            &mut r,
            &ev(Kind::RunFinished(v1::RunFinished {
                state: v1::RunState::Succeeded as i32,
                ..Default::default()
            })),
        );
        assert_eq!(r.result, "completed-warnings");
    }

    /// Object errors and incidents are stored with the step, bounded even when an agent sends
    /// more than the limits; an agent that sends none (an older version) leaves them empty.
    #[test]
    fn step_errors_are_stored_bounded_and_absent_from_older_agents() {
        use syncfleet_proto::step_errors::{MAX_LITERAL_CHARS, MAX_OBJECT_ERRORS};
        let mut r = run();
        apply_event(&mut r, &ev(Kind::RunStarted(v1::RunStarted::default())));
        let error = |i: usize| v1::ObjectError {
            kind: "export".into(),
            dn: format!("CN=u{i},DC=contoso,DC=com"),
            error_type: "permission-issue".into(),
            error_code: "0x80070005".into(),
            error_literal: "x".repeat(100_000),
            ..Default::default()
        };
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 0,
                result: "completed-export-errors".into(),
                error_count: 5000,
                object_errors: (0..500).map(error).collect(),
                object_errors_omitted: 4500,
                connection_incidents: vec![v1::ConnectionIncident {
                    connection_result: "dropped-connection".into(),
                    server: "dc01:389".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        );
        let s = &r.steps[0];
        assert_eq!(s.error_count, 5000);
        assert!(!s.object_errors.is_empty() && s.object_errors.len() <= MAX_OBJECT_ERRORS);
        assert_eq!(s.object_errors.len() as u64 + s.object_errors_omitted, 5000);
        assert_eq!(s.object_errors[0].dn, "CN=u0,DC=contoso,DC=com");
        assert!(
            s.object_errors.iter().all(
                |e| e.literal_truncated && e.error_literal.chars().count() == MAX_LITERAL_CHARS
            )
        );
        assert_eq!(s.connection_incidents.len(), 1);
        assert!(
            StepErrors::of_finished(&v1::StepFinished {
                object_errors: s.object_errors.clone(),
                connection_incidents: s.connection_incidents.clone(),
                ..Default::default()
            })
            .encoded_len()
                <= syncfleet_proto::step_errors::MAX_STEP_ERRORS_BYTES
        );
        // An older agent: a count, no details.
        apply_event(
            &mut r,
            &ev(Kind::StepFinished(v1::StepFinished {
                index: 1,
                result: "completed-sync-errors".into(),
                error_count: 21,
                ..Default::default()
            })),
        );
        let s = &r.steps[1];
        assert_eq!(s.error_count, 21);
        assert!(s.object_errors.is_empty() && s.connection_incidents.is_empty());
        assert_eq!(s.object_errors_omitted, 0);
    }
}
