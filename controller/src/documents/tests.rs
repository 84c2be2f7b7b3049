//! Tests of loading, validation, messages, JSON, diff and YAML rendering together, on whole
//! fleet files.

use std::collections::BTreeSet;
use std::time::Duration;

use super::model::{
    BlackoutDoc, Condition, Document, Guard, Limit, OnFailure, Overlap, ScheduleDoc, SequenceDoc,
    StageDoc, StepDoc, Targets, TriggerDoc,
};
use super::*;
use crate::limits::{
    MAX_BLACKOUTS, MAX_CRON_ENTRIES, MAX_DOCUMENTS, MAX_SELECTOR_TERMS, MAX_STAGES,
    MAX_STEPS_PER_STAGE, MAX_TARGET_AGENTS,
};
use syncfleet_proto::v1;

/// The example fleet file of the fleet-file feature request.
const EXAMPLE: &str = r#"# Production delta cycle every 5 minutes, full cycle on Sunday night.
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

fn docs(text: &str) -> Vec<Document> {
    parse_str("fleet.yaml", text)
        .unwrap()
        .into_iter()
        .map(|d| d.doc)
        .collect()
}

fn messages(e: &FleetFileErrors) -> Vec<String> {
    e.errors.iter().map(ToString::to_string).collect()
}

fn full_sequence() -> SequenceDoc {
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
                            max_pending_deletes: None,
                            max_staged_deletes: Some(Limit::Count(10)),
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
                        max_staged_deletes: None,
                    }),
                }],
            },
        ],
        on_failure: OnFailure::Continue,
    }
}

fn full_schedule() -> ScheduleDoc {
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
    }
}

fn minimal_schedule(name: &str, sequence: &str) -> ScheduleDoc {
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
    }
}

fn sourced(docs: Vec<Document>) -> Vec<SourcedDoc> {
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| SourcedDoc {
            source: format!("f.yaml#{}", i + 1),
            doc,
        })
        .collect()
}

// --- loading -------------------------------------------------------------------------

#[test]
fn example_file_loads_with_sources() {
    let loaded = parse_str("fleet/example.yaml", EXAMPLE).unwrap();
    let summary: Vec<(&str, &str, &str)> = loaded
        .iter()
        .map(|d| (d.source.as_str(), d.doc.kind(), d.doc.name()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("fleet/example.yaml#1", "Sequence", "delta-cycle"),
            ("fleet/example.yaml#2", "Schedule", "delta-every-5m"),
            ("fleet/example.yaml#3", "Sequence", "full-cycle"),
            ("fleet/example.yaml#4", "Schedule", "full-sunday"),
        ]
    );
    let Document::Sequence(seq) = &loaded[0].doc else {
        panic!("not a sequence")
    };
    assert_eq!(seq.stages.len(), 5);
    assert_eq!(seq.stages[0].steps[1].ma, "HR");
    assert_eq!(
        seq.stages[1].steps[0].only_if,
        Some(Condition::StagedChanges)
    );
    let g = seq.stages[3].steps[1].guard.unwrap();
    assert_eq!(g.max_pending_deletes, Some(Limit::Percent(2.0)));
    let Document::Schedule(s) = &loaded[1].doc else {
        panic!("not a schedule")
    };
    assert_eq!(s.trigger.every, Some(Duration::from_secs(300)));
    assert_eq!(s.trigger.phase, Some(Duration::from_secs(30)));
    assert_eq!(s.jitter, Some(Duration::from_secs(10)));
    assert_eq!(s.catchup_window, Some(Duration::from_secs(600)));
    assert_eq!(s.blackout[0].duration, Duration::from_secs(4 * 3600));
    assert_eq!(s.targets.selector.as_deref(), Some("env=prod"));
    let Document::Schedule(s) = &loaded[3].doc else {
        panic!("not a schedule")
    };
    assert_eq!(s.trigger.cron, vec!["0 2 * * 0".to_string()]);
    assert_eq!(s.overlap, Overlap::BufferOne);
}

#[test]
fn example_file_validates() {
    let loaded = parse_str("fleet/example.yaml", EXAMPLE).unwrap();
    validate(&loaded, &BTreeSet::new()).unwrap();
}

