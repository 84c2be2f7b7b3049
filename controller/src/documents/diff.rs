//! What applying a set of documents changes against the stored ones.

use std::collections::BTreeMap;

use super::model::Document;
use super::validate::KINDS;

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
}
