//! Bounds on the engine's object errors and connection incidents that travel with a finished
//! step (`StepFinished`, agent → controller) and are stored with the step (`Step`).
//!
//! A run can list thousands of object errors (the engine stops at 5,000 with
//! `stopped-error-limit`) whose literals are .NET stack traces. An operator needs the first few
//! to act, plus how many there are; the engine's own run history keeps them all. So a step
//! carries at most [`MAX_OBJECT_ERRORS`] errors and [`MAX_INCIDENTS`] incidents, every text cut
//! to a fixed length, and all of them together at most [`MAX_STEP_ERRORS_BYTES`] encoded bytes;
//! what is left out is counted (`*_omitted`), never silently lost. The agent bounds what it
//! sends and the controller bounds again what it stores, so a step from an agent that sends more
//! (another version, or a hostile one) cannot grow the store or the answers of `GetRun` and
//! `ListRuns`.

use prost::Message as _;

use crate::v1;

/// Object errors kept per step (the first ones, in run-history order).
pub const MAX_OBJECT_ERRORS: usize = 10;
/// Connection incidents kept per step (the first ones, in run-history order).
pub const MAX_INCIDENTS: usize = 10;
/// Longest DN, display name or server name kept, in characters.
pub const MAX_NAME_CHARS: usize = 512;
/// Longest kind, GUID, error type, error code or connection result kept, in characters.
pub const MAX_CODE_CHARS: usize = 128;
/// Longest error literal or server error detail kept, in characters (a stack trace's first
/// lines name the exception and where it was thrown).
pub const MAX_LITERAL_CHARS: usize = 512;
/// Largest encoded size of a step's errors and incidents together, in bytes. Past it, errors
/// (then incidents) are dropped from the end and counted as omitted.
pub const MAX_STEP_ERRORS_BYTES: usize = 8 * 1024;

/// The object errors and connection incidents of one step, with the counts of those left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepErrors {
    pub object_errors: Vec<v1::ObjectError>,
    /// Errors the engine listed beyond `object_errors`.
    pub object_errors_omitted: u64,
    pub connection_incidents: Vec<v1::ConnectionIncident>,
    /// Incidents beyond `connection_incidents`.
    pub connection_incidents_omitted: u64,
}

impl StepErrors {
    /// The errors a `StepFinished` carries, as received.
    pub fn of_finished(f: &v1::StepFinished) -> Self {
        Self {
            object_errors: f.object_errors.clone(),
            object_errors_omitted: f.object_errors_omitted,
            connection_incidents: f.connection_incidents.clone(),
            connection_incidents_omitted: f.connection_incidents_omitted,
        }
    }

    /// Within the limits of this module: at most [`MAX_OBJECT_ERRORS`] errors and
    /// [`MAX_INCIDENTS`] incidents (the first ones), every text cut to its length limit, and at
    /// most [`MAX_STEP_ERRORS_BYTES`] encoded bytes in all. Everything dropped is added to the
    /// `*_omitted` counts, so listed + omitted stays the number the engine reported. Idempotent.
    pub fn bounded(mut self) -> Self {
        let extra = self.object_errors.len().saturating_sub(MAX_OBJECT_ERRORS);
        self.object_errors.truncate(MAX_OBJECT_ERRORS);
        self.object_errors_omitted = self.object_errors_omitted.saturating_add(as_u64(extra));
        let extra = self
            .connection_incidents
            .len()
            .saturating_sub(MAX_INCIDENTS);
        self.connection_incidents.truncate(MAX_INCIDENTS);
        self.connection_incidents_omitted = self
            .connection_incidents_omitted
            .saturating_add(as_u64(extra));
        for e in &mut self.object_errors {
            cut(&mut e.kind, MAX_CODE_CHARS);
            cut(&mut e.dn, MAX_NAME_CHARS);
            cut(&mut e.cs_guid, MAX_CODE_CHARS);
            cut(&mut e.error_type, MAX_CODE_CHARS);
            cut(&mut e.error_code, MAX_CODE_CHARS);
            if cut(&mut e.error_literal, MAX_LITERAL_CHARS) {
                e.literal_truncated = true;
            }
        }
        for i in &mut self.connection_incidents {
            cut(&mut i.connection_result, MAX_CODE_CHARS);
            cut(&mut i.server, MAX_NAME_CHARS);
            cut(&mut i.error_code, MAX_CODE_CHARS);
            cut(&mut i.error_literal, MAX_LITERAL_CHARS);
            cut(&mut i.server_error_detail, MAX_LITERAL_CHARS);
        }
        while self.encoded_len() > MAX_STEP_ERRORS_BYTES {
            // Drop from the end of the longer list (errors first on a tie): the first entries
            // of each kind are the ones an operator reads.
            if !self.object_errors.is_empty()
                && self.object_errors.len() >= self.connection_incidents.len()
            {
                self.object_errors.pop();
                self.object_errors_omitted = self.object_errors_omitted.saturating_add(1);
            } else if self.connection_incidents.pop().is_some() {
                self.connection_incidents_omitted =
                    self.connection_incidents_omitted.saturating_add(1);
            } else {
                break;
            }
        }
        self
    }

