//! Fixtures shared by the tests of the fleet-document modules: an example fleet file and
//! documents with every field set.

pub(super) use std::time::Duration;

pub(super) use super::model::{
    BlackoutDoc, Condition, Document, Guard, Limit, OnFailure, Overlap, ScheduleDoc, SequenceDoc,
    StageDoc, StepDoc, Targets, TriggerDoc,
};
pub(super) use super::*;
pub(super) use syncfleet_proto::v1;

/// The example fleet file of the fleet-file feature request.
pub(super) const EXAMPLE: &str = r#"# Production delta cycle every 5 minutes, full cycle on Sunday night.
kind: Sequence
name: delta-cycle
description: Delta import everything, synchronize, export with guard rails, confirm.
stages:
  - steps: [{ma: CONTOSO AD, profile: Delta Import}, {ma: HR, profile: Delta Import}]
  - steps: [{ma: CONTOSO AD, profile: Delta Sync, only_if: staged_changes}]
  - steps: [{ma: HR, profile: Delta Sync, only_if: staged_changes}]
  - steps:
      - {ma: CONTOSO AD, profile: Export, only_if: pending_exports, guard: {max_pending_deletes: 500}}
      - {ma: HR, profile: Export, only_if: pending_exports, guard: {max_pending_deletes: "2%"}}
  - steps: [{ma: CONTOSO AD, profile: Delta Import, only_if: exported}]
on_failure: stop
---
kind: Schedule
name: delta-every-5m
sequence: delta-cycle
targets: {selector: "env=prod"}
trigger: {every: 5m, phase: 30s}
overlap: skip
catchup_window: 10m
jitter: 10s
blackout: [{cron: "0 22 * * 6", duration: 4h}]
---
kind: Sequence
name: full-cycle
stages:
  - steps: [{ma: CONTOSO AD, profile: Full Import}, {ma: HR, profile: Full Import}]
  - steps: [{ma: CONTOSO AD, profile: Full Sync, guard: {max_staged_deletes: "5%"}}]
  - steps: [{ma: HR, profile: Full Sync}]
on_failure: continue
---
kind: Schedule
name: full-sunday
description: Weekly full cycle on the primary servers.
sequence: full-cycle
targets: {agents: [sync01, sync02]}
trigger:
  cron: "0 2 * * 0"
  time_zone: Europe/Oslo
overlap: buffer_one
"#;

pub(super) fn docs(text: &str) -> Vec<Document> {
    parse_str("fleet.yaml", text)
        .unwrap()
        .into_iter()
        .map(|d| d.doc)
        .collect()
}

pub(super) fn messages(e: &FleetFileErrors) -> Vec<String> {
    e.errors.iter().map(ToString::to_string).collect()
}

pub(super) fn full_sequence() -> SequenceDoc {
    SequenceDoc {
        name: "seq.all_fields-1".into(),
        description: "every field: set".into(),
        stages: vec![
            StageDoc {
                steps: vec![
                    StepDoc {
                        ma: "CONTOSO AD".into(),
                        profile: "Delta Import".into(),
                        only_if: None,
                        guard: None,
                    },
                    StepDoc {
                        ma: "HR".into(),
                        profile: "Full Import: weekly".into(),
                        only_if: Some(Condition::StagedChanges),
                        guard: Some(Guard {
                            max_staged_deletes: Some(Limit::Count(10)),
                            max_staged_adds: Some(Limit::Count(1000)),
                            ..Default::default()
                        }),
                    },
                ],
            },
            StageDoc {
                steps: vec![StepDoc {
                    ma: "CONTOSO AD".into(),
                    profile: "Export".into(),
                    only_if: Some(Condition::PendingExports),
                    guard: Some(Guard {
                        max_pending_deletes: Some(Limit::Count(500)),
                        max_staged_deletes: Some(Limit::Percent(2.0)),
                        max_pending_updates: Some(Limit::Percent(10.0)),
                        ..Default::default()
                    }),
                }],
            },
            StageDoc {
                steps: vec![StepDoc {
                    ma: "CONTOSO AD".into(),
                    profile: "Delta Import".into(),
                    only_if: Some(Condition::Exported),
                    guard: Some(Guard {
                        max_pending_deletes: Some(Limit::Percent(2.5)),
                        ..Default::default()
                    }),
                }],
            },
        ],
        on_failure: OnFailure::Continue,
    }
}

pub(super) fn full_schedule() -> ScheduleDoc {
    ScheduleDoc {
        name: "sched-all".into(),
        description: "all: fields # set".into(),
        sequence: "seq.all_fields-1".into(),
        targets: Targets {
            agents: vec!["sync01".into(), "SYNC 02".into()],
            selector: Some("env=prod,role=primary".into()),
        },
        trigger: TriggerDoc {
            cron: vec!["0 2 * * 0".into(), "*/15 * * * *".into()],
            time_zone: Some("Europe/Oslo".into()),
            every: Some(Duration::from_secs(300)),
            phase: Some(Duration::from_secs(30)),
            on_change: None,
        },
        overlap: Overlap::CancelOther,
        catchup_window: Some(Duration::from_secs(4 * 3600)),
        jitter: Some(Duration::from_secs(90)),
        blackout: vec![
            BlackoutDoc {
                cron: "0 22 * * 6".into(),
                duration: Duration::from_secs(4 * 3600),
            },
            BlackoutDoc {
                cron: "30 1 1 * *".into(),
                duration: Duration::from_secs(30),
            },
        ],
        start_at: Some("2025-01-01T00:00:00Z".parse().unwrap()),
        end_at: Some("2030-06-30T12:30:00Z".parse().unwrap()),
        autonomy: None,
    }
}

pub(super) fn minimal_schedule(name: &str, sequence: &str) -> ScheduleDoc {
    ScheduleDoc {
        name: name.into(),
        description: String::new(),
        sequence: sequence.into(),
        targets: Targets {
            agents: vec!["sync01".into()],
            selector: None,
        },
        trigger: TriggerDoc {
            every: Some(Duration::from_secs(300)),
            ..Default::default()
        },
        overlap: Overlap::Skip,
        catchup_window: None,
        jitter: None,
        blackout: Vec::new(),
        start_at: None,
        end_at: None,
        autonomy: None,
    }
}

pub(super) fn sourced(docs: Vec<Document>) -> Vec<SourcedDoc> {
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| SourcedDoc {
            source: format!("f.yaml#{}", i + 1),
            doc,
        })
        .collect()
}

// --- loading -------------------------------------------------------------------------

pub(super) fn inventory_agent(name: &str, env: &str, mas: &[(&str, &[&str])]) -> v1::Agent {
    v1::Agent {
        name: name.into(),
        labels: [("env".to_string(), env.to_string())].into_iter().collect(),
        management_agents: mas
            .iter()
            .map(|(ma, profiles)| v1::ManagementAgent {
                name: (*ma).into(),
                run_profiles: profiles
                    .iter()
                    .map(|p| v1::RunProfile {
                        name: (*p).into(),
                        step_types: vec![],
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
