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
