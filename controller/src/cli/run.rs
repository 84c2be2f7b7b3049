//! `run`: ad-hoc runs on one agent or on many.
//!
//! One named agent (and no `--max-parallel` or `--idempotency-key`) keeps the single-run path of
//! [`super::runs`] (`StartRun`, its output and `--follow` unchanged). Several names, `-l
//! SELECTOR` or `--all` fan out through `StartRuns`: one call starts a run on each selected
//! agent, and agents that cannot take one are refused with their reason (printed on stderr,
//! exit 1). Every call carries an idempotency key (`--idempotency-key`, else a new UUID per
//! invocation), so a call retried after a broken connection starts nothing twice.
//!
//! `--max-parallel N` resolves the selection to agent names first (sorted), then starts them in
//! waves: as many as there are free slots, each wave one `StartRuns` call with the key
//! `KEY/WAVE` (the wave's number from 0), the next agent when a run ends. It waits for the runs
//! like `--follow`.
//!
//! Following many runs ([`Tracker`]): one `WatchRuns` stream for all runs, opened before the
//! first start so no end is missed, plus a `GetRun` of every unfinished run every few seconds
//! and after a re-opened stream (an unfiltered watcher that falls behind is skipped ahead by
//! the controller). On a terminal stderr each agent has one live line (indicatif multi-progress);
//! otherwise changes are printed as plain lines prefixed with the agent. At the end stdout gets
//! a table of the runs (or `-o json`: `{idempotency_key, runs, refused, failed}`), stderr one
//! line per run that did not succeed (agent, run id, state, result), and the exit code is 0
//! only when every selected agent ran and every run succeeded.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::time::Duration;
use tokio::time::Instant;

use clap::{ArgGroup, Args};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use syncfleet_proto::schedule_model::Targets;
use syncfleet_proto::v1::{
    GetRunRequest, Run, RunRefusal, RunState, RunUpdate, StartRunsRequest, StartRunsResponse,
    StepSpec, StepState, WatchRunsRequest,
};

use super::connect::{self, Client};
use super::output::{self, out};
use super::runs::{Follower, WATCH_GIVE_UP, held_hint, is_permanent, parse_step};
use super::table::{Table, elapsed, or_dash, short_id};
use super::{CliError, EXIT_FAILED, EXIT_OK, OutputFormat, Session};

/// How often unfinished runs are read again while following many (a safety net for updates
/// the watch stream skipped).
const REFRESH: Duration = Duration::from_secs(5);

/// Attempts of one `StartRuns` call when the controller is unavailable (same idempotency key).
const START_ATTEMPTS: u32 = 3;

