//! `apply`, `get` and `delete`: fleet documents between YAML files and the controller.
//!
//! - `apply` loads and validates locally first ([`prepare_apply`], no network), then sends the
//!   documents as canonical JSON with their `path#N` source and prints the controller's diff
//!   ([`apply_lines`]).
//! - `get` prints stored documents with [`documents::to_yaml`], so `get -o yaml > f.yaml` then
//!   `apply -f f.yaml --dry-run` reports every document `unchanged`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use syncfleet_proto::v1::{
    ApplyRequest, ApplyResponse, DeleteDocumentRequest, FleetDocument, GetDocumentsRequest,
    ScheduleTargets,
};

use super::connect::Client;
use super::output::{self, out};
use super::table::{display_zone, zoned_rfc3339};
use super::{CliError, EXIT_FAILED, EXIT_OK, OutputFormat, Session};
use crate::documents::model::Document;
use crate::documents::{self, Action, FleetFileErrors, SourcedDoc};

/// Kinds of fleet documents, for `get` and `delete` (singular or plural).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocKind {
    /// Sequences of run-profile stages
    #[value(name = "sequences", aliases = ["sequence", "seq"])]
    Sequences,
    /// Schedules
    #[value(name = "schedules", aliases = ["schedule", "sched"])]
    Schedules,
    /// Notifiers (webhook and e-mail notifications)
    #[value(name = "notifiers", aliases = ["notifier"])]
    Notifiers,
}

impl DocKind {
    /// The `kind:` of the documents (`Sequence`, `Schedule`).
    pub fn kind(self) -> &'static str {
        match self {
            DocKind::Sequences => "Sequence",
            DocKind::Schedules => "Schedule",
            DocKind::Notifiers => "Notifier",
        }
    }
}