#[test]
fn typo_in_enum_value_names_file_document_field_and_fix() {
    let text = EXAMPLE.replace("overlap: skip", "overlap: skipp");
    let e = parse_str("fleet/delta.yaml", &text).unwrap_err();
    assert_eq!(
        messages(&e),
        vec![
            "fleet/delta.yaml document 2 (Schedule delta-every-5m): overlap: unknown value \"skipp\"; use skip, buffer_one or cancel_other (line 20)"
                .to_string()
        ]
    );
}

#[test]
fn every_error_of_every_document_is_reported() {
    let text = r#"
kind: Sequence
name: a
stages: [{steps: [{ma: AD, profil: Export}]}]
---
---
kind: Schedule
name: b
sequence: a
targets: {agents: [x]}
trigger: {every: 5 parsecs}
---
kind: Sequnce
name: c
---
name: d
---
- just
- a list
---
kind: Schedule
name: e
sequence: a
targets: {agents: [x]}
trigger: {cron: [1, [2]]}
---
kind: Sequence
name: f
stages: [{steps: [{ma: AD, profile: Export, only_if: staged, guard: {max_pending_deletes: -3}}]}]
"#;
    let e = parse_str("f.yaml", text).unwrap_err();
    let m = messages(&e);
    assert_eq!(m.len(), 7, "{m:#?}");
    assert!(
        m[0].starts_with("f.yaml document 1 (Sequence a): stages[0].steps[0]: unknown field \"profil\" (did you mean profile?); allowed here: ma, profile, only_if, guard"),
        "{}",
        m[0]
    );
    // Document 2 is empty and ignored; numbering still counts it.
    assert!(
        m[1].starts_with("f.yaml document 3 (Schedule b): trigger.every: \"5 parsecs\" is not a duration; write it with a unit"),
        "{}",
        m[1]
    );
    assert!(m[1].ends_with("(line 11)"), "{}", m[1]);
    assert_eq!(
        m[2],
        "f.yaml document 4 (Sequnce c): kind: unknown kind \"Sequnce\" (did you mean Sequence?); use Sequence or Schedule"
    );
    assert_eq!(
        m[3],
        "f.yaml document 5 (d): kind: missing; add `kind: Sequence` or `kind: Schedule`"
    );
    assert!(
        m[4].starts_with("f.yaml document 6: expected a mapping"),
        "{}",
        m[4]
    );
    assert!(
        m[5].starts_with("f.yaml document 7 (Schedule e): trigger.cron: expected a cron expression or a list of them"),
        "{}",
        m[5]
    );
    // serde stops at the first problem inside one document.
    assert!(
        m[6].starts_with("f.yaml document 8 (Sequence f): stages[0].steps[0].only_if: unknown value \"staged\"; use staged_changes, pending_exports or exported"),
        "{}",
        m[6]
    );
    // The whole list displays one error per line.
    assert_eq!(e.to_string().lines().count(), 7);
}

#[test]
fn missing_fields_and_bad_limits_are_readable() {
    let e = parse_str(
        "x.yaml",
        "kind: Schedule\nname: s\nsequence: q\ntrigger: {every: 1m}\n",
    )
    .unwrap_err();
    assert_eq!(
        messages(&e),
        vec!["x.yaml document 1 (Schedule s): missing field \"targets\"; add it (line 1)"]
    );
    let e = parse_str(
        "x.yaml",
        "kind: Sequence\nname: q\nstages: [{steps: [{ma: A, profile: E, guard: {max_pending_deletes: -3}}]}]\n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            "stages[0].steps[0].guard.max_pending_deletes: expected a count (500) or a percentage (\"2%\")"
        ),
        "{e}"
    );
    let e = parse_str(
        "x.yaml",
        "kind: Sequence\nname: q\nstages: [{steps: [{ma: A, profile: E, guard: {max_pending_deletes: \"200%\"}}]}]\n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            "guard.max_pending_deletes: \"200%\" must be a percentage above 0 and at most 100"
        ),
        "{e}"
    );
}

