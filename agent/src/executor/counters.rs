//! Run-history and pending counters in the protocol's form.

use std::collections::BTreeMap;

use syncfleet_proto::step_errors::StepErrors;
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

/// What the run history says about one execution of a run profile, in the protocol's form.
#[derive(Debug, Default)]
pub(super) struct Summary {
    /// The counters of every engine step, summed.
    pub(super) counters: v1::StepCounters,
    /// The last connection result the engine reported.
    pub(super) connection: Option<String>,
    /// Object errors the engine counted, over every engine step.
    pub(super) error_count: u64,
    /// The first object errors and connection incidents, bounded for the protocol.
    pub(super) errors: StepErrors,
}

/// Sum the counters of every step of a run (a run profile may have several steps) and collect
/// its object errors and connection incidents in engine-step order.
pub(super) fn summarize(details: &runhistory::RunDetails) -> Summary {
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut outbound: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut errors: u64 = 0;
    let mut connection = None;
    let mut object_errors = Vec::new();
    let mut incidents = Vec::new();
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
        object_errors.extend(step.errors.first.iter().map(object_error));
        incidents.extend(step.connection_incidents.iter().map(incident));
    }
    let listed = u64::try_from(object_errors.len()).unwrap_or(u64::MAX);
    Summary {
        counters: to_proto_counters(&counters, &outbound),
        connection,
        error_count: errors,
        errors: StepErrors {
            object_errors,
            // The parser counts every error and keeps the first few of each engine step.
            object_errors_omitted: errors.saturating_sub(listed),
            connection_incidents: incidents,
            connection_incidents_omitted: 0,
        }
        .bounded(),
    }
}

/// One parsed object error in the protocol's form.
fn object_error(e: &runhistory::SyncErrorInfo) -> v1::ObjectError {
    v1::ObjectError {
        kind: e.kind.clone(),
        dn: e.dn.clone(),
        cs_guid: e.cs_guid.clone(),
        error_type: e.error_type.clone(),
        error_code: e.error_code.clone().unwrap_or_default(),
        error_literal: e.error_literal.clone().unwrap_or_default(),
        // The parser marks a literal it cut with a final `…`.
        literal_truncated: e
            .error_literal
            .as_deref()
            .is_some_and(|l| l.chars().count() > runhistory::MAX_LITERAL_CHARS),
    }
}

/// One parsed connection incident in the protocol's form.
fn incident(i: &runhistory::Incident) -> v1::ConnectionIncident {
    v1::ConnectionIncident {
        connection_result: i.connection_result.clone(),
        date: i.date.map(syncfleet_proto::time::to_proto),
        server: i.server.clone(),
        error_code: i.error_code.clone().unwrap_or_default(),
        error_literal: i.error_literal.clone().unwrap_or_default(),
        server_error_detail: i.server_error_detail.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELTA_IMPORT: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
    );
    const EXPORT: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
    );

    /// A real export with errors: every listed error with its DN, anchor, type, code and
    /// literal, in the protocol's form.
    #[test]
    fn object_errors_of_a_real_export_reach_the_protocol() {
        let d = runhistory::parse_one(EXPORT).unwrap();
        let s = summarize(&d);
        assert_eq!(s.error_count, 1);
        let e = &s.errors.object_errors;
        assert_eq!(e.len(), 1);
        assert_eq!(s.errors.object_errors_omitted, 0);
        assert_eq!(e[0].kind, "export");
        assert_eq!(e[0].dn, "MVID=67d2da90-0c2a-e411-a2e8-0050568e45d6");
        assert_eq!(e[0].cs_guid, "{12345678-DF83-E611-8CE8-00505689546C}");
        assert_eq!(e[0].error_type, "ma-extension-error");
        assert_eq!(e[0].error_code, "0x80230703");
        assert!(
            e[0].error_literal
                .starts_with("System.Reflection.TargetInvocationException"),
            "{}",
            e[0].error_literal
        );
        assert!(
            e[0].error_literal.chars().count() <= syncfleet_proto::step_errors::MAX_LITERAL_CHARS
        );
    }

    /// A real import that lost its connection: the incidents with their results, servers,
    /// dates and the directory's error.
    #[test]
    fn connection_incidents_of_a_real_import_reach_the_protocol() {
        let d = runhistory::parse_one(DELTA_IMPORT).unwrap();
        let s = summarize(&d);
        let i = &s.errors.connection_incidents;
        let failed = i
            .iter()
            .find(|i| i.connection_result == "failed-search")
            .unwrap();
        assert_eq!(failed.server, "DC01.ab.company.com:389");
        assert_eq!(failed.error_code, "8453");
        assert!(
            failed
                .error_literal
                .contains("Replication access was denied"),
            "{failed:?}"
        );
        assert_eq!(
            failed.date.map(|t| syncfleet_proto::time::rfc3339(&t)),
            Some("2017-01-04T23:00:58.957Z".to_string())
        );
        assert!(i.iter().any(|i| i.connection_result == "success"));
        assert_eq!(s.errors.connection_incidents_omitted, 0);
    }

    /// More errors than are sent: the first ones are sent and the rest counted.
    #[test]
    fn errors_beyond_those_kept_are_counted_as_omitted() {
        let mut d = runhistory::parse_one(EXPORT).unwrap();
        let step = &mut d.steps[0];
        let first = step.errors.first[0].clone();
        step.errors.first = vec![first; runhistory::MAX_ERRORS_KEPT];
        step.errors.count = 21;
        let s = summarize(&d);
        assert_eq!(s.error_count, 21);
        assert_eq!(
            s.errors.object_errors.len(),
            syncfleet_proto::step_errors::MAX_OBJECT_ERRORS
        );
        assert_eq!(
            s.errors.object_errors.len() as u64 + s.errors.object_errors_omitted,
            21
        );
    }

    /// The executor sends a simulated export's errors with its `StepFinished`, counted and
    /// listed; a step without errors sends empty lists.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_export_step_carries_its_object_errors() {
        use crate::engine::sim::ScriptedFailure;
        use crate::executor::testkit::*;
        let (h, sim) = quiet().await;
        sim.inject_failure(
            ScriptedFailure::new("AD", "completed-export-errors").with_profile("Export"),
        )
        .unwrap();
        start_plan(
            &h,
            "r1",
            vec![
                vec![step("AD", "Export", v1::Condition::Always, None)],
                vec![step("HR", "Delta Import", v1::Condition::Always, None)],
            ],
            |r| r.on_failure = v1::OnFailure::Continue as i32,
        );
        let events = wait_all(&h).await;
        let export = step_finished(&events, "r1", 0);
        assert_eq!(export.result, "completed-export-errors");
        assert!(export.error_count > 0, "{export:?}");
        assert_eq!(
            export.object_errors.len() as u64 + export.object_errors_omitted,
            export.error_count
        );
        for e in &export.object_errors {
            assert_eq!(e.kind, "export");
            assert_eq!(e.error_type, "permission-issue");
            assert_eq!(e.error_code, "0x80070005");
            assert!(!e.dn.is_empty() && !e.cs_guid.is_empty(), "{e:?}");
        }
        // The export connected to its directory: its successful incident is sent too.
        assert!(
            export
                .connection_incidents
                .iter()
                .all(|i| i.connection_result == "success"),
            "{export:?}"
        );
        let import = step_finished(&events, "r1", 1);
        assert_eq!(import.error_count, 0);
        assert!(import.object_errors.is_empty());
        assert_eq!(import.object_errors_omitted, 0);
    }
}