    /// Encoded size of the lists as fields of a `Step` (tags and lengths included).
    pub fn encoded_len(&self) -> usize {
        let errors: usize = self
            .object_errors
            .iter()
            .map(|e| {
                let n = e.encoded_len();
                1 + prost::length_delimiter_len(n) + n
            })
            .sum();
        let incidents: usize = self
            .connection_incidents
            .iter()
            .map(|i| {
                let n = i.encoded_len();
                1 + prost::length_delimiter_len(n) + n
            })
            .sum();
        errors + incidents
    }

    /// Copy onto a stored step.
    pub fn store_in(self, step: &mut v1::Step) {
        step.object_errors = self.object_errors;
        step.object_errors_omitted = self.object_errors_omitted;
        step.connection_incidents = self.connection_incidents;
        step.connection_incidents_omitted = self.connection_incidents_omitted;
    }

    /// Copy into a `StepFinished` about to be sent.
    pub fn send_in(self, f: &mut v1::StepFinished) {
        f.object_errors = self.object_errors;
        f.object_errors_omitted = self.object_errors_omitted;
        f.connection_incidents = self.connection_incidents;
        f.connection_incidents_omitted = self.connection_incidents_omitted;
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Cut `s` to `max` characters, the last one replaced by `…`; true when it was cut.
fn cut(s: &mut String, max: usize) -> bool {
    match s.char_indices().nth(max) {
        Some(_) => {
            let keep = s
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(0, |(i, _)| i);
            s.truncate(keep);
            s.push('…');
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(i: usize, literal: &str) -> v1::ObjectError {
        v1::ObjectError {
            kind: "export".into(),
            dn: format!("CN=user{i},OU=People,DC=contoso,DC=com"),
            cs_guid: format!("{{00000000-0000-0000-0000-{i:012}}}"),
            error_type: "permission-issue".into(),
            error_code: "0x80070005".into(),
            error_literal: literal.into(),
            literal_truncated: false,
        }
    }

    fn incident(i: usize) -> v1::ConnectionIncident {
        v1::ConnectionIncident {
            connection_result: "failed-search".into(),
            date: None,
            server: format!("DC{i:02}.contoso.com:389"),
            error_code: "8453".into(),
            error_literal: "Replication access was denied.".into(),
            server_error_detail: String::new(),
        }
    }

    #[test]
    fn keeps_the_first_errors_and_counts_the_rest() {
        let b = StepErrors {
            object_errors: (0..25).map(|i| error(i, "Access is denied.")).collect(),
            object_errors_omitted: 0,
            connection_incidents: (0..3).map(incident).collect(),
            connection_incidents_omitted: 0,
        }
        .bounded();
        assert_eq!(b.object_errors.len(), MAX_OBJECT_ERRORS);
        assert_eq!(b.object_errors_omitted, 15);
        assert_eq!(
            b.object_errors[0].dn,
            "CN=user0,OU=People,DC=contoso,DC=com"
        );
        assert_eq!(
            b.object_errors[9].dn,
            "CN=user9,OU=People,DC=contoso,DC=com"
        );
        assert_eq!(b.connection_incidents.len(), 3);
        assert_eq!(b.connection_incidents_omitted, 0);
        // Nothing to cut: the texts are unchanged.
        assert_eq!(b.object_errors[3].error_literal, "Access is denied.");
        assert!(!b.object_errors[3].literal_truncated);
    }

    #[test]
    fn long_texts_are_cut_and_marked() {
        let stack = format!(
            "System.NullReferenceException: Object reference not set to an instance of an object.\n{}",
            "   at Contoso.Sync.RulesExtension.MapAttributesForImport()\n".repeat(200)
        );
        let mut e = error(1, &stack);
        e.dn = "é".repeat(MAX_NAME_CHARS + 7);
        let b = StepErrors {
            object_errors: vec![e],
            ..Default::default()
        }
        .bounded();
        let got = &b.object_errors[0];
        assert_eq!(got.error_literal.chars().count(), MAX_LITERAL_CHARS);
        assert!(got.error_literal.ends_with('…'));
        assert!(
            got.error_literal
                .starts_with("System.NullReferenceException: Object reference not set")
        );
        assert!(got.literal_truncated);
        assert_eq!(got.dn.chars().count(), MAX_NAME_CHARS);
        assert!(got.dn.ends_with("é…"));
        assert_eq!(b.object_errors_omitted, 0);
    }

    #[test]
    fn total_size_is_bounded_by_dropping_from_the_end() {
        // Texts of 2-byte characters at every limit: ten errors and ten incidents would be
        // about 40 KiB.
        let wide = "é".repeat(2000);
        let mut errors: Vec<v1::ObjectError> = (0..12).map(|i| error(i, &wide)).collect();
        for e in &mut errors {
            e.dn.clone_from(&wide);
        }
        let incidents: Vec<v1::ConnectionIncident> = (0..12)
            .map(|i| {
                let mut x = incident(i);
                x.error_literal.clone_from(&wide);
                x.server_error_detail.clone_from(&wide);
                x
            })
            .collect();
        let b = StepErrors {
            object_errors: errors,
            object_errors_omitted: 100,
            connection_incidents: incidents,
            connection_incidents_omitted: 0,
        }
        .bounded();
        assert!(
            b.encoded_len() <= MAX_STEP_ERRORS_BYTES,
            "{}",
            b.encoded_len()
        );
        assert!(!b.object_errors.is_empty() && !b.connection_incidents.is_empty());
        // Listed + omitted is still what the engine reported.
        assert_eq!(
            b.object_errors.len() as u64 + b.object_errors_omitted,
            112,
            "{b:?}"
        );
        assert_eq!(
            b.connection_incidents.len() as u64 + b.connection_incidents_omitted,
            12
        );
        // The first entries are the ones kept.
        assert!(b.object_errors[0].cs_guid.ends_with("000000000000}"));
        assert_eq!(b.connection_incidents[0].server, "DC00.contoso.com:389");
        // As fields of a stored step the lists take what the bound measured, plus the two
        // omitted counts.
        let mut step = v1::Step::default();
        b.clone().store_in(&mut step);
        assert!(step.encoded_len() <= b.encoded_len() + 2 * 11);
        // Bounding again changes nothing.
        assert_eq!(b.clone().bounded(), b);
    }

    #[test]
    fn nothing_in_nothing_out() {
        let b = StepErrors::default().bounded();
        assert_eq!(b, StepErrors::default());
        assert_eq!(b.encoded_len(), 0);
    }
}