/// `run (AGENT... | -l SELECTOR | --all) (--step MA:PROFILE ... | --sequence NAME)`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("plan").required(true).args(["steps", "sequence"])))]
#[command(group(ArgGroup::new("targets").required(true).args(["agents", "selector", "all"])))]
pub struct RunArgs {
    /// Agent (sync server) names; several start one run on each
    #[arg(value_name = "AGENT")]
    pub agents: Vec<String>,
    /// Start a run on every agent whose labels match, e.g. env=prod,site=eu
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Start a run on every enrolled agent
    #[arg(long)]
    pub all: bool,
    /// A step "MA:PROFILE", e.g. "AD:Delta Import"; repeat for more steps, run in order. Split
    /// at the first ':' (profile names may contain ':' and spaces)
    #[arg(long = "step", short = 's', value_name = "MA:PROFILE", value_parser = parse_step)]
    pub steps: Vec<StepSpec>,
    /// Run a stored sequence instead of ad-hoc steps
    #[arg(long, value_name = "NAME")]
    pub sequence: Option<String>,
    /// Watch the run(s) until they end; exit 0 only if every run succeeded
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// At most N runs of this command at once: the next agent starts when a run ends (waits
    /// for the runs like --follow)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// Key that makes a retried command harmless: a second command with the same key starts
    /// nothing new and shows the runs of the first [default: a new key per command]
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl RunArgs {
    /// The one agent of a plain single-agent run, which keeps the `StartRun` path.
    fn single_agent(&self) -> Option<&str> {
        match self.agents.as_slice() {
            [one]
                if self.selector.is_none()
                    && !self.all
                    && self.max_parallel.is_none()
                    && self.idempotency_key.is_none() =>
            {
                Some(one)
            }
            _ => None,
        }
    }

    fn request(&self, key: &str) -> StartRunsRequest {
        StartRunsRequest {
            agents: self.agents.clone(),
            selector: self.selector.clone().unwrap_or_default(),
            all: self.all,
            steps: self.steps.clone(),
            sequence: self.sequence.clone().unwrap_or_default(),
            idempotency_key: key.to_string(),
        }
    }
}

impl Session<'_> {
    pub(super) async fn run(&self, client: &mut Client, args: &RunArgs) -> Result<u8, CliError> {
        if let Some(agent) = args.single_agent() {
            return self
                .run_one(
                    client,
                    agent,
                    &args.steps,
                    args.sequence.as_deref(),
                    args.follow,
                )
                .await;
        }
        let key = args
            .idempotency_key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let follow = args.follow || args.max_parallel.is_some();
        let mut refused: Vec<RunRefusal> = Vec::new();
        if !follow {
            let resp = self.start_runs(client, args.request(&key)).await?;
            return self.print_started(&key, &resp.runs, &resp.refused);
        }
        eprintln!(
            "following the runs until they end (Ctrl-C stops watching, not the runs){}",
            args.max_parallel
                .map_or(String::new(), |n| format!("; at most {n} at once"))
        );
        let mut tracker = Tracker::new();
        // Opened before the first start, so no run can end unseen.
        let mut watch = Watch::open(self, client).await?;
        match args.max_parallel {
            None => {
                let resp = self.start_runs(client, args.request(&key)).await?;
                tracker.refused(&resp.refused);
                refused.extend(resp.refused);
                for r in resp.runs {
                    tracker.add(r);
                }
                while tracker.in_flight() > 0 {
                    self.pump(client, &mut watch, &mut tracker).await?;
                }
            }
            Some(n) => {
                let mut queue: VecDeque<String> = self.resolve_agents(client, args).await?.into();
                let slots = usize::try_from(n).unwrap_or(usize::MAX);
                let mut wave = 0u32;
                loop {
                    let free = slots.saturating_sub(tracker.in_flight());
                    if free > 0 && !queue.is_empty() {
                        let names: Vec<String> = queue.drain(..free.min(queue.len())).collect();
                        let mut req = args.request(&format!("{key}/{wave}"));
                        req.agents = names;
                        req.selector.clear();
                        req.all = false;
                        wave += 1;
                        let resp = self.start_runs(client, req).await?;
                        tracker.refused(&resp.refused);
                        refused.extend(resp.refused);
                        for r in resp.runs {
                            tracker.add(r);
                        }
                        continue;
                    }
                    if tracker.in_flight() == 0 {
                        break;
                    }
                    self.pump(client, &mut watch, &mut tracker).await?;
                }
            }
        }
        tracker.finish();
        self.print_followed(&key, &tracker.runs, &refused)
    }

