//! The run-history XML parser: the one place where the engine's `RunDetails()` XML becomes
//! counters, for every driver (the format: `docs/engine.md`, "Run-history XML").
//!
//! # Contract
//!
//! - Input is the raw XML string a driver got from `MIIS_ManagementAgent.RunDetails()` or
//!   `MIIS_RunHistory.RunDetails()` (root `<run-history>`, one or more `<run-details>`), or a
//!   saved history file (root `<execution-histories>` wrapping one or more `<run-history>`).
//!   An empty `<run-history/>` (what `RunDetails()` returns for an MA that never ran) parses to no runs.
//! - Steps are returned **sorted by `step-number`**: real data lists the highest step first,
//!   so document order is never used.
//! - Strings that belong to open vocabularies (step results, connection results, error types) are
//!   kept verbatim (trimmed of XML indentation only): the engine adds values that no schema lists
//!   (e.g. `ma-extension-error` in the export sample). Classification happens in
//!   [`syncfleet_proto::vocab`], not here.
//! - Counters: every element child of `staging-counters`, `inbound-flow-counters`,
//!   `export-counters` and `ma-discovery-counters` is a counter keyed by its element name; only
//!   counters present in the XML are reported (the engine omits zero outbound counters).
//!   `detail="..."` attributes are ignored. A counter that is not an unsigned integer is an error:
//!   silently reading it as 0 would hide exactly the numbers guard rails depend on.
//!
//! # Real-data quirks handled
//!
//! 1. Descending step order → sorted.
//! 2. `<?xml version="1.0" encoding="utf-16"?>` on text that is really a Rust `str` (the engine's
//!    BSTR was transcoded) → the declaration is stripped before parsing; a UTF-8 BOM too.
//! 3. Empty containers as `<x/>` and `<x>\n</x>` → both mean "empty".
//! 4. Zero outbound counters omitted; unknown enumeration values kept.
//!
//! # Safety
//!
//! The input comes from a process we do not control and may be truncated (a run in progress) or
//! hostile. Every failure is a [`ParseError`]; the parser never panics and runs in time linear in
//! the input: input over [`MAX_INPUT_BYTES`] is refused before parsing, documents over
//! [`MAX_NODES`] nodes are refused, and DTDs are refused so entity expansion ("billion laughs")
//! cannot happen. Deep nesting cannot overflow the stack (no recursion).
//!
//! # Speed and memory
//!
//! The document is read in one streaming pass (`stream`, on `quick-xml`'s pull reader): no tree
//! is built, values borrow from the input until they are kept. Memory is the input plus the
//! returned runs (at most [`MAX_ERRORS_KEPT`] errors per step are kept, whatever the XML holds).
//! Time is spent mostly per element (and on building the returned counters), so a file of many
//! small elements parses several times slower per byte than one of long error texts;
//! `cargo bench -p syncfleet-agent --bench runhistory` measures both shapes.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

#[cfg(test)]
mod oracle;
mod stream;

/// Largest accepted input (64 MiB). A run with the engine's 5,000-error limit and full error
/// details stays far below this.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// Largest accepted number of XML nodes (elements, text, attributes are not nodes). Caps memory
/// of the DOM for hostile input with many tiny elements.
pub const MAX_NODES: u32 = 2_000_000;

/// At most this many errors of a step are kept in [`ErrorSummary::first`]; all are counted.
pub const MAX_ERRORS_KEPT: usize = 10;

/// Error literals (often .NET stack traces) are cut to this many characters.
pub const MAX_LITERAL_CHARS: usize = 2000;

/// The engine's timestamp format, UTC (`yyyy-mm-dd hh:mm:ss.fff`).
pub const ENGINE_TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// Longest snippet of offending input quoted in an error message.
const SNIPPET_CHARS: usize = 64;

/// Why run-history XML could not be turned into [`RunDetails`]. Messages name the problem and
/// the element, so they can be shown to an operator as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("input is {} ({bytes} bytes); the limit is {}", mib(*.bytes), mib(*.limit))]
    TooLarge { bytes: usize, limit: usize },
    #[error("run-history XML has more than {limit} nodes; refused to protect memory")]
    TooManyNodes { limit: u32 },
    #[error(
        "run-history XML contains a DTD (<!DOCTYPE ...>); DTDs and entity declarations are \
         refused (entity-expansion protection)"
    )]
    DtdRefused,
    #[error("run-history XML is not well-formed: {0}")]
    Malformed(String),
    #[error(
        "run-history XML: root element is <{0}>; expected <run-history> or <execution-histories>"
    )]
    UnexpectedRoot(String),
    #[error("run-history XML: missing <{element}> in <{parent}>")]
    MissingElement {
        element: &'static str,
        parent: &'static str,
    },
    #[error("run-history XML: missing attribute {attribute:?} on <{element}>")]
    MissingAttribute {
        attribute: &'static str,
        element: &'static str,
    },
    #[error("counter <{element}> is not a number: {value:?}")]
    CounterNotANumber { element: String, value: String },
    #[error("counter <{element}> overflows when summed")]
    CounterOverflow { element: String },
    #[error("run-history XML: {field} is not an unsigned integer: {value:?}")]
    BadNumber { field: &'static str, value: String },
    #[error(
        "run-history XML: <{element}> is not an engine timestamp (yyyy-mm-dd hh:mm:ss.fff): {value:?}"
    )]
    BadTimestamp {
        element: &'static str,
        value: String,
    },
    #[error("run-history XML: step-number {step_number} appears twice in run {run_number}")]
    DuplicateStep { run_number: u64, step_number: u32 },
    #[error("run-history XML: expected exactly one <run-details>, found {0}")]
    NotExactlyOneRun(usize),
}

