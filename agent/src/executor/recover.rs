//! Runs interrupted by an agent restart: never started again, completed from the journal and
//! the engine's run history.

use std::sync::Arc;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tokio_util::sync::CancellationToken;

use super::plan::plan_of;
use super::{Executor, RunHandle, lock};
use crate::backlog::JournalOp;
use crate::engine::MaStatus;

impl Executor {
    /// Complete every run a previous agent process accepted and did not finish. Its execution
    /// ended with that process and it is never started again; what the engine did is read back
    /// from the engine's run history: a step whose engine run number was journaled gets the
    /// engine's result and counters (after the engine finishes it, if it still runs; it holds
    /// its locks meanwhile, as any run this process did not start). The run is `unknown` only
    /// when a step's outcome cannot be learnt: its run number was never journaled, or the
    /// engine no longer has that run. Runs with something to read from the engine are
    /// completed in the background (and show as in flight); returns how many runs there were.
    pub fn recover_interrupted(self: &Arc<Self>) -> Result<usize, crate::journal::JournalError> {
        let runs = self.journal.unfinished_runs()?;
        for run in &runs {
            let steps = self.journal.steps_of(&run.run_id)?;
            let from_engine: Vec<crate::journal::StepRecord> = steps
                .iter()
                .filter(|s| s.result.is_none() && s.run_number > 0)
                .cloned()
                .collect();
            tracing::warn!(run_id = %run.run_id, steps_to_read = from_engine.len(), "run was interrupted by an agent restart");
            if from_engine.is_empty() {
                let total = plan_of(run).iter().map(Vec::len).sum::<usize>();
                self.finish_recovered(&run.run_id, &steps, Vec::new(), total);
                continue;
            }
            for step in &from_engine {
                lock(&self.recovering)
                    .insert((step.ma.clone(), step.run_number), run.run_id.clone());
            }
            let cancel = CancellationToken::new();
            lock(&self.runs).insert(
                run.run_id.clone(),
                RunHandle {
                    cancel: cancel.clone(),
                },
            );
            let this = Arc::clone(self);
            let run = run.clone();
            tokio::spawn(async move {
                let total = plan_of(&run).iter().map(Vec::len).sum::<usize>();
                let mut read = Vec::new();
                for step in &from_engine {
                    read.push(this.read_back(&run.run_id, step, &cancel).await);
                    lock(&this.recovering).remove(&(step.ma.clone(), step.run_number));
                }
                this.finish_recovered(&run.run_id, &steps, read, total);
                lock(&this.runs).remove(&run.run_id);
            });
        }
        Ok(runs.len())
    }

    /// The result of an interrupted step from the engine's run history: waits while the engine
    /// still runs it (a cancellation stops it through the engine), then emits its
    /// `StepFinished`. `None` when the engine does not have the run.
    pub(super) async fn read_back(
        &self,
        run_id: &str,
        step: &crate::journal::StepRecord,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let n = step.run_number;
        let since = tokio::time::Instant::now();
        let mut stop_sent = false;
        let mut stopped_at: Option<tokio::time::Instant> = None;
        let mut told = false;
        loop {
            // An engine that does not end a stopped run: its result cannot be learnt.
            if stopped_at.is_some_and(|t| t.elapsed() > self.opts.stop_timeout) {
                break;
            }
            match self.engine.status(&step.ma).await {
                Ok(MaStatus::InProgress { run_number, .. }) if run_number == n => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(run_id, ma = %step.ma, error = %e, "cannot read the status of an interrupted step's run");
                    if since.elapsed() > self.opts.busy_timeout {
                        break;
                    }
                }
            }
            if since.elapsed() > self.opts.watchdog && !stop_sent {
                stop_sent = true;
                stopped_at = Some(tokio::time::Instant::now());
                let s = self.stop(&step.ma).await;
                tracing::warn!(run_id, ma = %step.ma, result = %s, "interrupted step exceeded the watchdog; stop requested");
            }
            if !told {
                told = true;
                self.waiting(
                    run_id,
                    step.index,
                    format!(
                        "the agent restarted while this step ran; the engine is still running it (MA {}, run {n}); waiting for its result",
                        step.ma
                    ),
                );
            }
            if !stop_sent && !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                stop_sent = true;
                stopped_at = Some(tokio::time::Instant::now());
                let s = self.stop(&step.ma).await;
                tracing::info!(run_id, ma = %step.ma, result = %s, "stop requested");
            } else if stop_sent {
                tokio::time::sleep(self.opts.busy_poll).await;
            }
        }
        let super::step::Details {
            summary,
            detail,
            settled,
        } = self.details(&step.ma, Some(n)).await;
        let result = settled
            .filter(|r| vocab::classify(r) != ResultClass::Transitional && r != "in-progress");
        let Some(result) = result else {
            tracing::warn!(run_id, ma = %step.ma, run_number = n, %detail, "interrupted step's result not in the engine's run history");
            return None;
        };
        let mut note = format!(
            "the agent restarted while this step ran; result read from the engine's run history (MA {}, run {n})",
            step.ma
        );
        if !detail.is_empty() {
            note.push_str("; ");
            note.push_str(&detail);
        }
        let mut finished = v1::StepFinished {
            index: step.index,
            result: result.clone(),
            started_at: None,
            finished_at: Some(syncfleet_proto::time::now()),
            counters: Some(summary.counters),
            run_number: n,
            connection_result: summary.connection.unwrap_or_default(),
            error_count: summary.error_count,
            detail: note,
            ..Default::default()
        };
        summary.errors.send_in(&mut finished);
        self.emit(run_id, Kind::StepFinished(finished));
        Some(result)
    }

    /// The `RunFinished` of a run interrupted by a restart, from the results the journal kept
    /// and those read back from the engine (`None`: not available).
    pub(super) fn finish_recovered(
        &self,
        run_id: &str,
        journaled: &[crate::journal::StepRecord],
        read: Vec<Option<String>>,
        total: usize,
    ) {
        let known: Vec<String> = journaled
            .iter()
            .filter_map(|s| s.result.clone())
            .chain(read.iter().flatten().cloned())
            .collect();
        let lost = read.iter().any(Option::is_none);
        let results: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|r| !r.is_empty())
            .collect();
        let (state, message) = if lost {
            (
                v1::RunState::Unknown,
                "the agent restarted while this run was in progress and the engine's run history no longer has the interrupted step's run; its outcome is unknown and the run will not be started again".to_string(),
            )
        } else if read.is_empty() && known.len() < total {
            (
                v1::RunState::Unknown,
                "the agent restarted while this run was in progress; its outcome was not observed and it will not be started again".to_string(),
            )
        } else if known.len() < total {
            (
                vocab::run_state_for(&results, false),
                format!(
                    "the agent restarted during this run; the interrupted step's result was read from the engine's run history; {} later step(s) were not run and the run will not be started again",
                    total - known.len()
                ),
            )
        } else if results.is_empty() {
            (
                v1::RunState::Succeeded,
                "nothing to do: no step's condition held".to_string(),
            )
        } else {
            (
                vocab::run_state_for(&results, true),
                "the agent restarted before it reported this run's end; step results were read from its journal and the engine's run history".to_string(),
            )
        };
        let result = vocab::most_severe(results.iter().copied())
            .unwrap_or_default()
            .to_string();
        self.emit(
            run_id,
            Kind::RunFinished(v1::RunFinished {
                state: state as i32,
                result,
                message,
            }),
        );
        self.writer.write(JournalOp::FinishRun(run_id.to_string()));
    }
}
