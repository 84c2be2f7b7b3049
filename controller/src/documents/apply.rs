//! The fleet-document operations behind `FleetService`: apply (validate, diff, check against the
//! agents' inventories, store), get and delete, and reading a stored schedule. Kept apart from
//! the gRPC glue so the rules read in one place. They work on the store alone and say what they
//! changed; telling the scheduler is the caller's job (see `schedule::documents`), so this
//! module depends on nothing that depends on it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use syncfleet_proto::time::to_proto;
use syncfleet_proto::v1;

use super::error::DocumentError;
use super::model::{Document, ScheduleDoc};
use super::trigger::Trigger;
use crate::documents::{self, Action, SourcedDoc};
use crate::limits::{self, check_ident};
use crate::store::{Listing, MAX_PAGE, PAGE_BYTES, Store, StoredDocument, keys};

/// Normalize a kind given by a client ("sequence", "Schedules", ...).
pub fn kind_of(kind: &str) -> Result<&'static str, DocumentError> {
    match kind.trim().to_ascii_lowercase().trim_end_matches('s') {
        "sequence" => Ok("Sequence"),
        "schedule" => Ok("Schedule"),
        "notifier" => Ok("Notifier"),
        _ => Err(DocumentError::UnknownKind(kind.to_string())),
    }
}

async fn stored_documents(store: &dyn Store) -> Result<Vec<Document>, DocumentError> {
    let raw = store.list_documents(None).await?;
    raw.into_iter()
        .map(|d| {
            documents::from_json(&d.kind, &d.json).map_err(|e| DocumentError::Unreadable {
                problem: format!(": {e}"),
                kind: d.kind,
                name: d.name,
            })
        })
        .collect()
}

/// What [`apply`] did: the response for the client, and whether stored documents changed (so
/// the caller reloads the scheduler).
#[derive(Debug)]
pub struct Applied {
    pub response: v1::ApplyResponse,
    /// Documents were written or deleted (never on a dry run).
    pub stored_changed: bool,
}

