//! `Execute` of a run profile: the run number read before it, polls while it blocks (run number,
//! progress), a `completing-*` result settled by polling `RunStatus()`, and the pause after a
//! run so that its history is complete when read.

use std::sync::Arc;

use syncfleet_proto::vocab::{self, ResultClass};

use super::api::{WmiApi, WmiError};
use super::driver::WmiEngine;
use super::run_number::{Observation, ProgressTracker, parse_run_number};
use super::status::{is_provider_failure, refused_to_start, result_from_error};
use crate::engine::runhistory;
use crate::engine::{EngineError, ExecuteOutcome, ProgressSink};

/// While settling a `completing-*` result, give up after this many consecutive failed polls.
pub const MAX_SETTLE_FAILURES: u32 = 3;

impl<A: WmiApi> WmiEngine<A> {
    /// `RunNumber()` of an MA, parsed. `Err(Ok(result))`: the engine answered with a string
    /// that is not a number, or the call failed; `result` is what `execute` reports.
    pub(super) async fn snapshot(&self, ma: &str) -> Result<Result<u64, String>, EngineError> {
        let m = ma.to_owned();
        let raw = self
            .blocking("RunNumber", self.cfg.blocking_timeout, move |a| {
                a.run_number(&m)
            })
            .await?;
        Ok(match raw {
            Ok(s) => parse_run_number(&s).map(|n| n.unwrap_or(0)),
            Err(e) if e.is_not_found() => return Err(EngineError::NoSuchMa(ma.to_owned())),
            Err(e) => Err(result_from_error(&e)),
        })
    }

    /// One poll while `Execute` blocks: `RunNumber()` and, once a new run exists, `RunDetails()`.
    /// Errors are logged and count as "nothing seen".
    pub(super) async fn observe(&self, ma: &str, before: u64) -> Observation {
        let m = ma.to_owned();
        let polled = self
            .blocking(
                "RunNumber/RunDetails",
                self.cfg.blocking_timeout,
                move |a| {
                    let n = a.run_number(&m)?;
                    let n = parse_run_number(&n).ok().flatten();
                    let details = match n {
                        Some(n) if n > before => Some(a.run_details(&m)?),
                        _ => None,
                    };
                    Ok::<_, WmiError>((n, details))
                },
            )
            .await;
        match polled {
            Ok(Ok((run_number, details))) => Observation {
                run_number,
                details,
            },
            Ok(Err(e)) => {
                tracing::debug!(ma, error = %e, "progress poll failed");
                Observation {
                    run_number: None,
                    details: None,
                }
            }
            Err(e) => {
                tracing::debug!(ma, error = %e, "progress poll failed");
                Observation {
                    run_number: None,
                    details: None,
                }
            }
        }
    }

    /// Poll `RunStatus()` until the run is final; returns the final string, or `initial`
    /// when that cannot be learned.
    pub(super) async fn settle(&self, ma: &str, ours: Option<u64>, initial: String) -> String {
        let deadline = tokio::time::Instant::now() + self.cfg.completing_timeout;
        let mut failures = 0u32;
        loop {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(ma, result = %initial, "run did not settle in time");
                return initial;
            }
            tokio::time::sleep(self.cfg.completing_poll).await;
            let m = ma.to_owned();
            let polled = self
                .blocking("RunStatus", self.cfg.blocking_timeout, move |a| {
                    let status = a.run_status(&m)?;
                    let number = a.run_number(&m).ok();
                    Ok::<_, WmiError>((status, number))
                })
                .await;
            let (status, number) = match polled {
                Ok(Ok((s, n))) if !is_provider_failure(&s) => {
                    (s, n.and_then(|n| parse_run_number(&n).ok().flatten()))
                }
                other => {
                    failures += 1;
                    tracing::debug!(ma, ?other, failures, "settle poll failed");
                    if failures >= MAX_SETTLE_FAILURES {
                        tracing::warn!(ma, result = %initial, "cannot read the final run status");
                        return initial;
                    }
                    continue;
                }
            };
            failures = 0;
            if let (Some(o), Some(n)) = (ours, number)
                && n > o
            {
                // A later run started: ours is over; its history says how it ended.
                return self.history_result(ma, o).await.unwrap_or(initial);
            }
            if status.trim().is_empty() {
                return initial;
            }
            if vocab::classify(&status) != ResultClass::Transitional {
                return status;
            }
        }
    }

    /// The run-level result of a stored run (most severe step result).
    pub(super) async fn history_result(&self, ma: &str, run_number: u64) -> Option<String> {
        let xml = self.fetch_run_details(ma, run_number).await.ok()?;
        let run = runhistory::parse_one(&xml).ok()?;
        run.result().map(str::to_owned)
    }

    pub(super) async fn run_execute(
        &self,
        ma: &str,
        profile: &str,
        progress: ProgressSink,
    ) -> Result<ExecuteOutcome, EngineError> {
        let before = match self.snapshot(ma).await? {
            Ok(n) => n,
            Err(result) => {
                // Not even RunNumber() works: do not start a run we could not follow.
                return Ok(ExecuteOutcome {
                    result,
                    run_number: None,
                });
            }
        };
        let api = Arc::clone(&self.api);
        let (m, p) = (ma.to_owned(), profile.to_owned());
        let exec = tokio::task::spawn_blocking(move || api.execute(&m, &p));
        tokio::pin!(exec);
        let mut tracker = ProgressTracker::new(before);
        let joined = loop {
            let poll = async {
                tokio::time::sleep(self.cfg.poll_interval).await;
                self.observe(ma, before).await
            };
            tokio::select! {
                biased;
                r = &mut exec => break r,
                obs = poll => {
                    if let Some(event) = tracker.update(obs) {
                        // The receiver may be gone; the run goes on regardless.
                        let _ = progress.send(event);
                    }
                }
            }
        };
        let (mut result, lost) = match joined {
            Ok(Ok(s)) => (s, false),
            Ok(Err(e)) => {
                tracing::warn!(ma, profile, error = %e, "WMI Execute failed");
                (result_from_error(&e), e.is_service_lost())
            }
            Err(e) => {
                return Err(EngineError::Unavailable(format!(
                    "WMI Execute of {profile:?} on {ma:?} failed on its thread: {e}"
                )));
            }
        };
        if refused_to_start(&result) {
            return Ok(ExecuteOutcome {
                result,
                run_number: None,
            });
        }
        let mut run_number = tracker.ours;
        if run_number.is_none() {
            let m = ma.to_owned();
            if let Ok(Ok(s)) = self
                .blocking("RunNumber", self.cfg.blocking_timeout, move |a| {
                    a.run_number(&m)
                })
                .await
                && let Ok(Some(n)) = parse_run_number(&s)
                && n > before
            {
                run_number = Some(n);
            }
        }
        if vocab::classify(&result) == ResultClass::Transitional || (lost && run_number.is_some()) {
            result = self.settle(ma, run_number, result).await;
        }
        if run_number.is_some() && !self.cfg.post_run_delay.is_zero() {
            tokio::time::sleep(self.cfg.post_run_delay).await;
        }
        Ok(ExecuteOutcome { result, run_number })
    }
}

#[cfg(test)]
mod tests;
