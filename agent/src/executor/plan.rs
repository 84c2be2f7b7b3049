//! The plan of a run: stages in order, each a set of steps that run in parallel, and the
//! `only_if` conditions that skip a step with nothing to do, judged by the MA's pending counters
//! or by what earlier steps of the run did ([`RunMemory`]).

use std::collections::HashMap;
use std::sync::Mutex;

use syncfleet_proto::v1;

use super::lock;

/// One step of a run's plan, with its flattened index.
#[derive(Debug, Clone)]
pub(super) struct PlannedStep {
    pub(super) index: u32,
    pub(super) spec: v1::StepSpec,
    pub(super) only_if: v1::Condition,
    pub(super) guard: Option<v1::Guard>,
    pub(super) approved: bool,
}

/// The plan of a run: stages in order, each a set of steps that may run in parallel. Ad-hoc
/// runs (`steps`) become one stage per step.
pub(super) fn plan_of(run: &v1::StartRun) -> Vec<Vec<PlannedStep>> {
    let mut index = 0u32;
    let mut next = |spec: v1::StepSpec, only_if: i32, guard: Option<v1::Guard>| {
        let step = PlannedStep {
            index,
            spec,
            only_if: v1::Condition::try_from(only_if).unwrap_or(v1::Condition::Always),
            guard,
            approved: run.approved_steps.contains(&index),
        };
        index += 1;
        step
    };
    if run.stages.is_empty() {
        run.steps
            .iter()
            .map(|s| vec![next(s.clone(), 0, None)])
            .collect()
    } else {
        run.stages
            .iter()
            .map(|st| {
                st.steps
                    .iter()
                    .map(|p| {
                        next(
                            v1::StepSpec {
                                ma: p.ma.clone(),
                                profile: p.profile.clone(),
                            },
                            p.only_if,
                            p.guard,
                        )
                    })
                    .collect()
            })
            .collect()
    }
}

/// What earlier steps of a run did, per MA (for `only_if` conditions and the staged-renames
/// guard rail).
#[derive(Default)]
pub(super) struct RunMemory {
    staged: HashMap<String, bool>,
    exported: HashMap<String, bool>,
    /// Sum of the `stage-rename` counters of the steps that finished on the MA.
    renames: HashMap<String, u64>,
}

fn counter_sum(c: &v1::StepCounters, names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| c.counters.get(*n))
        .fold(0u64, |a, v| a.saturating_add(*v))
}

const STAGED: &[&str] = &[
    "stage-add",
    "stage-update",
    "stage-rename",
    "stage-delete",
    "stage-delete-add",
];
const EXPORTED: &[&str] = &[
    "export-add",
    "export-update",
    "export-rename",
    "export-delete",
    "export-delete-add",
];

impl RunMemory {
    /// Remember what a finished step on `ma` staged and exported.
    pub(super) fn record(&mut self, ma: &str, counters: &v1::StepCounters) {
        if counter_sum(counters, STAGED) > 0 {
            self.staged.insert(ma.to_string(), true);
        }
        if counter_sum(counters, EXPORTED) > 0 {
            self.exported.insert(ma.to_string(), true);
        }
        let renames = counter_sum(counters, &["stage-rename"]);
        if renames > 0 {
            let n = self.renames.entry(ma.to_string()).or_default();
            *n = n.saturating_add(renames);
        }
    }

    /// Renames staged on `ma` by the steps of this run that finished so far (the engine has no
    /// pending-rename counter; this is what the staged-renames guard rail limits).
    pub(super) fn staged_renames(&self, ma: &str) -> u64 {
        self.renames.get(ma).copied().unwrap_or(0)
    }
}

/// Why the step's `only_if` condition skips it, or `None` when the step runs. `pending` are the
/// MA's pending counters read under the engine locks just before `Execute` (`None`: they could
/// not be read).
pub(super) fn skip_reason(
    ps: &PlannedStep,
    pending: Option<&v1::PendingCounters>,
    memory: &Mutex<RunMemory>,
) -> Option<String> {
    let ma = &ps.spec.ma;
    match ps.only_if {
        v1::Condition::Always => None,
        v1::Condition::StagedChanges => {
            let staged = match pending {
                Some(p) => p.import_add + p.import_update + p.import_delete > 0,
                None => lock(memory).staged.get(ma).copied().unwrap_or(true),
            };
            (!staged).then(|| format!("no staged changes on {ma}"))
        }
        v1::Condition::PendingExports => {
            // Unknown counters: run the step (a condition saves time, it is not a guard).
            let exports =
                pending.is_none_or(|p| p.export_add + p.export_update + p.export_delete > 0);
            (!exports).then(|| format!("no pending exports on {ma}"))
        }
        v1::Condition::Exported => (!lock(memory).exported.get(ma).copied().unwrap_or(false))
            .then(|| format!("nothing was exported on {ma} earlier in this run")),
    }
}

#[cfg(test)]
mod tests;