/// Validate, diff, check against the agents' inventories and (unless dry run) store a set of
/// documents.
///
/// Steps that name an MA or run profile a target agent lacks
/// ([`documents::check_inventory`]) refuse the apply with `FAILED_PRECONDITION` listing every
/// problem, unless `force` is set or it is a dry run; either way the problems come back as
/// warnings, with what each schedule's targets resolve to now. The forecasts of changed
/// schedules are the fire times after `now`.
pub async fn apply(
    store: &dyn Store,
    now: DateTime<Utc>,
    req: &v1::ApplyRequest,
    who: &str,
) -> Result<Applied, DocumentError> {
    limits::check_count(
        "documents",
        req.documents.len(),
        "documents",
        limits::MAX_DOCUMENTS,
        "apply",
    )
    .map_err(DocumentError::TooManyDocuments)?;
    let mut incoming = Vec::new();
    let mut problems = Vec::new();
    for d in &req.documents {
        let source = if d.source.is_empty() {
            format!("{} {}", limits::clip(&d.kind), limits::clip(&d.name))
        } else if d.source.len() > limits::MAX_SOURCE {
            limits::clip(&d.source)
        } else {
            d.source.clone()
        };
        match kind_of(&d.kind)
            .map_err(|e| e.to_string())
            .and_then(|k| documents::from_json(k, &d.json))
        {
            Ok(doc) => incoming.push(SourcedDoc { source, doc }),
            Err(e) => problems.push(format!("{source}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(DocumentError::Invalid(limits::join_bounded(
            &problems, "", "",
        )));
    }
    let stored = stored_documents(store).await?;
    let incoming_docs: Vec<Document> = incoming.iter().map(|s| s.doc.clone()).collect();
    // Sequences that will exist after this apply (stored ones survive unless pruned).
    let known: BTreeSet<String> = if req.prune {
        BTreeSet::new()
    } else {
        stored
            .iter()
            .filter_map(|d| match d {
                Document::Sequence(s) => Some(s.name.clone()),
                Document::Schedule(_) | Document::Notifier(_) => None,
            })
            .collect()
    };
    documents::validate(&incoming, &known).map_err(|e| {
        let lines: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
        DocumentError::Invalid(limits::join_bounded(&lines, "", ""))
    })?;
    if !req.prune {
        // A stored schedule may not be left pointing at nothing (only possible with prune,
        // but keep the rule explicit for future deletes in one apply).
        let seqs: BTreeSet<&str> = incoming_docs
            .iter()
            .chain(stored.iter())
            .filter_map(|d| match d {
                Document::Sequence(s) => Some(s.name.as_str()),
                Document::Schedule(_) | Document::Notifier(_) => None,
            })
            .collect();
        for d in &stored {
            if let Document::Schedule(s) = d
                && !seqs.contains(s.sequence.as_str())
            {
                return Err(DocumentError::StoredScheduleOrphaned {
                    schedule: s.name.clone(),
                    sequence: s.sequence.clone(),
                });
            }
        }
    }
    let agents = store.list_agents().await?;
    let survivors: Vec<Document> = if req.prune {
        Vec::new()
    } else {
        stored.clone()
    };
    let report = documents::check_inventory(&incoming, &survivors, &agents);
    let blocking = report.blocking().count();
    if blocking > 0 && !req.force && !req.dry_run {
        let notes = report
            .warnings
            .iter()
            .filter(|w| !w.blocking)
            .map(|w| format!("note: {w}"));
        let lines: Vec<String> = report
            .blocking()
            .map(ToString::to_string)
            .chain(notes)
            .collect();
        return Err(DocumentError::InventoryProblems(limits::join_bounded(
            &lines,
            "; 'apply --dry-run -o json' lists them all",
            &format!(
                "{blocking} step problem(s) against the agents' inventories; nothing was applied. Fix the steps, or pass --force (ApplyRequest.force) to apply anyway"
            ),
        )));
    }
    let changes = documents::diff(&stored, &incoming_docs, req.prune);
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    let mut forecasts = Vec::new();
    for c in &changes {
        match c.action {
            Action::Created | Action::Changed => {
                if let Some(doc) = incoming_docs
                    .iter()
                    .find(|d| d.kind() == c.kind && d.name() == c.name)
                {
                    upserts.push(StoredDocument {
                        kind: doc.kind().to_string(),
                        name: doc.name().to_string(),
                        json: documents::canonical_json(doc),
                    });
                    if let Document::Schedule(s) = doc
                        && let Ok(t) = Trigger::compile(s)
                    {
                        forecasts.push(v1::ScheduleForecast {
                            name: s.name.clone(),
                            time_zone: t.time_zone_name().to_string(),
                            next: t.upcoming(now, 5).into_iter().map(to_proto).collect(),
                        });
                    }
                }
            }
            Action::Deleted => deletes.push((c.kind.clone(), c.name.clone())),
            Action::Unchanged => {}
        }
    }
    // Deleting a sequence that a remaining schedule uses is refused.
    let remaining_schedules: Vec<&ScheduleDoc> = incoming_docs
        .iter()
        .filter_map(|d| match d {
            Document::Schedule(s) => Some(s),
            Document::Sequence(_) | Document::Notifier(_) => None,
        })
        .collect();
    for (kind, name) in &deletes {
        if kind == "Sequence"
            && let Some(s) = remaining_schedules.iter().find(|s| &s.sequence == name)
        {
            return Err(DocumentError::PruneWouldOrphan {
                sequence: name.clone(),
                schedule: s.name.clone(),
            });
        }
    }
    let applied = !req.dry_run;
    let stored_changed = applied && (!upserts.is_empty() || !deletes.is_empty());
    if stored_changed {
        let dels = deletes.clone();
        store.write_documents(&upserts, &dels).await?;
        for (kind, name) in &deletes {
            if kind == "Schedule" {
                forget_schedule(store, name).await?;
            }
        }
        tracing::info!(
            by = who,
            changes = changes
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .count(),
            "fleet documents applied"
        );
    }
    let response = v1::ApplyResponse {
        changes: changes
            .into_iter()
            .map(|c| v1::DocumentChange {
                kind: c.kind,
                name: c.name,
                action: c.action.label().to_string(),
                fields: c.fields,
            })
            .collect(),
        forecasts,
        applied,
        warnings: bounded_warnings(report.warnings),
        targets: report
            .targets
            .into_iter()
            .map(|t| v1::ScheduleTargets {
                schedule: t.schedule,
                targets: t.targets,
                agents: t.agents,
                unknown: t.unknown,
            })
            .collect(),
    };
    Ok(Applied {
        response,
        stored_changed,
    })
}

/// The warnings of an apply response: blocking ones first, at most [`limits::MAX_WARNINGS`],
/// the rest counted in a last warning (blocking when any left out is).
fn bounded_warnings(mut warnings: Vec<documents::InventoryWarning>) -> Vec<v1::ApplyWarning> {
    warnings.sort_by_key(|w| !w.blocking);
    let left_out = warnings.split_off(warnings.len().min(limits::MAX_WARNINGS));
    let mut out: Vec<v1::ApplyWarning> = warnings
        .into_iter()
        .map(|w| v1::ApplyWarning {
            place: w.place,
            message: w.message,
            agent: w.agent,
            blocking: w.blocking,
        })
        .collect();
    if !left_out.is_empty() {
        let blocking = left_out.iter().filter(|w| w.blocking).count();
        out.push(v1::ApplyWarning {
            place: "apply".to_string(),
            message: format!(
                "… and {} more problem(s) ({blocking} blocking) not listed",
                left_out.len()
            ),
            agent: String::new(),
            blocking: blocking > 0,
        });
    }
    out
}