/// `apply -f FILE|DIR ...`
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Fleet file, or a folder whose *.yaml/*.yml files (recursively) are applied; repeat for
    /// more
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR"
    )]
    pub files: Vec<PathBuf>,
    /// Validate and show the diff and next fire times; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete stored sequences and schedules that are not in the files
    #[arg(long)]
    pub prune: bool,
    /// Apply even though steps name MAs or run profiles that target agents do not have (the
    /// problems are still printed)
    #[arg(long)]
    pub force: bool,
}

/// The error of invalid fleet files: every problem verbatim, then one summary line.
fn invalid_files(e: &FleetFileErrors) -> CliError {
    let n = e.errors.len();
    CliError::Invalid {
        details: e.to_string(),
        summary: format!(
            "{n} problem{} in the fleet files; nothing was sent to the controller",
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// Sequences that schedules in `docs` use but `docs` does not define. The CLI cannot see the
/// controller's stored sequences, so these are left for the controller to check.
pub fn external_sequences(docs: &[SourcedDoc]) -> BTreeSet<String> {
    let defined: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| match &d.doc {
            Document::Sequence(s) => Some(s.name.as_str()),
            Document::Schedule(_) | Document::Notifier(_) => None,
        })
        .collect();
    docs.iter()
        .filter_map(|d| match &d.doc {
            Document::Schedule(s) if !defined.contains(s.sequence.as_str()) => {
                Some(s.sequence.clone())
            }
            _ => None,
        })
        .collect()
}

/// The `Apply` request documents: canonical JSON with kind, name and `path#N` source.
pub fn to_fleet_documents(docs: &[SourcedDoc]) -> Vec<FleetDocument> {
    docs.iter()
        .map(|d| FleetDocument {
            kind: d.doc.kind().to_string(),
            name: d.doc.name().to_string(),
            json: documents::canonical_json(&d.doc),
            source: d.source.clone(),
        })
        .collect()
}

/// Loads and validates the files of `apply` without touching the network. `Err` lists every
/// problem ([`CliError::Invalid`]: those of unreadable documents, then the validation problems
/// of the readable ones), or says the files hold no document at all (refused: with `--prune`
/// an empty set would delete everything).
pub fn prepare_apply(files: &[PathBuf]) -> Result<Vec<FleetDocument>, CliError> {
    let loaded = documents::load_paths_lenient(files);
    let mut errors = loaded.errors;
    if let Err(mut e) = documents::validate(&loaded.docs, &external_sequences(&loaded.docs)) {
        errors.append(&mut e.errors);
    }
    if !errors.is_empty() {
        return Err(invalid_files(&FleetFileErrors { errors }));
    }
    let docs = loaded.docs;
    if docs.is_empty() {
        return Err(CliError::Failed(
            "the files hold no fleet documents; nothing to apply (write documents with kind: Sequence or kind: Schedule)"
                .to_string(),
        ));
    }
    Ok(to_fleet_documents(&docs))
}

/// The final stderr line of `apply`: `dry run: nothing applied` or `applied N change(s)`
/// (created, changed and deleted documents).
pub fn apply_summary(r: &ApplyResponse, dry_run: bool) -> String {
    if dry_run {
        return "dry run: nothing applied".to_string();
    }
    let n = r
        .changes
        .iter()
        .filter(|c| {
            matches!(
                Action::from_label(&c.action),
                Some(Action::Created | Action::Changed | Action::Deleted)
            )
        })
        .count();
    format!("applied {n} change(s)")
}

/// What each schedule's targets match now, one line per schedule (`apply --dry-run`):
/// `schedule/NAME targets (selector env=prod): sync-01, sync-02`, with `; unknown: NAME` for
/// named agents never seen and `none` when nothing matches.
pub fn target_lines(targets: &[ScheduleTargets]) -> String {
    let mut text = String::new();
    for t in targets {
        let agents = if t.agents.is_empty() {
            "none".to_string()
        } else {
            t.agents.join(", ")
        };
        text.push_str(&format!(
            "schedule/{} targets ({}): {agents}",
            t.schedule, t.targets
        ));
        if !t.unknown.is_empty() {
            text.push_str(&format!("; unknown: {}", t.unknown.join(", ")));
        }
        text.push('\n');
    }
    text
}

/// Adds the inventory warnings and resolved targets to `apply -o json` output.
pub fn add_checks_json(j: &mut serde_json::Value, r: &ApplyResponse) {
    if let Some(obj) = j.as_object_mut() {
        obj.insert(
            "warnings".into(),
            r.warnings
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "place": w.place,
                        "message": w.message,
                        "agent": w.agent,
                        "blocking": w.blocking,
                    })
                })
                .collect(),
        );
        obj.insert(
            "targets".into(),
            r.targets
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "schedule": t.schedule,
                        "targets": t.targets,
                        "agents": t.agents,
                        "unknown": t.unknown,
                    })
                })
                .collect(),
        );
    }
}

/// Parses the documents of a `GetDocuments` answer (kind `kind` unless a document says
/// otherwise), sorted by name. `Err` names the document this CLI cannot read.
pub fn parse_documents(kind: &str, docs: &[FleetDocument]) -> Result<Vec<Document>, String> {
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let k = if d.kind.is_empty() { kind } else { &d.kind };
        let doc = documents::from_json(k, &d.json).map_err(|e| {
            format!(
                "the controller sent a {k} {} this CLI cannot read: {e}; is the CLI older than the controller?",
                crate::limits::echo(&d.name)
            )
        })?;
        out.push(doc);
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(out)
}

/// `get -o json`: the documents as an array of objects (the canonical JSON form, with `kind`).
pub fn documents_json(docs: &[Document]) -> serde_json::Value {
    serde_json::Value::Array(docs.iter().map(documents::to_json_value).collect())
}

/// Documents asked for in one `GetDocuments` page (the controller's maximum).
const DOCUMENT_PAGE: u32 = 1000;

impl Session<'_> {
    pub(super) async fn apply(
        &self,
        client: &mut Client,
        args: &ApplyArgs,
        documents: Vec<FleetDocument>,
    ) -> Result<u8, CliError> {
        let resp = client
            .apply(ApplyRequest {
                documents,
                dry_run: args.dry_run,
                prune: args.prune,
                force: args.force,
            })
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::InvalidArgument {
                    CliError::Invalid {
                        details: status.message().to_string(),
                        summary: "the controller refused the documents (InvalidArgument); nothing was applied"
                            .to_string(),
                    }
                } else if status.code() == tonic::Code::FailedPrecondition {
                    CliError::Invalid {
                        details: status.message().to_string(),
                        summary: "the controller refused the apply (FailedPrecondition); nothing was applied"
                            .to_string(),
                    }
                } else {
                    self.rpc_err(&status)
                }
            })?
            .into_inner();
        match self.format {
            OutputFormat::Table => out(&apply_lines(&resp))?,
            OutputFormat::Json | OutputFormat::Yaml => {
                let mut j = output::apply_json(&resp);
                add_checks_json(&mut j, &resp);
                self.data(&j)?;
            }
        }
        // What the targets match now is a message next to the diff (stdout stays one line per
        // document, so `get -o yaml | apply --dry-run` still reads as a plain diff).
        if args.dry_run && self.format == OutputFormat::Table {
            eprint!("{}", target_lines(&resp.targets));
        }
        for w in &resp.warnings {
            eprintln!("warning: {}: {}", w.place, w.message);
        }
        let blocking = resp.warnings.iter().filter(|w| w.blocking).count();
        if args.dry_run && blocking > 0 && !args.force {
            eprintln!(
                "dry run: nothing applied; the apply would be refused for {blocking} step problem(s): fix the steps or pass --force"
            );
            return Ok(EXIT_FAILED);
        }
        eprintln!("{}", apply_summary(&resp, args.dry_run));
        Ok(EXIT_OK)
    }

    /// Every stored document of `kind`, by name: `GetDocuments` page after page.
    pub(super) async fn all_documents(
        &self,
        client: &mut Client,
        kind: &str,
    ) -> Result<Vec<Document>, CliError> {
        let mut all = Vec::new();
        self.document_pages(client, kind, |docs| {
            all.extend(docs);
            Ok(())
        })
        .await?;
        Ok(all)
    }

    /// Hands each page of `GetDocuments` for `kind` (by name), parsed, to `each` as it arrives.
    async fn document_pages(
        &self,
        client: &mut Client,
        kind: &str,
        mut each: impl FnMut(Vec<Document>) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let mut page_token = String::new();
        loop {
            let resp = client
                .get_documents(GetDocumentsRequest {
                    kind: kind.to_string(),
                    name: String::new(),
                    page_size: DOCUMENT_PAGE,
                    page_token,
                })
                .await
                .map_err(|e| self.rpc_err(&e))?
                .into_inner();
            let got = resp.documents.len();
            each(parse_documents(kind, &resp.documents).map_err(CliError::Failed)?)?;
            // An empty page with a token would loop forever on a misbehaving server; stop.
            if resp.next_page_token.is_empty() || got == 0 {
                return Ok(());
            }
            page_token = resp.next_page_token;
        }
    }

    pub(super) async fn get(
        &self,
        client: &mut Client,
        kind: DocKind,
        name: Option<&str>,
    ) -> Result<u8, CliError> {
        let noun = kind.kind().to_lowercase();
        if name.is_none() && self.format == OutputFormat::Json {
            // Printed page by page as they arrive, one array in all.
            let mut array = output::ArrayOut::new(false);
            self.document_pages(client, kind.kind(), |docs| {
                docs.iter()
                    .try_for_each(|d| array.push(&documents::to_json_value(d)))
            })
            .await?;
            return array.finish().map(|()| EXIT_OK);
        }
        let docs = match name {
            Some(n) => {
                let resp = client
                    .get_documents(GetDocumentsRequest {
                        kind: kind.kind().to_string(),
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| self.rpc_err(&e))?
                    .into_inner();
                parse_documents(kind.kind(), &resp.documents).map_err(CliError::Failed)?
            }
            None => self.all_documents(client, kind.kind()).await?,
        };
        if docs.is_empty()
            && let Some(n) = name
        {
            return Err(CliError::Failed(format!(
                "no {noun} named {} on the controller",
                crate::limits::echo(n)
            )));
        }
        match self.format {
            OutputFormat::Json => self.data(&documents_json(&docs))?,
            OutputFormat::Table | OutputFormat::Yaml => {
                if docs.is_empty() {
                    eprintln!(
                        "no {noun}s stored yet; create them with 'syncfleet apply -f FILE|DIR'"
                    );
                } else {
                    out(&documents::to_yaml(&docs))?;
                }
            }
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn delete(
        &self,
        client: &mut Client,
        kind: DocKind,
        name: &str,
    ) -> Result<u8, CliError> {
        let resp = client
            .delete_document(DeleteDocumentRequest {
                kind: kind.kind().to_string(),
                name: name.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        let noun = kind.kind().to_lowercase();
        if !resp.deleted {
            return Err(CliError::Failed(format!(
                "no {noun} named {} on the controller; nothing deleted",
                crate::limits::echo(name)
            )));
        }
        match self.format {
            OutputFormat::Table => out(&format!("deleted {noun}/{name}\n"))?,
            OutputFormat::Json | OutputFormat::Yaml => self.data(&serde_json::json!({
                "kind": kind.kind(),
                "name": name,
                "deleted": true,
            }))?,
        }
        Ok(EXIT_OK)
    }
}

/// `apply` output: one line per change (`created sequence/delta-cycle`,
/// `changed schedule/delta-every-5m (trigger, overlap)`), then for each forecast
/// `schedule/NAME next 5 fire times (ZONE):` and the times, RFC 3339 with the zone's offset.
pub fn apply_lines(r: &ApplyResponse) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&format!(
            "{} {}/{}",
            c.action,
            c.kind.to_lowercase(),
            c.name
        ));
        if !c.fields.is_empty() {
            out.push_str(&format!(" ({})", c.fields.join(", ")));
        }
        out.push('\n');
    }
    for f in &r.forecasts {
        let (tz, label) = display_zone(&f.time_zone);
        out.push_str(&format!(
            "schedule/{} next {} fire times ({label}):\n",
            f.name,
            f.next.len()
        ));
        for t in &f.next {
            out.push_str(&format!("  {}\n", zoned_rfc3339(Some(t), tz)));
        }
    }
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
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::{ApplyWarning, DocumentChange, ScheduleForecast};

    const FILE: &str = "kind: Sequence
name: delta-cycle
stages:
  - steps: [{ma: AD, profile: Delta Import}, {ma: HR, profile: Delta Import}]
  - steps: [{ma: AD, profile: Export, guard: {max_pending_deletes: \"2%\"}}]
---
kind: Schedule
name: delta-every-5m
sequence: delta-cycle
targets: {selector: env=prod}
trigger: {every: 5m, phase: 30s}
---
kind: Schedule
name: nightly
sequence: stored-on-controller
targets: {agents: [sync01]}
trigger: {cron: \"0 2 * * *\", time_zone: Europe/Oslo}
";

    #[test]
    fn prepare_apply_sends_canonical_json_with_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fleet.yaml");
        std::fs::write(&f, FILE).unwrap();
        let docs = prepare_apply(std::slice::from_ref(&f)).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].kind, "Sequence");
        assert_eq!(docs[0].name, "delta-cycle");
        assert_eq!(docs[1].source, format!("{}#2", f.display()));
        // The JSON reads back to the same document the file holds.
        let back = documents::from_json(&docs[1].kind, &docs[1].json).unwrap();
        let file_docs = documents::parse_str("x", FILE).unwrap();
        assert_eq!(back, file_docs[1].doc);
        // A sequence only the controller knows is left for the controller to check.
        assert_eq!(
            external_sequences(&file_docs),
            BTreeSet::from(["stored-on-controller".to_string()])
        );
    }

    #[test]
    fn prepare_apply_reports_every_problem_and_refuses_empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, FILE.replace("every: 5m", "every: 5 minutes please")).unwrap();
        std::fs::write(&b, "kind: Sequence\nname: x\nstages: []\n").unwrap();
        let e = prepare_apply(&[a, b]).unwrap_err();
        let CliError::Invalid { details, summary } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(details.lines().count(), 2, "{details}");
        assert!(details.contains("trigger.every"), "{details}");
        assert!(details.contains("stages: empty"), "{details}");
        assert_eq!(
            summary,
            "2 problems in the fleet files; nothing was sent to the controller"
        );

        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "# nothing yet\n---\n").unwrap();
        let e = prepare_apply(&[empty]).unwrap_err();
        assert!(e.to_string().contains("hold no fleet documents"), "{e}");
    }

    fn change(action: &str, kind: &str, name: &str, fields: &[&str]) -> DocumentChange {
        DocumentChange {
            kind: kind.into(),
            name: name.into(),
            action: action.into(),
            fields: fields.iter().map(|f| (*f).to_string()).collect(),
        }
    }

    fn response() -> ApplyResponse {
        ApplyResponse {
            changes: vec![
                change("created", "Sequence", "delta-cycle", &[]),
                change(
                    "changed",
                    "Schedule",
                    "delta-every-5m",
                    &["trigger", "overlap"],
                ),
                change("unchanged", "Schedule", "nightly", &[]),
                change("deleted", "Schedule", "old", &[]),
            ],
            forecasts: vec![ScheduleForecast {
                name: "delta-every-5m".into(),
                time_zone: "Europe/Oslo".into(),
                // 2024-01-15T09:00:30Z and five minutes later.
                next: vec![
                    from_millis(1_705_309_230_000),
                    from_millis(1_705_309_530_000),
                ],
            }],
            applied: true,
            warnings: vec![ApplyWarning {
                place: "f.yaml document 1 (Sequence delta-cycle)".into(),
                message: "stages[0].steps[0] \"AD:Delta Imprt\": agent sync01 (schedule delta-every-5m) has no run profile \"Delta Imprt\" on MA \"AD\" (did you mean \"Delta Import\"?)".into(),
                agent: "sync01".into(),
                blocking: true,
            }],
            targets: vec![
                ScheduleTargets {
                    schedule: "delta-every-5m".into(),
                    targets: "selector env=prod".into(),
                    agents: vec!["sync01".into(), "sync02".into()],
                    unknown: vec![],
                },
                ScheduleTargets {
                    schedule: "nightly".into(),
                    targets: "agents".into(),
                    agents: vec![],
                    unknown: vec!["ghost".into()],
                },
            ],
        }
    }

    #[test]
    fn dry_run_lists_targets_and_json_carries_the_checks() {
        assert_eq!(
            target_lines(&response().targets),
            "schedule/delta-every-5m targets (selector env=prod): sync01, sync02
schedule/nightly targets (agents): none; unknown: ghost
"
        );
        let mut j = output::apply_json(&response());
        add_checks_json(&mut j, &response());
        assert_eq!(j["warnings"][0]["blocking"], true);
        assert_eq!(j["warnings"][0]["agent"], "sync01");
        assert_eq!(
            j["targets"][0]["agents"],
            serde_json::json!(["sync01", "sync02"])
        );
        assert_eq!(j["targets"][1]["unknown"], serde_json::json!(["ghost"]));
    }

    #[test]
    fn apply_output_lists_changes_then_forecasts_in_the_schedule_zone() {
        assert_eq!(
            apply_lines(&response()),
            "created sequence/delta-cycle
changed schedule/delta-every-5m (trigger, overlap)
unchanged schedule/nightly
deleted schedule/old
schedule/delta-every-5m next 2 fire times (Europe/Oslo):
  2024-01-15T10:00:30+01:00
  2024-01-15T10:05:30+01:00
"
        );
        assert_eq!(apply_summary(&response(), false), "applied 3 change(s)");
        assert_eq!(apply_summary(&response(), true), "dry run: nothing applied");
        let j = output::apply_json(&response());
        assert_eq!(j["applied"], true);
        assert_eq!(
            j["changes"][1]["fields"],
            serde_json::json!(["trigger", "overlap"])
        );
        assert_eq!(j["forecasts"][0]["next"][0], "2024-01-15T09:00:30.000Z");
        assert_eq!(j["forecasts"][0]["time_zone"], "Europe/Oslo");
    }

    #[test]
    fn get_output_round_trips_to_an_unchanged_apply() {
        let file_docs: Vec<Document> = documents::parse_str("x", FILE)
            .unwrap()
            .into_iter()
            .map(|d| d.doc)
            .collect();
        // What the controller would send back for GetDocuments(Schedule).
        let sent: Vec<FleetDocument> = file_docs
            .iter()
            .filter(|d| d.kind() == "Schedule")
            .rev()
            .map(|d| FleetDocument {
                kind: d.kind().into(),
                name: d.name().into(),
                json: documents::canonical_json(d),
                source: String::new(),
            })
            .collect();
        let got = parse_documents("Schedule", &sent).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name(), "delta-every-5m", "sorted by name");
        let yaml = documents::to_yaml(&got);
        let reloaded: Vec<Document> = documents::parse_str("get.yaml", &yaml)
            .unwrap()
            .into_iter()
            .map(|d| d.doc)
            .collect();
        assert!(
            documents::diff(&got, &reloaded, false)
                .iter()
                .all(|c| c.action == Action::Unchanged)
        );
        let j = documents_json(&got);
        assert_eq!(j[0]["kind"], "Schedule");
        assert_eq!(j[0]["trigger"]["every"], "5m");
        assert_eq!(j[1]["trigger"]["time_zone"], "Europe/Oslo");

        let bad = vec![FleetDocument {
            kind: "Schedule".into(),
            name: "future".into(),
            json: r#"{"name":"future","new_field":1}"#.into(),
            source: String::new(),
        }];
        let e = parse_documents("Schedule", &bad).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
