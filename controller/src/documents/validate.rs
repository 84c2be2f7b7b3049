//! Validation of fleet documents beyond parsing (names, sizes, sequences, schedules) and the
//! check of steps against the agents' inventories.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::load::SourcedDoc;
use super::messages::{FleetFileErrors, closest, describe_source, err, near, suggestion};
use super::model::{Document, Limit, ScheduleDoc, SequenceDoc};
use super::trigger::Trigger;
use crate::limits::{
    self, MAX_BLACKOUTS, MAX_CRON_ENTRIES, MAX_DOCUMENTS, MAX_SELECTOR_TERMS, MAX_STAGES,
    MAX_STEPS_PER_RUN, MAX_STEPS_PER_STAGE, MAX_TARGET_AGENTS, echo,
};

/// The document kinds a fleet file may hold, as written in `kind:`.
pub const KINDS: [&str; 3] = ["Sequence", "Schedule", "Notifier"];

/// Longest sequence or schedule name.
pub const MAX_NAME_LEN: usize = syncfleet_proto::names::MAX_NAME_LEN;
/// Longest `description`.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Longest management agent or run profile name.
pub const MAX_ENGINE_NAME_LEN: usize = limits::MAX_ENGINE_NAME;
/// Largest `jitter` and `catchup_window`.
pub const MAX_SCHEDULE_DELAY: Duration = Duration::from_secs(24 * 3600);

pub use syncfleet_proto::names::valid_name;

/// Checks a set of documents beyond what parsing checks, reporting every problem:
///
/// - names: 1–63 characters `a-z A-Z 0-9 . _ -`, unique per kind within `docs`;
/// - `description` at most 1024 characters;
/// - sequences: at least one stage, each with at least one step; every step names an MA and a
///   run profile (non-blank, at most 256 characters); one MA at most once per stage (an MA runs
///   one profile at a time; compared case-insensitively like the engine does); guard limits
///   (on pending export deletes, adds and updates and on staged deletes, adds, updates and
///   renames) are counts or finite percentages in (0, 100];
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
            Document::Schedule(_) | Document::Notifier(_) => None,
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
            Document::Notifier(n) => super::notifier::check_notifier(n, &mut bad),
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
                for (field, limit) in g.limits() {
                    check_limit(&format!("{at}.guard.{field}"), limit, bad);
                }
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
    if let Some(c) = &s.trigger.on_change {
        super::change_sources::check(c, bad);
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
                    let only_selector = super::model::Targets {
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

fn steps_with_paths(seq: &SequenceDoc) -> impl Iterator<Item = (String, &super::model::StepDoc)> {
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
    fn example_file_validates() {
        let loaded = parse_str("fleet/example.yaml", EXAMPLE).unwrap();
        validate(&loaded, &BTreeSet::new()).unwrap();
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
            "f.yaml document 4 (Sequnce c): kind: unknown kind \"Sequnce\" (did you mean Sequence?); use Sequence, Schedule or Notifier"
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
            max_staged_adds: Some(Limit::Percent(150.0)),
            max_staged_renames: Some(Limit::Percent(0.0)),
            ..Default::default()
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
            "f.yaml document 1 (Sequence Delta Cycle): stages[1].steps[0].guard.max_staged_adds: 150% is not a percentage above 0 and at most 100",
            "f.yaml document 1 (Sequence Delta Cycle): stages[1].steps[0].guard.max_staged_renames: 0% is not a percentage above 0 and at most 100",
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
            on_change: None,
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
    fn autonomy_is_a_boolean_and_misspellings_are_named() {
        let base =
            "kind: Schedule\nname: s\nsequence: q\ntargets: {agents: [x]}\ntrigger: {every: 3s}\n";
        let ok = parse_str("f.yaml", &format!("{base}autonomy: false\n")).unwrap();
        match &ok[0].doc {
            crate::documents::model::Document::Schedule(s) => assert_eq!(s.autonomy, Some(false)),
            other => panic!("{other:?}"),
        }
        let e = parse_str("f.yaml", &format!("{base}autonomy: maybe\n")).unwrap_err();
        let m = messages(&e);
        assert!(m[0].contains("autonomy"), "{m:#?}");
        let e = parse_str("f.yaml", &format!("{base}autonomus: false\n")).unwrap_err();
        let m = messages(&e);
        assert!(m[0].contains("did you mean autonomy?"), "{m:#?}");
    }
}
