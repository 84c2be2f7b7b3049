//! Reading fleet documents from YAML files, directories and strings.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::messages::{
    FleetFileError, FleetFileErrors, closest, err, or_list, readable_yaml_error,
};
use super::model::{Document, NotifierDoc, ScheduleDoc, SequenceDoc};
use super::validate::KINDS;
use crate::limits::echo;

/// A document with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedDoc {
    /// `"path#N"`: the file as given (or found below a given directory) and the 1-based
    /// position of the document in it. Free text when the document did not come from a file
    /// (then it is shown as is).
    pub source: String,
    pub doc: Document,
}

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
                        "kind: expected Sequence, Schedule or Notifier, found {}",
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
        let parsed = match kind.as_str() {
            "Sequence" => SequenceDoc::deserialize(without_kind).map(Document::Sequence),
            "Notifier" => NotifierDoc::deserialize(without_kind).map(Document::Notifier),
            _ => ScheduleDoc::deserialize(without_kind).map(Document::Schedule),
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
pub(super) fn is_syntax_error(e: &serde_norway::Error) -> bool {
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
}
