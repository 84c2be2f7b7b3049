//! Executing a run: its plan's stages in order (the steps of a stage in parallel), what stops
//! it (a failed step under `on_failure = stop`, discovery errors always, a guard rail, a
//! cancellation), and its `RunFinished`.

use std::sync::Mutex;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tokio_util::sync::CancellationToken;

use super::plan::{PlannedStep, RunMemory, plan_of};
use super::step::StepOutcome;
use super::{Executor, lock};
use crate::backlog::JournalOp;

impl Executor {
    pub(super) async fn execute_run(&self, run: v1::StartRun, cancel: CancellationToken) {
        let run_id = run.run_id.clone();
        self.emit(
            &run_id,
            Kind::RunStarted(v1::RunStarted {
                autonomous: run.autonomous.clone(),
            }),
        );
        let plan = plan_of(&run);
        let total: usize = plan.iter().map(Vec::len).sum();
        let on_failure = v1::OnFailure::try_from(run.on_failure).unwrap_or_default();
        let memory = Mutex::new(RunMemory::default());
        let mut results: Vec<String> = Vec::new();
        let mut ran = 0usize;
        let mut stopped: Option<String> = None;
        let mut held: Option<PlannedStep> = None;
        let mut cancelled = false;
        for stage in &plan {
            if cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            let outcomes = futures::future::join_all(
                stage
                    .iter()
                    .map(|ps| self.plan_step(&run_id, ps, &run, &cancel, &memory)),
            )
            .await;
            for (ps, outcome) in stage.iter().zip(outcomes) {
                ran += 1;
                match outcome {
                    StepOutcome::Finished(result, counters) => {
                        if let Some(c) = &counters {
                            lock(&memory).record(&ps.spec.ma, c);
                        }
                        let class = vocab::classify(&result);
                        if !class.lets_next_step_run() {
                            let always = class == ResultClass::DiscoveryErrors;
                            if stopped.is_none() && (always || on_failure == v1::OnFailure::Stop) {
                                stopped = Some(format!(
                                    "step {} ({}: {}) ended with {result}{}",
                                    ps.index + 1,
                                    ps.spec.ma,
                                    ps.spec.profile,
                                    if always {
                                        "; discovery errors always stop the run"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                        }
                        results.push(result);
                    }
                    StepOutcome::Skipped => {}
                    StepOutcome::Held => {
                        if held.is_none() {
                            held = Some(ps.clone());
                        }
                    }
                    StepOutcome::Cancelled => cancelled = true,
                }
            }
            if cancelled || held.is_some() || stopped.is_some() {
                break;
            }
        }
        let refs: Vec<&str> = results.iter().map(String::as_str).collect();
        let result = vocab::most_severe(refs.iter().copied())
            .unwrap_or_default()
            .to_string();
        let (state, message) = if cancelled || cancel.is_cancelled() {
            (v1::RunState::Cancelled, "cancelled on request".to_string())
        } else if let Some(h) = held {
            (
                v1::RunState::Held,
                format!(
                    "held before step {} ({}: {}) by its guard rail; approve it with 'syncfleet runs approve {run_id}'",
                    h.index + 1,
                    h.spec.ma,
                    h.spec.profile
                ),
            )
        } else if results.is_empty() {
            (
                v1::RunState::Succeeded,
                "nothing to do: no step's condition held".to_string(),
            )
        } else {
            let all_ran = stopped.is_none() || ran == total;
            let state = vocab::run_state_for(&refs, all_ran);
            let message = match &stopped {
                Some(why) if ran < total => format!("{why}; later steps were not run"),
                Some(why) => why.clone(),
                None => String::new(),
            };
            (state, message)
        };
        self.emit(
            &run_id,
            Kind::RunFinished(v1::RunFinished {
                state: state as i32,
                result,
                message,
            }),
        );
        // Nobody listening (no autonomy task) is fine.
        let _ = self.ended.send((run_id.clone(), state));
        self.writer.write(JournalOp::FinishRun(run_id));
    }

    /// One planned step: skipped when the continued run already executed it, else executed
    /// with its condition and guard checked under the engine locks.
    pub(super) async fn plan_step(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        run: &v1::StartRun,
        cancel: &CancellationToken,
        memory: &Mutex<RunMemory>,
    ) -> StepOutcome {
        if run.skip_steps.contains(&ps.index) {
            self.emit(
                run_id,
                Kind::StepSkipped(v1::StepSkipped {
                    index: ps.index,
                    reason: "executed by the held run this one continues".into(),
                }),
            );
            return StepOutcome::Skipped;
        }
        let step = self.execute_step(run_id, ps, cancel, memory);
        crate::telemetry::in_step(run_id, ps.index, &ps.spec, step).await
    }
}

#[cfg(test)]
mod tests;
