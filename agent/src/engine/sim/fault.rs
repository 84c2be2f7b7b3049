//! Failure injection: scripted failures and per-MA failure rates, turned into what the engine
//! does with an execution (see [`super::ScriptedFailure`] for the semantics of each result).

use rand::Rng;
use rand::rngs::StdRng;

use super::config::ScriptedFailure;
use super::model::MaSim;
use super::{FREEZE, MAX_FAILURES_PER_STEP};

/// Results that never start a run (no run number, no history): the `no-start-*` family and the
/// provider codes (`docs/engine.md`, "Run status vocabulary").
const NOT_STARTED: [&str; 4] = [
    "access-denied",
    "call-failure",
    "connection-failure",
    "missing-partition-for-run-step",
];

/// What an injected failure does to an execution.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fault {
    /// The engine freezes (a MIM Service MA import during a synchronization, or a scripted
    /// [`FREEZE`]).
    Freeze,
    /// The run does not start: this result, no run number, no history, no state change.
    NotStarted(String),
    /// The first step stops after processing the fraction `at` of its work.
    Stopped { result: String, at: f64 },
    /// The first step does all its work and reports `result`, with `errors` object errors.
    Completed { result: String, errors: u64 },
}

impl Fault {
    /// The fault for a configured result string; stop points and error counts are drawn from
    /// the MA's failure generator.
    pub fn from_result(result: &str, rng: &mut StdRng) -> Fault {
        let r = result.trim();
        if r.eq_ignore_ascii_case(FREEZE) {
            Fault::Freeze
        } else if r.starts_with("no-start-") || NOT_STARTED.contains(&r) {
            Fault::NotStarted(r.to_owned())
        } else if r == "success" || r.starts_with("completed-") {
            let errors = if r.ends_with("-errors") {
                1 + rng.random_range(0..MAX_FAILURES_PER_STEP)
            } else {
                0
            };
            Fault::Completed {
                result: r.to_owned(),
                errors,
            }
        } else {
            Fault::Stopped {
                result: r.to_owned(),
                at: rng.random_range(0.1..0.9),
            }
        }
    }
}

/// A scripted failure with its progress.
#[derive(Debug, Clone)]
pub(super) struct ScriptEntry {
    pub spec: ScriptedFailure,
    /// Matching executions let through because of `after`.
    skipped: u32,
    /// Matching executions failed.
    fired: u32,
}

impl ScriptEntry {
    pub fn new(spec: ScriptedFailure) -> ScriptEntry {
        ScriptEntry {
            spec,
            skipped: 0,
            fired: 0,
        }
    }
}

/// The failure (if any) for an execution of `profile` on `ma` that passed the start checks:
/// the first applicable script entry, else the MA's failure rate.
pub(super) fn draw(script: &mut [ScriptEntry], ma: &mut MaSim, profile: &str) -> Option<Fault> {
    for e in script.iter_mut() {
        let matches = e.spec.ma == ma.cfg.name
            && e.spec.profile.as_deref().is_none_or(|p| p == profile)
            && e.fired < e.spec.times;
        if !matches {
            continue;
        }
        if e.skipped < e.spec.after {
            e.skipped += 1;
            continue;
        }
        e.fired += 1;
        return Some(Fault::from_result(&e.spec.result, &mut ma.fail_rng));
    }
    let rate = ma.cfg.failure_rate;
    let choices = ma.cfg.failure_results.len();
    if rate <= 0.0 || choices == 0 || !ma.fail_rng.random_bool(rate.min(1.0)) {
        return None;
    }
    let pick = ma.fail_rng.random_range(0..choices);
    let result = ma.cfg.failure_results.get(pick)?.clone();
    Some(Fault::from_result(&result, &mut ma.fail_rng))
}
