//! `runs show ID --errors`: the object errors (DN or anchor, error type, error code, literal)
//! and connection incidents the engine listed for each step of a run, as the agent sent them
//! with the step; and their form in `runs show -o json` (each step's `object_errors`,
//! `object_errors_omitted`, `connection_incidents`, `connection_incidents_omitted`).
//!
//! A step carries only its first errors (see `syncfleet_proto::step_errors`); the others are
//! counted, and the table says where to read them all: the engine's run history of that run.
//! Steps reported by agents that do not send errors have an error count and no list; the table
//! says so instead of showing an empty list as "no errors".

use syncfleet_proto::v1::{Run, Step};

use super::table::{Table, local_time, or_dash};
pub use crate::views::json::{incidents_json, object_errors_json};

/// Longest literal shown in a table cell, in characters (`-o json` has the whole literal the
/// controller stored).
const LITERAL_CELL_CHARS: usize = 120;

/// The `--errors` block printed after the run's details: per step with errors, a table of its
/// object errors and what was left out; per step with a failed connection, its incidents.
pub fn errors_section(r: &Run) -> String {
    let total = r.steps.len();
    let mut out = String::new();
    let with_errors: Vec<&Step> = r
        .steps
        .iter()
        .filter(|s| s.error_count > 0 || !s.object_errors.is_empty())
        .collect();
    if with_errors.is_empty() {
        out.push_str("object errors: none reported\n");
    } else {
        out.push_str("object errors:\n");
    }
    for s in with_errors {
        out.push_str(&format!(
            "  step {}/{} {}: {}: {}, {} {}\n",
            s.index + 1,
            total,
            s.ma,
            s.profile,
            or_dash(&s.result),
            s.error_count,
            if s.error_count == 1 {
                "error"
            } else {
                "errors"
            }
        ));
        if s.object_errors.is_empty() {
            out.push_str(&format!(
                "    not listed: the agent did not send them (an agent version without error \
                 details); read them in the engine's run history ({})\n",
                where_in_history(r, s)
            ));
            continue;
        }
        let mut t = Table::new(&["#", "KIND", "OBJECT", "TYPE", "CODE", "LITERAL"]);
        for (i, e) in s.object_errors.iter().enumerate() {
            t.row(vec![
                (i + 1).to_string(),
                or_dash(&e.kind).to_string(),
                or_dash(if e.dn.is_empty() { &e.cs_guid } else { &e.dn }).to_string(),
                or_dash(&e.error_type).to_string(),
                or_dash(&e.error_code).to_string(),
                or_dash(&one_line(&e.error_literal)).to_string(),
            ]);
        }
        out.push_str(&t.render_indented("    "));
        let listed = u64::try_from(s.object_errors.len()).unwrap_or(u64::MAX);
        let rest = s
            .object_errors_omitted
            .max(s.error_count.saturating_sub(listed));
        if rest > 0 {
            out.push_str(&format!(
                "    … and {rest} more not listed; the engine's run history has them all ({})\n",
                where_in_history(r, s)
            ));
        }
    }
    let failed: Vec<&Step> = r
        .steps
        .iter()
        .filter(|s| {
            s.connection_incidents
                .iter()
                .any(|i| i.connection_result != "success")
                || s.connection_incidents_omitted > 0
        })
        .collect();
    if failed.is_empty() {
        out.push_str("connection incidents: no failed connections reported\n");
        return out;
    }
    out.push_str("connection incidents:\n");
    for s in failed {
        out.push_str(&format!(
            "  step {}/{} {}: {}: connection result {}\n",
            s.index + 1,
            total,
            s.ma,
            s.profile,
            or_dash(&s.connection_result)
        ));
        let mut t = Table::new(&["RESULT", "DATE", "SERVER", "CODE", "LITERAL"]);
        for i in &s.connection_incidents {
            let mut literal = one_line(&i.error_literal);
            let detail = one_line(&i.server_error_detail);
            if !detail.is_empty() {
                if !literal.is_empty() {
                    literal.push_str(" — ");
                }
                literal.push_str(&detail);
            }
            t.row(vec![
                or_dash(&i.connection_result).to_string(),
                local_time(i.date.as_ref()),
                or_dash(&i.server).to_string(),
                or_dash(&i.error_code).to_string(),
                or_dash(&literal).to_string(),
            ]);
        }
        out.push_str(&t.render_indented("    "));
        if s.connection_incidents_omitted > 0 {
            out.push_str(&format!(
                "    … and {} more not listed\n",
                s.connection_incidents_omitted
            ));
        }
    }
    out
}

/// Where the engine keeps a step's complete list: its run number, MA and server.
fn where_in_history(r: &Run, s: &Step) -> String {
    if s.run_number == 0 {
        format!("MA {} on {}", s.ma, r.agent)
    } else {
        format!("run {} of MA {} on {}", s.run_number, s.ma, r.agent)
    }
}