fn mib(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        // Display only; precision loss of the usize -> f64 conversion is irrelevant here.
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// A bounded, printable excerpt of offending input for error messages.
fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if s.chars().nth(SNIPPET_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// One run (`<run-details>`): one execution of a run profile on one MA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunDetails {
    /// MA GUID as the engine prints it, e.g. `{85098734-66BC-4938-8122-C5F585F463D0}`.
    pub ma_id: String,
    /// MA display name (`ma-name`).
    pub ma: String,
    pub run_number: u64,
    /// Run profile display name (`run-profile-name`).
    pub profile: String,
    /// Account that invoked the run, `DOMAIN\account` (empty when absent).
    pub security_id: String,
    /// Steps sorted by `step_number` ascending (never document order).
    pub steps: Vec<StepDetails>,
}

impl RunDetails {
    /// Run-level result: the most severe step result, as the Sync Service Manager's Status
    /// column shows it. `None` for a run without steps.
    pub fn result(&self) -> Option<&str> {
        syncfleet_proto::vocab::most_severe(self.steps.iter().map(|s| s.result.as_str()))
    }

    /// Start of the first step.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.steps.first().and_then(|s| s.started_at)
    }

    /// End of the last step; `None` while it runs.
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.steps.last().and_then(|s| s.finished_at)
    }
}

/// One run step (`<step-details>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepDetails {
    pub step_number: u32,
    /// `step-id` attribute (GUID in braces); empty when absent.
    pub step_id: String,
    /// `step-description/step-type/@type`: `delta-import`, `apply-rules`, `export`, ...
    pub step_type: String,
    /// Sub-type(s) of the step type (`to-cs`, `apply-pending`, `reevaluate-flow-connectors`, ...),
    /// several joined with `", "`; empty when none.
    pub subtype: String,
    /// `step-description/partition`; empty when absent.
    pub partition: String,
    pub started_at: Option<DateTime<Utc>>,
    /// `None` while the step runs (`end-date` is written on completion).
    pub finished_at: Option<DateTime<Utc>>,
    /// Raw `step-result` text (open vocabulary).
    pub result: String,
    /// `step-result/@progress` (`x/y`), when the engine gives one.
    pub progress: Option<String>,
    /// `ma-connection/connection-result` (`success`, `failed-search`, ...).
    pub connection_result: Option<String>,
    /// `ma-connection/server`.
    pub connection_server: Option<String>,
    /// `ma-connection/connection-log/incident`, in document order.
    pub connection_incidents: Vec<Incident>,
    /// Staging, inbound-flow, export and discovery counters keyed by the engine's element name
    /// (`stage-add`, `connector-flow`, `export-update`, `filtered-objects`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Outbound-flow counters per target MA name (`outbound-flow-counters/@ma`).
    pub outbound: BTreeMap<String, BTreeMap<String, u64>>,
    pub errors: ErrorSummary,
}

impl StepDetails {
    /// A counter's value; 0 when the XML does not list it.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Sum of one outbound counter over all target MAs.
    pub fn outbound_total(&self, name: &str) -> u64 {
        self.outbound
            .values()
            .filter_map(|m| m.get(name))
            .fold(0u64, |acc, v| acc.saturating_add(*v))
    }

    /// True when the step staged changes, so a delta sync has work: AutoSync's
    /// `StagingCounters.HasChanges`.
    pub fn has_staged_changes(&self) -> bool {
        [
            "stage-add",
            "stage-update",
            "stage-rename",
            "stage-delete",
            "stage-delete-add",
        ]
        .iter()
        .any(|c| self.counter(c) > 0)
    }
}

/// One `ma-connection/connection-log/incident`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    pub connection_result: String,
    pub date: Option<DateTime<Utc>>,
    pub server: String,
    /// `cd-error/error-code` (e.g. `8453`).
    pub error_code: Option<String>,
    pub error_literal: Option<String>,
    pub server_error_detail: Option<String>,
}

/// Errors of one step: how many, and the first [`MAX_ERRORS_KEPT`] in document order
/// (discovery errors, then synchronization errors, then metaverse retry errors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorSummary {
    pub count: u64,
    pub first: Vec<SyncErrorInfo>,
}

/// One object-level error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncErrorInfo {
    /// `import` (`import-error`), `export` (`export-error`), `discovery` (`ma-object-error`),
    /// `mv-retry` (`retry-error`).
    pub kind: String,
    /// `@cs-guid`; empty for discovery and metaverse retry errors.
    pub cs_guid: String,
    /// `@dn` (or the `dn` child of a discovery error; the `@displayName` of a metaverse retry
    /// error, which has no DN).
    pub dn: String,
    /// `error-type`, verbatim (open vocabulary: e.g. `ma-extension-error`).
    pub error_type: String,
    /// `cd-error/error-code`, e.g. `0x80230703`.
    pub error_code: Option<String>,
    /// `cd-error/error-literal`, else `extension-error-info/call-stack` (or its
    /// `extension-context`); trimmed, cut at [`MAX_LITERAL_CHARS`] characters.
    pub error_literal: Option<String>,
}

/// Parse run-history XML: a `<run-history>` root with zero or more `<run-details>`, or the saved
/// file wrapper `<execution-histories>` with one or more `<run-history>`. Runs are returned in
/// document order.
pub fn parse(xml: &str) -> Result<Vec<RunDetails>, ParseError> {
    if xml.len() > MAX_INPUT_BYTES {
        return Err(ParseError::TooLarge {
            bytes: xml.len(),
            limit: MAX_INPUT_BYTES,
        });
    }
    stream::parse_body(strip_prolog(xml))
}

