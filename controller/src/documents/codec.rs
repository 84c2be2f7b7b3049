//! Canonical JSON (what the controller stores) and YAML rendering of fleet documents.

use super::messages::or_list;
use super::model::Document;
use super::validate::KINDS;
use crate::limits::{self, echo};

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

/// Multi-document YAML of `docs` (separated by `---`), each with `kind` first, fields in model
/// order and unset fields left out. [`parse_str`](super::parse_str) reads it back to the same
/// documents. Empty input gives an empty string.
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
    use crate::documents::testkit::*;

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
}