    /// One `StartRuns` call, retried with the same idempotency key while the controller is
    /// unavailable.
    async fn start_runs(
        &self,
        client: &mut Client,
        req: StartRunsRequest,
    ) -> Result<StartRunsResponse, CliError> {
        let mut attempt = 1;
        loop {
            match client.start_runs(req.clone()).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status)
                    if status.code() == tonic::Code::Unavailable && attempt < START_ATTEMPTS =>
                {
                    eprintln!(
                        "starting the runs failed: {}; retrying with the same idempotency key",
                        connect::brief_status(&status)
                    );
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(status) => return Err(self.rpc_err(&status)),
            }
        }
    }

    /// The agent names a `--max-parallel` command rolls through, in name order.
    async fn resolve_agents(
        &self,
        client: &mut Client,
        args: &RunArgs,
    ) -> Result<Vec<String>, CliError> {
        if !args.agents.is_empty() {
            let mut names: Vec<String> = Vec::new();
            for a in &args.agents {
                if !names.contains(a) {
                    names.push(a.clone());
                }
            }
            return Ok(names);
        }
        let agents = self.all_agents(client).await?;
        let mut names: Vec<String> = match &args.selector {
            Some(sel) => {
                let targets = selector_targets(sel)?;
                agents
                    .into_iter()
                    .filter(|a| targets.matches(&a.name, &a.labels.clone().into_iter().collect()))
                    .map(|a| a.name)
                    .collect()
            }
            None => agents.into_iter().map(|a| a.name).collect(),
        };
        if names.is_empty() {
            return Err(CliError::Failed(format!(
                "no agent matches {}; see 'syncfleet agents list' for the agents and their labels",
                args.selector
                    .as_deref()
                    .map_or("--all".to_string(), |s| format!("selector {s:?}"))
            )));
        }
        names.sort();
        Ok(names)
    }

    /// Waits for one thing to happen to the followed runs: an update from the stream, a
    /// periodic re-read, or a re-opened stream.
    async fn pump(
        &self,
        client: &mut Client,
        watch: &mut Watch,
        tracker: &mut Tracker,
    ) -> Result<(), CliError> {
        if let Some(stream) = watch.stream.as_mut() {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(RunUpdate { run: Some(r), .. })) => {
                        watch.last_ok = Instant::now();
                        tracker.update(r);
                    }
                    Ok(Some(RunUpdate { missed, .. })) if missed > 0 => {
                        // Updates were dropped for this watch: read the runs again.
                        watch.last_ok = Instant::now();
                        self.refresh(client, tracker).await?;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => watch.broken("the controller closed the watch stream".into()),
                    Err(status) => {
                        if is_permanent(&status) {
                            return Err(self.rpc_err(&status));
                        }
                        watch.broken(connect::brief_status(&status));
                    }
                },
                () = tokio::time::sleep(REFRESH) => self.refresh(client, tracker).await?,
            }
            return Ok(());
        }
        if watch.last_ok.elapsed() >= WATCH_GIVE_UP {
            return Err(CliError::Failed(format!(
                "lost the watch on the runs for {}s: {}; they continue on their agents — check them with 'syncfleet runs list'",
                WATCH_GIVE_UP.as_secs(),
                watch.cause
            )));
        }
        tokio::time::sleep(watch.backoff).await;
        watch.backoff = (watch.backoff * 2).min(Duration::from_secs(5));
        match client.watch_runs(WatchRunsRequest::default()).await {
            Ok(resp) => {
                watch.stream = Some(resp.into_inner());
                watch.last_ok = Instant::now();
                watch.backoff = Duration::from_millis(500);
                self.refresh(client, tracker).await?;
            }
            Err(status) if is_permanent(&status) => return Err(self.rpc_err(&status)),
            Err(status) => watch.cause = connect::brief_status(&status),
        }
        Ok(())
    }

    /// Reads every unfinished run again; transient errors leave it for the next time.
    async fn refresh(&self, client: &mut Client, tracker: &mut Tracker) -> Result<(), CliError> {
        for id in tracker.unfinished() {
            match client.get_run(GetRunRequest { id }).await {
                Ok(r) => tracker.update(r.into_inner()),
                Err(status) if is_permanent(&status) => return Err(self.rpc_err(&status)),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Output of a fan-out without `--follow`.
    fn print_started(
        &self,
        key: &str,
        runs: &[Run],
        refused: &[RunRefusal],
    ) -> Result<u8, CliError> {
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&fan_out_json(key, runs, refused, None))?;
            }
            OutputFormat::Table => {
                for r in refused {
                    eprintln!("{}: refused: {}", r.agent, r.reason);
                }
                if !runs.is_empty() {
                    let mut t = Table::new(&["AGENT", "RUN", "STATE"]);
                    for r in runs {
                        t.row(vec![
                            r.agent.clone(),
                            r.id.clone(),
                            r.state().label().into(),
                        ]);
                    }
                    out(&t.render())?;
                }
                eprintln!(
                    "started {} run(s){}; repeating this command with --idempotency-key {key} starts nothing new",
                    runs.len(),
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!(", {} agent(s) refused", refused.len())
                    }
                );
            }
        }
        Ok(if refused.is_empty() {
            EXIT_OK
        } else {
            EXIT_FAILED
        })
    }

    /// Output of a followed fan-out, once every run has ended.
    fn print_followed(
        &self,
        key: &str,
        runs: &[Run],
        refused: &[RunRefusal],
    ) -> Result<u8, CliError> {
        let failed: Vec<&Run> = runs
            .iter()
            .filter(|r| r.state() != RunState::Succeeded)
            .collect();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&fan_out_json(key, runs, refused, Some(&failed)))?;
            }
            OutputFormat::Table => out(&followed_table(runs, chrono::Utc::now()))?,
        }
        for r in refused {
            eprintln!("{}: refused: {}", r.agent, r.reason);
        }
        for r in &failed {
            if r.state() == RunState::Held {
                eprintln!("{}: {}", r.agent, held_hint(r));
            } else {
                eprintln!("{}: {}", r.agent, failure_line(r));
            }
        }
        if failed.is_empty() && refused.is_empty() {
            eprintln!("all {} run(s) succeeded", runs.len());
            Ok(EXIT_OK)
        } else {
            eprintln!(
                "{} of {} run(s) did not succeed{}",
                failed.len(),
                runs.len(),
                if refused.is_empty() {
                    String::new()
                } else {
                    format!("; {} agent(s) refused", refused.len())
                }
            );
            Ok(EXIT_FAILED)
        }
    }
}