/// Forget a deleted schedule's operational state: cursor, pause, pending catch-up and buffered
/// fire times (exact keys, so that deleting `a` leaves schedule `ab` alone). A schedule created
/// again under the same name starts afresh.
async fn forget_schedule(store: &dyn Store, name: &str) -> Result<(), DocumentError> {
    let records: Vec<(String, Option<Vec<u8>>)> = [
        keys::cursor(name),
        keys::schedule_pause(name),
        keys::catchup(name),
    ]
    .into_iter()
    .map(|k| (k, None))
    .collect();
    let schedule = name.to_string();
    let buffered = keys::buffered_prefix(name);
    store
        .commit_schedule_state(&schedule, &records, &[], Some(&buffered))
        .await?;
    Ok(())
}

/// Documents of one kind in a page when no name is given (page size 0 = 100, at most 1000,
/// and at most about [`crate::store::PAGE_BYTES`]), or the one document named.
pub async fn get_documents(
    store: &dyn Store,
    req: v1::GetDocumentsRequest,
) -> Result<v1::GetDocumentsResponse, DocumentError> {
    let kind = kind_of(&req.kind)?;
    check_ident("name", &req.name)?;
    if req.name.is_empty() {
        let size = match req.page_size {
            0 => 100,
            n => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        };
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let mut page = store
            .list_documents_page(kind, token, size)
            .await?
            .map(|d| v1::FleetDocument {
                kind: d.kind,
                name: d.name,
                json: d.json,
                source: String::new(),
            });
        page.fit(PAGE_BYTES, prost::Message::encoded_len, |d| {
            Listing::Documents.token(&d.name)
        });
        return Ok(v1::GetDocumentsResponse {
            documents: page.items,
            next_page_token: page.next_page_token.unwrap_or_default(),
        });
    }
    let docs = store.list_documents(Some(kind)).await?;
    let documents: Vec<v1::FleetDocument> = docs
        .into_iter()
        .filter(|d| req.name.is_empty() || d.name == req.name)
        .map(|d| v1::FleetDocument {
            kind: d.kind,
            name: d.name,
            json: d.json,
            source: String::new(),
        })
        .collect();
    if !req.name.is_empty() && documents.is_empty() {
        return Err(DocumentError::NotFound {
            what: kind,
            name: req.name,
        });
    }
    Ok(v1::GetDocumentsResponse {
        documents,
        next_page_token: String::new(),
    })
}

/// Delete one stored document (and a schedule's operational state). On success the stored
/// documents changed: the caller reloads the scheduler.
pub async fn delete_document(
    store: &dyn Store,
    req: v1::DeleteDocumentRequest,
) -> Result<v1::DeleteDocumentResponse, DocumentError> {
    let kind = kind_of(&req.kind)?;
    check_ident("name", &req.name)?;
    let stored = stored_documents(store).await?;
    if !stored
        .iter()
        .any(|d| d.kind() == kind && d.name() == req.name)
    {
        return Err(DocumentError::NotFound {
            what: kind,
            name: req.name,
        });
    }
    if kind == "Sequence" {
        let users: Vec<String> = stored
            .iter()
            .filter_map(|d| match d {
                Document::Schedule(s) if s.sequence == req.name => Some(s.name.clone()),
                _ => None,
            })
            .collect();
        if !users.is_empty() {
            return Err(DocumentError::SequenceInUse {
                sequence: req.name,
                users,
            });
        }
    }
    let dels = vec![(kind.to_string(), req.name.clone())];
    store.write_documents(&[], &dels).await?;
    if kind == "Schedule" {
        forget_schedule(store, &req.name).await?;
    }
    Ok(v1::DeleteDocumentResponse { deleted: true })
}

