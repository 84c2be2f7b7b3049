//! Run-history and pending counters in the protocol's form.

use std::collections::BTreeMap;

use syncfleet_proto::v1;

use crate::engine::{PendingCounters, runhistory};

/// An MA's pending counters as the protocol sends them (step start, heartbeats).
pub fn pending_to_proto(p: &PendingCounters) -> v1::PendingCounters {
    v1::PendingCounters {
        import_add: p.import_add,
        import_update: p.import_update,
        import_delete: p.import_delete,
        export_add: p.export_add,
        export_update: p.export_update,
        export_delete: p.export_delete,
        total_connectors: p.total_connectors,
        cs_objects: p.cs_objects,
    }
}

/// Convert parsed run-history counters to the protocol's form.
pub fn to_proto_counters(
    counters: &BTreeMap<String, u64>,
    outbound: &BTreeMap<String, BTreeMap<String, u64>>,
) -> v1::StepCounters {
    v1::StepCounters {
        counters: counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        outbound: outbound
            .iter()
            .map(|(ma, set)| {
                (
                    ma.clone(),
                    v1::CounterSet {
                        values: set.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    },
                )
            })
            .collect(),
    }
}

/// Sum the counters of every step of a run (a run profile may have several steps).
pub(super) fn summarize(
    details: &runhistory::RunDetails,
) -> (v1::StepCounters, Option<String>, u64) {
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut outbound: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut errors: u64 = 0;
    let mut connection = None;
    for step in &details.steps {
        for (k, v) in &step.counters {
            let e = counters.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
        for (ma, set) in &step.outbound {
            let target = outbound.entry(ma.clone()).or_default();
            for (k, v) in set {
                let e = target.entry(k.clone()).or_default();
                *e = e.saturating_add(*v);
            }
        }
        errors = errors.saturating_add(step.errors.count);
        if step.connection_result.is_some() {
            connection.clone_from(&step.connection_result);
        }
    }
    (to_proto_counters(&counters, &outbound), connection, errors)
}