#[test]
fn syntax_error_ends_the_file_but_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "kind: Sequence\nname: ok\nstages: [{steps: [{ma: A, profile: B}]}]\n---\nkind: [unclosed\n---\nkind: Nope\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yml"), "kind: Bogus\nname: z\n").unwrap();
    let e = load_paths(&[dir.path().to_path_buf()]).unwrap_err();
    let m = messages(&e);
    assert_eq!(m.len(), 2, "{m:#?}");
    assert!(
        m[0].contains("a.yaml document 2: YAML syntax error"),
        "{}",
        m[0]
    );
    assert!(
        m[1].contains("b.yml document 1 (Bogus z): kind: unknown kind"),
        "{}",
        m[1]
    );
}

#[test]
fn directories_are_walked_sorted_and_recursively() {
    let dir = tempfile::tempdir().unwrap();
    let seq = |n: &str| {
        format!("kind: Sequence\nname: {n}\nstages: [{{steps: [{{ma: A, profile: B}}]}}]\n")
    };
    std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), seq("b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), seq("a")).unwrap();
    std::fs::write(dir.path().join("sub/deeper/c.YAML"), seq("c")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.path().join(".git/x.yaml"), "not: [").unwrap();
    // An explicit file is read whatever its name; a BOM is ignored.
    let explicit = dir.path().join("extra.txt");
    std::fs::write(&explicit, format!("\u{feff}{}", seq("d"))).unwrap();
    let got = load_paths(&[dir.path().to_path_buf(), explicit.clone()]).unwrap();
    let names: Vec<&str> = got.iter().map(|d| d.doc.name()).collect();
    assert_eq!(names, vec!["a", "b", "c", "d"]);
    assert!(got[2].source.ends_with("c.YAML#1"), "{}", got[2].source);
    assert_eq!(got[3].source, format!("{}#1", explicit.display()));
}

#[test]
fn missing_paths_and_empty_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = load_paths(&[missing.clone(), empty.clone()]).unwrap_err();
    assert_eq!(
        messages(&e),
        vec![
            format!("{}: no such file or directory", missing.display()),
            format!(
                "{}: directory holds no *.yaml or *.yml files; name a file or a folder with fleet files",
                empty.display()
            ),
        ]
    );
}

#[test]
fn empty_documents_and_files_give_nothing() {
    assert!(parse_str("e.yaml", "").unwrap().is_empty());
    assert!(
        parse_str("e.yaml", "# only a comment\n")
            .unwrap()
            .is_empty()
    );
    let got = parse_str(
        "e.yaml",
        "---\n---\nkind: Sequence\nname: s\nstages: [{steps: [{ma: A, profile: B}]}]\n---\n",
    )
    .unwrap();
    assert_eq!(got.len(), 1);
    // The first `---` starts document 1 (empty), the second starts document 2.
    assert_eq!(got[0].source, "e.yaml#2");
}

// --- validation ----------------------------------------------------------------------

#[test]
fn sequence_rules() {
    let mut bad = full_sequence();
    bad.name = "Delta Cycle".into();
    bad.description = "x".repeat(1025);
    bad.stages[0].steps[1].ma = " contoso ad ".into();
    bad.stages[1].steps[0].profile = "  ".into();
    bad.stages[2].steps[0].ma = "M".repeat(257);
    bad.stages.push(StageDoc { steps: vec![] });
    bad.stages[1].steps[0].guard = Some(Guard {
        max_pending_deletes: Some(Limit::Percent(f64::NAN)),
        max_staged_deletes: None,
    });
    let empty = SequenceDoc {
        name: "empty".into(),
        description: String::new(),
        stages: vec![],
        on_failure: OnFailure::Stop,
    };
    let e = validate(
        &sourced(vec![Document::Sequence(bad), Document::Sequence(empty)]),
        &BTreeSet::new(),
    )
    .unwrap_err();
    let m = messages(&e);
    let expect = [
        "f.yaml document 1 (Sequence Delta Cycle): name: \"Delta Cycle\" is not a valid name; use 1 to 63 characters",
        "f.yaml document 1 (Sequence Delta Cycle): description: 1025 characters; shorten it to at most 1024",
        "f.yaml document 1 (Sequence Delta Cycle): stages[0].steps[1].ma: MA \" contoso ad \" already runs in this stage (steps[0]); an MA runs one profile at a time, so put these steps in separate stages",
        "f.yaml document 1 (Sequence Delta Cycle): stages[1].steps[0].profile: empty;",
        "f.yaml document 1 (Sequence Delta Cycle): stages[1].steps[0].guard.max_pending_deletes: NaN% is not a percentage",
        "f.yaml document 1 (Sequence Delta Cycle): stages[2].steps[0].ma: longer than 256 characters",
        "f.yaml document 1 (Sequence Delta Cycle): stages[3].steps: empty; give the stage at least one step or remove it",
        "f.yaml document 2 (Sequence empty): stages: empty; a sequence needs at least one stage",
    ];
    assert_eq!(m.len(), expect.len(), "{m:#?}");
    for (got, want) in m.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\n  should start with\n{want}");
    }
}

