//! `run` and `runs list|show|cancel|approve|reject`: starting ad-hoc runs, watching them with
//! `--follow`, and the run tables and blocks.
//!
//! Table mode: `run` (without `--follow`), `runs cancel`, `runs approve` and `runs reject` print just the run's
//! id on stdout and a hint on stderr (`Session::print_run_id`); `run --follow` prints progress
//! lines on stderr ([`Follower`]) and the final run on stdout, and exits 0 only if the run
//! succeeded. Counters are shown with the engine's own names, zero values left out to keep lines
//! short (`-o json` has them all).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use syncfleet_proto::v1::{
    ApproveRunRequest, CancelRunRequest, GetRunRequest, ListRunsRequest, PendingCounters,
    RejectRunRequest, Run, RunState, StartRunRequest, Step, StepCounters, StepSpec, StepState,
    WatchRunsRequest, limit,
};

use super::access::{Since, parse_since};
use super::connect::{self, Client};
use super::output::{self, out};
use super::table::{
    Table, duration, elapsed, instant, local_time, or_dash, short_id, signed_duration,
};
use super::{CliError, EXIT_FAILED, EXIT_OK, OutputFormat, Session};

/// How long `run --follow` keeps trying to re-open a broken watch without any success.
pub(super) const WATCH_GIVE_UP: Duration = Duration::from_secs(30);

/// Run states accepted by `--state`, in lifecycle order.
const STATE_LABELS: [&str; 10] = [
    "pending",
    "dispatched",
    "running",
    "succeeded",
    "completed_with_errors",
    "failed",
    "skipped",
    "cancelled",
    "unknown",
    "held",
];

