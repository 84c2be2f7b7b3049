//! Guard rails: a step whose MA has more pending export deletes or staged deletes than its
//! guard allows (a count, or a percentage of the MA's connectors) is held until approved.

use syncfleet_proto::v1;

use super::plan::PlannedStep;

/// The limit in objects: a count, or a percentage of the MA's connectors.
fn limit_objects(limit: &v1::Limit, connectors: u64) -> Option<(u64, String)> {
    match limit.kind? {
        v1::limit::Kind::Count(n) => Some((n, format!("{n}"))),
        v1::limit::Kind::Percent(p) => {
            let n = (connectors as f64 * p / 100.0).floor() as u64;
            Some((n, format!("{p}% of {connectors} connectors = {n}")))
        }
    }
}

/// Why a guard rail holds the step, if it does: more pending export deletes than its
/// `max_pending_deletes`, or more staged deletes than its `max_staged_deletes` (each a count or
/// a percentage of the MA's connectors).
fn guard_trips(guard: &v1::Guard, pending: &v1::PendingCounters) -> Option<String> {
    if let Some(l) = &guard.max_pending_deletes
        && let Some((max, text)) = limit_objects(l, pending.total_connectors)
        && pending.export_delete > max
    {
        return Some(format!(
            "{} pending export deletes exceed max_pending_deletes {text}",
            pending.export_delete
        ));
    }
    if let Some(l) = &guard.max_staged_deletes
        && let Some((max, text)) = limit_objects(l, pending.total_connectors)
        && pending.import_delete > max
    {
        return Some(format!(
            "{} staged deletes exceed max_staged_deletes {text}",
            pending.import_delete
        ));
    }
    None
}

/// Why the step's guard rail holds it, or `None` when it may run: it has no guard, it was
/// approved, or its MA's pending counters are within the limits. Guard rails fail closed: when
/// the counters could not be read (`pending` is `None`) nothing proves the step is safe.
pub(super) fn hold_reason(
    ps: &PlannedStep,
    pending: Option<&v1::PendingCounters>,
) -> Option<String> {
    let guard = ps.guard.as_ref()?;
    if ps.approved {
        return None;
    }
    match pending {
        None => Some(format!(
            "the pending counters of {} could not be read, so its guard rail cannot be checked",
            ps.spec.ma
        )),
        Some(p) => guard_trips(guard, p),
    }
}

#[cfg(test)]
mod tests;
