//! Run-number detection while `Execute` blocks: `RunNumber()` is read before `Execute`, and the
//! first number above it is the run's; polls of `RunDetails()` then stream the running step's
//! progress.

use crate::engine::EngineProgress;
use crate::engine::runhistory;

/// A `RunNumber()` string: `Ok(None)` when empty (never run / cleared), `Ok(Some(n))` for a
/// number, `Err` with the string otherwise (a provider string such as `connection-failure`).
pub fn parse_run_number(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<u64>().map(Some).map_err(|_| s.to_owned())
}

/// `step-result/@progress` of the running step in in-progress run-history XML, when the XML
/// is run `run_number`. `None` when the XML does not parse or is another run; `Some(None)` when
/// it is this run but gives no progress. The step running is the first without `end-date`,
/// else the last (run history lists steps by number; a step has an `end-date` only when
/// completed).
pub fn progress_of(xml: &str, run_number: u64) -> Option<Option<String>> {
    let run = runhistory::parse_one(xml).ok()?;
    if run.run_number != run_number {
        return None;
    }
    let step = run
        .steps
        .iter()
        .find(|s| s.finished_at.is_none())
        .or_else(|| run.steps.last());
    Some(step.and_then(|s| s.progress.clone()))
}

/// What one poll during `Execute` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observation {
    pub(super) run_number: Option<u64>,
    pub(super) details: Option<String>,
}

/// Turns polls during `Execute` into progress events: detects the run number (first number
/// above the snapshot) and emits an event when what is known changed.
#[derive(Debug)]
pub(super) struct ProgressTracker {
    before: u64,
    pub(super) ours: Option<u64>,
    last: Option<EngineProgress>,
}

impl ProgressTracker {
    pub(super) fn new(before: u64) -> Self {
        ProgressTracker {
            before,
            ours: None,
            last: None,
        }
    }

    pub(super) fn update(&mut self, obs: Observation) -> Option<EngineProgress> {
        if self.ours.is_none()
            && let Some(n) = obs.run_number
            && n > self.before
        {
            self.ours = Some(n);
        }
        let ours = self.ours?;
        let (progress, details_xml) = match (obs.run_number, obs.details) {
            (Some(n), Some(xml)) if n == ours => match progress_of(&xml, ours) {
                Some(p) => (p, Some(xml)),
                None => (None, None),
            },
            _ => (None, None),
        };
        let event = EngineProgress {
            run_number: ours,
            progress,
            details_xml,
        };
        if self.last.as_ref() == Some(&event) {
            return None;
        }
        self.last = Some(event.clone());
        Some(event)
    }
}