/// `runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first
    #[command(visible_alias = "ls")]
    List {
        /// Only runs of this agent
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// Only runs in this state; repeat or comma-separate for several
        #[arg(
            long = "state",
            value_name = "STATE",
            value_delimiter = ',',
            value_parser = PossibleValuesParser::new(STATE_LABELS)
                .map(|s| RunState::from_label(&s).unwrap_or(RunState::Unspecified))
        )]
        states: Vec<RunState>,
        /// Show at most this many runs
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only runs created since: a duration before now (2h, 30m, 7d) or an RFC 3339 time
        #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
        since: Option<Since>,
        /// Only runs of agents whose labels match, e.g. env=prod,site=eu
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        /// Only runs created by this schedule
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// After the list, keep printing runs as they change (one line each; -o json: one JSON
        /// object per line) until interrupted
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Show one run with its steps and counters
    Show {
        /// Run id
        id: String,
        /// Also list the object errors and connection incidents the engine reported for each
        /// step (`-o json` always has them)
        #[arg(long)]
        errors: bool,
    },
    /// Cancel a run (a pending run ends at once; a running one is stopped on its agent)
    Cancel {
        /// Run id
        id: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// Approve a held run: its held step runs once with the guard rail lifted, then the rest
    /// of its plan, as a new run; prints the new run's id
    Approve {
        /// Id of the held run
        id: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
    /// Reject a held run: record that its held change must not go through. The run stays held
    /// and nothing of it runs; the schedule its guard rail paused stays paused (resume it with
    /// 'syncfleet schedules resume NAME' once the cause is fixed)
    Reject {
        /// Id of the held run
        id: String,
        /// Why the change is wrong (required)
        #[arg(long, required = true, value_name = "TEXT", value_parser = super::non_blank)]
        note: String,
    },
}

/// Parses `--step "MA:PROFILE"`, splitting at the first `:` (MA names contain no colon, profile
/// names may); surrounding blanks are trimmed so `"AD: Delta Import"` works too.
pub fn parse_step(s: &str) -> Result<StepSpec, String> {
    let usage = "expected MA:PROFILE, e.g. \"AD:Delta Import\" (split at the first ':')";
    let Some((ma, profile)) = s.split_once(':') else {
        return Err(format!("no ':' in \"{s}\"; {usage}"));
    };
    let (ma, profile) = (ma.trim(), profile.trim());
    if ma.is_empty() {
        return Err(format!("empty MA name in \"{s}\"; {usage}"));
    }
    if profile.is_empty() {
        return Err(format!("empty run profile name in \"{s}\"; {usage}"));
    }
    Ok(StepSpec {
        ma: ma.to_string(),
        profile: profile.to_string(),
    })
}

/// A human progress line on stderr, prefixed with the local time.
fn progress(line: &str) {
    eprintln!("[{}] {line}", chrono::Local::now().format("%H:%M:%S"));
}

impl Session<'_> {
    /// Runs one `runs ...` command.
    pub(super) async fn runs(
        &self,
        client: &mut Client,
        cmd: &RunsCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            RunsCommand::List {
                agent,
                states,
                limit,
                since,
                selector,
                schedule,
                watch,
            } => {
                let filter = ListFilter {
                    agent: agent.clone(),
                    states: states.clone(),
                    since: *since,
                    agents: match selector {
                        Some(sel) => Some(self.selected_agents(client, sel).await?),
                        None => None,
                    },
                    schedule: schedule.clone(),
                };
                self.runs_list(client, &filter, *limit, *watch).await
            }
            RunsCommand::Show { id, errors } => self.runs_show(client, id, *errors).await,
            RunsCommand::Cancel { id, reason } => self.runs_cancel(client, id, reason).await,
            RunsCommand::Approve { id, note } => self.runs_approve(client, id, note).await,
            RunsCommand::Reject { id, note } => self.runs_reject(client, id, note).await,
        }
    }

    /// `run AGENT ...` on one agent: `StartRun`, then the id (or, with `follow`, the run
    /// watched to its end).
    pub(super) async fn run_one(
        &self,
        client: &mut Client,
        agent: &str,
        steps: &[StepSpec],
        sequence: Option<&str>,
        follow: bool,
    ) -> Result<u8, CliError> {
        let run = client
            .start_run(StartRunRequest {
                sequence: sequence.unwrap_or_default().to_string(),
                agent: agent.to_string(),
                steps: steps.to_vec(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        if !follow {
            let mut hint = format!(
                "run {} is {} on agent {}",
                run.id,
                run.state().label(),
                run.agent
            );
            if !run.message.is_empty() {
                hint.push_str(&format!(" ({})", run.message));
            }
            hint.push_str(&format!("; see it with 'syncfleet runs show {}'", run.id));
            return self.print_run_id(&run, &hint);
        }
        eprintln!(
            "run {} started on agent {}; following it (Ctrl-C stops watching, not the run)",
            run.id, run.agent
        );
        let last = self.follow(client, run).await?;
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::run_json(&last))?,
            OutputFormat::Table => out(&run_details(&last, chrono::Utc::now()))?,
        }
        if last.state() == RunState::Succeeded {
            Ok(EXIT_OK)
        } else if last.state() == RunState::Held {
            eprintln!("{}", held_hint(&last));
            Ok(EXIT_FAILED)
        } else {
            eprintln!(
                "run {} ended {}{}",
                last.id,
                last.state().label(),
                if last.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", last.message)
                }
            );
            Ok(EXIT_FAILED)
        }
    }

    /// Watches `run` until it is terminal, printing progress to stderr; returns the final
    /// snapshot. Broken streams are re-opened (the server re-sends the current snapshot, so
    /// nothing is missed) until [`WATCH_GIVE_UP`] passes without any successful message.
    async fn follow(&self, client: &mut Client, run: Run) -> Result<Run, CliError> {
        let run_id = run.id.clone();
        let mut follower = Follower::new();
        for line in follower.observe(&run) {
            progress(&line);
        }
        if run.state().is_terminal() {
            return Ok(run);
        }
        let mut last_ok = Instant::now();
        let mut backoff = Duration::from_millis(500);
        loop {
            let cause = match client
                .watch_runs(WatchRunsRequest {
                    run_id: run_id.clone(),
                    agent: String::new(),
                })
                .await
            {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                last_ok = Instant::now();
                                backoff = Duration::from_millis(500);
                                let Some(r) = update.run else { continue };
                                if r.id != run_id {
                                    continue;
                                }
                                for line in follower.observe(&r) {
                                    progress(&line);
                                }
                                if r.state().is_terminal() {
                                    return Ok(r);
                                }
                            }
                            Ok(None) => break "the controller closed the watch stream".to_string(),
                            Err(status) => {
                                if is_permanent(&status) {
                                    return Err(self.rpc_err(&status));
                                }
                                break connect::brief_status(&status);
                            }
                        }
                    }
                }
                Err(status) => {
                    if is_permanent(&status) {
                        return Err(self.rpc_err(&status));
                    }
                    connect::brief_status(&status)
                }
            };
            if last_ok.elapsed() >= WATCH_GIVE_UP {
                return Err(CliError::WatchLost { run_id, cause });
            }
            eprintln!(
                "watch of run {} interrupted: {cause}; reconnecting in {}",
                short_id(&run_id),
                duration(chrono::TimeDelta::milliseconds(
                    i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)
                ))
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn runs_list(
        &self,
        client: &mut Client,
        filter: &ListFilter,
        limit: u32,
        watch: bool,
    ) -> Result<u8, CliError> {
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut runs: Vec<Run> = Vec::new();
        let mut page_token = String::new();
        let mut scanned = 0usize;
        // With a selector the agents are filtered here, page by page.
        let page_cap = if filter.agents.is_some() { 1000 } else { 0 };
        // Opened before the list is read, so no change falls between the two.
        let stream = if watch {
            Some(self.open_runs_watch(client, filter).await?)
        } else {
            None
        };
        loop {
            let remaining = limit_usize.saturating_sub(runs.len());
            let page_size = u32::try_from(remaining)
                .unwrap_or(u32::MAX)
                .min(1000)
                .max(page_cap);
            let resp = client
                .list_runs(ListRunsRequest {
                    agent: filter.agent.clone().unwrap_or_default(),
                    states: filter.states.iter().map(|s| *s as i32).collect(),
                    since: filter
                        .since
                        .map(|s| syncfleet_proto::time::to_proto(s.resolve(Utc::now()))),
                    until: None,
                    page_size,
                    page_token: page_token.clone(),
                    schedule: filter.schedule.clone().unwrap_or_default(),
                })
                .await
                .map_err(|e| self.rpc_err(&e))?
                .into_inner();
            let got = resp.runs.len();
            scanned += got;
            runs.extend(resp.runs.into_iter().filter(|r| filter.agent_matches(r)));
            // An empty page with a token would loop forever on a misbehaving server; stop.
            if runs.len() >= limit_usize || resp.next_page_token.is_empty() || got == 0 {
                break;
            }
            if scanned >= MAX_SCANNED {
                eprintln!(
                    "note: stopped after reading {scanned} runs; narrow the list with --since"
                );
                break;
            }
            page_token = resp.next_page_token;
        }
        runs.truncate(limit_usize);
        let Some(stream) = stream else {
            return self.print_list(
                &output::runs_json(&runs),
                runs.is_empty(),
                || runs_table(&runs, chrono::Utc::now()),
                "no runs match",
            );
        };
        // The list, oldest first, then every change, one line each.
        let mut watcher = ListWatcher::default();
        for r in runs.iter().rev() {
            self.print_watched(&mut watcher, r)?;
        }
        self.watch_list(client, filter, stream, &mut watcher).await
    }

    /// The names of the agents whose labels match `selector`.
    async fn selected_agents(
        &self,
        client: &mut Client,
        selector: &str,
    ) -> Result<Vec<String>, CliError> {
        let targets = super::run::selector_targets(selector)?;
        let agents = self.all_agents(client).await?;
        let names: Vec<String> = agents
            .into_iter()
            .filter(|a| targets.matches(&a.name, &a.labels.clone().into_iter().collect()))
            .map(|a| a.name)
            .collect();
        if names.is_empty() {
            eprintln!("note: no agent matches selector {selector:?}");
        }
        Ok(names)
    }

    async fn open_runs_watch(
        &self,
        client: &mut Client,
        filter: &ListFilter,
    ) -> Result<tonic::Streaming<syncfleet_proto::v1::RunUpdate>, CliError> {
        Ok(client
            .watch_runs(WatchRunsRequest {
                run_id: String::new(),
                agent: filter.agent.clone().unwrap_or_default(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner())
    }

    /// `runs list --watch` after the list: prints each change of a matching run until the
    /// process is interrupted; a broken stream is re-opened like `run --follow`'s.
    async fn watch_list(
        &self,
        client: &mut Client,
        filter: &ListFilter,
        mut stream: tonic::Streaming<syncfleet_proto::v1::RunUpdate>,
        watcher: &mut ListWatcher,
    ) -> Result<u8, CliError> {
        let mut last_ok = Instant::now();
        let mut backoff = Duration::from_millis(500);
        loop {
            let cause = loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        last_ok = Instant::now();
                        backoff = Duration::from_millis(500);
                        if update.missed > 0 {
                            eprintln!(
                                "note: the watch fell behind and missed {} updates; 'syncfleet runs list' shows every run as it is now",
                                update.missed
                            );
                        }
                        if let Some(r) = update.run
                            && filter.matches(&r)
                        {
                            self.print_watched(watcher, &r)?;
                        }
                    }
                    Ok(None) => break "the controller closed the watch stream".to_string(),
                    Err(status) if is_permanent(&status) => return Err(self.rpc_err(&status)),
                    Err(status) => break connect::brief_status(&status),
                }
            };
            loop {
                if last_ok.elapsed() >= WATCH_GIVE_UP {
                    return Err(CliError::Failed(format!(
                        "lost the watch for {}s: {cause}",
                        WATCH_GIVE_UP.as_secs()
                    )));
                }
                eprintln!("watch interrupted: {cause}; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if let Ok(s) = self.open_runs_watch(client, filter).await {
                    stream = s;
                    break;
                }
            }
        }
    }

    /// One line for a run seen by `runs list --watch`, unless nothing shown changed.
    fn print_watched(&self, watcher: &mut ListWatcher, r: &Run) -> Result<(), CliError> {
        let key = format!("{}|{}|{}", r.state, steps_brief(r), r.message);
        if watcher.last.get(&r.id) == Some(&key) {
            return Ok(());
        }
        watcher.last.insert(r.id.clone(), key);
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                let line = serde_json::to_string(&output::run_json(r))
                    .map_err(|e| CliError::Failed(format!("cannot encode a run as JSON: {e}")))?;
                out(&format!("{line}\n"))
            }
            OutputFormat::Table => out(&format!("{}\n", watch_line(r))),
        }
    }

    async fn runs_show(&self, client: &mut Client, id: &str, errors: bool) -> Result<u8, CliError> {
        let run = client
            .get_run(GetRunRequest { id: id.to_string() })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::run_json(&run))?,
            OutputFormat::Table => out(&run_details(&run, chrono::Utc::now()))?,
        }
        if errors && self.format == OutputFormat::Table {
            out(&super::run_errors::errors_section(&run))?;
        }
        Ok(EXIT_OK)
    }

    async fn runs_cancel(
        &self,
        client: &mut Client,
        id: &str,
        reason: &str,
    ) -> Result<u8, CliError> {
        let call = client.cancel_run(CancelRunRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        });
        self.print_changed_run(call, cancel_hint).await
    }

    async fn runs_approve(
        &self,
        client: &mut Client,
        id: &str,
        note: &str,
    ) -> Result<u8, CliError> {
        let call = client.approve_run(ApproveRunRequest {
            id: id.to_string(),
            note: note.to_string(),
        });
        self.print_changed_run(call, |run| approve_hint(id, run))
            .await
    }

    async fn runs_reject(&self, client: &mut Client, id: &str, note: &str) -> Result<u8, CliError> {
        let call = client.reject_run(RejectRunRequest {
            id: id.to_string(),
            note: note.to_string(),
        });
        self.print_changed_run(call, reject_hint).await
    }

    /// Awaits a call that changes a run (cancel, approve, reject) and prints the run it returns
    /// with `hint(run)` on stderr, as [`Self::print_run_id`] does.
    async fn print_changed_run(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<Run>, tonic::Status>>,
        hint: impl FnOnce(&Run) -> String,
    ) -> Result<u8, CliError> {
        let run = call.await.map_err(|e| self.rpc_err(&e))?.into_inner();
        self.print_run_id(&run, &hint(&run))
    }

    /// Prints a run that a call returned: the run object with `-o json`/`-o yaml`; in table mode
    /// its id alone on stdout (so `id=$(syncfleet run ...)` works) and `hint` on stderr.
    fn print_run_id(&self, run: &Run, hint: &str) -> Result<u8, CliError> {
        self.print_result(&output::run_json(run), &format!("{}\n", run.id), Some(hint))
    }
}

