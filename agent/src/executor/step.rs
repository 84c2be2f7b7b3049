//! Executing one step: the locks, the step's condition and guard, `Execute` with progress
//! forwarding, cancellation (`Stop`) and the watchdog, busy refusals waited out, retries, and
//! the result and counters read from the run history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncfleet_proto::v1::{self, agent_event::Kind};
use syncfleet_proto::vocab::{self, ResultClass};
use tokio_util::sync::CancellationToken;

use super::counters::{Summary, pending_to_proto, summarize};
use super::guard;
use super::locks::OursOn;
use super::plan::{self, PlannedStep, RunMemory};
use super::{Executor, lock};
use crate::backlog::JournalOp;
use crate::engine::runhistory;
use crate::engine::{EngineError, EngineProgress, ExecuteOutcome, MaStatus};
use crate::event_ids::EventId;

/// How one call of `Execute` ended.
pub(super) enum Attempt {
    Returned {
        outcome: Result<ExecuteOutcome, crate::engine::EngineError>,
        stop_sent: bool,
    },
    Watchdog {
        returned: Option<String>,
        stop: String,
    },
    /// Cancelled, and the engine did not end the step within `stop_timeout` of `Stop`: the
    /// step is given up (the engine is marked unhealthy) instead of keeping the run open.
    Abandoned,
}

/// What the engine's run history says about one execution (see [`Executor::details`]).
#[derive(Debug, Default)]
pub(super) struct Details {
    pub(super) summary: Summary,
    /// Why the history could not be used; empty when it could.
    pub(super) detail: String,
    /// The run's result as the history has it (settles a `completing-*` result).
    pub(super) settled: Option<String>,
}

pub(super) enum StepOutcome {
    /// The engine (or the driver, or the watchdog) produced a result; counters when known.
    Finished(String, Option<v1::StepCounters>),
    /// The only_if condition was false.
    Skipped,
    /// The guard rail tripped.
    Held,
    Cancelled,
}

