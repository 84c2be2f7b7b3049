//! Fleet files: loading, validating, diffing and rendering the declarative `Sequence` and
//! `Schedule` documents of [`crate::model`]. Used by both the `syncfleet` CLI (`apply`, `get`)
//! and the controller's `Apply` RPC, so both sides report the same errors.
//!
//! Contracts:
//! - **Pure**: nothing here does I/O except [`load_paths`], which reads the files it is given.
//! - **Every error at once**: loading and validation never stop at the first problem; they
//!   return [`FleetFileErrors`] listing each problem on its own line as
//!   `FILE document N (KIND NAME): FIELD.PATH: what is wrong; how to fix it (line L)`.
//! - **Document numbers** are 1-based positions in the file, counting empty documents too, so
//!   they match what an editor shows between `---` lines. [`SourcedDoc::source`] is
//!   `"FILE#N"`.
//! - **Round trip**: [`parse_str`] of [`to_yaml`] gives back the same documents, and
//!   [`from_json`] of [`canonical_json`] too; equal documents give equal canonical JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::limits::{
    self, MAX_BLACKOUTS, MAX_CRON_ENTRIES, MAX_DOCUMENTS, MAX_SELECTOR_TERMS, MAX_STAGES,
    MAX_STEPS_PER_RUN, MAX_STEPS_PER_STAGE, MAX_TARGET_AGENTS, echo,
};
use crate::model::{Document, Limit, ScheduleDoc, SequenceDoc};
use crate::schedule::trigger::Trigger;

/// The document kinds a fleet file may hold, as written in `kind:`.
pub const KINDS: [&str; 2] = ["Sequence", "Schedule"];

/// Longest sequence or schedule name.
pub const MAX_NAME_LEN: usize = syncfleet_proto::names::MAX_NAME_LEN;
/// Longest `description`.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest management agent or run profile name.
pub const MAX_ENGINE_NAME_LEN: usize = limits::MAX_ENGINE_NAME;
/// Largest `jitter` and `catchup_window`.
pub const MAX_SCHEDULE_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A document with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedDoc {
    /// `"path#N"`: the file as given (or found below a given directory) and the 1-based
    /// position of the document in it. Free text when the document did not come from a file
    /// (then it is shown as is).
    pub source: String,
    pub doc: Document,
}

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

fn lines(errors: &[FleetFileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl FleetFileErrors {
    fn check(errors: Vec<FleetFileError>) -> Result<(), FleetFileErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FleetFileErrors { errors })
        }
    }
}

fn err(place: impl Into<String>, message: impl Into<String>) -> FleetFileError {
    FleetFileError {
        place: place.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads fleet documents from files and directories.
///
/// A path naming a file is read whatever its extension; a directory contributes every
/// `*.yaml` / `*.yml` file below it (recursively, sorted by path, skipping entries whose name
/// starts with `.`). A directory without any such file is an error (so `apply --prune` of a
/// wrong folder cannot delete everything). Documents are returned in path order, then file
/// order; empty documents are skipped. All problems of all files are returned together.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<SourcedDoc>, FleetFileErrors> {
    load_paths_lenient(paths).into_result()
}

/// Everything read from fleet files: the documents that could be read and the problems of
/// those that could not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub docs: Vec<SourcedDoc>,
    pub errors: Vec<FleetFileError>,
}

impl Loaded {
    /// The documents when there was no problem, else every problem.
    pub fn into_result(self) -> Result<Vec<SourcedDoc>, FleetFileErrors> {
        FleetFileErrors::check(self.errors)?;
        Ok(self.docs)
    }
}

/// Like [`load_paths`], but keeps the readable documents next to the problems, so callers can
/// validate those too and report everything in one go.
pub fn load_paths_lenient(paths: &[PathBuf]) -> Loaded {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = if path.is_dir() {
            let mut found = Vec::new();
            if let Err(e) = yaml_files_below(path, &mut found) {
                errors.push(err(path.display().to_string(), e));
                continue;
            }
            if found.is_empty() {
                errors.push(err(
                    path.display().to_string(),
                    "directory holds no *.yaml or *.yml files; name a file or a folder with fleet files",
                ));
            }
            found.sort();
            found
        } else {
            vec![path.clone()]
        };
        for file in files {
            let shown = file.display().to_string();
            match std::fs::read(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => {
                        let mut l = parse_str_lenient(&shown, &text);
                        docs.append(&mut l.docs);
                        errors.append(&mut l.errors);
                    }
                    Err(_) => errors.push(err(
                        shown,
                        "not UTF-8 text; save the file as UTF-8 (without BOM is best)",
                    )),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    errors.push(err(shown, "no such file or directory"));
                }
                Err(e) => errors.push(err(shown, format!("cannot read: {e}"))),
            }
        }
    }
    Loaded { docs, errors }
}

fn yaml_files_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list directory: {e}"))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            yaml_files_below(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses the multi-document YAML `text` of one file, shown in errors and sources as `file`.
///
/// Each non-empty document must be a mapping with `kind: Sequence` or `kind: Schedule` and the
/// fields of that kind (unknown fields are errors). A leading UTF-8 byte order mark is ignored.
/// After a YAML syntax error the rest of the file cannot be read reliably, so that error is the
/// last one reported for the file.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<SourcedDoc>, FleetFileErrors> {
    parse_str_lenient(file, text).into_result()
}