/// How many runs `runs list` reads at most while filtering by selector.
const MAX_SCANNED: usize = 100_000;

/// What `runs list` asks for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub agent: Option<String>,
    pub states: Vec<RunState>,
    pub since: Option<Since>,
    /// The agents of `-l SELECTOR` (None: every agent).
    pub agents: Option<Vec<String>>,
    pub schedule: Option<String>,
}

impl ListFilter {
    fn agent_matches(&self, r: &Run) -> bool {
        self.agents.as_ref().is_none_or(|a| a.contains(&r.agent))
    }

    /// Whether a run seen on the watch stream belongs to the list (the stream is filtered by
    /// agent only).
    fn matches(&self, r: &Run) -> bool {
        self.agent_matches(r)
            && self.agent.as_ref().is_none_or(|a| a == &r.agent)
            && self.schedule.as_ref().is_none_or(|s| s == &r.schedule)
            && (self.states.is_empty() || self.states.contains(&r.state()))
    }
}

/// What `runs list --watch` printed last per run.
#[derive(Debug, Default)]
struct ListWatcher {
    last: HashMap<String, String>,
}

/// One `runs list --watch` line: time, short id, agent, state, origin, steps.
fn watch_line(r: &Run) -> String {
    let origin = if r.schedule.is_empty() {
        r.origin.clone()
    } else {
        format!("{}/{}", r.origin, r.schedule)
    };
    let mut l = format!(
        "[{}] {} {} {} {} {} steps {}",
        chrono::Local::now().format("%H:%M:%S"),
        short_id(&r.id),
        r.agent,
        r.state().label(),
        or_dash(&origin),
        or_dash(&r.sequence),
        steps_brief(r)
    );
    if !r.result.is_empty() {
        l.push_str(&format!(" {}", r.result));
    }
    if !r.message.is_empty() {
        l.push_str(&format!(": {}", r.message));
    }
    l
}

