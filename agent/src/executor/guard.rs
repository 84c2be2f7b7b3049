//! Guard rails: a step whose MA has more staged or pending changes than its guard allows (a
//! count, or a percentage of the MA's connectors) is held until approved.
//!
//! Each limit reads one of the engine's pending counters (`NumImportAdd/Update/Delete`,
//! `NumExportAdd/Update/Delete`, read under the engine locks just before the step runs). The
//! engine has no pending-rename counter, so `max_staged_renames` limits the renames the earlier
//! steps of the same run staged on the MA (their run-history `stage-rename` counters).

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

/// What a guard field limits: how the held reason names it, the engine counter it reads, and
/// its value now.
fn measured(
    field: &str,
    pending: &v1::PendingCounters,
    staged_renames: u64,
) -> Option<(&'static str, &'static str, u64)> {
    Some(match field {
        "max_pending_deletes" => (
            "pending export deletes",
            "NumExportDelete",
            pending.export_delete,
        ),
        "max_staged_deletes" => ("staged deletes", "NumImportDelete", pending.import_delete),
        "max_staged_adds" => ("staged adds", "NumImportAdd", pending.import_add),
        "max_staged_updates" => ("staged updates", "NumImportUpdate", pending.import_update),
        "max_staged_renames" => (
            "staged renames",
            "stage-rename of the earlier steps of this run",
            staged_renames,
        ),
        "max_pending_adds" => ("pending export adds", "NumExportAdd", pending.export_add),
        "max_pending_updates" => (
            "pending export updates",
            "NumExportUpdate",
            pending.export_update,
        ),
        _ => return None,
    })
}

/// Why a guard rail holds the step, if it does: every limit whose counter is above it, as
/// `812 pending export deletes on AD (NumExportDelete) exceed max_pending_deletes 500`, joined
/// with `; `.
fn guard_trips(
    guard: &v1::Guard,
    ma: &str,
    pending: &v1::PendingCounters,
    staged_renames: u64,
) -> Option<String> {
    let reasons: Vec<String> = guard
        .limits()
        .into_iter()
        .filter_map(|(field, limit)| {
            let (max, text) = limit_objects(limit?, pending.total_connectors)?;
            let (what, counter, value) = measured(field, pending, staged_renames)?;
            (value > max)
                .then(|| format!("{value} {what} on {ma} ({counter}) exceed {field} {text}"))
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Why the step's guard rail holds it, or `None` when it may run: it has no guard, it was
/// approved, or its MA's counters are within the limits. `staged_renames` are the renames the
/// run's earlier steps staged on the MA. Guard rails fail closed: when the pending counters
/// could not be read (`pending` is `None`) nothing proves the step is safe.
pub(super) fn hold_reason(
    ps: &PlannedStep,
    pending: Option<&v1::PendingCounters>,
    staged_renames: u64,
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
        Some(p) => guard_trips(guard, &ps.spec.ma, p, staged_renames),
    }
}

#[cfg(test)]
mod tests;
