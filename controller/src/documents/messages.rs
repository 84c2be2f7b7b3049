//! Problem messages: one line per problem naming its place, serde errors made readable,
//! and "did you mean" suggestions.

use std::fmt;

use super::load::is_syntax_error;
use super::model::{Document, Guard, Limit};
use crate::limits::{self, echo};

/// One problem in a fleet file or document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFileError {
    /// Where: `fleet/delta.yaml document 2 (Schedule delta-every-5m)`, `fleet/delta.yaml`, or
    /// `Schedule delta-every-5m` for a document without a source.
    pub place: String,
    /// What is wrong and how to fix it, starting with the field path when there is one:
    /// `overlap: unknown value "skipp"; use skip, buffer_one or cancel_other`.
    pub message: String,
}

impl fmt::Display for FleetFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Every problem found; `Display` puts each on its own line (no trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.errors))]
pub struct FleetFileErrors {
    /// In file order, then document order; never empty when returned as an error.
    pub errors: Vec<FleetFileError>,
}

pub(super) fn lines(errors: &[FleetFileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl FleetFileErrors {
    pub(super) fn check(errors: Vec<FleetFileError>) -> Result<(), FleetFileErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FleetFileErrors { errors })
        }
    }
}

pub(super) fn err(place: impl Into<String>, message: impl Into<String>) -> FleetFileError {
    FleetFileError {
        place: place.into(),
        message: message.into(),
    }
}

/// Rewrites a serde_norway error into `FIELD.PATH: problem; fix (line L)`. `doc` (the document
/// as a plain YAML value) lets errors that serde reports on a parent mapping (values read
/// through an untagged enum: limits, `cron`) be pinned on the field itself.
pub(super) fn readable_yaml_error(
    e: &serde_norway::Error,
    doc: Option<&serde_norway::Value>,
) -> String {
    let text = e.to_string();
    if is_syntax_error(e) {
        return format!("YAML syntax error: {text}");
    }
    let mut line = None;
    let mut body = text.as_str();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(b) = body.strip_suffix(suffix.as_str()) {
            body = b;
        }
        line = Some(loc.line());
    }
    let (path, msg) = split_path(body);
    let refined = match (doc, path) {
        (Some(d), Some(p)) => refine_path(d, p),
        (Some(d), None) => refine_path(d, ""),
        _ => None,
    };
    let path = refined.as_deref().or(path);
    let msg = readable_serde_message(path, msg);
    let mut out = match path {
        Some(p) => format!("{p}: {msg}"),
        None => msg,
    };
    if let Some(l) = line {
        out.push_str(&format!(" (line {l})"));
    }
    out
}

/// The value at `path` (`stages[0].steps[1].guard`, empty for the root) of a document.
pub(super) fn lookup<'v>(
    doc: &'v serde_norway::Value,
    path: &str,
) -> Option<&'v serde_norway::Value> {
    let mut node = doc;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or("");
        if !key.is_empty() {
            node = node.as_mapping()?.get(key)?;
        }
        for idx in pieces {
            let i: usize = idx.strip_suffix(']')?.parse().ok()?;
            node = node.as_sequence()?.get(i)?;
        }
    }
    Some(node)
}

/// For an error reported on the mapping at `path`, the path of the field that is actually
/// unreadable, for fields read through an untagged enum (guard limits and `cron`).
pub(super) fn refine_path(doc: &serde_norway::Value, path: &str) -> Option<String> {
    let map = lookup(doc, path)?.as_mapping()?;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for key in Guard::FIELDS {
        if let Some(v) = map.get(key)
            && serde_norway::from_value::<Limit>(v.clone()).is_err()
        {
            return Some(join(key));
        }
    }
    if let Some(v) = map.get("cron")
        && serde_norway::from_value::<String>(v.clone()).is_err()
        && serde_norway::from_value::<Vec<String>>(v.clone()).is_err()
    {
        return Some(join("cron"));
    }
    None
}

/// Splits `stages[0].steps[1].ma: message` into the path and the message. A prefix is a path
/// only if it has no blanks and only path characters.
pub(super) fn split_path(body: &str) -> (Option<&str>, &str) {
    if let Some((p, m)) = body.split_once(": ")
        && !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c))
    {
        return (Some(p), m);
    }
    (None, body)
}