#[test]
fn names_are_unique_per_kind() {
    let seq = full_sequence();
    let mut sched = minimal_schedule(&seq.name, &seq.name);
    sched.name = seq.name.clone();
    let e = validate(
        &sourced(vec![
            Document::Sequence(seq.clone()),
            Document::Schedule(sched),
            Document::Sequence(seq),
        ]),
        &BTreeSet::new(),
    );
    let e = e.unwrap_err();
    let m: Vec<String> = messages(&e)
        .into_iter()
        .filter(|l| l.contains("name:"))
        .collect();
    assert_eq!(
        m,
        vec![
            "f.yaml document 3 (Sequence seq.all_fields-1): name: sequence \"seq.all_fields-1\" is defined twice (first in f.yaml document 1); names are unique per kind, rename or remove one"
        ]
    );
    assert!(valid_name("a"));
    assert!(valid_name(&"a".repeat(63)));
    assert!(!valid_name(&"a".repeat(64)));
    assert!(!valid_name(""));
    assert!(!valid_name("a/b"));
    assert!(!valid_name("é"));
}

#[test]
fn schedule_rules() {
    let mut s = minimal_schedule("s", "delta-cycel");
    s.targets = Targets {
        agents: vec![" ".into()],
        selector: Some("env".into()),
    };
    s.jitter = Some(Duration::from_secs(25 * 3600));
    s.catchup_window = Some(Duration::from_secs(24 * 3600 + 1));
    let mut none = minimal_schedule("t", "stored-seq");
    none.targets = Targets {
        agents: vec![],
        selector: Some(" ".into()),
    };
    let known: BTreeSet<String> = ["stored-seq".to_string(), "delta-cycle".to_string()].into();
    let e = validate(
        &sourced(vec![Document::Schedule(s), Document::Schedule(none)]),
        &known,
    )
    .unwrap_err();
    let m = messages(&e);
    let expect = [
        "f.yaml document 1 (Schedule s): sequence: no sequence named \"delta-cycel\" (did you mean delta-cycle?) in these files or on the controller",
        "f.yaml document 1 (Schedule s): targets.agents[0]: empty agent name",
        "f.yaml document 1 (Schedule s): targets.selector: selector part \"env\" must look like key=value",
        "f.yaml document 1 (Schedule s): jitter: 1day 1h is more than 24h",
        "f.yaml document 1 (Schedule s): catchup_window: 1day 1s is more than 24h",
        "f.yaml document 2 (Schedule t): targets: no agents and no selector",
    ];
    assert_eq!(m.len(), expect.len(), "{m:#?}");
    for (got, want) in m.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\n  should start with\n{want}");
    }
    // Exactly 24h is fine, and a sequence known to the controller is enough.
    let mut ok = minimal_schedule("u", "stored-seq");
    ok.jitter = Some(MAX_SCHEDULE_DELAY);
    validate(&sourced(vec![Document::Schedule(ok)]), &known).unwrap();
}