/// Like [`parse_str`], but keeps the readable documents next to the problems.
pub fn parse_str_lenient(file: &str, text: &str) -> Loaded {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut typed = serde_norway::Deserializer::from_str(text);
    let mut last_error: Option<String> = None;
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let typed_de = typed.next();
        let value = match serde_norway::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                let fatal = is_syntax_error(&e);
                let message = readable_yaml_error(&e, None);
                // libyaml keeps failing the same way once it has failed; stop there.
                if last_error.as_deref() == Some(message.as_str()) {
                    break;
                }
                errors.push(err(format!("{file} document {n}"), message.clone()));
                last_error = Some(message);
                if fatal {
                    break;
                }
                continue;
            }
        };
        let mapping = match &value {
            serde_norway::Value::Null => continue,
            serde_norway::Value::Mapping(m) => m,
            other => {
                errors.push(err(
                    format!("{file} document {n}"),
                    format!(
                        "expected a mapping starting with `kind: Sequence` or `kind: Schedule`, found {}",
                        value_kind(other)
                    ),
                ));
                continue;
            }
        };
        let name = mapping
            .get("name")
            .and_then(serde_norway::Value::as_str)
            .map(str::to_string);
        let kind = match mapping.get("kind") {
            None => {
                let place = match &name {
                    Some(nm) => format!("{file} document {n} ({nm})"),
                    None => format!("{file} document {n}"),
                };
                errors.push(err(
                    place,
                    "kind: missing; add `kind: Sequence` or `kind: Schedule`",
                ));
                continue;
            }
            Some(serde_norway::Value::String(k)) => k.clone(),
            Some(other) => {
                errors.push(err(
                    format!("{file} document {n}"),
                    format!(
                        "kind: expected Sequence or Schedule, found {}",
                        value_kind(other)
                    ),
                ));
                continue;
            }
        };
        let place = match &name {
            Some(nm) => format!("{file} document {n} ({kind} {nm})"),
            None => format!("{file} document {n} ({kind})"),
        };
        if !KINDS.contains(&kind.as_str()) {
            let mut m = format!(
                "kind: unknown kind {}; use {}",
                echo(&kind),
                or_list(&KINDS)
            );
            if let Some(s) = closest(&kind, KINDS.iter().copied()) {
                m = format!(
                    "kind: unknown kind {} (did you mean {s}?); use {}",
                    echo(&kind),
                    or_list(&KINDS)
                );
            }
            errors.push(err(place, m));
            continue;
        }
        let Some(typed_de) = typed_de else {
            // Cannot happen: both iterators walk the same text.
            errors.push(err(
                place,
                "internal error: document vanished on second read",
            ));
            continue;
        };
        let without_kind = WithoutKey {
            inner: typed_de,
            key: "kind",
        };
        let parsed = if kind == "Sequence" {
            SequenceDoc::deserialize(without_kind).map(Document::Sequence)
        } else {
            ScheduleDoc::deserialize(without_kind).map(Document::Schedule)
        };
        match parsed {
            Ok(doc) => docs.push(SourcedDoc {
                source: format!("{file}#{n}"),
                doc,
            }),
            Err(e) => errors.push(err(place, readable_yaml_error(&e, Some(&value)))),
        }
    }
    Loaded { docs, errors }
}

fn value_kind(v: &serde_norway::Value) -> &'static str {
    match v {
        serde_norway::Value::Null => "nothing",
        serde_norway::Value::Bool(_) => "a boolean",
        serde_norway::Value::Number(_) => "a number",
        serde_norway::Value::String(_) => "a string",
        serde_norway::Value::Sequence(_) => "a list",
        serde_norway::Value::Mapping(_) => "a mapping",
        serde_norway::Value::Tagged(_) => "a tagged value",
    }
}

/// Whether a serde_norway error comes from the YAML parser itself (syntax), after which the
/// rest of the stream cannot be trusted. serde_norway does not expose the error kind; parser
/// errors are the only ones whose `Debug` is a struct (`Error { kind: SCANNER, .. }`) rather
/// than `Error("message", ..)`.
fn is_syntax_error(e: &serde_norway::Error) -> bool {
    format!("{e:?}").starts_with("Error {")
}

/// A deserializer that hides one key of the top-level mapping (the `kind` tag, which the
/// document structs do not declare and would reject as unknown) while keeping serde_norway's
/// field paths and line numbers in errors.
struct WithoutKey<D> {
    inner: D,
    key: &'static str,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for WithoutKey<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(SkipKeyVisitor {
            inner: visitor,
            key: self.key,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(SkipKeyVisitor {
            inner: visitor,
            key: self.key,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            SkipKeyVisitor {
                inner: visitor,
                key: self.key,
            },
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

struct SkipKeyVisitor<V> {
    inner: V,
    key: &'static str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipKeyVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(SkipKeyMap {
            inner: map,
            key: self.key,
        })
    }
}