/// `-l SELECTOR` as schedule targets; an empty or malformed selector is an error.
pub(super) fn selector_targets(sel: &str) -> Result<Targets, CliError> {
    let targets = Targets {
        agents: Vec::new(),
        selector: Some(sel.to_string()),
    };
    match targets.selector_pairs() {
        Ok(p) if !p.is_empty() => Ok(targets),
        Ok(_) => Err(CliError::Failed(
            "the selector is empty; give key=value pairs, e.g. -l env=prod".into(),
        )),
        Err(e) => Err(CliError::Failed(format!(
            "bad selector: {e}; e.g. -l env=prod,site=eu"
        ))),
    }
}

/// "run ID ended STATE (RESULT): MESSAGE" for a run that did not succeed.
fn failure_line(r: &Run) -> String {
    let mut l = format!("run {} ended {}", r.id, r.state().label());
    if !r.result.is_empty() {
        l.push_str(&format!(" ({})", r.result));
    }
    if !r.message.is_empty() {
        l.push_str(&format!(": {}", r.message));
    }
    l
}

/// `-o json` of a fan-out: the key, the runs, the refusals, and (when followed) the runs that
/// did not succeed.
fn fan_out_json(key: &str, runs: &[Run], refused: &[RunRefusal], failed: Option<&[&Run]>) -> Value {
    let mut v = json!({
        "idempotency_key": key,
        "runs": output::runs_json(runs),
        "refused": refused
            .iter()
            .map(|r| json!({"agent": r.agent, "reason": r.reason}))
            .collect::<Vec<_>>(),
    });
    if let Some(failed) = failed {
        v["failed"] = failed
            .iter()
            .map(|r| {
                json!({
                    "agent": r.agent,
                    "run": r.id,
                    "state": r.state().label(),
                    "result": r.result,
                    "message": r.message,
                })
            })
            .collect::<Vec<_>>()
            .into();
    }
    v
}

/// The final table of a followed fan-out.
fn followed_table(runs: &[Run], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut t = Table::new(&["AGENT", "RUN", "STATE", "RESULT", "DURATION"]);
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.agent.cmp(&b.agent));
    for r in sorted {
        t.row(vec![
            r.agent.clone(),
            r.id.clone(),
            r.state().label().to_string(),
            or_dash(&r.result).to_string(),
            elapsed(r.started_at.as_ref(), r.finished_at.as_ref(), now),
        ]);
    }
    t.render()
}

/// The live one-line state of a run: its state, then what its current step does.
pub(super) fn live_brief(r: &Run) -> String {
    let mut l = format!("run {} {}", short_id(&r.id), r.state().label());
    if r.state().is_terminal() {
        if !r.result.is_empty() {
            l.push_str(&format!(" ({})", r.result));
        }
        if !r.message.is_empty() && r.state() != RunState::Succeeded {
            l.push_str(&format!(": {}", r.message));
        }
        return l;
    }
    let total = r.steps.len();
    let done = r
        .steps
        .iter()
        .filter(|s| {
            !matches!(
                s.state(),
                StepState::Waiting | StepState::Unspecified | StepState::Running
            )
        })
        .count();
    let now: Vec<String> = r
        .steps
        .iter()
        .filter(|s| {
            s.state() == StepState::Running
                || (s.state() == StepState::Waiting && !s.detail.is_empty())
        })
        .map(|s| {
            let mut p = format!("step {}/{total} {}: {}", s.index + 1, s.ma, s.profile);
            if s.state() == StepState::Running {
                if !s.progress.is_empty() {
                    p.push_str(&format!(" {}", s.progress));
                }
            } else {
                p.push_str(&format!(" waiting: {}", s.detail));
            }
            p
        })
        .collect();
    if now.is_empty() {
        if total > 0 && r.state() == RunState::Running {
            l.push_str(&format!(" {done}/{total} steps"));
        }
        if !r.message.is_empty() {
            l.push_str(&format!(": {}", r.message));
        }
    } else {
        l.push_str(&format!(" · {}", now.join(" · ")));
    }
    l
}