/// The names between backticks in a serde message, in order.
pub(super) fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// Plain-language versions of serde's stock messages; unknown ones are kept verbatim.
pub(super) fn readable_serde_message(path: Option<&str>, msg: &str) -> String {
    let last = path
        .map(|p| p.rsplit('.').next().unwrap_or(p))
        .map(|p| p.split('[').next().unwrap_or(p))
        .unwrap_or("");
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        if let Some((got, allowed)) = names.split_first() {
            return format!("unknown value {got:?}; use {}", or_list(allowed));
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((got, allowed)) = names.split_first() {
            let mut m = format!("unknown field {got:?}");
            if let Some(s) = closest(got, allowed.iter().copied()) {
                m.push_str(&format!(" (did you mean {s}?)"));
            }
            if allowed.is_empty() {
                m.push_str("; remove it");
            } else {
                m.push_str(&format!("; allowed here: {}", allowed.join(", ")));
            }
            return m;
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let names = backticked(rest);
        if let Some(f) = names.first() {
            return format!("missing field {f:?}; add it");
        }
    }
    if msg.starts_with("data did not match any variant of untagged enum") {
        return match last {
            "cron" => "expected a cron expression or a list of them".to_string(),
            guard if Guard::FIELDS.contains(&guard) => {
                "expected a count (500) or a percentage (\"2%\")".to_string()
            }
            _ => msg.to_string(),
        };
    }
    if let Some(head) = msg.strip_suffix(", expected a duration") {
        let got = head
            .strip_prefix("invalid value: ")
            .or_else(|| head.strip_prefix("invalid type: "))
            .unwrap_or(head);
        let got = got.strip_prefix("string ").unwrap_or(got);
        return format!(
            "{got} is not a duration; write it with a unit, e.g. 30s, 5m, 4h or 1h 30m"
        );
    }
    msg.to_string()
}

/// `a`, `a or b`, `a, b or c`.
pub(super) fn or_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [init @ .., last] => format!(
            "{} or {}",
            init.iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(", "),
            last.as_ref()
        ),
    }
}

/// The candidate closest to `got` (case-insensitive edit distance at most 2, or a
/// case-insensitive equal), if any.
pub(super) fn closest<'a>(got: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let g = got.to_lowercase();
    candidates
        .map(|c| (edit_distance(&g, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.min(c.len().saturating_sub(1)) && *c != got)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Where a document is, for messages: `fleet/delta.yaml document 2 (Schedule delta-every-5m)`.
/// `source` is `"path#N"`, any other text (shown as is), or empty.
///
/// Names longer than [`limits::ECHO_CHARS`] and sources longer than [`limits::MAX_SOURCE`] are
/// cut ([`limits::clip`]): neither can be valid, and both may come from any client.
pub fn describe_source(source: &str, doc: &Document) -> String {
    let what = format!("{} {}", doc.kind(), limits::clip(doc.name()));
    let cut;
    let source = if source.len() > limits::MAX_SOURCE {
        cut = limits::clip(source);
        cut.as_str()
    } else {
        source
    };
    if source.is_empty() || source == what {
        return what;
    }
    match source.rsplit_once('#') {
        Some((path, n)) if !path.is_empty() && n.parse::<u32>().is_ok() => {
            format!("{path} document {n} ({what})")
        }
        _ => format!("{source} ({what})"),
    }
}

/// The name closest to `got` when it is close for its length: at most one edit per three
/// characters (at least one, at most two), so `AD` does not suggest `LAB`.
pub(super) fn near<'a>(got: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (got.chars().count() / 3).clamp(1, 2);
    closest(got, names).filter(|c| edit_distance(&got.to_lowercase(), &c.to_lowercase()) <= allowed)
}

/// ` (did you mean "X"?)` when a name is close ([`near`]), else `; it has "A", "B"` (the
/// first 20).
pub(super) fn suggestion(got: &str, names: &[&str]) -> String {
    match near(got, names.iter().copied()) {
        Some(c) => format!(" (did you mean {}?)", echo(c)),
        None => {
            let shown: Vec<String> = names.iter().take(20).map(|n| echo(n)).collect();
            let more = names.len().saturating_sub(shown.len());
            format!(
                "; it has {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::documents::testkit::*;

    #[test]
    fn helpers() {
        assert_eq!(or_list(&["a"]), "a");
        assert_eq!(or_list(&["a", "b", "c"]), "a, b or c");
        assert_eq!(
            closest("profil", ["ma", "profile"].into_iter()),
            Some("profile")
        );
        assert_eq!(closest("zzz", ["ma", "profile"].into_iter()), None);
        assert_eq!(split_path("a[0].b: x: y"), (Some("a[0].b"), "x: y"));
        assert_eq!(split_path("missing field `x`"), (None, "missing field `x`"));
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
}
