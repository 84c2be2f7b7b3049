//! Run records and run-history XML in the engine's layout (element structure of the real samples
//! in `agent/tests/data/run-history/`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::RunStepInfo;
use crate::engine::runhistory::format_engine_timestamp;

#[derive(Debug, Clone)]
pub(super) struct RunHeader {
    pub ma_id: String,
    pub ma_name: String,
    pub run_number: u64,
    pub profile: String,
    pub security_id: String,
}

#[derive(Debug, Clone, Default)]
pub(super) struct StepReport {
    /// Staging, inbound-flow and export counters by element name (absent = 0).
    pub counters: BTreeMap<&'static str, u64>,
    pub outbound: Vec<OutboundRecord>,
    /// `ma-discovery-errors` entries.
    pub discovery: Vec<DiscoveryRecord>,
    /// `synchronization-errors` entries.
    pub errors: Vec<ErrorRecord>,
}

impl StepReport {
    pub fn set(&mut self, name: &'static str, value: u64) {
        self.counters.insert(name, value);
    }
}

#[derive(Debug, Clone)]
pub(super) struct OutboundRecord {
    pub ma: String,
    pub ma_id: String,
    pub counters: Vec<(&'static str, u64)>,
}

/// An `ma-object-error` (discovery error) of an import.
#[derive(Debug, Clone)]
pub(super) struct DiscoveryRecord {
    pub dn: String,
}

#[derive(Debug, Clone)]
pub(super) enum ErrorRecord {
    /// A sync (inbound flow) error raised by the rules extension.
    Import { cs_guid: String, dn: String },
    /// An import error of the staging phase.
    Staging { cs_guid: String, dn: String },
    Export {
        cs_guid: String,
        dn: String,
        error_type: &'static str,
        error_code: &'static str,
        error_literal: &'static str,
    },
}

/// `ma-connection` of a step that connects to its data source (imports, exports).
#[derive(Debug, Clone)]
pub(super) struct ConnectionRecord {
    pub server: String,
    /// Set when the connection was lost during the step.
    pub failure: Option<ConnectionFailure>,
}

#[derive(Debug, Clone)]
pub(super) struct ConnectionFailure {
    /// `connection-result`, e.g. `dropped-connection`.
    pub result: &'static str,
    pub at: DateTime<Utc>,
    pub error_code: &'static str,
    pub error_literal: &'static str,
}

#[derive(Debug, Clone)]
pub(super) struct StepRecord {
    pub number: u32,
    pub id: String,
    pub step: RunStepInfo,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    pub result: String,
    pub progress: Option<String>,
    /// `Some` for steps that connect to the data source (imports, exports).
    pub connection: Option<ConnectionRecord>,
    /// Pre-rendered, trusted `custom-data` content (AD MA step data).
    pub custom_data: Option<&'static str>,
    pub current_export_batch: u64,
    pub last_successful_export_batch: u64,
    pub report: StepReport,
}

const STAGING: [(&str, bool); 7] = [
    ("stage-no-change", false),
    ("stage-add", true),
    ("stage-update", true),
    ("stage-rename", true),
    ("stage-delete", true),
    ("stage-delete-add", true),
    ("stage-failure", true),
];
const INBOUND: [(&str, bool); 17] = [
    ("disconnector-filtered", true),
    ("disconnector-joined-no-flow", true),
    ("disconnector-joined-flow", true),
    ("disconnector-joined-remove-mv", true),
    ("disconnector-projected-no-flow", true),
    ("disconnector-projected-flow", true),
    ("disconnector-projected-remove-mv", true),
    ("disconnector-remains", false),
    ("connector-filtered-remove-mv", true),
    ("connector-filtered-leave-mv", true),
    ("connector-flow", true),
    ("connector-flow-remove-mv", true),
    ("connector-no-flow", true),
    ("connector-delete-remove-mv", true),
    ("connector-delete-leave-mv", true),
    ("connector-delete-add-processed", true),
    ("flow-failure", true),
];
const EXPORT: [(&str, bool); 6] = [
    ("export-add", true),
    ("export-update", true),
    ("export-rename", true),
    ("export-delete", true),
    ("export-delete-add", true),
    ("export-failure", true),
];

/// Escape text and attribute values.
pub(super) fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A whole run: completed steps plus, while running, the current step. Steps are written
/// highest number first, as the engine does.
pub(super) fn render(h: &RunHeader, done: &[StepRecord], current: Option<&StepRecord>) -> String {
    let errors: usize = done
        .iter()
        .chain(current)
        .map(|s| s.report.errors.len() + s.report.discovery.len())
        .sum();
    let mut x = String::with_capacity(6_000 * (done.len() + 1) + 500 * errors);
    // `write!` into a `String` cannot fail; the `fmt::Result` is ignored throughout.
    x.push_str("<?xml version=\"1.0\" encoding=\"utf-16\"?>\n<run-history>\n <run-details>\n");
    let _ = writeln!(x, "  <ma-id>{}</ma-id>", escape(&h.ma_id));
    let _ = writeln!(x, "  <ma-name>{}</ma-name>", escape(&h.ma_name));
    let _ = writeln!(x, "  <run-number>{}</run-number>", h.run_number);
    let _ = writeln!(
        x,
        "  <run-profile-name>{}</run-profile-name>",
        escape(&h.profile)
    );
    let _ = writeln!(x, "  <security-id>{}</security-id>", escape(&h.security_id));
    for s in current.into_iter().chain(done.iter().rev()) {
        step(&mut x, s);
    }
    x.push_str(" </run-details>\n</run-history>\n");
    x
}

fn step(x: &mut String, s: &StepRecord) {
    let _ = writeln!(
        x,
        "  <step-details step-number=\"{}\" step-id=\"{}\">",
        s.number,
        escape(&s.id)
    );
    let _ = writeln!(
        x,
        "   <start-date>{}</start-date>",
        format_engine_timestamp(s.started)
    );
    if let Some(end) = s.ended {
        let _ = writeln!(
            x,
            "   <end-date>{}</end-date>",
            format_engine_timestamp(end)
        );
    }
    match &s.progress {
        Some(p) => {
            let _ = writeln!(
                x,
                "   <step-result progress=\"{}\">{}</step-result>",
                escape(p),
                escape(&s.result)
            );
        }
        None => {
            let _ = writeln!(x, "   <step-result>{}</step-result>", escape(&s.result));
        }
    }
    x.push_str("   <step-description>\n");
    let _ = writeln!(x, "    <step-type type=\"{}\">", escape(&s.step.step_type));
    if !s.step.subtype.is_empty() {
        let element = match s.step.step_type.as_str() {
            "apply-rules" => "apply-rules-subtype",
            "export" => "export-subtype",
            _ => "import-subtype",
        };
        let _ = writeln!(x, "     <{element}>{}</{element}>", escape(&s.step.subtype));
    }
    x.push_str("    </step-type>\n");
    let _ = writeln!(
        x,
        "    <partition>{}</partition>",
        escape(&s.step.partition)
    );
    if let Some(custom) = s.custom_data {
        let _ = writeln!(x, "    <custom-data>\n     {custom}\n    </custom-data>");
    }
    x.push_str("   </step-description>\n");
    let _ = writeln!(
        x,
        "   <current-export-step-counter>{}</current-export-step-counter>",
        s.current_export_batch
    );
    let _ = writeln!(
        x,
        "   <last-successful-export-step-counter>{}</last-successful-export-step-counter>",
        s.last_successful_export_batch
    );
    x.push_str("   <ma-connection>\n");
    if let Some(c) = &s.connection {
        connection(x, c, s.started);
    }
    x.push_str("   </ma-connection>\n");
    discovery_errors(x, s);
    x.push_str("   <ma-discovery-counters>\n   </ma-discovery-counters>\n");
    errors(x, s);
    x.push_str("   <mv-retry-errors/>\n");
    for out in &s.report.outbound {
        let _ = writeln!(
            x,
            "   <outbound-flow-counters ma=\"{}\" ma-id=\"{}\">",
            escape(&out.ma),
            escape(&out.ma_id)
        );
        for (name, value) in &out.counters {
            let _ = writeln!(x, "    <{name} detail=\"true\">{value}</{name}>");
        }
        x.push_str("   </outbound-flow-counters>\n");
    }
    counters(x, "staging-counters", &STAGING, s);
    counters(x, "inbound-flow-counters", &INBOUND, s);
    counters(x, "export-counters", &EXPORT, s);
    x.push_str("  </step-details>\n");
}

/// Connection result, server and log, as in the `stopped-connectivity` sample.
fn connection(x: &mut String, c: &ConnectionRecord, started: DateTime<Utc>) {
    let server = escape(&c.server);
    let result = c.failure.as_ref().map_or("success", |f| f.result);
    let _ = write!(
        x,
        "    <connection-result>{result}</connection-result><server>{server}</server>\
         <connection-log><incident><connection-result>success</connection-result>\
         <date>{}</date><server>{server}</server></incident>",
        format_engine_timestamp(started)
    );
    if let Some(f) = &c.failure {
        let _ = write!(
            x,
            "<incident><connection-result>{}</connection-result><date>{}</date>\
             <server>{server}</server><cd-error><error-code>{}</error-code>\n\
             \x20   <error-literal>{}</error-literal>\n    </cd-error></incident>",
            f.result,
            format_engine_timestamp(f.at),
            escape(f.error_code),
            escape(f.error_literal)
        );
    }
    x.push_str("</connection-log>\n");
}

fn counters(x: &mut String, block: &str, names: &[(&str, bool)], s: &StepRecord) {
    let _ = writeln!(x, "   <{block}>");
    for (name, detail) in names {
        let value = s.report.counters.get(name).copied().unwrap_or(0);
        let _ = writeln!(x, "    <{name} detail=\"{detail}\">{value}</{name}>");
    }
    let _ = writeln!(x, "   </{block}>");
}

fn discovery_errors(x: &mut String, s: &StepRecord) {
    x.push_str("   <ma-discovery-errors>\n");
    for d in &s.report.discovery {
        // Two objects with the same anchor: the duplicate-object discovery errors of the real
        // incident that skipped a delta sync.
        let _ = writeln!(
            x,
            "    <ma-object-error>\n\
             \x20    <error-type>duplicate-object</error-type>\n\
             \x20    <dn>{}</dn>\n\
             \x20   </ma-object-error>",
            escape(&d.dn)
        );
    }
    x.push_str("   </ma-discovery-errors>\n");
}

fn errors(x: &mut String, s: &StepRecord) {
    if s.report.errors.is_empty() {
        x.push_str("   <synchronization-errors/>\n");
        return;
    }
    let when = format_engine_timestamp(s.ended.unwrap_or(s.started));
    x.push_str("   <synchronization-errors>");
    for e in &s.report.errors {
        match e {
            ErrorRecord::Import { cs_guid, dn } => {
                let _ = write!(
                    x,
                    "<import-error cs-guid=\"{}\" dn=\"{}\">\n\
                     \x20   <first-occurred>{when}</first-occurred>\n\
                     \x20   <retry-count>0</retry-count>\n\
                     \x20   <date-occurred>{when}</date-occurred>\n\
                     \x20   <error-type>extension-dll-exception</error-type>\n\
                     \x20   <algorithm-step>import-flow</algorithm-step>\n\
                     \x20   <extension-error-info>\n\
                     \x20    <extension-name>Contoso.Sync.RulesExtension</extension-name>\n\
                     \x20    <extension-callsite>import-flow</extension-callsite>\n\
                     \x20    <extension-context>cd.person:department-&gt;mv.person:department</extension-context>\n\
                     \x20    <call-stack>System.NullReferenceException: Object reference not set to an instance of an object.\n\
                     \x20  at Contoso.Sync.RulesExtension.MapAttributesForImport(String FlowRuleName, CSEntry csentry, MVEntry mventry)</call-stack>\n\
                     \x20   </extension-error-info>\n\
                     \x20  </import-error>\n",
                    escape(cs_guid),
                    escape(dn)
                );
            }
            ErrorRecord::Staging { cs_guid, dn } => {
                let _ = write!(
                    x,
                    "<import-error cs-guid=\"{}\" dn=\"{}\">\n\
                     \x20   <first-occurred>{when}</first-occurred>\n\
                     \x20   <retry-count>0</retry-count>\n\
                     \x20   <date-occurred>{when}</date-occurred>\n\
                     \x20   <error-type>cs-attribute-type-mismatch</error-type>\n\
                     \x20   <algorithm-step>staging</algorithm-step>\n\
                     \x20  </import-error>\n",
                    escape(cs_guid),
                    escape(dn)
                );
            }
            ErrorRecord::Export {
                cs_guid,
                dn,
                error_type,
                error_code,
                error_literal,
            } => {
                let _ = write!(
                    x,
                    "<export-error cs-guid=\"{}\" dn=\"{}\">\n\
                     \x20   <date-occurred>{when}</date-occurred>\n\
                     \x20   <first-occurred>{when}</first-occurred>\n\
                     \x20   <retry-count>0</retry-count>\n\
                     \x20   <error-type>{}</error-type>\n\
                     \x20   <cd-error>\n\
                     \x20    <error-code>{}</error-code><error-literal>{}</error-literal>\n\
                     \x20   </cd-error>\n\
                     \x20  </export-error>\n",
                    escape(cs_guid),
                    escape(dn),
                    escape(error_type),
                    escape(error_code),
                    escape(error_literal)
                );
            }
        }
    }
    x.push_str("   </synchronization-errors>\n");
}