/// The stderr line of `runs cancel`: a run that has not ended yet is being stopped by its agent.
fn cancel_hint(run: &Run) -> String {
    format!(
        "run {} is {}{}",
        run.id,
        run.state().label(),
        if run.state().is_terminal() {
            ""
        } else {
            " (the agent is stopping it)"
        }
    )
}

/// The stderr line of `runs approve`: the held run `id` continues as a new run.
fn approve_hint(id: &str, run: &Run) -> String {
    format!(
        "held run {id} approved: it continues as run {} on agent {} ({}); see it with 'syncfleet runs show {}'",
        run.id,
        run.agent,
        run.state().label(),
        run.id
    )
}

/// The stderr line of `runs reject`: the run stays held, and the schedule its hold paused stays
/// paused (resuming it is a separate decision).
pub fn reject_hint(run: &Run) -> String {
    let schedule = if run.schedule.is_empty() {
        String::new()
    } else {
        format!(
            "; schedule {} stays paused: resume it with 'syncfleet schedules resume {}' once the cause is fixed",
            run.schedule, run.schedule
        )
    };
    format!(
        "held run {} on agent {} rejected; it stays held and nothing of it runs{schedule}",
        run.id, run.agent
    )
}

/// The stderr line for a run that ended held: which step, why, and how to approve it.
pub fn held_hint(run: &Run) -> String {
    let held = run
        .steps
        .iter()
        .find(|s| s.state() == syncfleet_proto::v1::StepState::Held);
    let what = match held {
        Some(s) if !s.detail.is_empty() => {
            format!(
                " at step {} {}: {} ({})",
                s.index + 1,
                s.ma,
                s.profile,
                s.detail
            )
        }
        Some(s) => format!(" at step {} {}: {}", s.index + 1, s.ma, s.profile),
        None if !run.message.is_empty() => format!(": {}", run.message),
        None => String::new(),
    };
    format!(
        "run {} is held{what}; approve with 'syncfleet runs approve {} --note ...' or reject with 'syncfleet runs reject {} --note ...'",
        run.id, run.id, run.id
    )
}

/// Watch errors that re-opening the stream cannot fix.
pub(super) fn is_permanent(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::FailedPrecondition
    )
}

/// Non-zero counters as `name=value`, sorted, then outbound flows per target MA:
/// `stage-add=3 stage-update=27 | HR: connector-flow=2`. Empty when all are zero.
pub fn counters_brief(c: Option<&StepCounters>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let sorted: BTreeMap<_, _> = c.counters.iter().filter(|(_, v)| **v != 0).collect();
    let mut parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let outbound: BTreeMap<_, _> = c.outbound.iter().collect();
    for (ma, set) in outbound {
        let vals: BTreeMap<_, _> = set.values.iter().filter(|(_, v)| **v != 0).collect();
        if vals.is_empty() {
            continue;
        }
        let inner: Vec<String> = vals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("| {ma}: {}", inner.join(" ")));
    }
    parts.join(" ")
}