impl Executor {
    pub(super) async fn execute_step(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        cancel: &CancellationToken,
        memory: &Mutex<RunMemory>,
    ) -> StepOutcome {
        let index = ps.index;
        let step = &ps.spec;
        let sync_class = self.is_sync_class(&step.ma, &step.profile);
        let ma_lock = self.ma_lock(&step.ma);
        let busy_since = tokio::time::Instant::now();
        let mut attempt: u32 = 1;
        let mut earlier: Vec<String> = Vec::new();
        // The last waiting reason reported: a step waits silently while the reason stays.
        let mut last_reason: Option<String> = None;
        loop {
            // Per-MA exclusivity first, then the server-wide gate (always in this order, so two
            // runs can never wait on each other).
            // A lock held by another step of ours is waited for like a foreign run: the step
            // says why first.
            let ma_guard = match ma_lock.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    let reason = format!(
                        "MA {} is running a step of another syncfleet run; waiting for it to end",
                        step.ma
                    );
                    if last_reason.as_deref() != Some(reason.as_str()) {
                        self.waiting(run_id, index, reason.clone());
                        last_reason = Some(reason);
                    }
                    tokio::select! {
                        g = ma_lock.lock() => g,
                        () = cancel.cancelled() => return StepOutcome::Cancelled,
                    }
                }
            };
            let gate = match self.try_gate(sync_class) {
                Ok(g) => g,
                Err(reason) => {
                    if last_reason.as_deref() != Some(reason) {
                        self.waiting(run_id, index, reason.to_string());
                        last_reason = Some(reason.to_string());
                    }
                    tokio::select! {
                        g = self.gate(sync_class) => g,
                        () = cancel.cancelled() => return StepOutcome::Cancelled,
                    }
                }
            };
            // A run started outside syncfleet (Sync Service Manager, a script, a run of an
            // earlier agent process) holds the same locks as one of ours.
            match self
                .foreign_blocker(&step.ma, &step.profile, sync_class)
                .await
            {
                Ok(Some(reason)) => {
                    drop((gate, ma_guard));
                    if busy_since.elapsed() > self.opts.busy_timeout {
                        return self.finish_without_engine(
                            run_id,
                            index,
                            "no-start-ma-already-running",
                            format!(
                                "still waiting after {}: {reason}",
                                humantime::format_duration(self.opts.busy_timeout)
                            ),
                        );
                    }
                    if last_reason.as_deref() != Some(reason.as_str()) {
                        self.waiting(run_id, index, reason.clone());
                        last_reason = Some(reason);
                    }
                    if !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                        return StepOutcome::Cancelled;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    return self.finish_without_engine(
                        run_id,
                        index,
                        engine_error_result(&e),
                        e.to_string(),
                    );
                }
            }
            let pending = self
                .engine
                .pending(&step.ma)
                .await
                .ok()
                .map(|p| pending_to_proto(&p));
            if let Err(outcome) = self.pre_check(run_id, ps, pending.as_ref(), memory) {
                return outcome;
            }
            self.stagger().await;
            // From here until the step's result is read, a run on this MA is ours.
            let _ours = OursOn::new(&self.executing, &step.ma);
            let started_at = syncfleet_proto::time::now();
            self.emit(
                run_id,
                Kind::StepStarted(v1::StepStarted {
                    index,
                    ma: step.ma.clone(),
                    profile: step.profile.clone(),
                    run_number: 0,
                    pending,
                    attempt,
                }),
            );
            let outcome = match self.attempt(run_id, index, step, cancel).await {
                Attempt::Returned { outcome, stop_sent } => match outcome {
                    Ok(o) => {
                        if !stop_sent
                            && vocab::classify(&o.result) == ResultClass::Busy
                            && busy_since.elapsed() < self.opts.busy_timeout
                        {
                            // The engine's own refusal: wait and retry, never a failure.
                            drop((gate, ma_guard));
                            self.waiting(
                                run_id,
                                index,
                                format!(
                                    "engine refused to start ({}); waiting and retrying",
                                    o.result
                                ),
                            );
                            last_reason = None;
                            if !self.sleep_or_cancel(self.opts.busy_poll, cancel).await {
                                return StepOutcome::Cancelled;
                            }
                            continue;
                        }
                        o
                    }
                    Err(e) => {
                        return self.finish_without_engine(
                            run_id,
                            index,
                            engine_error_result(&e),
                            e.to_string(),
                        );
                    }
                },
                Attempt::Abandoned => return StepOutcome::Cancelled,
                Attempt::Watchdog { returned, stop } => {
                    drop((gate, ma_guard));
                    let detail = match &returned {
                        Some(r) => format!(
                            "stopped by the watchdog after {}: Stop() returned {stop:?}, the engine then reported {r:?}",
                            humantime::format_duration(self.opts.watchdog)
                        ),
                        None => {
                            let msg = format!(
                                "sync engine not responding: {} {:?} exceeded the {} watchdog and did not stop within {} of Stop() ({stop:?}); check the sync service",
                                step.ma,
                                step.profile,
                                humantime::format_duration(self.opts.watchdog),
                                humantime::format_duration(self.opts.stop_timeout)
                            );
                            self.mark_stuck(&step.ma, msg.clone());
                            msg
                        }
                    };
                    tracing::error!(run_id, ma = %step.ma, profile = %step.profile, %detail, "watchdog");
                    return self.finish_without_engine(
                        run_id,
                        index,
                        vocab::WATCHDOG_STOPPED,
                        detail,
                    );
                }
            };
            let mut result = outcome.result.clone();
            if vocab::classify(&result) == ResultClass::Transitional {
                // Execute can return while the engine is still completing its run (a
                // `completing-*` result): wait until the MA is no longer in progress.
                self.poll_status(&step.ma, self.opts.busy_poll, |status| {
                    (!matches!(status, Ok(MaStatus::InProgress { .. }))).then_some(())
                })
                .await;
            }
            let Details {
                summary,
                detail,
                settled,
            } = self.details(&step.ma, outcome.run_number).await;
            let counters = summary.counters;
            if vocab::classify(&result) == ResultClass::Transitional
                && let Some(r) = settled
            {
                result = r;
            }
            if self.opts.retry.retries(&result)
                && attempt <= self.opts.retry.attempts
                && !cancel.is_cancelled()
            {
                drop((gate, ma_guard));
                earlier.push(result.clone());
                let delay = self.opts.retry.backoff(attempt);
                self.waiting(
                    run_id,
                    index,
                    format!(
                        "engine returned {result}; retry {attempt} of {} in {}",
                        self.opts.retry.attempts,
                        humantime::format_duration(Duration::from_millis(
                            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
                        ))
                    ),
                );
                if !self.sleep_or_cancel(delay, cancel).await {
                    return StepOutcome::Cancelled;
                }
                attempt += 1;
                continue;
            }
            let detail = if earlier.is_empty() {
                detail
            } else {
                let mut d = format!(
                    "attempt {attempt}; earlier attempts: {}",
                    earlier.join(", ")
                );
                if !detail.is_empty() {
                    d.push_str("; ");
                    d.push_str(&detail);
                }
                d
            };
            let mut finished = v1::StepFinished {
                index,
                result: result.clone(),
                started_at: Some(started_at),
                finished_at: Some(syncfleet_proto::time::now()),
                counters: Some(counters.clone()),
                run_number: outcome.run_number.unwrap_or(0),
                connection_result: summary.connection.unwrap_or_default(),
                error_count: summary.error_count,
                detail,
                ..Default::default()
            };
            summary.errors.send_in(&mut finished);
            self.emit(run_id, Kind::StepFinished(finished));
            drop((gate, ma_guard));
            return StepOutcome::Finished(result, Some(counters));
        }
    }

    /// One call of `Execute`, with progress forwarding, cancellation (→ `Stop`) and the
    /// watchdog.
    pub(super) async fn attempt(
        &self,
        run_id: &str,
        index: u32,
        step: &v1::StepSpec,
        cancel: &CancellationToken,
    ) -> Attempt {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = self.engine.execute(&step.ma, &step.profile, tx);
        let forward = self.forward_progress(run_id, index, rx);
        let watchdog = tokio::time::sleep(self.opts.watchdog);
        // The engine run number, journaled as soon as the run shows: an agent restart then
        // learns the step's outcome from the engine's run history.
        let discover = self.poll_status(
            &step.ma,
            self.opts.busy_poll.min(Duration::from_millis(250)),
            |status| match status {
                Ok(MaStatus::InProgress {
                    profile,
                    run_number,
                }) if profile == step.profile => Some(run_number),
                _ => None,
            },
        );
        tokio::pin!(exec);
        tokio::pin!(forward);
        tokio::pin!(watchdog);
        tokio::pin!(discover);
        // Armed when a cancellation sent Stop.
        let stop_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(stop_deadline);
        let mut stop_sent = false;
        let mut stop_result = String::new();
        let mut recorded = false;
        loop {
            tokio::select! {
                out = &mut exec => return Attempt::Returned { outcome: out, stop_sent },
                () = &mut forward => {}
                run_number = &mut discover, if !recorded => {
                    recorded = true;
                    self.writer.write(JournalOp::StepRun {
                        run_id: run_id.to_string(),
                        index,
                        ma: step.ma.clone(),
                        run_number,
                    });
                }
                () = cancel.cancelled(), if !stop_sent => {
                    stop_sent = true;
                    let s = self.stop(&step.ma).await;
                    tracing::info!(run_id, ma = %step.ma, result = %s, "stop requested");
                    stop_result = s;
                    stop_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.opts.stop_timeout);
                }
                () = &mut stop_deadline, if stop_sent => {
                    let msg = format!(
                        "sync engine not responding: {} {:?} was cancelled and did not stop within {} of Stop() ({stop_result:?}); check the sync service",
                        step.ma,
                        step.profile,
                        humantime::format_duration(self.opts.stop_timeout)
                    );
                    tracing::error!(run_id, ma = %step.ma, profile = %step.profile, detail = %msg, "cancelled step abandoned");
                    self.mark_stuck(&step.ma, msg);
                    return Attempt::Abandoned;
                }
                () = &mut watchdog => {
                    let stop = self.stop(&step.ma).await;
                    let returned = tokio::time::timeout(self.opts.stop_timeout, &mut exec)
                        .await
                        .ok()
                        .map(|o| o.map_or_else(|e| e.to_string(), |o| o.result));
                    return Attempt::Watchdog { returned, stop };
                }
            }
        }
    }

    /// Evaluate a step's `only_if` condition and its guard rail against the MA's pending counters
    /// (read under the engine locks, just before Execute). `Err` carries the outcome when the
    /// step must not run.
    fn pre_check(
        &self,
        run_id: &str,
        ps: &PlannedStep,
        pending: Option<&v1::PendingCounters>,
        memory: &Mutex<RunMemory>,
    ) -> Result<(), StepOutcome> {
        if let Some(reason) = plan::skip_reason(ps, pending, memory) {
            self.emit(
                run_id,
                Kind::StepSkipped(v1::StepSkipped {
                    index: ps.index,
                    reason,
                }),
            );
            return Err(StepOutcome::Skipped);
        }
        let staged_renames = lock(memory).staged_renames(&ps.spec.ma);
        if let Some(reason) = guard::hold_reason(ps, pending, staged_renames) {
            tracing::warn!(event_id = EventId::RunHeld.code(), run_id, ma = %ps.spec.ma, %reason, "guard rail holds the run");
            self.emit(
                run_id,
                Kind::StepHeld(v1::StepHeld {
                    index: ps.index,
                    reason,
                    pending: pending.copied(),
                }),
            );
            return Err(StepOutcome::Held);
        }
        Ok(())
    }

    /// Ask the engine for the status of `ma` every `every` until `done` maps the answer (or the
    /// error) to a value, and return it.
    async fn poll_status<T>(
        &self,
        ma: &str,
        every: Duration,
        mut done: impl FnMut(Result<MaStatus, EngineError>) -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = done(self.engine.status(ma).await) {
                return value;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `Stop` through the engine, bounded by `stop_timeout`.
    pub(super) async fn stop(&self, ma: &str) -> String {
        match tokio::time::timeout(self.opts.stop_timeout, self.engine.stop(ma)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(self.opts.stop_timeout)
            ),
        }
    }

    /// Mark the engine unhealthy until the MA is idle and the engine's probe is good again.
    pub(super) fn mark_stuck(&self, ma: &str, detail: String) {
        *lock(&self.stuck) = Some(detail);
        let engine = Arc::clone(&self.engine);
        let stuck = Arc::clone(&self.stuck);
        let ma = ma.to_string();
        let poll = self.opts.busy_poll;
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            loop {
                tokio::time::sleep(poll).await;
                let idle = matches!(engine.status(&ma).await, Ok(MaStatus::Idle));
                if idle && engine.health().await.healthy {
                    *lock(&stuck) = None;
                    tracing::info!(ma, "sync engine responsive again");
                    return;
                }
            }
        }));
    }

    /// What the engine's run history says about run `run_number` of `ma`: its counters, errors
    /// and settled result; `detail` says why when the history is unavailable or unreadable.
    pub(super) async fn details(&self, ma: &str, run_number: Option<u64>) -> Details {
        let Some(n) = run_number else {
            return Details::default();
        };
        match self.engine.run_details(ma, n).await {
            Ok(xml) => match runhistory::parse_one(&xml) {
                Ok(d) => Details {
                    settled: d.result().map(str::to_string),
                    summary: summarize(&d),
                    detail: String::new(),
                },
                Err(e) => Details {
                    detail: format!("run history of run {n} unreadable: {e}"),
                    ..Details::default()
                },
            },
            Err(e) => Details {
                detail: format!("run history of run {n} unavailable: {e}"),
                ..Details::default()
            },
        }
    }

    pub(super) fn finish_without_engine(
        &self,
        run_id: &str,
        index: u32,
        result: impl Into<String>,
        detail: String,
    ) -> StepOutcome {
        let result = result.into();
        let now = syncfleet_proto::time::now();
        self.emit(
            run_id,
            Kind::StepFinished(v1::StepFinished {
                index,
                result: result.clone(),
                started_at: Some(now),
                finished_at: Some(now),
                counters: None,
                run_number: 0,
                connection_result: String::new(),
                error_count: 0,
                detail,
                ..Default::default()
            }),
        );
        StepOutcome::Finished(result, None)
    }

    /// Forward engine progress as throttled StepProgress events. Never completes: the caller
    /// stops polling it when the engine's execute returns.
    pub(super) async fn forward_progress(
        &self,
        run_id: &str,
        index: u32,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<EngineProgress>,
    ) {
        let mut last: Option<tokio::time::Instant> = None;
        while let Some(p) = rx.recv().await {
            if last.is_some_and(|t| t.elapsed() < self.opts.progress_interval) {
                continue;
            }
            last = Some(tokio::time::Instant::now());
            let counters = p
                .details_xml
                .as_deref()
                .and_then(|x| runhistory::parse_one(x).ok())
                .map(|d| summarize(&d).counters);
            self.emit(
                run_id,
                Kind::StepProgress(v1::StepProgress {
                    index,
                    progress: p.progress.unwrap_or_default(),
                    counters,
                }),
            );
        }
        std::future::pending::<()>().await;
    }
}

/// The result string recorded when the driver itself failed (no engine string exists).
pub(super) fn engine_error_result(e: &crate::engine::EngineError) -> &'static str {
    match e {
        crate::engine::EngineError::NoSuchMa(_) => "no-start-ma",
        crate::engine::EngineError::Unavailable(_) => "connection-failure",
        _ => "call-failure",
    }
}

#[cfg(test)]
mod cancel_tests;
#[cfg(test)]
mod tests;