/// The stored schedule named `name` and its canonical JSON: `NOT_FOUND` when there is none,
/// `INTERNAL` when what is stored cannot be read back.
pub(crate) async fn schedule_doc(
    store: &dyn Store,
    name: &str,
) -> Result<(ScheduleDoc, String), DocumentError> {
    check_ident("schedule", name)?;
    let docs = store.list_documents(Some("Schedule")).await?;
    let d = docs
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| DocumentError::NotFound {
            what: "schedule",
            name: name.to_string(),
        })?;
    match documents::from_json("Schedule", &d.json) {
        Ok(Document::Schedule(s)) => Ok((s, d.json)),
        _ => Err(DocumentError::Unreadable {
            kind: "schedule".to_string(),
            name: name.to_string(),
            problem: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn forgetting_a_schedule_clears_its_state_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let keys = |name: &str| {
            [
                keys::cursor(name),
                keys::schedule_pause(name),
                keys::catchup(name),
                keys::buffered(name, "sync-01"),
            ]
        };
        for name in ["a", "ab"] {
            for k in keys(name) {
                store.put_state(&k, b"1").await.unwrap();
            }
        }
        forget_schedule(store.as_ref(), "a").await.unwrap();
        for k in keys("a") {
            assert_eq!(store.get_state(&k).await.unwrap(), None, "{k}");
        }
        for k in keys("ab") {
            assert!(store.get_state(&k).await.unwrap().is_some(), "{k} was kept");
        }
    }

    #[test]
    fn response_warnings_are_bounded_blocking_first() {
        let w = |blocking: bool, i: usize| documents::InventoryWarning {
            place: format!("p{i}"),
            message: "m".into(),
            agent: String::new(),
            blocking,
        };
        let few = bounded_warnings(vec![w(false, 0), w(true, 1)]);
        assert_eq!(
            few.iter().map(|x| x.place.as_str()).collect::<Vec<_>>(),
            ["p1", "p0"]
        );
        let many: Vec<_> = (0..limits::MAX_WARNINGS + 10)
            .map(|i| w(i % 2 == 0, i))
            .collect();
        let out = bounded_warnings(many);
        assert_eq!(out.len(), limits::MAX_WARNINGS + 1);
        let last = out.last().unwrap();
        assert_eq!(
            last.message,
            "… and 10 more problem(s) (0 blocking) not listed"
        );
        assert!(!last.blocking);
        assert!(
            out[..limits::MAX_WARNINGS / 2 + 5]
                .iter()
                .all(|x| x.blocking)
        );
    }

    /// An apply of the documents in `yaml`, forced (no agent inventories here).
    fn request(yaml: &str) -> v1::ApplyRequest {
        let docs = crate::documents::parse_str("t.yaml", yaml).unwrap();
        v1::ApplyRequest {
            documents: docs
                .iter()
                .map(|d| v1::FleetDocument {
                    kind: d.doc.kind().to_string(),
                    name: d.doc.name().to_string(),
                    json: documents::canonical_json(&d.doc),
                    source: String::new(),
                })
                .collect(),
            dry_run: false,
            prune: false,
            force: true,
        }
    }

    #[tokio::test]
    async fn apply_get_and_delete_say_what_changed_and_why_they_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-28T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let yaml = "kind: Sequence\nname: s\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n---\nkind: Schedule\nname: k\nsequence: s\ntargets: {agents: [a1]}\ntrigger: {every: 10m}\n";
        let req = request(yaml);
        let first = apply(&store, now, &req, "test").await.unwrap();
        assert!(first.stored_changed);
        assert_eq!(first.response.forecasts.len(), 1);
        let again = apply(&store, now, &req, "test").await.unwrap();
        assert!(!again.stored_changed, "nothing changed the second time");
        let dry = v1::ApplyRequest {
            dry_run: true,
            ..req.clone()
        };
        assert!(
            !apply(&store, now, &dry, "test")
                .await
                .unwrap()
                .stored_changed
        );

        let missing = get_documents(
            &store,
            v1::GetDocumentsRequest {
                kind: "sequences".into(),
                name: "nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&missing, DocumentError::NotFound { what: "Sequence", name } if name == "nope")
        );
        assert_eq!(missing.to_string(), "no Sequence named \"nope\"");

        let used = delete_document(
            &store,
            v1::DeleteDocumentRequest {
                kind: "Sequence".into(),
                name: "s".into(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            used.to_string(),
            "sequence s is used by schedule(s) k; delete or change those first"
        );
        let bad_kind = get_documents(
            &store,
            v1::GetDocumentsRequest {
                kind: "job".into(),
                name: String::new(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            bad_kind.to_string(),
            "unknown kind \"job\"; use Sequence, Schedule or Notifier"
        );
        delete_document(
            &store,
            v1::DeleteDocumentRequest {
                kind: "Schedule".into(),
                name: "k".into(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            schedule_doc(&store, "k").await,
            Err(DocumentError::NotFound {
                what: "schedule",
                ..
            })
        ));
    }

    #[test]
    fn kinds_are_normalized() {
        assert_eq!(kind_of("sequences").unwrap(), "Sequence");
        assert_eq!(kind_of("Schedule").unwrap(), "Schedule");
        assert!(kind_of("job").is_err());
    }
}