/// The open watch stream (or why it is not open) of a followed fan-out.
struct Watch {
    stream: Option<tonic::Streaming<RunUpdate>>,
    last_ok: Instant,
    backoff: Duration,
    cause: String,
}

impl Watch {
    async fn open(s: &Session<'_>, client: &mut Client) -> Result<Watch, CliError> {
        let stream = client
            .watch_runs(WatchRunsRequest::default())
            .await
            .map_err(|e| s.rpc_err(&e))?
            .into_inner();
        Ok(Watch {
            stream: Some(stream),
            last_ok: Instant::now(),
            backoff: Duration::from_millis(500),
            cause: String::new(),
        })
    }

    fn broken(&mut self, cause: String) {
        eprintln!("watch interrupted: {cause}; reconnecting");
        self.stream = None;
        self.cause = cause;
    }
}

/// The followed runs and how they are shown while they go on.
struct Tracker {
    runs: Vec<Run>,
    index: HashMap<String, usize>,
    announced: Vec<bool>,
    view: View,
}

enum View {
    /// One live line per agent on a terminal.
    Bars {
        multi: MultiProgress,
        bars: Vec<ProgressBar>,
        width: usize,
    },
    /// Plain progress lines, prefixed with the agent.
    Lines { followers: Vec<Follower> },
}

impl Tracker {
    fn new() -> Tracker {
        let view = if std::io::stderr().is_terminal() {
            View::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Vec::new(),
                width: 8,
            }
        } else {
            View::Lines {
                followers: Vec::new(),
            }
        };
        Tracker {
            runs: Vec::new(),
            index: HashMap::new(),
            announced: Vec::new(),
            view,
        }
    }

    fn in_flight(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| !r.state().is_terminal())
            .count()
    }

    fn unfinished(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| !r.state().is_terminal())
            .map(|r| r.id.clone())
            .collect()
    }

    fn refused(&mut self, refused: &[RunRefusal]) {
        for r in refused {
            let line = format!("{}: refused: {}", r.agent, r.reason);
            match &self.view {
                View::Bars { multi, .. } => {
                    let _ = multi.println(line);
                }
                View::Lines { .. } => progress(&line),
            }
        }
    }

    fn add(&mut self, run: Run) {
        if self.index.contains_key(&run.id) {
            return self.update(run);
        }
        let i = self.runs.len();
        self.index.insert(run.id.clone(), i);
        self.announced.push(false);
        match &mut self.view {
            View::Bars { multi, bars, width } => {
                *width = (*width).max(run.agent.len());
                let bar = multi.add(ProgressBar::new_spinner());
                let style = ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix:<{}}} {{wide_msg}}",
                    *width
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(run.agent.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.push(bar);
            }
            View::Lines { followers } => followers.push(Follower::new()),
        }
        self.runs.push(Run::default());
        self.update(run);
    }

    fn update(&mut self, run: Run) {
        let Some(&i) = self.index.get(&run.id) else {
            return;
        };
        // Snapshots can arrive out of order (stream and re-read): never go back from an end.
        if self.runs[i].state().is_terminal() && !run.state().is_terminal() {
            return;
        }
        match &mut self.view {
            View::Bars { bars, .. } => {
                let brief = live_brief(&run);
                if run.state().is_terminal() {
                    let mark = if run.state() == RunState::Succeeded {
                        "ok"
                    } else {
                        "FAILED"
                    };
                    bars[i].finish_with_message(format!("{brief} [{mark}]"));
                } else {
                    bars[i].set_message(brief);
                }
            }
            View::Lines { followers } => {
                for line in followers[i].observe(&run) {
                    progress(&format!("{}: {line}", run.agent));
                }
                if run.state().is_terminal() && !self.announced[i] {
                    progress(&format!("{}: {}", run.agent, live_brief(&run)));
                }
            }
        }
        if run.state().is_terminal() {
            self.announced[i] = true;
        }
        self.runs[i] = run;
    }

    fn finish(&mut self) {
        if let View::Bars { bars, .. } = &self.view {
            for b in bars {
                if !b.is_finished() {
                    b.finish();
                }
            }
        }
    }
}