/// Text of a run-history file as stored on disk: UTF-16 (LE or BE, with a byte-order mark, as
/// PowerShell's `Out-File` and .NET writers save the engine's BSTR) or UTF-8 (with or without a
/// BOM). Anything else is an error naming the problem.
pub fn decode_bytes(bytes: &[u8]) -> Result<String, String> {
    if bytes.len() > MAX_INPUT_BYTES * 2 {
        return Err(format!(
            "input is {} MiB; the limit is {} MiB",
            bytes.len() / (1024 * 1024),
            MAX_INPUT_BYTES / (1024 * 1024)
        ));
    }
    let utf16 = |le: bool| -> Result<String, String> {
        let body = &bytes[2..];
        if !body.len().is_multiple_of(2) {
            return Err("UTF-16 text with an odd number of bytes (truncated file?)".into());
        }
        let units = body.chunks_exact(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        // Sized for the usual all-ASCII markup, so the one copy is not regrown (and briefly held
        // twice) while decoding.
        let mut text = String::with_capacity(body.len() / 2);
        for c in char::decode_utf16(units) {
            text.push(c.map_err(|e| format!("invalid UTF-16 text: {e}"))?);
        }
        Ok(text)
    };
    match bytes {
        [0xFF, 0xFE, ..] => utf16(true),
        [0xFE, 0xFF, ..] => utf16(false),
        _ => String::from_utf8(bytes.to_vec()).map_err(|e| {
            format!(
                "not UTF-8 or UTF-16 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            )
        }),
    }
}

/// [`decode_bytes`] for a buffer the caller gives up (a file just read): UTF-8 text keeps the
/// buffer (no copy), UTF-16 is decoded into one new string and the buffer is freed, so reading a
/// file costs its size once, not twice.
pub fn decode_vec(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_INPUT_BYTES * 2 || matches!(bytes[..], [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..])
    {
        return decode_bytes(&bytes);
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 or UTF-16 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Parse XML that must hold exactly one run (what `RunDetails()` of one run returns).
pub fn parse_one(xml: &str) -> Result<RunDetails, ParseError> {
    let mut runs = parse(xml)?;
    match runs.len() {
        1 => runs.pop().ok_or(ParseError::NotExactlyOneRun(0)),
        n => Err(ParseError::NotExactlyOneRun(n)),
    }
}

/// Drop a UTF-8 BOM and the XML declaration (it claims `utf-16` for text that is
/// UTF-8 by now; a strict parser rejects the mismatch and the declaration carries nothing else we
/// need). Leading whitespace before the declaration (also invalid XML) is tolerated.
pub(crate) fn strip_prolog(xml: &str) -> &str {
    let s = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let t = s.trim_start();
    if let Some(rest) = t.strip_prefix("<?xml") {
        // `<?xml-stylesheet ...?>` is a processing instruction, not the declaration.
        let is_declaration =
            rest.starts_with(|c: char| c.is_ascii_whitespace()) || rest.starts_with("?>");
        if is_declaration && let Some(end) = rest.find("?>") {
            return &rest[end + 2..];
        }
    }
    s
}

/// Trim and cut a free-text literal (stack traces can be huge) at [`MAX_LITERAL_CHARS`].
fn literal(s: &str) -> String {
    let t = s.trim();
    match t.char_indices().nth(MAX_LITERAL_CHARS) {
        Some((cut, _)) => {
            let mut out = t[..cut].trim_end().to_owned();
            out.push('…');
            out
        }
        None => t.to_owned(),
    }
}

/// Strict unsigned integer: ASCII digits only (no sign, no spaces inside), no overflow.
fn parse_uint<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse the engine's UTC timestamp `yyyy-mm-dd hh:mm:ss[.fff]` (a `T` separator is accepted).
pub fn parse_engine_timestamp(value: &str) -> Option<DateTime<Utc>> {
    let v = value.trim();
    NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .map(|n| n.and_utc())
}

/// Format a UTC time the way the engine writes it (`yyyy-mm-dd hh:mm:ss.fff`).
pub fn format_engine_timestamp(t: DateTime<Utc>) -> String {
    t.format(ENGINE_TIMESTAMP_FORMAT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const DELTA_IMPORT: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
    );
    const EXPORT: &str = include_str!(
        "../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
    );

    const STAGING: [&str; 7] = [
        "stage-no-change",
        "stage-add",
        "stage-update",
        "stage-rename",
        "stage-delete",
        "stage-delete-add",
        "stage-failure",
    ];
    const INBOUND: [&str; 17] = [
        "disconnector-filtered",
        "disconnector-joined-no-flow",
        "disconnector-joined-flow",
        "disconnector-joined-remove-mv",
        "disconnector-projected-no-flow",
        "disconnector-projected-flow",
        "disconnector-projected-remove-mv",
        "disconnector-remains",
        "connector-filtered-remove-mv",
        "connector-filtered-leave-mv",
        "connector-flow",
        "connector-flow-remove-mv",
        "connector-no-flow",
        "connector-delete-remove-mv",
        "connector-delete-leave-mv",
        "connector-delete-add-processed",
        "flow-failure",
    ];
    const EXPORTS: [&str; 6] = [
        "export-add",
        "export-update",
        "export-rename",
        "export-delete",
        "export-delete-add",
        "export-failure",
    ];

    fn ts(s: &str) -> Option<DateTime<Utc>> {
        Some(parse_engine_timestamp(s).unwrap())
    }

    /// Every counter the engine writes for a step, with the non-zero ones overridden.
    fn expected_counters(nonzero: &[(&str, u64)]) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = STAGING
            .iter()
            .chain(INBOUND.iter())
            .chain(EXPORTS.iter())
            .map(|c| ((*c).to_owned(), 0))
            .collect();
        for (k, v) in nonzero {
            m.insert((*k).to_owned(), *v);
        }
        m
    }

    /// A minimal valid run with the given step-details bodies.
    fn run_xml(steps: &str) -> String {
        format!(
            "<run-history><run-details><ma-id>{{A}}</ma-id><ma-name>AD</ma-name>\
             <run-number>7</run-number><run-profile-name>Delta Sync</run-profile-name>\
             <security-id>CONTOSO\\svc</security-id>{steps}</run-details></run-history>"
        )
    }

    #[test]
    fn delta_import_sample_is_parsed_exactly() {
        let run = parse_one(DELTA_IMPORT).unwrap();
        assert_eq!(run.ma_id, "{85098734-66BC-4938-8122-C5F585F463D0}");
        assert_eq!(run.ma, "MOSSAD-company");
        assert_eq!(run.run_number, 1879);
        assert_eq!(run.profile, "DS_DELTAIMPORT");
        assert_eq!(run.security_id, "domain\\serviceacc");
        // Document order is 2, 1: the parser sorts.
        let numbers: Vec<u32> = run.steps.iter().map(|s| s.step_number).collect();
        assert_eq!(numbers, vec![1, 2]);
        assert_eq!(run.result(), Some("stopped-connectivity"));
        assert_eq!(run.started_at(), ts("2017-01-04 23:00:35.380"));
        assert_eq!(run.finished_at(), ts("2017-01-04 23:00:58.987"));

        let s1 = &run.steps[0];
        assert_eq!(s1.step_id, "{874BEB73-FFF1-4C43-9836-26D8AACE454E}");
        assert_eq!(s1.step_type, "delta-import");
        assert_eq!(s1.subtype, "to-cs");
        assert_eq!(s1.partition, "DC=za,DC=company,DC=com");
        assert_eq!(s1.started_at, ts("2017-01-04 23:00:35.380"));
        assert_eq!(s1.finished_at, ts("2017-01-04 23:00:55.223"));
        assert_eq!(
            s1.finished_at.unwrap().timestamp_subsec_millis(),
            223,
            "milliseconds kept"
        );
        assert_eq!(s1.result, "success");
        assert_eq!(s1.progress, None);
        assert_eq!(s1.connection_result.as_deref(), Some("success"));
        assert_eq!(s1.connection_server.as_deref(), Some("dc.company.com:389"));
        assert_eq!(
            s1.connection_incidents,
            vec![Incident {
                connection_result: "success".into(),
                date: ts("2017-01-04 23:00:35.410"),
                server: "dc.company.com:389".into(),
                error_code: None,
                error_literal: None,
                server_error_detail: None,
            }]
        );
        let mut want =
            expected_counters(&[("stage-add", 3), ("stage-update", 27), ("stage-rename", 2)]);
        want.insert("filtered-objects".into(), 46);
        assert_eq!(s1.counters, want);
        assert!(s1.outbound.is_empty());
        assert_eq!(s1.errors, ErrorSummary::default());
        assert!(s1.has_staged_changes());

        let s2 = &run.steps[1];
        assert_eq!(s2.step_id, "{0D16BE50-FB6A-4CDC-B528-59B41D3F41A3}");
        assert_eq!(s2.step_type, "delta-import");
        assert_eq!(s2.subtype, "to-cs");
        assert_eq!(s2.partition, "DC=ab,DC=company,DC=com");
        assert_eq!(s2.started_at, ts("2017-01-04 23:00:55.253"));
        assert_eq!(s2.finished_at, ts("2017-01-04 23:00:58.987"));
        assert_eq!(s2.result, "stopped-connectivity");
        assert_eq!(s2.connection_result.as_deref(), Some("failed-search"));
        assert_eq!(
            s2.connection_server.as_deref(),
            Some("DC01.ab.company.com:389")
        );
        assert_eq!(
            s2.connection_incidents,
            vec![
                Incident {
                    connection_result: "success".into(),
                    date: ts("2017-01-04 23:00:58.473"),
                    server: "DC01.ab.company.com:389".into(),
                    error_code: None,
                    error_literal: None,
                    server_error_detail: None,
                },
                Incident {
                    connection_result: "failed-search".into(),
                    date: ts("2017-01-04 23:00:58.957"),
                    server: "DC01.ab.company.com:389".into(),
                    error_code: Some("8453".into()),
                    error_literal: Some("Replication access was denied.".into()),
                    server_error_detail: Some(
                        "00002105: LdapErr: DSID-adcv, comment: Error processing control, data 0, v1db1"
                            .into()
                    ),
                },
            ]
        );
        // Empty `<ma-discovery-counters>\n</ma-discovery-counters>`: no discovery counters.
        assert_eq!(s2.counters, expected_counters(&[]));
        assert!(!s2.counters.contains_key("filtered-objects"));
        assert!(s2.outbound.is_empty());
        assert_eq!(s2.errors, ErrorSummary::default());
        assert!(!s2.has_staged_changes());
    }

    #[test]
    fn export_sample_is_parsed_exactly() {
        let run = parse_one(EXPORT).unwrap();
        assert_eq!(run.ma_id, "{FB0D00E1-4E0B-44DA-AF5F-62D4D99B2FBC}");
        assert_eq!(run.ma, "MOSS-UserProfile");
        assert_eq!(run.run_number, 2590);
        assert_eq!(
            run.profile,
            "MOSS_EXPORT_a9061a90-5fb2-485e-90e8-4019c5c1f9ce"
        );
        assert_eq!(run.security_id, "domain\\serviceacc");
        assert_eq!(run.steps.len(), 1);
        assert_eq!(run.result(), Some("completed-export-errors"));

        let s = &run.steps[0];
        assert_eq!(s.step_number, 1);
        assert_eq!(s.step_id, "{E0446E50-FF59-4691-9EC0-F9BD3D564F4A}");
        assert_eq!(s.step_type, "export");
        assert_eq!(s.subtype, "");
        assert_eq!(s.partition, "default");
        assert_eq!(s.started_at, ts("2017-01-04 23:05:05.367"));
        assert_eq!(s.finished_at, ts("2017-01-04 23:06:06.677"));
        assert_eq!(s.result, "completed-export-errors");
        // `<ma-connection>\n</ma-connection>`: empty container.
        assert_eq!(s.connection_result, None);
        assert_eq!(s.connection_server, None);
        assert!(s.connection_incidents.is_empty());
        assert_eq!(
            s.counters,
            expected_counters(&[
                ("export-add", 3),
                ("export-update", 23),
                ("export-failure", 1)
            ])
        );
        assert!(s.outbound.is_empty());
        assert_eq!(s.errors.count, 1);
        assert_eq!(s.errors.first.len(), 1);
        let e = &s.errors.first[0];
        assert_eq!(e.kind, "export");
        assert_eq!(e.cs_guid, "{12345678-DF83-E611-8CE8-00505689546C}");
        assert_eq!(e.dn, "MVID=67d2da90-0c2a-e411-a2e8-0050568e45d6");
        assert_eq!(e.error_type, "ma-extension-error");
        assert_eq!(e.error_code.as_deref(), Some("0x80230703"));
        let lit = e.error_literal.as_deref().unwrap();
        assert!(lit.starts_with(
            "System.Reflection.TargetInvocationException: Exception has been thrown by the target"
        ));
        // Entities decoded, trailing whitespace trimmed, under the cut-off.
        assert!(lit.contains("---> System.AggregateException"));
        assert!(lit.contains("<UpdateWithProfileChangeData>b__24"));
        // The 3,142-character stack trace is cut at the limit.
        assert_eq!(lit.chars().count(), MAX_LITERAL_CHARS + 1);
        assert!(lit.ends_with("UpdateWithProfileChange…"), "{lit}");
    }

    #[test]
    fn decode_vec_matches_decode_bytes() {
        let mut utf16le = vec![0xFF, 0xFE];
        utf16le.extend(EXPORT.encode_utf16().flat_map(u16::to_le_bytes));
        let mut utf16be = vec![0xFE, 0xFF];
        utf16be.extend(EXPORT.encode_utf16().flat_map(u16::to_be_bytes));
        let bom = format!("\u{feff}{EXPORT}").into_bytes();
        for bytes in [
            EXPORT.as_bytes().to_vec(),
            bom,
            utf16le,
            utf16be,
            vec![b'a', 0xC3],
        ] {
            assert_eq!(decode_vec(bytes.clone()), decode_bytes(&bytes));
        }
        assert_eq!(decode_vec(EXPORT.as_bytes().to_vec()).unwrap(), EXPORT);
        assert!(decode_vec(vec![0xFF, 0xFE, 0x3C]).is_err());
    }

    #[test]
    fn json_shape_is_snake_case() {
        let run = parse_one(EXPORT).unwrap();
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(v["run_number"], 2590);
        assert_eq!(v["steps"][0]["counters"]["export-update"], 23);
        assert_eq!(
            v["steps"][0]["errors"]["first"][0]["error_code"],
            "0x80230703"
        );
        assert!(v["steps"][0]["finished_at"].is_string());
    }

    #[test]
    fn bom_declaration_and_no_declaration_are_equivalent() {
        let plain = parse(DELTA_IMPORT).unwrap();
        let with_bom = format!("\u{feff}{DELTA_IMPORT}");
        assert_eq!(parse(&with_bom).unwrap(), plain);
        let start = DELTA_IMPORT.find("<run-history>").unwrap();
        assert_eq!(parse(&DELTA_IMPORT[start..]).unwrap(), plain);
        let utf8_decl = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>{}",
            &DELTA_IMPORT[start..]
        );
        assert_eq!(parse(&utf8_decl).unwrap(), plain);
    }

    #[test]
    fn execution_histories_wrapper_with_several_histories() {
        let start = DELTA_IMPORT.find("<run-history>").unwrap();
        let start2 = EXPORT.find("<run-history>").unwrap();
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-16\"?>\n<execution-histories>\n{}\n{}\n<run-history/>\n</execution-histories>",
            &DELTA_IMPORT[start..],
            &EXPORT[start2..]
        );
        let runs = parse(&xml).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].run_number, 1879);
        assert_eq!(runs[1].run_number, 2590);
        assert_eq!(
            parse_one(&xml).unwrap_err(),
            ParseError::NotExactlyOneRun(2)
        );
    }

    #[test]
    fn several_run_details_in_one_history() {
        let step = "<step-details step-number=\"1\" step-id=\"{S}\"><step-result>success</step-result></step-details>";
        let one = run_xml(step);
        let inner = &one["<run-history>".len()..one.len() - "</run-history>".len()];
        let xml = format!("<run-history>{inner}{inner}</run-history>");
        assert_eq!(parse(&xml).unwrap().len(), 2);
    }

    #[test]
    fn empty_run_history_means_no_runs() {
        assert_eq!(parse("<run-history/>").unwrap(), vec![]);
        assert_eq!(parse("<run-history>\n</run-history>").unwrap(), vec![]);
        assert_eq!(
            parse_one("<run-history/>").unwrap_err(),
            ParseError::NotExactlyOneRun(0)
        );
    }

    #[test]
    fn self_closing_and_newline_containers_are_both_empty() {
        let a = run_xml(
            "<step-details step-number=\"1\" step-id=\"{S}\"><step-result>success</step-result>\
             <ma-connection/><ma-discovery-errors/><ma-discovery-counters/><synchronization-errors/>\
             <mv-retry-errors/><staging-counters/><inbound-flow-counters/><export-counters/></step-details>",
        );
        let b = run_xml(
            "<step-details step-number=\"1\" step-id=\"{S}\"><step-result>success</step-result>\
             <ma-connection>\n</ma-connection><ma-discovery-errors>\n</ma-discovery-errors>\
             <ma-discovery-counters>\n</ma-discovery-counters><synchronization-errors>\n</synchronization-errors>\
             <mv-retry-errors>\n</mv-retry-errors><staging-counters>\n</staging-counters>\
             <inbound-flow-counters>\n</inbound-flow-counters><export-counters>\n</export-counters></step-details>",
        );
        let ra = parse_one(&a).unwrap();
        let rb = parse_one(&b).unwrap();
        assert_eq!(ra, rb);
        let s = &ra.steps[0];
        assert!(s.counters.is_empty());
        assert_eq!(s.connection_result, None);
        assert_eq!(s.errors.count, 0);
        assert_eq!(s.step_type, "");
        assert_eq!(s.started_at, None);
    }

    #[test]
    fn outbound_counters_per_ma_with_zeros_omitted() {
        let xml = run_xml(
            "<step-details step-number=\"1\" step-id=\"{S}\">\
             <start-date>2024-05-01 10:00:00.000</start-date><end-date>2024-05-01 10:00:09.5</end-date>\
             <step-result>success</step-result>\
             <step-description><step-type type=\"apply-rules\"><apply-rules-subtype>apply-pending</apply-rules-subtype></step-type></step-description>\
             <ma-connection/>\
             <outbound-flow-counters ma=\"AD\" ma-id=\"{1}\"><provisioned-add-flow detail=\"true\">4</provisioned-add-flow><connector-flow detail=\"true\">12</connector-flow></outbound-flow-counters>\
             <outbound-flow-counters ma=\"MIM Service\" ma-id=\"{2}\"><connector-flow detail=\"true\">9</connector-flow></outbound-flow-counters>\
             <outbound-flow-counters ma=\"AD\" ma-id=\"{1}\"><provisioned-disconnect detail=\"true\">1</provisioned-disconnect></outbound-flow-counters>\
             <inbound-flow-counters><connector-flow detail=\"true\">21</connector-flow></inbound-flow-counters>\
             </step-details>",
        );
        let run = parse_one(&xml).unwrap();
        let s = &run.steps[0];
        assert_eq!(s.step_type, "apply-rules");
        assert_eq!(s.subtype, "apply-pending");
        assert_eq!(s.finished_at, ts("2024-05-01 10:00:09.500"));
        assert_eq!(s.outbound.len(), 2);
        let ad = &s.outbound["AD"];
        assert_eq!(ad.len(), 3);
        assert_eq!(ad["provisioned-add-flow"], 4);
        assert_eq!(ad["connector-flow"], 12);
        assert_eq!(ad["provisioned-disconnect"], 1);
        assert!(!ad.contains_key("connector-no-flow"));
        let mim = &s.outbound["MIM Service"];
        assert_eq!(mim.len(), 1);
        assert_eq!(mim["connector-flow"], 9);
        assert_eq!(s.outbound_total("connector-flow"), 21);
        // The inbound counter of the same name is separate.
        assert_eq!(s.counter("connector-flow"), 21);
        assert_eq!(s.counters.len(), 1);
    }

    #[test]
    fn import_discovery_and_retry_errors_are_summarised() {
        let mut errs = String::new();
        for i in 0..12 {
            errs.push_str(&format!(
                "<import-error cs-guid=\"{{G{i}}}\" dn=\"CN=u{i},DC=x\"><first-occurred>2024-01-01 00:00:00.000</first-occurred>\
                 <retry-count>0</retry-count><date-occurred>2024-01-01 00:00:00.000</date-occurred>\
                 <error-type>extension-dll-exception</error-type><algorithm-step>import-flow</algorithm-step>\
                 <extension-error-info><extension-name>Rules</extension-name><extension-callsite>import-flow</extension-callsite>\
                 <extension-context>ctx{i}</extension-context><call-stack>  System.NullReferenceException: boom {i}  </call-stack>\
                 </extension-error-info></import-error>"
            ));
        }
        let xml = run_xml(&format!(
            "<step-details step-number=\"1\" step-id=\"{{S}}\"><step-result>completed-sync-errors</step-result>\
             <ma-discovery-errors><ma-object-error><error-type>duplicate-object</error-type><dn>CN=dup</dn>\
             <cd-error><error-code>0x1</error-code><error-literal>dup</error-literal></cd-error></ma-object-error></ma-discovery-errors>\
             <synchronization-errors>{errs}</synchronization-errors>\
             <mv-retry-errors><retry-error displayName=\"Jane\"><date-occurred>2024-01-01 00:00:00.000</date-occurred>\
             <error-type>some-future-error-type</error-type><algorithm-step>provisioning</algorithm-step></retry-error></mv-retry-errors>\
             </step-details>"
        ));
        let run = parse_one(&xml).unwrap();
        let e = &run.steps[0].errors;
        assert_eq!(e.count, 14);
        assert_eq!(e.first.len(), MAX_ERRORS_KEPT);
        assert_eq!(e.first[0].kind, "discovery");
        assert_eq!(e.first[0].dn, "CN=dup");
        assert_eq!(e.first[0].cs_guid, "");
        assert_eq!(e.first[0].error_type, "duplicate-object");
        assert_eq!(e.first[0].error_code.as_deref(), Some("0x1"));
        assert_eq!(e.first[1].kind, "import");
        assert_eq!(e.first[1].cs_guid, "{G0}");
        assert_eq!(e.first[1].dn, "CN=u0,DC=x");
        assert_eq!(e.first[1].error_type, "extension-dll-exception");
        assert_eq!(e.first[1].error_code, None);
        assert_eq!(
            e.first[1].error_literal.as_deref(),
            Some("System.NullReferenceException: boom 0")
        );
        assert_eq!(run.result(), Some("completed-sync-errors"));
    }

    #[test]
    fn mv_retry_error_keeps_unknown_type_and_display_name() {
        let xml = run_xml(
            "<step-details step-number=\"1\"><step-result>brand-new-result</step-result>\
             <mv-retry-errors><retry-error displayName=\"Jane Doe\"><error-type>some-future-error-type</error-type>\
             </retry-error></mv-retry-errors></step-details>",
        );
        let run = parse_one(&xml).unwrap();
        let s = &run.steps[0];
        assert_eq!(s.step_id, "");
        assert_eq!(s.result, "brand-new-result");
        assert_eq!(run.result(), Some("brand-new-result"));
        assert_eq!(s.errors.first[0].kind, "mv-retry");
        assert_eq!(s.errors.first[0].dn, "Jane Doe");
        assert_eq!(s.errors.first[0].error_type, "some-future-error-type");
    }

    #[test]
    fn long_literals_are_truncated() {
        let long = "x".repeat(MAX_LITERAL_CHARS * 3);
        let xml = run_xml(&format!(
            "<step-details step-number=\"1\"><step-result>completed-export-errors</step-result>\
             <synchronization-errors><export-error cs-guid=\"{{C}}\" dn=\"CN=a\"><error-type>cd-error</error-type>\
             <cd-error><error-code>1</error-code><error-literal>\n   {long}\n</error-literal></cd-error>\
             </export-error></synchronization-errors></step-details>"
        ));
        let run = parse_one(&xml).unwrap();
        let lit = run.steps[0].errors.first[0].error_literal.clone().unwrap();
        assert_eq!(lit.chars().count(), MAX_LITERAL_CHARS + 1);
        assert!(lit.ends_with('…'));
        assert!(lit.starts_with('x'));
    }

    #[test]
    fn in_progress_step_without_end_date() {
        let xml = run_xml(
            "<step-details step-number=\"1\" step-id=\"{S}\"><start-date>2024-05-01 10:00:00.000</start-date>\
             <step-result progress=\"120/400\">in-progress</step-result>\
             <staging-counters><stage-add detail=\"true\">12</stage-add></staging-counters></step-details>",
        );
        let run = parse_one(&xml).unwrap();
        let s = &run.steps[0];
        assert_eq!(s.finished_at, None);
        assert_eq!(s.progress.as_deref(), Some("120/400"));
        assert_eq!(s.result, "in-progress");
        assert_eq!(run.finished_at(), None);
        assert_eq!(s.counter("stage-add"), 12);
        assert_eq!(s.counter("stage-update"), 0);
    }

    #[test]
    fn non_numeric_counter_is_an_error_naming_the_element() {
        let xml = run_xml(
            "<step-details step-number=\"1\"><step-result>success</step-result>\
             <staging-counters><stage-add detail=\"true\">abc</stage-add></staging-counters></step-details>",
        );
        let err = parse(&xml).unwrap_err();
        assert_eq!(
            err.to_string(),
            "counter <stage-add> is not a number: \"abc\""
        );
        for bad in ["-1", "1.5", "", " 1 2", "+3", "99999999999999999999999"] {
            let xml = run_xml(&format!(
                "<step-details step-number=\"1\"><step-result>success</step-result>\
                 <export-counters><export-add>{bad}</export-add></export-counters></step-details>"
            ));
            assert!(
                matches!(parse(&xml), Err(ParseError::CounterNotANumber { .. })),
                "{bad:?} accepted"
            );
        }
        // Surrounding whitespace is formatting, not data.
        let xml = run_xml(
            "<step-details step-number=\"1\"><step-result>success</step-result>\
             <export-counters><export-add>\n 5 \n</export-add></export-counters></step-details>",
        );
        assert_eq!(parse_one(&xml).unwrap().steps[0].counter("export-add"), 5);
    }

    #[test]
    fn counter_overflow_is_an_error() {
        let xml = run_xml(&format!(
            "<step-details step-number=\"1\"><step-result>success</step-result>\
             <inbound-flow-counters><connector-flow>{m}</connector-flow></inbound-flow-counters>\
             <inbound-flow-counters><connector-flow>1</connector-flow></inbound-flow-counters></step-details>",
            m = u64::MAX
        ));
        assert_eq!(
            parse(&xml).unwrap_err().to_string(),
            "counter <connector-flow> overflows when summed"
        );
    }

    #[test]
    fn structural_errors_name_the_problem() {
        let missing_name = "<run-history><run-details><ma-id>{A}</ma-id><run-number>1</run-number>\
                            <run-profile-name>P</run-profile-name></run-details></run-history>";
        assert_eq!(
            parse(missing_name).unwrap_err().to_string(),
            "run-history XML: missing <ma-name> in <run-details>"
        );
        let bad_run_number = "<run-history><run-details><ma-id>{A}</ma-id><ma-name>AD</ma-name>\
                              <run-number>x1</run-number><run-profile-name>P</run-profile-name></run-details></run-history>";
        assert_eq!(
            parse(bad_run_number).unwrap_err().to_string(),
            "run-history XML: <run-number> is not an unsigned integer: \"x1\""
        );
        assert_eq!(
            parse("<foo/>").unwrap_err().to_string(),
            "run-history XML: root element is <foo>; expected <run-history> or <execution-histories>"
        );
        let no_result = run_xml("<step-details step-number=\"1\"></step-details>");
        assert_eq!(
            parse(&no_result).unwrap_err().to_string(),
            "run-history XML: missing <step-result> in <step-details>"
        );
        let no_number = run_xml("<step-details><step-result>success</step-result></step-details>");
        assert!(matches!(
            parse(&no_number),
            Err(ParseError::MissingAttribute {
                attribute: "step-number",
                ..
            })
        ));
        let dup = run_xml(
            "<step-details step-number=\"1\"><step-result>success</step-result></step-details>\
             <step-details step-number=\"1\"><step-result>success</step-result></step-details>",
        );
        assert_eq!(
            parse(&dup).unwrap_err(),
            ParseError::DuplicateStep {
                run_number: 7,
                step_number: 1
            }
        );
        let bad_date = run_xml(
            "<step-details step-number=\"1\"><start-date>yesterday</start-date><step-result>success</step-result></step-details>",
        );
        assert!(matches!(
            parse(&bad_date),
            Err(ParseError::BadTimestamp {
                element: "start-date",
                ..
            })
        ));
        let outbound_without_ma = run_xml(
            "<step-details step-number=\"1\"><step-result>success</step-result>\
             <outbound-flow-counters><connector-flow>1</connector-flow></outbound-flow-counters></step-details>",
        );
        assert!(matches!(
            parse(&outbound_without_ma),
            Err(ParseError::MissingAttribute {
                attribute: "ma",
                ..
            })
        ));
    }

    #[test]
    fn truncated_xml_is_an_error() {
        for cut in [DELTA_IMPORT.len() / 2, DELTA_IMPORT.len() - 20, 60, 45] {
            let err = parse(&DELTA_IMPORT[..cut]).unwrap_err();
            assert!(matches!(err, ParseError::Malformed(_)), "cut {cut}: {err}");
        }
        assert!(matches!(parse(""), Err(ParseError::Malformed(_))));
        assert!(matches!(
            parse("<?xml version=\"1.0\" encoding=\"utf-16\"?>"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn dtd_and_billion_laughs_are_rejected_fast() {
        let mut lol =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
        for i in 1..=9 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            lol.push_str(&format!(
                " <!ENTITY lol{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        lol.push_str("]>\n<run-history>&lol9;</run-history>");
        let started = std::time::Instant::now();
        assert_eq!(parse(&lol).unwrap_err(), ParseError::DtdRefused);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(parse(&lol).unwrap_err().to_string().contains("DTD"));
        // External entity (XXE) attempt: also a DTD.
        let xxe = "<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><run-history>&x;</run-history>";
        assert_eq!(parse(xxe).unwrap_err(), ParseError::DtdRefused);
        // An entity reference without a DTD is simply unknown.
        assert!(matches!(
            parse("<run-history>&lol9;</run-history>"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let huge = " ".repeat(MAX_INPUT_BYTES + 1);
        let err = parse(&huge).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "input is 64.0 MiB ({} bytes); the limit is 64 MiB",
                MAX_INPUT_BYTES + 1
            )
        );
        let eighty = ParseError::TooLarge {
            bytes: 80 * 1024 * 1024,
            limit: MAX_INPUT_BYTES,
        };
        assert_eq!(
            eighty.to_string(),
            "input is 80 MiB (83886080 bytes); the limit is 64 MiB"
        );
    }

    #[test]
    fn node_limit_and_deep_nesting() {
        let many = format!(
            "<run-history>{}</run-history>",
            "<a/>".repeat(MAX_NODES as usize + 1)
        );
        assert_eq!(
            parse(&many).unwrap_err(),
            ParseError::TooManyNodes { limit: MAX_NODES }
        );
        // Deep nesting: no stack overflow (tree built iteratively, fixed-path walk).
        let depth = 200_000;
        let deep = format!(
            "<run-history>{}{}</run-history>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        assert_eq!(parse(&deep).unwrap(), vec![]);
        let deep_bad = format!("<run-history>{}", "<a>".repeat(depth));
        assert!(parse(&deep_bad).is_err());
    }

    #[test]
    fn garbage_does_not_panic() {
        let inputs: [&[u8]; 8] = [
            b"\x00\x01\x02\xff\xfe",
            b"<",
            b"<<<<>>>>",
            b"<run-history><run-details>",
            b"\xef\xbb\xbf<?xml",
            b"<?xml?><run-history/>",
            b"<run-history><run-details><ma-id/><ma-name/><run-number>1</run-number><run-profile-name/><step-details step-number=\"4294967296\"><step-result/></step-details></run-details></run-history>",
            b"<![CDATA[x]]>",
        ];
        for input in inputs {
            let s = String::from_utf8_lossy(input);
            let _ = parse(&s);
            let _ = parse_one(&s);
        }
    }

    /// Deterministic fuzzing of the real samples: truncations, byte flips, splices. Every result
    /// is either `Ok` or a `ParseError`; the test fails only on a panic (or a hang).
    #[test]
    fn mutated_samples_never_panic() {
        let samples = [DELTA_IMPORT.as_bytes(), EXPORT.as_bytes()];
        let mut rng = StdRng::seed_from_u64(0x5EED_F00D);
        let mut ok = 0usize;
        let mut err = 0usize;
        let mut check = |bytes: &[u8]| {
            let s = String::from_utf8_lossy(bytes);
            match parse(&s) {
                Ok(runs) => {
                    ok += 1;
                    for r in &runs {
                        let _ = r.result();
                        assert!(
                            r.steps
                                .windows(2)
                                .all(|w| w[0].step_number < w[1].step_number)
                        );
                    }
                }
                Err(e) => {
                    err += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        };
        // Truncate at every 13th byte.
        for sample in samples {
            for cut in (0..sample.len()).step_by(13) {
                check(&sample[..cut]);
            }
        }
        let specials: &[u8] = b"<>/&;\"'=?!-[]x0 \n";
        for i in 0..2000 {
            let base = samples[i % 2];
            let mut bytes = base.to_vec();
            match i % 4 {
                0 => {
                    // Flip a few random bytes.
                    for _ in 0..rng.random_range(1..=8) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                }
                1 => {
                    // Overwrite with XML-significant characters.
                    for _ in 0..rng.random_range(1..=4) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = specials[rng.random_range(0..specials.len())];
                    }
                }
                2 => {
                    // Splice a chunk of the other sample in.
                    let other = samples[(i + 1) % 2];
                    let from = rng.random_range(0..other.len());
                    let to = rng.random_range(from..=other.len().min(from + 400));
                    let at = rng.random_range(0..=bytes.len());
                    bytes.splice(at..at, other[from..to].iter().copied());
                }
                _ => {
                    // Delete or duplicate a range.
                    let from = rng.random_range(0..bytes.len());
                    let to = rng.random_range(from..=bytes.len().min(from + 200));
                    if rng.random_bool(0.5) {
                        bytes.drain(from..to);
                    } else {
                        let chunk = bytes[from..to].to_vec();
                        bytes.splice(to..to, chunk);
                    }
                }
            }
            check(&bytes);
        }
        assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    }
}