/// A literal for a table cell: whitespace (stack trace lines) collapsed to single blanks, cut
/// to [`LITERAL_CELL_CHARS`] characters.
fn one_line(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(LITERAL_CELL_CHARS) {
        Some((cut, _)) => format!("{}…", flat[..cut].trim_end()),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use syncfleet_proto::v1::{ConnectionIncident, ObjectError, StepState};

    fn export_with_errors() -> Run {
        let errors: Vec<ObjectError> = (0..3)
            .map(|i| ObjectError {
                kind: "export".into(),
                dn: if i == 2 {
                    String::new()
                } else {
                    format!("CN=user{i},OU=People,DC=contoso,DC=com")
                },
                cs_guid: format!("{{9B1D4C2E-0000-0000-0000-00000000000{i}}}"),
                error_type: "permission-issue".into(),
                error_code: "0x80070005".into(),
                error_literal: "Access is denied.\r\n   at Connector.Export()".into(),
                literal_truncated: false,
            })
            .collect();
        Run {
            id: "r1".into(),
            agent: "sync-01".into(),
            steps: vec![
                Step {
                    index: 0,
                    ma: "HR".into(),
                    profile: "Delta Import".into(),
                    state: StepState::Done as i32,
                    result: "stopped-connectivity".into(),
                    connection_result: "failed-connection".into(),
                    connection_incidents: vec![
                        ConnectionIncident {
                            connection_result: "success".into(),
                            server: "sql01".into(),
                            ..Default::default()
                        },
                        ConnectionIncident {
                            connection_result: "failed-connection".into(),
                            server: "sql01".into(),
                            error_code: "0x80004005".into(),
                            error_literal: "A network-related error occurred.".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                Step {
                    index: 1,
                    ma: "AD".into(),
                    profile: "Export".into(),
                    state: StepState::Done as i32,
                    result: "completed-export-errors".into(),
                    run_number: 12,
                    error_count: 21,
                    object_errors: errors,
                    object_errors_omitted: 18,
                    ..Default::default()
                },
                Step {
                    index: 2,
                    ma: "MIM Service".into(),
                    profile: "Export".into(),
                    state: StepState::Done as i32,
                    result: "completed-export-errors".into(),
                    run_number: 7,
                    error_count: 4,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn errors_section_lists_errors_the_rest_and_failed_connections() {
        let text = errors_section(&export_with_errors());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "object errors:");
        assert_eq!(
            lines[1],
            "  step 2/3 AD: Export: completed-export-errors, 21 errors"
        );
        assert!(lines[2].starts_with("    #  KIND    OBJECT"), "{text}");
        assert!(
            lines[3].starts_with("    1  export  CN=user0,OU=People,DC=contoso,DC=com ")
                && lines[3].ends_with(
                    "  permission-issue  0x80070005  Access is denied. at Connector.Export()"
                ),
            "{text}"
        );
        // No DN: the anchor is shown.
        assert!(
            lines[5].contains("{9B1D4C2E-0000-0000-0000-000000000002}"),
            "{text}"
        );
        assert_eq!(
            lines[6],
            "    … and 18 more not listed; the engine's run history has them all (run 12 of MA AD on sync-01)"
        );
        // An older agent's step: counted, not listed, and said so.
        assert_eq!(
            lines[7],
            "  step 3/3 MIM Service: Export: completed-export-errors, 4 errors"
        );
        assert!(
            lines[8].contains("not listed: the agent did not send them")
                && lines[8].contains("run 7 of MA MIM Service on sync-01"),
            "{text}"
        );
        assert_eq!(lines[9], "connection incidents:");
        assert_eq!(
            lines[10],
            "  step 1/3 HR: Delta Import: connection result failed-connection"
        );
        assert!(lines[11].starts_with("    RESULT"), "{text}");
        assert!(lines[12].starts_with("    success "), "{text}");
        assert!(
            lines[13].starts_with("    failed-connection")
                && lines[13].ends_with("sql01   0x80004005  A network-related error occurred."),
            "{text}"
        );
        assert_eq!(lines.len(), 14, "{text}");
    }

    #[test]
    fn a_run_without_errors_says_so() {
        let mut r = export_with_errors();
        r.steps.truncate(0);
        assert_eq!(
            errors_section(&r),
            "object errors: none reported\nconnection incidents: no failed connections reported\n"
        );
    }

    #[test]
    fn json_keeps_every_field_verbatim() {
        let r = export_with_errors();
        let v = object_errors_json(&r.steps[1]);
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(
            v[0],
            json!({
                "kind": "export",
                "dn": "CN=user0,OU=People,DC=contoso,DC=com",
                "cs_guid": "{9B1D4C2E-0000-0000-0000-000000000000}",
                "error_type": "permission-issue",
                "error_code": "0x80070005",
                "error_literal": "Access is denied.\r\n   at Connector.Export()",
                "literal_truncated": false,
            })
        );
        let i = incidents_json(&r.steps[0]);
        assert_eq!(i[1]["connection_result"], "failed-connection");
        assert_eq!(i[1]["date"], Value::Null);
        assert_eq!(i[1]["error_code"], "0x80004005");
        let step = super::super::output::step_json(&r.steps[1]);
        assert_eq!(step["object_errors_omitted"], 18);
        assert_eq!(step["object_errors"], v);
        assert_eq!(step["connection_incidents"], json!([]));
    }

    #[test]
    fn long_literals_are_one_line_and_cut_in_tables() {
        let long = format!("line one\n  line two {}", "x".repeat(500));
        let cell = one_line(&long);
        assert!(cell.starts_with("line one line two x"));
        assert_eq!(cell.chars().count(), LITERAL_CELL_CHARS + 1);
        assert!(cell.ends_with('…'));
    }
}