/// A plain progress line on stderr, prefixed with the local time.
fn progress(line: &str) {
    eprintln!("[{}] {line}", chrono::Local::now().format("%H:%M:%S"));
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use syncfleet_proto::v1::Step;

    fn step(index: u32, state: StepState, detail: &str) -> Step {
        Step {
            index,
            ma: "AD".into(),
            profile: if index == 0 {
                "Delta Import"
            } else {
                "Delta Sync"
            }
            .into(),
            state: state as i32,
            detail: detail.into(),
            ..Default::default()
        }
    }

    #[test]
    fn live_brief_names_the_current_step_or_the_end() {
        let mut r = Run {
            id: "0190a0b0-0000-7000-8000-000000000001".into(),
            agent: "sync-01".into(),
            state: RunState::Running as i32,
            steps: vec![
                step(0, StepState::Done, ""),
                step(1, StepState::Waiting, "MA AD is running \"Full Sync\""),
            ],
            ..Default::default()
        };
        assert_eq!(
            live_brief(&r),
            "run 0190a0b0 running · step 2/2 AD: Delta Sync waiting: MA AD is running \"Full Sync\""
        );
        r.state = RunState::Failed as i32;
        r.result = "stopped-connectivity".into();
        r.message = "step 2 failed".into();
        assert_eq!(
            live_brief(&r),
            "run 0190a0b0 failed (stopped-connectivity): step 2 failed"
        );
        assert_eq!(
            failure_line(&r),
            "run 0190a0b0-0000-7000-8000-000000000001 ended failed (stopped-connectivity): step 2 failed"
        );
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        use clap::Parser as _;
        let cli = super::super::Cli::try_parse_from(
            std::iter::once("syncfleet").chain(args.iter().copied()),
        )?;
        match cli.command {
            super::super::Command::Run(a) => Ok(a),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn one_agent_keeps_the_single_run_path_and_targets_exclude_each_other() {
        let a = parse(&["run", "sync-01", "--sequence", "delta-cycle"]).unwrap();
        assert_eq!(a.single_agent(), Some("sync-01"));
        // A key or --max-parallel makes even one agent a fan-out (StartRuns has the key).
        let a = parse(&[
            "run",
            "sync-01",
            "--sequence",
            "s",
            "--idempotency-key",
            "k",
        ])
        .unwrap();
        assert_eq!(a.single_agent(), None);
        let a = parse(&["run", "sync-01", "sync-02", "-s", "AD:Delta Import"]).unwrap();
        assert_eq!(a.single_agent(), None);
        assert_eq!(a.request("k").agents, vec!["sync-01", "sync-02"]);
        let a = parse(&[
            "run",
            "-l",
            "env=prod",
            "--sequence",
            "s",
            "--max-parallel",
            "2",
        ])
        .unwrap();
        assert_eq!(a.max_parallel, Some(2));
        assert_eq!(a.request("k").selector, "env=prod");
        for bad in [
            &["run", "sync-01", "-l", "env=prod", "--sequence", "s"][..],
            &["run", "--all", "-l", "env=prod", "--sequence", "s"],
            &["run", "--sequence", "s"],
            &["run", "--all", "--sequence", "s", "--max-parallel", "0"],
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn selectors_must_be_key_value_pairs() {
        assert!(selector_targets("env=prod").is_ok());
        let e = selector_targets("prod").err().unwrap().to_string();
        assert!(e.contains("key=value"), "{e}");
        assert!(selector_targets(" , ").is_err());
    }

    #[test]
    fn fan_out_json_lists_runs_refusals_and_failures() {
        let ok = Run {
            id: "r1".into(),
            agent: "sync-01".into(),
            state: RunState::Succeeded as i32,
            ..Default::default()
        };
        let bad = Run {
            id: "r2".into(),
            agent: "sync-02".into(),
            state: RunState::Failed as i32,
            result: "stopped-connectivity".into(),
            ..Default::default()
        };
        let refused = vec![RunRefusal {
            agent: "sync-03".into(),
            reason: "agent sync-03 is draining".into(),
        }];
        let runs = vec![ok, bad];
        let failed: Vec<&Run> = vec![&runs[1]];
        let v = fan_out_json("k", &runs, &refused, Some(&failed));
        assert_eq!(v["idempotency_key"], "k");
        assert_eq!(v["runs"].as_array().unwrap().len(), 2);
        assert_eq!(v["refused"][0]["agent"], "sync-03");
        assert_eq!(v["failed"][0]["run"], "r2");
        assert_eq!(v["failed"][0]["result"], "stopped-connectivity");
        assert!(
            fan_out_json("k", &runs, &refused, None)
                .get("failed")
                .is_none()
        );
    }
}