/// Steps that have finished executing on the engine, out of all steps, with the skipped and
/// held ones named: `2/3`, `6/7 (1 skipped)`, `1/3 (1 held)`.
fn steps_brief(r: &Run) -> String {
    let count = |st: StepState| r.steps.iter().filter(|s| s.state() == st).count();
    let mut out = format!("{}/{}", count(StepState::Done), r.steps.len());
    let extra: Vec<String> = [
        (count(StepState::Skipped), "skipped"),
        (count(StepState::Held), "held"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !extra.is_empty() {
        out.push_str(&format!(" ({})", extra.join(", ")));
    }
    out
}

/// Where a run came from: `schedule/delta-every-5m`, `catch-up/delta-every-5m`, `manual`,
/// `approval`.
pub fn origin_brief(r: &Run) -> String {
    match (r.origin.is_empty(), r.schedule.is_empty()) {
        (false, false) => format!("{}/{}", r.origin, r.schedule),
        (true, false) => format!("schedule/{}", r.schedule),
        (false, true) => r.origin.clone(),
        (true, true) => "-".to_string(),
    }
}

/// `runs list` table: ID AGENT ORIGIN SEQUENCE STATE RESULT CREATED DURATION STEPS
/// (SEQUENCE is `-` for ad-hoc runs); `-o wide` adds SCHEDULE REQUESTED-BY STARTED FINISHED.
pub fn runs_table(runs: &[Run], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&[
        "ID", "AGENT", "ORIGIN", "SEQUENCE", "STATE", "RESULT", "CREATED", "DURATION", "STEPS",
    ])
    .wide(&["SCHEDULE", "REQUESTED-BY", "STARTED", "FINISHED"]);
    for r in runs {
        t.row(vec![
            r.id.clone(),
            r.agent.clone(),
            origin_brief(r),
            or_dash(&r.sequence).to_string(),
            r.state().label().to_string(),
            or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
            local_time(r.created_at.as_ref()),
            elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
            steps_brief(r),
            or_dash(&r.schedule).to_string(),
            or_dash(&r.requested_by).to_string(),
            local_time(r.started_at.as_ref()),
            local_time(r.finished_at.as_ref()),
        ]);
    }
    t.render()
}

/// `runs show` and the final summary of `run --follow`: the run's fields, a table of its steps
/// (result, duration, errors, non-zero counters) and each step's detail text.
pub fn run_details(r: &Run, now: DateTime<Utc>) -> String {
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("id", r.id.clone());
    add("agent", r.agent.clone());
    add(
        "state",
        if r.cancel_requested && !r.state().is_terminal() {
            format!("{} (cancel requested)", r.state().label())
        } else {
            r.state().label().to_string()
        },
    );
    add(
        "result",
        or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
    );
    add("origin", or_dash(&r.origin).to_string());
    if r.coalesced_changes > 0 {
        add(
            "changes",
            format!(
                "{} coalesced from {}",
                r.coalesced_changes,
                r.change_sources.join(", ")
            ),
        );
    }
    if !r.schedule.is_empty() {
        add("schedule", r.schedule.clone());
    }
    add(
        "sequence",
        if r.sequence.is_empty() {
            "- (ad-hoc steps)".to_string()
        } else {
            r.sequence.clone()
        },
    );
    if !r.sequence.is_empty() {
        add(
            "on failure",
            super::output::on_failure_label(r.on_failure()).to_string(),
        );
    }
    add("requested by", or_dash(&r.requested_by).to_string());
    add("created", local_time(r.created_at.as_ref()));
    if instant(r.nominal_time.as_ref()).is_some() {
        add("nominal time", local_time(r.nominal_time.as_ref()));
    }
    if r.jitter_ms > 0 {
        add(
            "jitter",
            duration(chrono::TimeDelta::milliseconds(
                i64::try_from(r.jitter_ms).unwrap_or(i64::MAX),
            )),
        );
    }
    add("started", local_time(r.started_at.as_ref()));
    if let Some(ms) = super::output::lateness_ms(r.nominal_time.as_ref(), r.started_at.as_ref()) {
        add("lateness", signed_duration(ms));
    }
    add("finished", local_time(r.finished_at.as_ref()));
    add(
        "duration",
        elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
    );
    if !r.continuation_of.is_empty() {
        add("continues", format!("held run {}", r.continuation_of));
    }
    if !r.approved_by.is_empty() || instant(r.approved_at.as_ref()).is_some() {
        add(
            "approved",
            format!(
                "by {} at {}",
                or_dash(&r.approved_by),
                local_time(r.approved_at.as_ref())
            ),
        );
    }
    if !r.continued_in.is_empty() {
        add("continued in", r.continued_in.clone());
    }
    if !r.rejected_by.is_empty() || instant(r.rejected_at.as_ref()).is_some() {
        add(
            "rejected",
            format!(
                "by {} at {}: {}",
                or_dash(&r.rejected_by),
                local_time(r.rejected_at.as_ref()),
                or_dash(&r.reject_note)
            ),
        );
    }
    if !r.message.is_empty() {
        add("message", r.message.clone());
    }
    let rendered = kv.render();
    let mut out: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();

    out.push_str(&format!("steps ({}):\n", r.steps.len()));
    let mut t = Table::new(&[
        "#", "STAGE", "MA", "PROFILE", "STATE", "RESULT", "DURATION", "RUN#", "ERRORS", "COUNTERS",
    ]);
    let total = r.steps.len();
    for s in &r.steps {
        // A step that did not run has no duration or counters, whatever an older controller
        // stored for it.
        let not_run = s.state() == StepState::NotRun;
        t.row(vec![
            format!("{}/{}", s.index + 1, total),
            (s.stage + 1).to_string(),
            s.ma.clone(),
            s.profile.clone(),
            step_state_brief(s),
            or_dash(&s.result).to_string(),
            if not_run {
                "-".to_string()
            } else {
                elapsed(s.started_at.as_ref(), s.finished_at.as_ref(), now)
            },
            if s.run_number == 0 {
                "-".to_string()
            } else {
                s.run_number.to_string()
            },
            s.error_count.to_string(),
            if not_run {
                "-".to_string()
            } else {
                or_dash(&counters_brief(s.counters.as_ref())).to_string()
            },
        ]);
    }
    out.push_str(&t.render_indented("  "));
    for s in &r.steps {
        let notes = step_notes(s, r.approved_steps.contains(&s.index));
        if !notes.is_empty() {
            out.push_str(&format!(
                "  step {}/{} {}: {}: {}\n",
                s.index + 1,
                total,
                s.ma,
                s.profile,
                notes.join("; ")
            ));
        }
    }
    if r.state() == RunState::Held {
        if !r.rejected_by.is_empty() || instant(r.rejected_at.as_ref()).is_some() {
            out.push_str(&format!(
                "held: rejected by {} at {}: {}\n",
                or_dash(&r.rejected_by),
                local_time(r.rejected_at.as_ref()),
                or_dash(&r.reject_note)
            ));
        } else if r.continued_in.is_empty() {
            out.push_str(&format!(
                "held: approve with 'syncfleet runs approve {} --note ...' or reject with 'syncfleet runs reject {} --note ...'\n",
                r.id, r.id
            ));
        } else {
            out.push_str(&format!(
                "held: approved; continued in run {}\n",
                r.continued_in
            ));
        }
    }
    out
}

/// A limit as written in fleet files: `500` or `2%`.
fn limit_brief(l: Option<&syncfleet_proto::v1::Limit>) -> Option<String> {
    match l.and_then(|l| l.kind)? {
        limit::Kind::Count(n) => Some(n.to_string()),
        limit::Kind::Percent(p) => Some(format!("{p}%")),
    }
}

/// Non-zero pending counters: `export_delete=600 total_connectors=30000`.
fn pending_brief(p: &PendingCounters) -> String {
    [
        ("import_add", p.import_add),
        ("import_update", p.import_update),
        ("import_delete", p.import_delete),
        ("export_add", p.export_add),
        ("export_update", p.export_update),
        ("export_delete", p.export_delete),
        ("total_connectors", p.total_connectors),
    ]
    .iter()
    .filter(|(_, v)| *v != 0)
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(" ")
}

/// The remarks shown under the steps table for one step: its condition and guard rail (and
/// whether an approval lifted it for this run: `approved`), why it was skipped or held,
/// retries, a failed connection and the agent's detail text.
pub fn step_notes(s: &Step, approved: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let cond = super::output::condition_label(s.only_if());
    match s.state() {
        StepState::Skipped => notes.push(match (s.detail.is_empty(), cond) {
            (false, _) => format!("skipped: {}", s.detail),
            (true, Some(c)) => format!("skipped: only_if {c} was false"),
            (true, None) => "skipped".to_string(),
        }),
        StepState::Held => {
            notes.push(if s.detail.is_empty() {
                "HELD: its guard rail tripped".to_string()
            } else {
                format!("HELD: {}", s.detail)
            });
            if let Some(p) = &s.pending_before {
                let b = pending_brief(p);
                if !b.is_empty() {
                    notes.push(format!("pending before: {b}"));
                }
            }
        }
        _ => {
            if let Some(c) = cond {
                notes.push(format!("only_if {c}"));
            }
        }
    }
    if let Some(g) = &s.guard {
        let parts: Vec<String> = g
            .limits()
            .into_iter()
            .filter_map(|(k, l)| limit_brief(l).map(|v| format!("{k}={v}")))
            .collect();
        if !parts.is_empty() {
            let lifted = if approved {
                " (lifted once by approval)"
            } else {
                ""
            };
            notes.push(format!("guard {}{lifted}", parts.join(" ")));
        }
    }
    if s.attempts > 1 {
        notes.push(format!("{} attempts", s.attempts));
    }
    if !s.connection_result.is_empty() && s.connection_result != "success" {
        notes.push(format!("connection result {}", s.connection_result));
    }
    if !s.detail.is_empty() && !matches!(s.state(), StepState::Skipped | StepState::Held) {
        notes.push(s.detail.clone());
    }
    notes
}

fn step_state_brief(s: &Step) -> String {
    if s.state() == StepState::Running && !s.progress.is_empty() {
        format!("running {}", s.progress)
    } else {
        s.state().label().to_string()
    }
}

/// Turns the snapshots of one run (from WatchRuns) into progress lines, printing a line only
/// when something a human cares about changed: the run's state or message, a step's state,
/// progress, result or detail. Repeated identical snapshots (e.g. the current snapshot sent
/// again after a reconnect) produce no lines.
#[derive(Debug, Default)]
pub struct Follower {
    last_run: Option<(RunState, String)>,
    last_steps: HashMap<u32, String>,
}

impl Follower {
    /// A follower that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// New lines (without time prefix) for this snapshot.
    pub fn observe(&mut self, r: &Run) -> Vec<String> {
        let mut lines = Vec::new();
        let run_key = (r.state(), r.message.clone());
        if self.last_run.as_ref() != Some(&run_key) {
            // Terminal states are reported by the final summary; only mention progress here.
            if !r.state().is_terminal() {
                let mut l = format!("run {} {}", short_id(&r.id), r.state().label());
                if !r.message.is_empty() {
                    l.push_str(&format!(": {}", r.message));
                }
                lines.push(l);
            }
            self.last_run = Some(run_key);
        }
        let total = r.steps.len();
        for s in &r.steps {
            let (key, line) = step_line(s, total);
            let Some(line) = line else { continue };
            if self.last_steps.get(&s.index) != Some(&key) {
                self.last_steps.insert(s.index, key);
                lines.push(line);
            }
        }
        lines
    }
}

/// The dedup key and the line (if worth printing) for one step.
fn step_line(s: &Step, total: usize) -> (String, Option<String>) {
    let head = format!("step {}/{} {}: {}", s.index + 1, total, s.ma, s.profile);
    let detail = if s.detail.is_empty() {
        String::new()
    } else {
        format!("  — {}", s.detail)
    };
    match s.state() {
        StepState::Waiting | StepState::Unspecified => {
            // Every step starts out waiting; only say so when there is a reason worth showing
            // (waiting for an engine lock, a stagger, ...).
            let key = format!("waiting|{}", s.detail);
            let line = (!s.detail.is_empty()).then(|| format!("{head}  waiting{detail}"));
            (key, line)
        }
        StepState::Running => {
            let key = format!("running|{}|{}", s.progress, s.detail);
            let mut line = format!("{head}  running");
            if !s.progress.is_empty() {
                line.push_str(&format!(" {}", s.progress));
            }
            line.push_str(&detail);
            (key, Some(line))
        }
        StepState::Done => {
            // Counters may be filled in a moment after the result; keying on the result alone
            // keeps one "done" line per step. The final summary shows the final counters.
            let key = format!("done|{}", s.result);
            let mut line = format!("{head}  done {}", or_dash(&s.result));
            if s.error_count > 0 {
                line.push_str(&format!("  errors={}", s.error_count));
            }
            let c = counters_brief(s.counters.as_ref());
            if !c.is_empty() {
                line.push_str(&format!("  {c}"));
            }
            line.push_str(&detail);
            (key, Some(line))
        }
        StepState::NotRun => {
            let key = format!("not_run|{}", s.detail);
            (key, Some(format!("{head}  not run{detail}")))
        }
        StepState::Skipped => {
            let key = format!("skipped|{}", s.detail);
            (key, Some(format!("{head}  skipped{detail}")))
        }
        StepState::Held => {
            let key = format!("held|{}", s.detail);
            (key, Some(format!("{head}  HELD{detail}")))
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
pub(super) mod tests {
    use super::*;
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::{PendingCounters, limit};

    #[test]
    fn step_splits_at_first_colon() {
        let s = parse_step("AD:Delta Import").unwrap();
        assert_eq!((s.ma.as_str(), s.profile.as_str()), ("AD", "Delta Import"));
        let s = parse_step("CONTOSO AD: Full Import: weekly").unwrap();
        assert_eq!(
            (s.ma.as_str(), s.profile.as_str()),
            ("CONTOSO AD", "Full Import: weekly")
        );
    }

    #[test]
    fn step_without_colon_names_expected_form() {
        let e = parse_step("AD Delta Import").unwrap_err();
        assert!(e.contains("expected MA:PROFILE"), "{e}");
        assert!(parse_step(":x").is_err());
        assert!(parse_step("AD:").is_err());
    }

    fn running_step(progress: &str) -> Step {
        Step {
            index: 0,
            ma: "AD".into(),
            profile: "Delta Import".into(),
            state: StepState::Running as i32,
            progress: progress.into(),
            ..Default::default()
        }
    }

    fn run_with(steps: Vec<Step>, state: RunState) -> Run {
        Run {
            id: "0190a0b0-0000-7000-8000-000000000001".into(),
            agent: "sync01".into(),
            state: state as i32,
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn follower_prints_changes_once() {
        let mut f = Follower::new();
        let waiting = Step {
            index: 1,
            ma: "HR".into(),
            profile: "Export".into(),
            state: StepState::Waiting as i32,
            ..Default::default()
        };
        let r1 = run_with(
            vec![running_step("1200/5000"), waiting.clone()],
            RunState::Running,
        );
        assert_eq!(
            f.observe(&r1),
            vec![
                "run 0190a0b0 running".to_string(),
                "step 1/2 AD: Delta Import  running 1200/5000".to_string()
            ]
        );
        assert!(
            f.observe(&r1).is_empty(),
            "unchanged snapshot prints nothing"
        );

        let mut done = running_step("");
        done.state = StepState::Done as i32;
        done.result = "success".into();
        let mut c = StepCounters::default();
        c.counters.insert("stage-add".into(), 3);
        c.counters.insert("stage-update".into(), 27);
        c.counters.insert("stage-delete".into(), 0);
        done.counters = Some(c);
        let r2 = run_with(vec![done, waiting], RunState::Running);
        assert_eq!(
            f.observe(&r2),
            vec![
                "step 1/2 AD: Delta Import  done success  stage-add=3 stage-update=27".to_string()
            ]
        );
        assert!(f.observe(&r2).is_empty());
    }

    #[test]
    fn counters_brief_nests_outbound() {
        let mut c = StepCounters::default();
        c.counters.insert("export-update".into(), 5);
        let mut set = syncfleet_proto::v1::CounterSet::default();
        set.values.insert("connector-flow".into(), 2);
        c.outbound.insert("HR".into(), set);
        assert_eq!(
            counters_brief(Some(&c)),
            "export-update=5 | HR: connector-flow=2"
        );
    }

    #[test]
    fn run_details_lists_steps() {
        let mut r = run_with(vec![running_step("10/20")], RunState::Running);
        r.started_at = Some(from_millis(1_700_000_000_000));
        let now = instant(Some(&from_millis(1_700_000_065_000))).unwrap();
        let text = run_details(&r, now);
        assert!(text.contains("duration:      1m05s"), "{text}");
        assert!(text.contains("running 10/20"), "{text}");
    }

    /// A scheduled run held at its export step by a guard rail, with its earlier steps done and
    /// skipped.
    pub(in crate::cli) fn held_run() -> Run {
        let import = Step {
            index: 0,
            stage: 0,
            ma: "AD".into(),
            profile: "Delta Import".into(),
            state: StepState::Done as i32,
            result: "success".into(),
            attempts: 2,
            ..Default::default()
        };
        let sync = Step {
            index: 1,
            stage: 1,
            ma: "AD".into(),
            profile: "Delta Sync".into(),
            state: StepState::Skipped as i32,
            only_if: syncfleet_proto::v1::Condition::StagedChanges as i32,
            ..Default::default()
        };
        let export = Step {
            index: 2,
            stage: 2,
            ma: "AD".into(),
            profile: "Export".into(),
            state: StepState::Held as i32,
            only_if: syncfleet_proto::v1::Condition::PendingExports as i32,
            guard: Some(syncfleet_proto::v1::Guard {
                max_pending_deletes: Some(syncfleet_proto::v1::Limit {
                    kind: Some(limit::Kind::Count(500)),
                }),
                ..Default::default()
            }),
            detail: "700 pending export deletes exceed max_pending_deletes 500".into(),
            pending_before: Some(PendingCounters {
                export_delete: 700,
                total_connectors: 30_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut r = run_with(vec![import, sync, export], RunState::Held);
        r.origin = "schedule".into();
        r.schedule = "delta-every-5m".into();
        r.sequence = "delta-cycle".into();
        r.nominal_time = Some(from_millis(1_700_000_000_000));
        r.started_at = Some(from_millis(1_700_000_011_500));
        r.finished_at = Some(from_millis(1_700_000_071_500));
        r.jitter_ms = 4_000;
        r
    }

    #[test]
    fn the_reject_hint_says_the_schedule_stays_paused() {
        let mut r = Run {
            id: "r1".into(),
            agent: "sync-01".into(),
            ..Run::default()
        };
        assert_eq!(
            reject_hint(&r),
            "held run r1 on agent sync-01 rejected; it stays held and nothing of it runs"
        );
        r.schedule = "nightly".into();
        assert_eq!(
            reject_hint(&r),
            "held run r1 on agent sync-01 rejected; it stays held and nothing of it runs; schedule nightly stays paused: resume it with 'syncfleet schedules resume nightly' once the cause is fixed"
        );
    }

    #[test]
    fn run_details_show_schedule_fields_reasons_and_the_approve_hint() {
        let r = held_run();
        let text = run_details(&r, instant(Some(&from_millis(1_700_000_100_000))).unwrap());
        for want in [
            "schedule:      delta-every-5m\n",
            "sequence:      delta-cycle\n",
            "on failure:    stop\n",
            "jitter:        4s\n",
            "lateness:      11s\n",
            "duration:      1m00s\n",
            "step 1/3 AD: Delta Import: 2 attempts\n",
            "step 2/3 AD: Delta Sync: skipped: only_if staged_changes was false\n",
            "step 3/3 AD: Export: HELD: 700 pending export deletes exceed max_pending_deletes 500; pending before: export_delete=700 total_connectors=30000; guard max_pending_deletes=500\n",
            "held: approve with 'syncfleet runs approve 0190a0b0-0000-7000-8000-000000000001 --note ...' or reject with 'syncfleet runs reject 0190a0b0-0000-7000-8000-000000000001 --note ...'\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains("#    STAGE  MA"), "{text}");
        let mut continuation = r.clone();
        continuation.steps[2].state = StepState::Done as i32;
        continuation.state = RunState::Succeeded as i32;
        continuation.approved_steps = vec![2];
        let text = run_details(&continuation, Utc::now());
        assert!(
            text.contains("guard max_pending_deletes=500 (lifted once by approval)"),
            "{text}"
        );
        let mut approved = r.clone();
        approved.continued_in = "r2".into();
        let text = run_details(&approved, Utc::now());
        assert!(text.contains("continued in:  r2\n"), "{text}");
        assert!(
            text.contains("held: approved; continued in run r2\n"),
            "{text}"
        );
        assert!(!text.contains("approve with"), "{text}");
        let mut rejected = r.clone();
        rejected.rejected_by = "operator/bob".into();
        rejected.rejected_at = Some(from_millis(1_700_000_100_000));
        rejected.reject_note = "wrong HR feed".into();
        let text = run_details(&rejected, Utc::now());
        let at = local_time(rejected.rejected_at.as_ref());
        assert!(
            text.contains(&format!(
                "rejected:      by operator/bob at {at}: wrong HR feed\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "held: rejected by operator/bob at {at}: wrong HR feed\n"
            )),
            "{text}"
        );
        assert!(!text.contains("approve with"), "{text}");
        // Ad-hoc runs say so and show no schedule lines.
        let adhoc = run_with(vec![running_step("")], RunState::Running);
        let text = run_details(&adhoc, Utc::now());
        assert!(text.contains("sequence:      - (ad-hoc steps)\n"), "{text}");
        assert!(!text.contains("schedule:"), "{text}");
        assert!(!text.contains("lateness:"), "{text}");
    }

    #[test]
    fn follower_reports_skipped_and_held_steps() {
        let mut f = Follower::new();
        let lines = f.observe(&held_run());
        assert!(
            lines.contains(&"step 3/3 AD: Export  HELD  — 700 pending export deletes exceed max_pending_deletes 500".to_string()),
            "{lines:#?}"
        );
        assert!(
            lines.contains(&"step 2/3 AD: Delta Sync  skipped".to_string()),
            "{lines:#?}"
        );
    }

    #[test]
    fn runs_table_shows_origin_and_sequence() {
        let mut adhoc = run_with(vec![], RunState::Succeeded);
        adhoc.origin = "manual".into();
        adhoc.id = "r0".into();
        let text = runs_table(&[held_run(), adhoc], Utc::now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[0].contains("  ORIGIN  "), "{text}");
        assert!(
            lines[1].contains("schedule/delta-every-5m  delta-cycle  held"),
            "{text}"
        );
        assert!(lines[1].ends_with("1/3 (1 skipped, 1 held)"), "{text}");
        assert!(
            lines[2].contains("manual                   -            succeeded"),
            "{text}"
        );
    }
}
