//! `agents list|show|drain|resume|revoke`: the sync servers the controller knows, and taking
//! one out of service (drain: running runs finish, nothing new starts; revoke: its session
//! closes and its certificate is refused from now on).
//!
//! Table output puts the agent (table, block, or its new drain state) on stdout and hints on
//! stderr; `-o json`/`-o yaml` print the agent objects ([`output`] shapes).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use clap::Subcommand;
use syncfleet_proto::v1::{
    Agent, AgentState, DrainAgentRequest, GetAgentRequest, ListAgentsRequest, ListRunsRequest,
    RevokeAgentRequest, Run, RunState, StepState,
};

use super::connect::Client;
use super::output::{self, out};
use super::table::{Table, age, instant, local_time, or_dash, pause_brief, short_id};
use super::{CliError, EXIT_OK, OutputFormat, Session};

/// Agents asked for in one `ListAgents` page (the controller's maximum).
const AGENT_PAGE: u32 = 1000;

/// `agents ...`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List all agents, connected or not
    #[command(visible_alias = "ls")]
    List,
    /// Show one agent with its management agents and run profiles
    Show {
        /// Agent name
        name: String,
    },
    /// Drain an agent: running runs finish, nothing new starts on it
    Drain {
        /// Agent name
        name: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
    /// End a drain: the agent takes runs again
    Resume {
        /// Agent name
        name: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
    /// Revoke an agent: its session closes at once and its certificate, reconnects and
    /// renewals are refused; it can come back only by enrolling with a new token
    Revoke {
        /// Agent name
        name: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
}

impl Session<'_> {
    /// Runs one `agents ...` command.
    pub(super) async fn agents(
        &self,
        client: &mut Client,
        cmd: &AgentsCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            AgentsCommand::List => self.agents_list(client).await,
            AgentsCommand::Show { name } => self.agents_show(client, name).await,
            AgentsCommand::Drain { name, note } => {
                self.agents_drain(client, name, note, true).await
            }
            AgentsCommand::Resume { name, note } => {
                self.agents_drain(client, name, note, false).await
            }
            AgentsCommand::Revoke { name, note } => self.agents_revoke(client, name, note).await,
        }
    }

    /// Every agent, by name: `ListAgents` page after page.
    pub(super) async fn all_agents(&self, client: &mut Client) -> Result<Vec<Agent>, CliError> {
        let mut agents = Vec::new();
        self.agent_pages(client, |page| {
            agents.extend(page);
            Ok(())
        })
        .await?;
        Ok(agents)
    }

    /// Hands each page of `ListAgents` (by name) to `each` as it arrives.
    async fn agent_pages(
        &self,
        client: &mut Client,
        mut each: impl FnMut(Vec<Agent>) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let mut page_token = String::new();
        loop {
            let resp = client
                .list_agents(ListAgentsRequest {
                    page_size: AGENT_PAGE,
                    page_token,
                })
                .await
                .map_err(|e| self.rpc_err(&e))?
                .into_inner();
            let got = resp.agents.len();
            each(resp.agents)?;
            // An empty page with a token would loop forever on a misbehaving server; stop.
            if resp.next_page_token.is_empty() || got == 0 {
                return Ok(());
            }
            page_token = resp.next_page_token;
        }
    }

    /// `agents list`: with `-o json`/`-o yaml` each page is printed as it arrives (one array
    /// in all); the table waits for the last page to size its columns.
    async fn agents_list(&self, client: &mut Client) -> Result<u8, CliError> {
        let running = self.running_runs(client).await?;
        let agent_json = |a: &Agent| {
            let mut v = output::agent_json(a);
            v["running"] = output::runs_json(running.get(&a.name).map_or(&[][..], Vec::as_slice));
            v
        };
        if self.format != OutputFormat::Table {
            let mut array = output::ArrayOut::new(self.format == OutputFormat::Yaml);
            self.agent_pages(client, |page| {
                page.iter().try_for_each(|a| array.push(&agent_json(a)))
            })
            .await?;
            array.finish()?;
            return Ok(EXIT_OK);
        }
        let agents = self.all_agents(client).await?;
        self.print_list(
            &serde_json::Value::Null,
            agents.is_empty(),
            || agents_table(&agents, &running, chrono::Utc::now()),
            &format!(
                "no agents yet; an agent appears once syncfleet-agent has connected to {}",
                self.rc.context.controller
            ),
        )
    }

    /// The runs dispatched to or running on each agent now, by agent.
    async fn running_runs(
        &self,
        client: &mut Client,
    ) -> Result<HashMap<String, Vec<Run>>, CliError> {
        let runs = client
            .list_runs(ListRunsRequest {
                states: vec![RunState::Dispatched as i32, RunState::Running as i32],
                page_size: 1000,
                ..Default::default()
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner()
            .runs;
        let mut by_agent: HashMap<String, Vec<Run>> = HashMap::new();
        for r in runs {
            by_agent.entry(r.agent.clone()).or_default().push(r);
        }
        Ok(by_agent)
    }

    async fn agents_show(&self, client: &mut Client, name: &str) -> Result<u8, CliError> {
        let agent = client
            .get_agent(GetAgentRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::agent_json(&agent))?,
            OutputFormat::Table => out(&agent_details(&agent, chrono::Utc::now()))?,
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn agents_drain(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
        drain: bool,
    ) -> Result<u8, CliError> {
        let req = DrainAgentRequest {
            name: name.to_string(),
            note: note.to_string(),
        };
        let agent = if drain {
            client.drain_agent(req).await
        } else {
            client.resume_agent(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        let hint = drain.then(|| {
            format!(
                "running runs on {} finish; nothing new starts there until 'syncfleet agents resume {}'",
                agent.name, agent.name
            )
        });
        self.print_result(
            &output::agent_json(&agent),
            &format!(
                "agent {}: {}\n",
                agent.name,
                pause_brief(agent.drain.as_ref(), "draining", "not draining")
            ),
            hint.as_deref(),
        )
    }

    pub(super) async fn agents_revoke(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
    ) -> Result<u8, CliError> {
        let agent = client
            .revoke_agent(RevokeAgentRequest {
                name: name.to_string(),
                note: note.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        self.print_result(
            &output::agent_json(&agent),
            &format!("agent {}: revoked\n", agent.name),
            Some(&format!(
                "its session is closed and its certificate refused from now on; it can come back only by enrolling with a new token ('syncfleet tokens create --agent {}')",
                agent.name
            )),
        )
    }
}

fn labels_brief(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn engine_brief(a: &Agent) -> String {
    match &a.engine {
        Some(e) if !e.version.is_empty() && !e.kind.is_empty() => {
            format!("{} ({})", e.version, e.kind)
        }
        Some(e) if !e.kind.is_empty() => e.kind.clone(),
        Some(e) => e.version.clone(),
        None => "-".to_string(),
    }
}

fn agent_state_brief(a: &Agent) -> String {
    let state = a.state();
    if state == AgentState::Connected && !a.agent_problem.is_empty() {
        format!("{} (agent unhealthy)", state.label())
    } else if state == AgentState::Connected && !a.engine_healthy {
        format!("{} (engine down)", state.label())
    } else {
        state.label().to_string()
    }
}

/// `agents list` table: NAME STATE DRAIN ENGINE MAS LAST-SEEN LABELS (DRAIN is `draining` or
/// `-`; RUNNING is what the server runs now, see [`running_brief`]); `-o wide` adds HOSTNAME
/// VERSION IN-FLIGHT (runs in flight).
pub fn agents_table(
    agents: &[Agent],
    running: &HashMap<String, Vec<Run>>,
    now: DateTime<Utc>,
) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "DRAIN",
        "ENGINE",
        "MAS",
        "LAST-SEEN",
        "LABELS",
        "RUNNING",
    ])
    .wide(&["HOSTNAME", "VERSION", "IN-FLIGHT"]);
    for a in agents {
        t.row(vec![
            a.name.clone(),
            agent_state_brief(a),
            if a.drain.as_ref().is_some_and(|d| d.paused) {
                "draining".to_string()
            } else {
                "-".to_string()
            },
            engine_brief(a),
            a.management_agents.len().to_string(),
            age(a.last_seen.as_ref(), now),
            or_dash(&labels_brief(&a.labels)).to_string(),
            running_brief(a, running.get(&a.name).map_or(&[][..], Vec::as_slice)),
            or_dash(&a.hostname).to_string(),
            or_dash(&a.agent_version).to_string(),
            a.runs_in_flight.len().to_string(),
        ]);
    }
    t.render()
}

/// What a server runs now: each syncfleet run with its current step(s), then each run the
/// engine executes that syncfleet did not start; `-` when idle.
pub fn running_brief(a: &Agent, runs: &[Run]) -> String {
    let mut parts: Vec<String> = runs
        .iter()
        .map(|r| {
            let what = if r.sequence.is_empty() {
                "ad-hoc".to_string()
            } else {
                r.sequence.clone()
            };
            let steps: Vec<String> = r
                .steps
                .iter()
                .filter(|s| s.state() == StepState::Running)
                .map(|s| format!("{}: {}", s.ma, s.profile))
                .collect();
            if steps.is_empty() {
                format!("{} {what} ({})", short_id(&r.id), r.state().label())
            } else {
                format!("{} {what} ({})", short_id(&r.id), steps.join(", "))
            }
        })
        .collect();
    parts.extend(
        a.engine_runs
            .iter()
            .map(|e| format!("{}: {} #{} ({})", e.ma, e.profile, e.run_number, e.origin)),
    );
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

/// `agents show`: key/value lines, then each MA with its run profiles and their step types.
/// Whether the agent fires its schedules on its own (no controller reachable), and since when;
/// else its last autonomous period.
pub fn autonomy_brief(a: &Agent, now: DateTime<Utc>) -> String {
    let since = instant(a.autonomous_since.as_ref());
    if a.autonomous && since.is_some() {
        return format!(
            "running autonomously since {} ({}): firing its schedules itself",
            local_time(a.autonomous_since.as_ref()),
            age(a.autonomous_since.as_ref(), now)
        );
    }
    match (since, instant(a.autonomous_until.as_ref())) {
        (Some(_), Some(_)) => format!(
            "not autonomous; last ran autonomously from {} to {}",
            local_time(a.autonomous_since.as_ref()),
            local_time(a.autonomous_until.as_ref())
        ),
        _ if a.autonomy_after_seconds == 0 => "off".to_string(),
        _ => format!(
            "not autonomous (fires its schedules itself after {}s without a controller)",
            a.autonomy_after_seconds
        ),
    }
}

/// The change sources the agent polls, from its last heartbeat: a brief ("2 polled, 1
/// failing") and a line for each failing one with its error, since when and how many polls in a
/// row failed.
fn change_sources_brief(a: &Agent) -> (String, Vec<String>) {
    if a.change_sources.is_empty() {
        return ("none".to_string(), Vec::new());
    }
    let failing: Vec<String> = a
        .change_sources
        .iter()
        .filter(|c| !c.error.is_empty())
        .map(|c| {
            format!(
                "  {}/{} ({} {}): {} (since {}, {} failed polls in a row)",
                c.schedule,
                c.source,
                c.kind,
                c.target,
                c.error,
                local_time(c.error_since.as_ref()),
                c.consecutive_errors
            )
        })
        .collect();
    (
        format!(
            "{} polled, {} failing",
            a.change_sources.len(),
            failing.len()
        ),
        failing,
    )
}

pub fn agent_details(a: &Agent, now: DateTime<Utc>) -> String {
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("name", a.name.clone());
    add(
        "state",
        match instant(a.state_since.as_ref()) {
            Some(_) => format!(
                "{} since {} ({})",
                a.state().label(),
                local_time(a.state_since.as_ref()),
                age(a.state_since.as_ref(), now)
            ),
            None => a.state().label().to_string(),
        },
    );
    add("hostname", or_dash(&a.hostname).to_string());
    add("engine", engine_brief(a));
    add(
        "engine health",
        match (a.engine_healthy, a.engine_detail.is_empty()) {
            (true, _) => "healthy".to_string(),
            (false, true) => "unhealthy".to_string(),
            (false, false) => format!("unhealthy: {}", a.engine_detail),
        },
    );
    add(
        "agent health",
        if a.agent_problem.is_empty() {
            "healthy".to_string()
        } else {
            format!("unhealthy: {}", a.agent_problem)
        },
    );
    add("agent version", or_dash(&a.agent_version).to_string());
    add(
        "last seen",
        match instant(a.last_seen.as_ref()) {
            Some(_) => format!(
                "{} ({})",
                local_time(a.last_seen.as_ref()),
                age(a.last_seen.as_ref(), now)
            ),
            None => "never".to_string(),
        },
    );
    add("labels", or_dash(&labels_brief(&a.labels)).to_string());
    add("drain", pause_brief(a.drain.as_ref(), "draining", "no"));
    add("autonomy", autonomy_brief(a, now));
    add(
        "runs in flight",
        if a.runs_in_flight.is_empty() {
            "none".to_string()
        } else {
            a.runs_in_flight.join(", ")
        },
    );
    let (sources, failing_sources) = change_sources_brief(a);
    add("change sources", sources);
    add("engine runs", {
        let outside = running_brief(a, &[]);
        if outside == "-" {
            "none started outside syncfleet".to_string()
        } else {
            outside
        }
    });
    // The header row of the key/value table is empty; drop it.
    let rendered = kv.render();
    let mut out: String = rendered.lines().skip(1).map(|l| format!("{l}\n")).collect();
    if !failing_sources.is_empty() {
        out.push_str("change sources failing:\n");
        for line in failing_sources {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "management agents ({}):\n",
        a.management_agents.len()
    ));
    for ma in &a.management_agents {
        let mut head = format!("  {}", ma.name);
        let meta: Vec<&str> = [ma.r#type.as_str(), ma.guid.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if !meta.is_empty() {
            head.push_str(&format!("  [{}]", meta.join(" ")));
        }
        out.push_str(&head);
        out.push('\n');
        if ma.run_profiles.is_empty() {
            out.push_str("    (no run profiles)\n");
        }
        for p in &ma.run_profiles {
            if p.step_types.is_empty() {
                out.push_str(&format!("    - {}\n", p.name));
            } else {
                out.push_str(&format!(
                    "    - {}  ({})\n",
                    p.name,
                    p.step_types.join(", ")
                ));
            }
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
    use crate::cli::table::tests::pause;

    #[test]
    fn agents_show_drain_state() {
        let mut a = Agent {
            name: "sync01".into(),
            ..Default::default()
        };
        let text = agents_table(std::slice::from_ref(&a), &HashMap::new(), Utc::now());
        assert!(
            text.starts_with("NAME    STATE        DRAIN  ENGINE"),
            "{text}"
        );
        assert!(agent_details(&a, Utc::now()).contains("drain:           no\n"));
        a.drain = Some(pause("patching"));
        let text = agents_table(std::slice::from_ref(&a), &HashMap::new(), Utc::now());
        assert!(text.contains("  draining  "), "{text}");
        let text = agent_details(&a, Utc::now());
        assert!(
            text.contains("drain:           draining since ")
                && text.contains(" by alice: \"patching\"\n"),
            "{text}"
        );
    }
}