#[test]
fn trigger_errors_keep_their_field_and_document() {
    let mut s = minimal_schedule("s", "q");
    s.trigger = TriggerDoc {
        cron: vec!["not a cron".into()],
        time_zone: Some("Mars/Olympus".into()),
        every: None,
        phase: None,
    };
    let e = validate(
        &sourced(vec![Document::Schedule(s)]),
        &["q".to_string()].into(),
    )
    .unwrap_err();
    let m = messages(&e);
    assert_eq!(m.len(), 1, "{m:#?}");
    assert!(
        m[0].starts_with("f.yaml document 1 (Schedule s): trigger."),
        "{}",
        m[0]
    );
}

#[test]
fn end_before_start_is_reported() {
    let mut s = minimal_schedule("s", "q");
    s.start_at = Some("2030-01-01T00:00:00Z".parse().unwrap());
    s.end_at = Some("2029-01-01T00:00:00Z".parse().unwrap());
    let e = validate(
        &sourced(vec![Document::Schedule(s)]),
        &["q".to_string()].into(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("end_at"), "{e}");
}

#[test]
fn sources_are_described_for_people() {
    let d = Document::Sequence(full_sequence());
    assert_eq!(
        describe_source("fleet/a.yaml#2", &d),
        "fleet/a.yaml document 2 (Sequence seq.all_fields-1)"
    );
    assert_eq!(describe_source("", &d), "Sequence seq.all_fields-1");
    assert_eq!(
        describe_source("Sequence seq.all_fields-1", &d),
        "Sequence seq.all_fields-1"
    );
    assert_eq!(
        describe_source("grpc", &d),
        "grpc (Sequence seq.all_fields-1)"
    );
}

// --- JSON, diff, YAML ----------------------------------------------------------------

#[test]
fn canonical_json_is_stable_and_reads_back() {
    let seq = Document::Sequence(full_sequence());
    let sch = Document::Schedule(full_schedule());
    assert_eq!(canonical_json(&seq), canonical_json(&seq.clone()));
    for d in [&seq, &sch] {
        let j = canonical_json(d);
        assert!(!j.contains("null"), "{j}");
        assert_eq!(&from_json(d.kind(), &j).unwrap(), d);
    }
    let min = Document::Schedule(minimal_schedule("m", "q"));
    let j = canonical_json(&min);
    assert!(!j.contains("jitter"), "unset fields are left out: {j}");
    assert_eq!(from_json("Schedule", &j).unwrap(), min);
    // kind may be left out of the JSON, but must match when present.
    let v = serde_json::json!({"name": "q", "stages": [{"steps": [{"ma": "A", "profile": "B"}]}]});
    assert!(matches!(
        from_json("Sequence", &v.to_string()),
        Ok(Document::Sequence(_))
    ));
    assert!(from_json("Schedule", &canonical_json(&seq)).is_err());
    assert!(
        from_json("Widget", "{}")
            .unwrap_err()
            .contains("unknown kind")
    );
    assert!(from_json("Sequence", "[1]").is_err());
    assert!(from_json("Sequence", "{\"name\": 1}").is_err());
}

#[test]
fn diff_reports_actions_and_changed_fields() {
    let seq = full_sequence();
    let a = minimal_schedule("a", &seq.name);
    let b = minimal_schedule("b", &seq.name);
    let gone = minimal_schedule("gone", &seq.name);
    let mut b2 = b.clone();
    b2.overlap = Overlap::BufferOne;
    b2.trigger.every = Some(Duration::from_secs(600));
    b2.jitter = Some(Duration::from_secs(5));
    let stored = vec![
        Document::Schedule(gone),
        Document::Schedule(b),
        Document::Schedule(a.clone()),
    ];
    let mut seq2 = seq.clone();
    seq2.name = "new-seq".into();
    let incoming = vec![
        Document::Schedule(b2),
        Document::Sequence(seq2),
        Document::Schedule(a),
    ];
    let d = diff(&stored, &incoming, false);
    let brief: Vec<(String, String, Action, Vec<String>)> = d
        .iter()
        .map(|c| (c.kind.clone(), c.name.clone(), c.action, c.fields.clone()))
        .collect();
    assert_eq!(
        brief,
        vec![
            ("Sequence".into(), "new-seq".into(), Action::Created, vec![]),
            ("Schedule".into(), "a".into(), Action::Unchanged, vec![]),
            (
                "Schedule".into(),
                "b".into(),
                Action::Changed,
                vec!["trigger".into(), "overlap".into(), "jitter".into()]
            ),
        ]
    );
    let d = diff(&stored, &incoming, true);
    assert_eq!(d.len(), 4);
    assert_eq!((d[3].name.as_str(), d[3].action), ("gone", Action::Deleted));
    assert_eq!(Action::from_label("deleted"), Some(Action::Deleted));
    assert_eq!(Action::Changed.label(), "changed");
}

#[test]
fn yaml_round_trips_every_field() {
    let all = vec![
        Document::Sequence(full_sequence()),
        Document::Schedule(full_schedule()),
        Document::Schedule(minimal_schedule("m", "seq.all_fields-1")),
    ];
    let text = to_yaml(&all);
    assert_eq!(docs(&text), all, "{text}");
    // kind first, durations and limits in their written forms, no nulls.
    for doc in text.split("---\n") {
        assert!(doc.starts_with("kind: "), "{doc}");
    }
    for want in [
        "every: 5m",
        "phase: 30s",
        "duration: 4h",
        "duration: 30s",
        "jitter: 1m 30s",
        "catchup_window: 4h",
        "max_pending_deletes: 500",
        "max_staged_deletes: 2%",
        "on_failure: continue",
        "overlap: cancel_other",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("null"), "{text}");
    assert_eq!(to_yaml(&[]), "");
}

#[test]
fn example_round_trips_through_yaml_and_json() {
    let original = docs(EXAMPLE);
    assert_eq!(docs(&to_yaml(&original)), original);
    for d in &original {
        assert_eq!(&from_json(d.kind(), &canonical_json(d)).unwrap(), d);
    }
    assert!(
        diff(&original, &docs(&to_yaml(&original)), true)
            .iter()
            .all(|c| c.action == Action::Unchanged)
    );
}

#[test]
fn counts_over_their_limits_name_the_limit_and_the_value() {
    let step = StepDoc {
        ma: "AD".into(),
        profile: "Delta Import".into(),
        only_if: None,
        guard: None,
    };
    let many_stages = SequenceDoc {
        name: "long".into(),
        description: String::new(),
        stages: vec![
            StageDoc {
                steps: vec![step.clone()]
            };
            MAX_STAGES + 1
        ],
        on_failure: OnFailure::Stop,
    };
    let wide = SequenceDoc {
        name: "wide".into(),
        stages: vec![StageDoc {
            steps: (0..MAX_STEPS_PER_STAGE + 1)
                .map(|i| StepDoc {
                    ma: format!("MA{i}"),
                    ..step.clone()
                })
                .collect(),
        }],
        ..many_stages.clone()
    };
    let total = SequenceDoc {
        name: "total".into(),
        stages: (0..5)
            .map(|s| StageDoc {
                steps: (0..60)
                    .map(|i| StepDoc {
                        ma: format!("MA{s}-{i}"),
                        ..step.clone()
                    })
                    .collect(),
            })
            .collect(),
        ..many_stages.clone()
    };
    let mut crons = minimal_schedule("crons", "long");
    crons.trigger = TriggerDoc {
        cron: vec!["0 * * * *".into(); MAX_CRON_ENTRIES + 1],
        ..Default::default()
    };
    let mut selector = minimal_schedule("selector", "long");
    selector.targets.selector = Some(
        (0..MAX_SELECTOR_TERMS + 1)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut blackouts = minimal_schedule("blackouts", "long");
    blackouts.blackout = vec![
        BlackoutDoc {
            cron: "0 1 * * *".into(),
            duration: Duration::from_secs(60),
        };
        MAX_BLACKOUTS + 1
    ];
    let mut agents = minimal_schedule("agents", "long");
    agents.targets.agents = (0..MAX_TARGET_AGENTS + 1)
        .map(|i| format!("sync{i}"))
        .collect();
    let docs = sourced(vec![
        Document::Sequence(many_stages),
        Document::Sequence(wide),
        Document::Sequence(total),
        Document::Schedule(crons),
        Document::Schedule(selector),
        Document::Schedule(blackouts),
        Document::Schedule(agents),
    ]);
    let m = messages(&validate(&docs, &BTreeSet::new()).unwrap_err());
    assert_eq!(
        m,
        [
            "f.yaml document 1 (Sequence long): stages: 65 stages; at most 64 stages per sequence; split the sequence",
            "f.yaml document 2 (Sequence wide): stages[0].steps: 65 steps; at most 64 steps per stage; split the stage",
            "f.yaml document 3 (Sequence total): stages: 300 steps; at most 256 steps per run; a sequence runs as one run; split it",
            "f.yaml document 4 (Schedule crons): trigger.cron: 65 entries; at most 64 entries per schedule; combine expressions (e.g. \"0 1,13 * * *\") or split the schedule",
            "f.yaml document 5 (Schedule selector): targets.selector: 17 terms; at most 16 terms per selector; select on fewer labels",
            "f.yaml document 6 (Schedule blackouts): blackout: 65 windows; at most 64 windows per schedule; merge windows",
            "f.yaml document 7 (Schedule agents): targets.agents: 1001 agents; at most 1000 agents per schedule; use a label selector instead",
        ]
    );
    let too_many = sourced(
        (0..MAX_DOCUMENTS + 1)
            .map(|i| Document::Schedule(minimal_schedule(&format!("s{i}"), "x")))
            .collect(),
    );
    let m = messages(&validate(&too_many, &BTreeSet::from(["x".to_string()])).unwrap_err());
    assert_eq!(
        m,
        [
            "apply: documents: 1001 documents; at most 1000 documents per apply; split the files into several applies"
        ]
    );
}

#[test]
fn huge_names_are_cut_in_messages() {
    let mut s = minimal_schedule(&"n".repeat(100_000), &"q".repeat(100_000));
    s.targets.selector = Some("s".repeat(100_000));
    s.trigger.cron = vec!["c".repeat(100_000)];
    s.trigger.time_zone = Some("z".repeat(100_000));
    let docs = vec![SourcedDoc {
        source: "f.yaml#1".into(),
        doc: Document::Schedule(s),
    }];
    let text = validate(&docs, &BTreeSet::new()).unwrap_err().to_string();
    assert!(text.len() < 2000, "{} bytes: {text:.300}", text.len());
    assert!(text.contains("… (100000 bytes)"), "{text:.600}");
    assert!(
        text.contains("trigger.cron[0] \"cccc"),
        "oversized cron expressions are refused before they are compiled: {text:.900}"
    );
}

fn inventory_agent(name: &str, env: &str, mas: &[(&str, &[&str])]) -> v1::Agent {
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

#[test]
fn inventory_check_reports_per_target_agent_with_suggestions() {
    let agents = [
        inventory_agent("sync01", "prod", &[("AD", &["Delta Import", "Export"])]),
        inventory_agent(
            "sync02",
            "prod",
            &[("AD", &["Delta Import"]), ("HR", &["Delta Import"])],
        ),
        inventory_agent("lab01", "lab", &[("LAB", &["Full Import"])]),
        inventory_agent("new01", "prod", &[]),
    ];
    let yaml = "kind: Sequence
name: delta
stages:
  - steps: [{ma: AD, profile: Delta Imprt}, {ma: HR, profile: Delta Import}]
  - steps: [{ma: AD, profile: Export}]
---
kind: Schedule
name: prod
sequence: delta
targets: {selector: env=prod}
trigger: {every: 5m}
---
kind: Sequence
name: manual
stages:
  - steps: [{ma: LAB, profile: Full Imprt}, {ma: AD, profile: Export}]
---
kind: Schedule
name: named
sequence: stored
targets: {agents: [sync01, sync1], selector: env=nowhere}
trigger: {every: 5m}
";
    let docs = parse_str("f.yaml", yaml).unwrap();
    // A stored schedule running `delta` on lab01 is checked too; one replaced by the
    // incoming documents is not.
    let mut stored_sched = minimal_schedule("lab", "delta");
    stored_sched.targets.agents = vec!["lab01".into()];
    let stored_seq = SequenceDoc {
        name: "stored".into(),
        description: String::new(),
        stages: vec![StageDoc {
            steps: vec![StepDoc {
                ma: "AD".into(),
                profile: "Full Sync".into(),
                only_if: None,
                guard: None,
            }],
        }],
        on_failure: OnFailure::Stop,
    };
    let stored = [
        Document::Schedule(stored_sched),
        Document::Schedule(minimal_schedule("prod", "other")),
        Document::Sequence(stored_seq),
    ];
    let report = check_inventory(&docs, &stored, &agents);
    let lines: Vec<String> = report
        .warnings
        .iter()
        .map(|w| format!("{}{w}", if w.blocking { "E " } else { "N " }))
        .collect();
    assert_eq!(
        lines,
        [
            "N f.yaml document 4 (Schedule named): targets.agents[1]: no agent named \"sync1\" has ever connected (did you mean \"sync01\"?); runs for it wait until it does",
            "N f.yaml document 4 (Schedule named): targets.selector: \"env=nowhere\" matches no agent now; the schedule runs nowhere until an agent with these labels connects",
            "E f.yaml document 1 (Sequence delta): stages[0].steps[0] \"AD:Delta Imprt\": agent lab01 (schedule lab) has no management agent \"AD\"; it has \"LAB\"",
            "E f.yaml document 1 (Sequence delta): stages[0].steps[1] \"HR:Delta Import\": agent lab01 (schedule lab) has no management agent \"HR\"; it has \"LAB\"",
            "E f.yaml document 1 (Sequence delta): stages[1].steps[0] \"AD:Export\": agent lab01 (schedule lab) has no management agent \"AD\"; it has \"LAB\"",
            "N f.yaml document 1 (Sequence delta): agent new01 (schedule prod) has reported no inventory yet; its steps were not checked",
            "E f.yaml document 1 (Sequence delta): stages[0].steps[0] \"AD:Delta Imprt\": agent sync01 (schedule prod) has no run profile \"Delta Imprt\" on MA \"AD\" (did you mean \"Delta Import\"?)",
            "E f.yaml document 1 (Sequence delta): stages[0].steps[1] \"HR:Delta Import\": agent sync01 (schedule prod) has no management agent \"HR\"; it has \"AD\"",
            "E f.yaml document 1 (Sequence delta): stages[0].steps[0] \"AD:Delta Imprt\": agent sync02 (schedule prod) has no run profile \"Delta Imprt\" on MA \"AD\" (did you mean \"Delta Import\"?)",
            "E f.yaml document 1 (Sequence delta): stages[1].steps[0] \"AD:Export\": agent sync02 (schedule prod) has no run profile \"Export\" on MA \"AD\"; it has \"Delta Import\"",
            "E f.yaml document 3 (Sequence manual): stages[0].steps[0] \"LAB:Full Imprt\": no known agent can run it; agent lab01 has no run profile \"Full Imprt\" on MA \"LAB\" (did you mean \"Full Import\"?)",
            // A stored sequence that a new schedule runs is checked on its targets too.
            "E Sequence stored: stages[0].steps[0] \"AD:Full Sync\": agent sync01 (schedule named) has no run profile \"Full Sync\" on MA \"AD\"; it has \"Delta Import\", \"Export\"",
        ]
    );
    assert_eq!(
        report.targets,
        [
            ResolvedTargets {
                schedule: "prod".into(),
                targets: "selector env=prod".into(),
                agents: vec!["new01".into(), "sync01".into(), "sync02".into()],
                unknown: vec![],
            },
            ResolvedTargets {
                schedule: "named".into(),
                targets: "agents and selector env=nowhere".into(),
                agents: vec!["sync01".into()],
                unknown: vec!["sync1".into()],
            },
        ]
    );
    // Nothing known yet: nothing to check, targets unknown.
    let report = check_inventory(&docs, &[], &[]);
    assert_eq!(report.blocking().count(), 0);
    // An inventory that fits gives no warning.
    let fine = parse_str(
        "g.yaml",
        "kind: Sequence\nname: d\nstages:\n  - steps: [{ma: AD, profile: Export}]\n---\nkind: Schedule\nname: s\nsequence: d\ntargets: {agents: [sync01]}\ntrigger: {every: 5m}\n",
    )
    .unwrap();
    assert_eq!(check_inventory(&fine, &[], &agents).warnings, []);
}