struct SkipKeyMap<A> {
    inner: A,
    key: &'static str,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipKeyMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.inner.next_key::<String>()? {
                None => return Ok(None),
                Some(k) if k == self.key => {
                    self.inner.next_value::<de::IgnoredAny>()?;
                }
                Some(k) => {
                    let key_de: de::value::StringDeserializer<A::Error> = k.into_deserializer();
                    return seed.deserialize(key_de).map(Some);
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// Rewrites a serde_norway error into `FIELD.PATH: problem; fix (line L)`. `doc` (the document
/// as a plain YAML value) lets errors that serde reports on a parent mapping (values read
/// through an untagged enum: limits, `cron`) be pinned on the field itself.
fn readable_yaml_error(e: &serde_norway::Error, doc: Option<&serde_norway::Value>) -> String {
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
fn lookup<'v>(doc: &'v serde_norway::Value, path: &str) -> Option<&'v serde_norway::Value> {
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
fn refine_path(doc: &serde_norway::Value, path: &str) -> Option<String> {
    let map = lookup(doc, path)?.as_mapping()?;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for key in ["max_pending_deletes", "max_staged_deletes"] {
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
fn split_path(body: &str) -> (Option<&str>, &str) {
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
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// Plain-language versions of serde's stock messages; unknown ones are kept verbatim.
fn readable_serde_message(path: Option<&str>, msg: &str) -> String {
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
            "max_pending_deletes" | "max_staged_deletes" => {
                "expected a count (500) or a percentage (\"2%\")".to_string()
            }
            "cron" => "expected a cron expression or a list of them".to_string(),
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
fn or_list<S: AsRef<str>>(items: &[S]) -> String {
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
fn closest<'a>(got: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let g = got.to_lowercase();
    candidates
        .map(|c| (edit_distance(&g, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.min(c.len().saturating_sub(1)) && *c != got)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
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

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

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

pub use syncfleet_proto::names::valid_name;

/// Checks a set of documents beyond what parsing checks, reporting every problem:
///
/// - names: 1–63 characters `a-z A-Z 0-9 . _ -`, unique per kind within `docs`;
/// - `description` at most 1024 characters;
/// - sequences: at least one stage, each with at least one step; every step names an MA and a
///   run profile (non-blank, at most 256 characters); one MA at most once per stage (an MA runs
///   one profile at a time; compared case-insensitively like the engine does); guard limits are
///   finite percentages in (0, 100];
/// - schedules: `sequence` names a sequence in `docs` or in `known_sequences` (the controller's
///   stored ones); targets name at least one agent or a selector, agent names are non-blank and
///   the selector is `key=value[,key=value…]`; the trigger compiles ([`Trigger::compile`], its
///   field path kept); `jitter` and `catchup_window` at most 24h; `start_at` before `end_at`.
pub fn validate(
    docs: &[SourcedDoc],
    known_sequences: &BTreeSet<String>,
) -> Result<(), FleetFileErrors> {
    let mut errors = Vec::new();
    if let Err(e) =
        limits::check_count("documents", docs.len(), "documents", MAX_DOCUMENTS, "apply")
    {
        errors.push(err(
            "apply",
            format!("{e}; split the files into several applies"),
        ));
    }
    let mut seen: BTreeMap<(&'static str, &str), &str> = BTreeMap::new();
    let defined: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| match &d.doc {
            Document::Sequence(s) => Some(s.name.as_str()),
            Document::Schedule(_) => None,
        })
        .collect();
    for d in docs {
        let place = describe_source(&d.source, &d.doc);
        let mut bad = |m: String| errors.push(err(place.clone(), m));
        let name = d.doc.name();
        if !valid_name(name) {
            bad(format!(
                "name: {} is not a valid name; use 1 to {MAX_NAME_LEN} characters a-z, A-Z, 0-9, '.', '_' or '-'",
                echo(name)
            ));
        }
        match seen.get(&(d.doc.kind(), name)) {
            Some(first) => {
                let first = if first.is_empty() { "earlier" } else { first };
                bad(format!(
                    "name: {} {} is defined twice (first in {}); names are unique per kind, rename or remove one",
                    d.doc.kind().to_lowercase(),
                    echo(name),
                    first.replace('#', " document ")
                ));
            }
            None => {
                seen.insert((d.doc.kind(), name), d.source.as_str());
            }
        }
        match &d.doc {
            Document::Sequence(s) => check_sequence(s, &mut bad),
            Document::Schedule(s) => {
                check_schedule(s, &defined, known_sequences, &mut bad);
            }
        }
    }
    FleetFileErrors::check(errors)
}

fn check_description(description: &str, bad: &mut impl FnMut(String)) {
    let n = description.chars().count();
    if n > MAX_DESCRIPTION_LEN {
        bad(format!(
            "description: {n} characters; shorten it to at most {MAX_DESCRIPTION_LEN}"
        ));
    }
}

fn check_engine_name(field: &str, value: &str, what: &str, bad: &mut impl FnMut(String)) {
    if value.trim().is_empty() {
        bad(format!(
            "{field}: empty; give the {what} exactly as in Synchronization Service Manager"
        ));
    } else if value.chars().count() > MAX_ENGINE_NAME_LEN {
        bad(format!(
            "{field}: longer than {MAX_ENGINE_NAME_LEN} characters; use the {what} exactly as in Synchronization Service Manager"
        ));
    }
}

fn check_limit(field: &str, limit: Option<Limit>, bad: &mut impl FnMut(String)) {
    if let Some(Limit::Percent(p)) = limit
        && !(p.is_finite() && p > 0.0 && p <= 100.0)
    {
        bad(format!(
            "{field}: {p}% is not a percentage above 0 and at most 100; write e.g. \"2%\" or a count such as 500"
        ));
    }
}

/// Report a count over its limit through `bad`, with how to fix it.
fn check_count(
    field: &str,
    count: usize,
    what: &'static str,
    limit: usize,
    per: &'static str,
    fix: &str,
    bad: &mut impl FnMut(String),
) {
    if let Err(e) = limits::check_count(field, count, what, limit, per) {
        bad(format!("{e}; {fix}"));
    }
}

fn check_sequence(s: &SequenceDoc, bad: &mut impl FnMut(String)) {
    check_description(&s.description, bad);
    if s.stages.is_empty() {
        bad("stages: empty; a sequence needs at least one stage, e.g. stages: [{steps: [{ma: AD, profile: Delta Import}]}]".to_string());
    }
    check_count(
        "stages",
        s.stages.len(),
        "stages",
        MAX_STAGES,
        "sequence",
        "split the sequence",
        bad,
    );
    let total: usize = s.stages.iter().map(|st| st.steps.len()).sum();
    check_count(
        "stages",
        total,
        "steps",
        MAX_STEPS_PER_RUN,
        "run",
        "a sequence runs as one run; split it",
        bad,
    );
    if s.stages.len() > MAX_STAGES || total > MAX_STEPS_PER_RUN {
        // Per-step problems of a sequence this size would only bury the count.
        return;
    }
    for (i, stage) in s.stages.iter().enumerate() {
        check_count(
            &format!("stages[{i}].steps"),
            stage.steps.len(),
            "steps",
            MAX_STEPS_PER_STAGE,
            "stage",
            "split the stage",
            bad,
        );
        if stage.steps.is_empty() {
            bad(format!(
                "stages[{i}].steps: empty; give the stage at least one step or remove it"
            ));
        }
        let mut mas: BTreeMap<String, usize> = BTreeMap::new();
        for (j, step) in stage.steps.iter().enumerate() {
            let at = format!("stages[{i}].steps[{j}]");
            check_engine_name(&format!("{at}.ma"), &step.ma, "management agent name", bad);
            check_engine_name(
                &format!("{at}.profile"),
                &step.profile,
                "run profile name",
                bad,
            );
            let key = step.ma.trim().to_lowercase();
            if !key.is_empty() {
                if let Some(first) = mas.get(&key) {
                    bad(format!(
                        "{at}.ma: MA {} already runs in this stage (steps[{first}]); an MA runs one profile at a time, so put these steps in separate stages",
                        echo(&step.ma)
                    ));
                } else {
                    mas.insert(key, j);
                }
            }
            if let Some(g) = step.guard {
                check_limit(
                    &format!("{at}.guard.max_pending_deletes"),
                    g.max_pending_deletes,
                    bad,
                );
                check_limit(
                    &format!("{at}.guard.max_staged_deletes"),
                    g.max_staged_deletes,
                    bad,
                );
            }
        }
    }
}

fn check_schedule(
    s: &ScheduleDoc,
    defined: &BTreeSet<&str>,
    known: &BTreeSet<String>,
    bad: &mut impl FnMut(String),
) {
    check_description(&s.description, bad);
    if s.sequence.is_empty() {
        bad("sequence: empty; name the sequence this schedule runs".to_string());
    } else if !defined.contains(s.sequence.as_str()) && !known.contains(&s.sequence) {
        let candidates = defined
            .iter()
            .copied()
            .chain(known.iter().map(String::as_str));
        let hint = match closest(&s.sequence, candidates) {
            Some(c) => format!(" (did you mean {c}?)"),
            None => String::new(),
        };
        bad(format!(
            "sequence: no sequence named {}{hint} in these files or on the controller; define it (kind: Sequence) or fix the name",
            echo(&s.sequence)
        ));
    }
    let has_selector = s
        .targets
        .selector
        .as_deref()
        .is_some_and(|x| !x.trim().is_empty());
    if s.targets.agents.is_empty() && !has_selector {
        bad("targets: no agents and no selector; give targets: {agents: [sync01]} or targets: {selector: \"env=prod\"}".to_string());
    }
    check_count(
        "targets.agents",
        s.targets.agents.len(),
        "agents",
        MAX_TARGET_AGENTS,
        "schedule",
        "use a label selector instead",
        bad,
    );
    for (i, a) in s.targets.agents.iter().enumerate().take(MAX_TARGET_AGENTS) {
        if a.trim().is_empty() {
            bad(format!("targets.agents[{i}]: empty agent name; remove it"));
        } else if let Err(e) = limits::check_ident(&format!("targets.agents[{i}]"), a) {
            bad(format!("{e}; agent names have at most 63 characters"));
        }
    }
    match s.targets.selector_pairs() {
        Err(e) => bad(format!(
            "targets.selector: {e}; write key=value pairs separated by commas, e.g. \"env=prod,role=primary\""
        )),
        Ok(pairs) => check_count(
            "targets.selector",
            pairs.len(),
            "terms",
            MAX_SELECTOR_TERMS,
            "selector",
            "select on fewer labels",
            bad,
        ),
    }
    check_count(
        "blackout",
        s.blackout.len(),
        "windows",
        MAX_BLACKOUTS,
        "schedule",
        "merge windows",
        bad,
    );
    check_count(
        "trigger.cron",
        s.trigger.cron.len(),
        "entries",
        MAX_CRON_ENTRIES,
        "schedule",
        "combine expressions (e.g. \"0 1,13 * * *\") or split the schedule",
        bad,
    );
    if s.trigger.cron.len() > MAX_CRON_ENTRIES || s.blackout.len() > MAX_BLACKOUTS {
        return;
    }
    // Expressions are quoted in the trigger's errors: refuse oversized ones first.
    let mut oversized = false;
    let exprs = s
        .trigger
        .cron
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("trigger.cron[{i}]"), c.as_str()))
        .chain(
            s.blackout
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("blackout[{i}].cron"), b.cron.as_str())),
        )
        .chain(
            s.trigger
                .time_zone
                .iter()
                .map(|z| ("trigger.time_zone".to_string(), z.as_str())),
        );
    for (field, value) in exprs {
        if let Err(e) = limits::check_expression(&field, value) {
            bad(e.to_string());
            oversized = true;
        }
    }
    if oversized {
        return;
    }
    for (field, d) in [("jitter", s.jitter), ("catchup_window", s.catchup_window)] {
        if let Some(d) = d
            && d > MAX_SCHEDULE_DELAY
        {
            bad(format!(
                "{field}: {} is more than 24h; use at most 24h",
                humantime::format_duration(d)
            ));
        }
    }
    match Trigger::compile(s) {
        Err(e) => bad(format!("{}: {}", e.field, e.problem)),
        Ok(_) => {
            if let (Some(a), Some(b)) = (s.start_at, s.end_at)
                && a >= b
            {
                bad(format!(
                    "end_at: {} is not after start_at {}; swap them or remove one",
                    b.to_rfc3339(),
                    a.to_rfc3339()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks against the agents' inventories
// ---------------------------------------------------------------------------------------------

/// A problem found by [`check_inventory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryWarning {
    /// The document, as [`describe_source`] gives it.
    pub place: String,
    /// What is wrong, starting with the field path; names the step, the agent and the schedule.
    pub message: String,
    /// The agent concerned; empty when none is.
    pub agent: String,
    /// Step problems block an apply (unless forced); notes about targets do not.
    pub blocking: bool,
}

impl fmt::Display for InventoryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// What one schedule's targets resolve to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTargets {
    pub schedule: String,
    /// `agents`, `selector env=prod` or `agents and selector env=prod`.
    pub targets: String,
    /// Known agents targeted, sorted.
    pub agents: Vec<String>,
    /// Names in `targets.agents` of agents never seen.
    pub unknown: Vec<String>,
}

/// Everything [`check_inventory`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryReport {
    pub warnings: Vec<InventoryWarning>,
    /// One per schedule in the incoming documents, in document order.
    pub targets: Vec<ResolvedTargets>,
}

impl InventoryReport {
    /// The warnings that refuse an apply unless it is forced.
    pub fn blocking(&self) -> impl Iterator<Item = &InventoryWarning> {
        self.warnings.iter().filter(|w| w.blocking)
    }
}

/// Checks what an apply would leave in force against `agents`, the agents known now with the
/// inventory (MAs and run profiles) each reported in its last Hello.
///
/// - Each schedule of `docs` has its targets resolved: agent names that no known agent has are
///   reported (not blocking: the agent may not be enrolled yet), as is a selector matching no
///   agent.
/// - Each step of a sequence is checked on every agent that a schedule running the sequence
///   targets; a step naming an MA or run profile the agent does not have is blocking, with a
///   did-you-mean suggestion when a name is close (the engine compares names exactly, so a case
///   difference is a problem too). Schedules come from `docs` and, for sequences in `docs`, from
///   `stored` (stored documents replaced by `docs` are ignored).
/// - A sequence of `docs` no schedule runs is checked against all agents: a step that no agent
///   can run is blocking.
/// - Agents that reported no inventory are not checked (not blocking).
pub fn check_inventory(
    docs: &[SourcedDoc],
    stored: &[Document],
    agents: &[syncfleet_proto::v1::Agent],
) -> InventoryReport {
    let mut report = InventoryReport::default();
    let by_name: BTreeMap<&str, &syncfleet_proto::v1::Agent> =
        agents.iter().map(|a| (a.name.as_str(), a)).collect();
    let incoming = |kind: &str, name: &str| {
        docs.iter()
            .any(|d| d.doc.kind() == kind && d.doc.name() == name)
    };
    // Sequences in force after the apply, with where they are described.
    let mut sequences: BTreeMap<&str, (String, &SequenceDoc, bool)> = BTreeMap::new();
    for d in stored {
        if let Document::Sequence(s) = d
            && !incoming("Sequence", &s.name)
        {
            sequences.insert(&s.name, (describe_source("", d), s, false));
        }
    }
    for d in docs {
        if let Document::Sequence(s) = &d.doc {
            sequences.insert(&s.name, (describe_source(&d.source, &d.doc), s, true));
        }
    }
    // Schedules to check: incoming ones, and stored ones running an incoming sequence.
    let mut schedules: Vec<(String, &ScheduleDoc, bool)> = Vec::new();
    for d in docs {
        if let Document::Schedule(s) = &d.doc {
            schedules.push((describe_source(&d.source, &d.doc), s, true));
        }
    }
    for d in stored {
        if let Document::Schedule(s) = d
            && !incoming("Schedule", &s.name)
            && sequences.get(s.sequence.as_str()).is_some_and(|x| x.2)
        {
            schedules.push((describe_source("", d), s, false));
        }
    }
    // (sequence, agent) -> schedules running the sequence there.
    let mut runs_on: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let known_names = || agents.iter().map(|a| a.name.as_str());
    for (place, s, is_incoming) in &schedules {
        let mut matched: BTreeSet<&str> = BTreeSet::new();
        let mut unknown = Vec::new();
        for (i, name) in s.targets.agents.iter().enumerate() {
            if by_name.contains_key(name.as_str()) {
                matched.insert(name);
            } else {
                unknown.push(name.clone());
                if *is_incoming {
                    let hint = near(name, known_names())
                        .map(|c| format!(" (did you mean {}?)", echo(c)))
                        .unwrap_or_default();
                    report.warnings.push(InventoryWarning {
                        place: place.clone(),
                        message: format!(
                            "targets.agents[{i}]: no agent named {} has ever connected{hint}; runs for it wait until it does",
                            echo(name)
                        ),
                        agent: name.clone(),
                        blocking: false,
                    });
                }
            }
        }
        let selector = s
            .targets
            .selector
            .as_deref()
            .map(str::trim)
            .filter(|x| !x.is_empty());
        if let Some(sel) = selector {
            let selected: Vec<&str> = agents
                .iter()
                .filter(|a| {
                    let only_selector = crate::model::Targets {
                        agents: Vec::new(),
                        selector: Some(sel.to_string()),
                    };
                    only_selector.matches(&a.name, &a.labels)
                })
                .map(|a| a.name.as_str())
                .collect();
            if selected.is_empty() && *is_incoming {
                report.warnings.push(InventoryWarning {
                    place: place.clone(),
                    message: format!(
                        "targets.selector: {} matches no agent now; the schedule runs nowhere until an agent with these labels connects",
                        echo(sel)
                    ),
                    agent: String::new(),
                    blocking: false,
                });
            }
            matched.extend(selected);
        }
        if *is_incoming {
            report.targets.push(ResolvedTargets {
                schedule: s.name.clone(),
                targets: match (s.targets.agents.is_empty(), selector) {
                    (false, Some(sel)) => format!("agents and selector {sel}"),
                    (true, Some(sel)) => format!("selector {sel}"),
                    _ => "agents".to_string(),
                },
                agents: matched.iter().map(|a| (*a).to_string()).collect(),
                unknown,
            });
        }
        for a in matched {
            runs_on
                .entry((s.sequence.as_str(), a))
                .or_default()
                .push(&s.name);
        }
    }
    for (seq_name, (place, seq, is_incoming)) in &sequences {
        let targeted: Vec<(&str, &Vec<&str>)> = runs_on
            .iter()
            .filter(|((s, _), _)| s == seq_name)
            .map(|((_, a), scheds)| (*a, scheds))
            .collect();
        let scheduled = schedules.iter().any(|(_, s, _)| s.sequence == *seq_name);
        if targeted.is_empty() && !scheduled && *is_incoming {
            check_unscheduled(place, seq, agents, &mut report.warnings);
            continue;
        }
        for (agent_name, scheds) in targeted {
            let Some(agent) = by_name.get(agent_name) else {
                continue;
            };
            let scheds = if scheds.len() == 1 {
                format!("schedule {}", scheds[0])
            } else {
                format!("schedules {}", scheds.join(", "))
            };
            if agent.management_agents.is_empty() {
                report.warnings.push(InventoryWarning {
                    place: place.clone(),
                    message: format!(
                        "agent {agent_name} ({scheds}) has reported no inventory yet; its steps were not checked"
                    ),
                    agent: agent_name.to_string(),
                    blocking: false,
                });
                continue;
            }
            for (at, step) in steps_with_paths(seq) {
                if let Some(problem) = step_problem(agent, &step.ma, &step.profile) {
                    report.warnings.push(InventoryWarning {
                        place: place.clone(),
                        message: format!(
                            "{at} {}: agent {agent_name} ({scheds}) {problem}",
                            echo(&format!("{}:{}", step.ma, step.profile))
                        ),
                        agent: agent_name.to_string(),
                        blocking: true,
                    });
                }
            }
        }
    }
    report
}

fn steps_with_paths(seq: &SequenceDoc) -> impl Iterator<Item = (String, &crate::model::StepDoc)> {
    seq.stages.iter().enumerate().flat_map(|(i, st)| {
        st.steps
            .iter()
            .enumerate()
            .map(move |(j, step)| (format!("stages[{i}].steps[{j}]"), step))
    })
}

/// Why `agent` cannot run `ma`:`profile` (`has no management agent "ADD" (did you mean
/// "AD"?)`), or `None` when it can.
fn step_problem(agent: &syncfleet_proto::v1::Agent, ma: &str, profile: &str) -> Option<String> {
    let mas = &agent.management_agents;
    let Some(found) = mas.iter().find(|m| m.name == ma) else {
        let names: Vec<&str> = mas.iter().map(|m| m.name.as_str()).collect();
        return Some(format!(
            "has no management agent {}{}",
            echo(ma),
            suggestion(ma, &names)
        ));
    };
    if found.run_profiles.iter().any(|p| p.name == profile) {
        return None;
    }
    let names: Vec<&str> = found.run_profiles.iter().map(|p| p.name.as_str()).collect();
    Some(format!(
        "has no run profile {} on MA {}{}",
        echo(profile),
        echo(ma),
        suggestion(profile, &names)
    ))
}

/// The name closest to `got` when it is close for its length: at most one edit per three
/// characters (at least one, at most two), so `AD` does not suggest `LAB`.
fn near<'a>(got: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let allowed = (got.chars().count() / 3).clamp(1, 2);
    closest(got, names).filter(|c| edit_distance(&got.to_lowercase(), &c.to_lowercase()) <= allowed)
}

/// ` (did you mean "X"?)` when a name is close ([`near`]), else `; it has "A", "B"` (the
/// first 20).
fn suggestion(got: &str, names: &[&str]) -> String {
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

/// Steps of a sequence no schedule runs, checked against every agent with an inventory: a
/// step no agent can run is blocking.
fn check_unscheduled(
    place: &str,
    seq: &SequenceDoc,
    agents: &[syncfleet_proto::v1::Agent],
    warnings: &mut Vec<InventoryWarning>,
) {
    let with_inventory: Vec<&syncfleet_proto::v1::Agent> = agents
        .iter()
        .filter(|a| !a.management_agents.is_empty())
        .collect();
    let Some(first) = with_inventory.first() else {
        return;
    };
    for (at, step) in steps_with_paths(seq) {
        if with_inventory
            .iter()
            .any(|a| step_problem(a, &step.ma, &step.profile).is_none())
        {
            continue;
        }
        // Suggest from the first agent whose inventory has the MA, else from the first agent.
        let near = with_inventory
            .iter()
            .find(|a| a.management_agents.iter().any(|m| m.name == step.ma))
            .unwrap_or(first);
        let problem = step_problem(near, &step.ma, &step.profile).unwrap_or_default();
        warnings.push(InventoryWarning {
            place: place.to_string(),
            message: format!(
                "{at} {}: no known agent can run it; agent {} {problem}",
                echo(&format!("{}:{}", step.ma, step.profile)),
                near.name
            ),
            agent: String::new(),
            blocking: true,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// JSON, diff, YAML
// ---------------------------------------------------------------------------------------------

/// Removes `null` members of mappings, recursively (unset optional fields).
fn drop_nulls_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls_json);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls_json),
        _ => {}
    }
}

fn drop_nulls_yaml(v: &mut serde_norway::Value) {
    match v {
        serde_norway::Value::Mapping(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls_yaml);
        }
        serde_norway::Value::Sequence(a) => a.iter_mut().for_each(drop_nulls_yaml),
        _ => {}
    }
}

/// The document as a JSON value with `kind` and without unset (`null`) fields.
pub fn to_json_value(doc: &Document) -> serde_json::Value {
    // The model serializes infallibly (string keys, no floats outside strings).
    let mut v = serde_json::to_value(doc).unwrap_or(serde_json::Value::Null);
    drop_nulls_json(&mut v);
    v
}

/// Canonical JSON of a document: the model's serde form with `kind`, without unset (`null`)
/// fields, compact, keys in a fixed order. Equal documents give equal text, and
/// [`from_json`] reads it back.
pub fn canonical_json(doc: &Document) -> String {
    to_json_value(doc).to_string()
}

/// Reads a document of `kind` (`Sequence` or `Schedule`) from JSON such as [`canonical_json`]
/// gives. `kind` inside the JSON is optional but must match when present. `Err` says what is
/// wrong in one line.
pub fn from_json(kind: &str, json: &str) -> Result<Document, String> {
    if !KINDS.contains(&kind) {
        return Err(format!(
            "unknown kind {}; use {}",
            echo(kind),
            or_list(&KINDS)
        ));
    }
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("expected a JSON object".to_string());
    };
    match obj.get("kind") {
        None => {
            obj.insert("kind".into(), serde_json::Value::String(kind.to_string()));
        }
        Some(serde_json::Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(format!(
                "kind is {}, expected {}",
                limits::clip(&other.to_string()),
                echo(kind)
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| format!("not a valid {kind} document: {e}"))
}

/// What applying a document would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Created,
    Changed,
    Unchanged,
    Deleted,
}

impl Action {
    /// `created`, `changed`, `unchanged`, `deleted` (the `DocumentChange.action` strings).
    pub fn label(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Changed => "changed",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        }
    }

    /// Inverse of [`label`](Self::label).
    pub fn from_label(s: &str) -> Option<Action> {
        Some(match s {
            "created" => Action::Created,
            "changed" => Action::Changed,
            "unchanged" => Action::Unchanged,
            "deleted" => Action::Deleted,
            _ => return None,
        })
    }
}

/// One line of an apply diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `Sequence` or `Schedule`.
    pub kind: String,
    pub name: String,
    pub action: Action,
    /// For [`Action::Changed`]: the top-level fields that differ, in document field order
    /// (e.g. `["trigger", "overlap"]`); empty otherwise.
    pub fields: Vec<String>,
}

/// Position of a kind in [`KINDS`] (unknown kinds last).
fn kind_rank(kind: &str) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
}

/// Top-level keys whose values differ, in `b`'s field order then `a`'s extra keys.
fn changed_fields(a: &Document, b: &Document) -> Vec<String> {
    let to_map = |d: &Document| match serde_norway::to_value(d) {
        Ok(serde_norway::Value::Mapping(mut m)) => {
            m.retain(|_, x| !x.is_null());
            m
        }
        _ => serde_norway::Mapping::new(),
    };
    let (ma, mb) = (to_map(a), to_map(b));
    let mut out: Vec<String> = Vec::new();
    for (k, vb) in mb.iter() {
        if ma.get(k) != Some(vb)
            && let Some(k) = k.as_str()
        {
            out.push(k.to_string());
        }
    }
    for (k, _) in ma.iter() {
        if !mb.contains_key(k)
            && let Some(k) = k.as_str()
        {
            out.push(k.to_string());
        }
    }
    out
}

/// The diff between stored documents and incoming ones: `created`, `changed` (with the fields
/// that differ) or `unchanged` for each incoming document, plus `deleted` for stored documents
/// not among the incoming ones when `prune` is set. Sorted by kind in [`KINDS`] order
/// (sequences first, as schedules depend on them), then name. Documents match by kind and
/// name.
pub fn diff(stored: &[Document], incoming: &[Document], prune: bool) -> Vec<Change> {
    let key = |d: &Document| (d.kind().to_string(), d.name().to_string());
    let stored_map: BTreeMap<(String, String), &Document> =
        stored.iter().map(|d| (key(d), d)).collect();
    let incoming_map: BTreeMap<(String, String), &Document> =
        incoming.iter().map(|d| (key(d), d)).collect();
    let mut out = Vec::new();
    for ((kind, name), new) in &incoming_map {
        let (action, fields) = match stored_map.get(&(kind.clone(), name.clone())) {
            None => (Action::Created, Vec::new()),
            Some(old) if *old == *new => (Action::Unchanged, Vec::new()),
            Some(old) => {
                let fields = changed_fields(old, new);
                if fields.is_empty() {
                    // Different in memory but the same once serialized (e.g. 2% vs 2.0%).
                    (Action::Unchanged, Vec::new())
                } else {
                    (Action::Changed, fields)
                }
            }
        };
        out.push(Change {
            kind: kind.clone(),
            name: name.clone(),
            action,
            fields,
        });
    }
    if prune {
        for (kind, name) in stored_map.keys() {
            if !incoming_map.contains_key(&(kind.clone(), name.clone())) {
                out.push(Change {
                    kind: kind.clone(),
                    name: name.clone(),
                    action: Action::Deleted,
                    fields: Vec::new(),
                });
            }
        }
    }
    out.sort_by(|a, b| (kind_rank(&a.kind), &a.name).cmp(&(kind_rank(&b.kind), &b.name)));
    out
}

/// Multi-document YAML of `docs` (separated by `---`), each with `kind` first, fields in model
/// order and unset fields left out. [`parse_str`] reads it back to the same documents. Empty
/// input gives an empty string.
pub fn to_yaml(docs: &[Document]) -> String {
    let mut parts = Vec::new();
    for d in docs {
        let text = match serde_norway::to_value(d) {
            Ok(mut v) => {
                drop_nulls_yaml(&mut v);
                serde_norway::to_string(&v)
            }
            Err(e) => Err(e),
        };
        // The model always serializes; keep a visible marker instead of panicking if not.
        parts.push(text.unwrap_or_else(|e| {
            format!("# cannot render {} {} as YAML: {e}\n", d.kind(), d.name())
        }));
    }
    parts.join("---\n")
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::model::{
        BlackoutDoc, Condition, Guard, OnFailure, Overlap, StageDoc, StepDoc, Targets, TriggerDoc,
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
        let v =
            serde_json::json!({"name": "q", "stages": [{"steps": [{"ma": "A", "profile": "B"}]}]});
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
}
