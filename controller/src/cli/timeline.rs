//! `timeline`: per server, the steps of the runs since a time as bars on one time axis, so that
//! "are my runs overlapping?" is answered at a glance.
//!
//! Data: `ListRuns{since}` (every page, at most [`MAX_RUNS`] runs) and `ListAgents` (labels for
//! `-l`, and each MA's run profiles with their step types, which say whether a step
//! synchronizes). One row per run; a cell is one slice of the axis, drawn with the kind of the
//! step running then ([`Kind`]), or `.` while a step waited for something in its way (the
//! reason reported by the agent). Under each server an `overlap` row marks the slices where
//! steps of different runs ran at once (`^`) and where two synchronizations did (`!`, which the
//! agent's sync gate should never allow). On a terminal (unless `NO_COLOR` is set) these are
//! coloured too. `-o json` gives the same facts: per server its runs
//! with their steps (kind, times, wait) and the overlaps as intervals.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use syncfleet_proto::time::to_millis;
use syncfleet_proto::v1::{ListRunsRequest, Run, Step};

use super::access::{Since, parse_since};
use super::connect::Client;
use super::output::out;
use super::table::{duration, short_id};
use super::{CliError, EXIT_OK, OutputFormat, Session};
pub use crate::views::timeline::{
    Bar, Kind, MAX_RUNS, Overlap, bars_of, kind_of, overlaps, place, timeline_json,
};

/// `timeline [--since 6h] [-l SELECTOR] [--width N]`
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// From when: a duration before now (6h, 30m, 2d) or an RFC 3339 time
    #[arg(long, value_name = "DURATION|TIME", default_value = "6h", value_parser = parse_since)]
    pub since: Since,
    /// Only servers whose labels match, e.g. env=prod,site=eu
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Columns of the time axis [default: the terminal's width (COLUMNS) less the labels, at
    /// least 40]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(20..=1000))]
    pub width: Option<u16>,
}

/// A run's row: a glyph per column for the steps (waits as `.`), blank elsewhere.
fn row(bars: &[&Bar], axis: &Axis) -> String {
    let mut cells = vec![' '; axis.width];
    for b in bars {
        if let Some(w) = b.wait_from {
            for c in axis.span(w, b.start) {
                if cells[c] == ' ' {
                    cells[c] = '.';
                }
            }
        }
    }
    for b in bars {
        for c in axis.span(b.start, b.end) {
            cells[c] = b.kind.glyph();
        }
    }
    cells.into_iter().collect::<String>().trim_end().to_string()
}

/// The overlap row of a server.
fn overlap_row(found: &[Overlap], axis: &Axis) -> String {
    let mut cells = vec![' '; axis.width];
    for o in found {
        for c in axis.span(o.from, o.to) {
            if o.synchronizations {
                cells[c] = '!';
            } else if cells[c] == ' ' {
                cells[c] = '^';
            }
        }
    }
    cells.into_iter().collect::<String>().trim_end().to_string()
}

/// The time axis: `width` columns from `from` to `to`.
struct Axis {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    width: usize,
}

impl Axis {
    fn column(&self, t: DateTime<Utc>) -> usize {
        let total = (self.to - self.from).num_milliseconds().max(1);
        let at = (t - self.from).num_milliseconds().clamp(0, total);
        let w = i64::try_from(self.width).unwrap_or(i64::MAX);
        usize::try_from((at * w / total).min(w - 1)).unwrap_or(0)
    }

    /// The columns covered by `[a, b]`: at least one, so a short step stays visible.
    fn span(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> std::ops::RangeInclusive<usize> {
        let (x, y) = (self.column(a), self.column(b.max(a)));
        x..=y.max(x)
    }
}

impl Session<'_> {
    pub(super) async fn timeline(
        &self,
        client: &mut Client,
        args: &TimelineArgs,
    ) -> Result<u8, CliError> {
        let now = Utc::now();
        let since = args.since.resolve(now);
        let agents = self.all_agents(client).await?;
        let targets = match &args.selector {
            Some(sel) => Some(super::run::selector_targets(sel)?),
            None => None,
        };
        let chosen = |name: &str| -> bool {
            targets.as_ref().is_none_or(|t| {
                agents
                    .iter()
                    .find(|a| a.name == name)
                    .is_some_and(|a| t.matches(&a.name, &a.labels.clone().into_iter().collect()))
            })
        };
        let mut runs: Vec<Run> = Vec::new();
        let mut page_token = String::new();
        let mut truncated = false;
        loop {
            let resp = client
                .list_runs(ListRunsRequest {
                    since: Some(syncfleet_proto::time::to_proto(since)),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.rpc_err(&e))?
                .into_inner();
            let got = resp.runs.len();
            runs.extend(resp.runs.into_iter().filter(|r| chosen(&r.agent)));
            if runs.len() >= MAX_RUNS {
                runs.truncate(MAX_RUNS);
                truncated = !resp.next_page_token.is_empty();
                break;
            }
            if resp.next_page_token.is_empty() || got == 0 {
                break;
            }
            page_token = resp.next_page_token;
        }
        if truncated {
            eprintln!("note: only the newest {MAX_RUNS} runs are shown; use a shorter --since");
        }
        let placed = place(&agents, &runs, now);
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&timeline_json(since, now, &placed))?;
            }
            OutputFormat::Table => {
                let width = usize::from(args.width.unwrap_or_else(|| {
                    std::env::var("COLUMNS")
                        .ok()
                        .and_then(|c| c.trim().parse::<u16>().ok())
                        .map_or(80, |c| c.saturating_sub(LABEL + 1).max(40))
                }));
                let color = std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
                match render(&placed, now, width, color) {
                    Some(text) => out(&text)?,
                    None => eprintln!(
                        "no steps ran since {}",
                        since
                            .with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S")
                    ),
                }
            }
        }
        Ok(EXIT_OK)
    }
}

/// Width of the row labels (`  0190a0b0 delta-cycle `).
const LABEL: u16 = 24;

/// The timeline as text; `None` when no step started in the window.
pub fn render(
    placed: &BTreeMap<String, Vec<(&Run, Vec<Bar>)>>,
    now: DateTime<Utc>,
    width: usize,
    color: bool,
) -> Option<String> {
    let all: Vec<&Bar> = placed
        .values()
        .flat_map(|runs| runs.iter().flat_map(|(_, b)| b.iter()))
        .collect();
    let from = all.iter().map(|b| b.wait_from.unwrap_or(b.start)).min()?;
    let to = all
        .iter()
        .map(|b| b.end)
        .max()
        .unwrap_or(now)
        .max(from + TimeDelta::seconds(1));
    let axis = Axis { from, to, width };
    let label = usize::from(LABEL);
    let local = |t: DateTime<Utc>| {
        t.with_timezone(&chrono::Local)
            .format("%H:%M:%S")
            .to_string()
    };
    let mut text = String::new();
    let head_from = local(from);
    let head_to = local(to);
    let gap = width.saturating_sub(head_from.len() + head_to.len()).max(1);
    text.push_str(&format!(
        "{:label$}{head_from}{}{head_to}  ({} per column)\n",
        "",
        " ".repeat(gap),
        duration((to - from) / i32::try_from(width).unwrap_or(i32::MAX).max(1))
    ));
    let mut waits: Vec<String> = Vec::new();
    for (agent, runs) in placed {
        if runs.is_empty() {
            continue;
        }
        text.push_str(&format!("{agent}\n"));
        let mut bars: Vec<Bar> = Vec::new();
        for (run, b) in runs {
            let name = if run.sequence.is_empty() {
                "ad-hoc"
            } else {
                run.sequence.as_str()
            };
            let mut tag = format!("  {} {name}", short_id(&run.id));
            tag.truncate(label - 1);
            let refs: Vec<&Bar> = b.iter().collect();
            text.push_str(&format!(
                "{tag:label$}{}\n",
                paint(&row(&refs, &axis), color)
            ));
            bars.extend(b.iter().cloned());
            for s in &run.steps {
                if let Some(w) = wait_note(run, s) {
                    waits.push(format!("  {agent} {} {w}", short_id(&run.id)));
                }
            }
        }
        let found = overlaps(&bars);
        let o = overlap_row(&found, &axis);
        if !o.is_empty() {
            text.push_str(&format!("{:label$}{}\n", "  overlap", paint(&o, color)));
        }
    }
    text.push_str(
        "legend: = import  # synchronization  > export  - other step  . waiting  \
         ^ steps of different runs at once  ! two synchronizations at once\n",
    );
    if !waits.is_empty() {
        text.push_str("waits:\n");
        for w in waits {
            text.push_str(&format!("{w}\n"));
        }
    }
    Some(text)
}

/// A row with its highlights as ANSI colours (for a terminal): synchronizations bold, waits
/// dim, overlaps yellow, two synchronizations at once red. Unchanged when `color` is false.
fn paint(row: &str, color: bool) -> String {
    if !color {
        return row.to_string();
    }
    let mut out = String::new();
    for c in row.chars() {
        let code = match c {
            '#' => Some("1"),
            '.' => Some("2"),
            '^' => Some("33;1"),
            '!' => Some("31;1;7"),
            _ => None,
        };
        match code {
            Some(code) => out.push_str(&format!("\x1b[{code}m{c}\x1b[0m")),
            None => out.push(c),
        }
    }
    out
}

/// "step 2 AD: Delta Sync waited 12s: REASON" for a step that reported a wait. A step that never
/// started in a run that has ended (cancelled, failed elsewhere) waited until the run's end.
fn wait_note(run: &Run, s: &Step) -> Option<String> {
    if s.waiting_since.is_none() || s.wait_reason.is_empty() {
        return None;
    }
    let how_long = if s.started_at.is_some() {
        format!(
            "waited {}",
            duration(TimeDelta::milliseconds(
                i64::try_from(s.waited_ms).unwrap_or(i64::MAX)
            ))
        )
    } else if let (Some(since), Some(end)) = (&s.waiting_since, &run.finished_at) {
        format!(
            "waited {} until the run ended ({})",
            duration(TimeDelta::milliseconds(
                (to_millis(end) - to_millis(since)).max(0)
            )),
            run.state().label()
        )
    } else {
        "is waiting".to_string()
    };
    Some(format!(
        "step {} {}: {} {how_long}: {}",
        s.index + 1,
        s.ma,
        s.profile,
        s.wait_reason
    ))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use syncfleet_proto::time::to_proto;
    use syncfleet_proto::v1::{Agent, ManagementAgent, RunProfile, RunState, StepState};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn step(index: u32, ma: &str, profile: &str, from: i64, to: i64) -> Step {
        Step {
            index,
            ma: ma.into(),
            profile: profile.into(),
            state: StepState::Done as i32,
            started_at: Some(to_proto(t(from))),
            finished_at: Some(to_proto(t(to))),
            ..Default::default()
        }
    }

    fn agent() -> Agent {
        let p = |name: &str, ty: &str| RunProfile {
            name: name.into(),
            step_types: vec![ty.into()],
        };
        Agent {
            name: "sync-01".into(),
            management_agents: vec![ManagementAgent {
                name: "AD".into(),
                run_profiles: vec![
                    p("Delta Import", "delta-import"),
                    p("Delta Sync", "apply-rules"),
                    p("Export", "export"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn kinds_come_from_the_step_types() {
        let a = agent();
        assert_eq!(kind_of(Some(&a), "AD", "Delta Import"), Kind::Import);
        assert_eq!(kind_of(Some(&a), "AD", "Delta Sync"), Kind::Sync);
        assert_eq!(kind_of(Some(&a), "AD", "Export"), Kind::Export);
        // Unknown to the inventory: by name.
        assert_eq!(kind_of(None, "HR", "Full Sync"), Kind::Sync);
        assert_eq!(kind_of(None, "HR", "Purge"), Kind::Other);
    }

    #[test]
    fn overlaps_pair_steps_of_different_runs_and_flag_two_syncs() {
        let a = agent();
        let r1 = Run {
            id: "run-one".into(),
            agent: "sync-01".into(),
            steps: vec![
                step(0, "AD", "Delta Import", 0, 10),
                step(1, "AD", "Delta Sync", 10, 30),
            ],
            ..Default::default()
        };
        let r2 = Run {
            id: "run-two".into(),
            agent: "sync-01".into(),
            steps: vec![step(0, "AD", "Delta Sync", 20, 40)],
            ..Default::default()
        };
        let mut bars = bars_of(&r1, Some(&a), t(100));
        bars.extend(bars_of(&r2, Some(&a), t(100)));
        let found = overlaps(&bars);
        assert_eq!(
            found,
            vec![Overlap {
                from: t(20),
                to: t(30),
                runs: ("run-one".into(), "run-two".into()),
                synchronizations: true,
            }]
        );
        // Steps of one run never count as an overlap.
        assert!(overlaps(&bars_of(&r1, Some(&a), t(100))).is_empty());
    }

    #[test]
    fn a_wait_cut_short_by_the_run_ending_says_so() {
        let mut waiting = step(2, "MIM Service", "Full Import", 0, 0);
        waiting.started_at = None;
        waiting.finished_at = None;
        waiting.state = StepState::NotRun as i32;
        waiting.waiting_since = Some(to_proto(t(10)));
        waiting.wait_reason = "a synchronization runs alone".into();
        let mut run = Run {
            id: "cccccccc-3".into(),
            agent: "sync-01".into(),
            steps: vec![waiting.clone()],
            state: RunState::Running as i32,
            ..Default::default()
        };
        assert_eq!(
            wait_note(&run, &waiting).unwrap(),
            "step 3 MIM Service: Full Import is waiting: a synchronization runs alone"
        );
        run.state = RunState::Cancelled as i32;
        run.finished_at = Some(to_proto(t(13)));
        assert_eq!(
            wait_note(&run, &waiting).unwrap(),
            "step 3 MIM Service: Full Import waited 3s until the run ended (cancelled): a synchronization runs alone"
        );
    }

    #[test]
    fn render_draws_bars_waits_overlaps_and_a_legend() {
        let a = agent();
        let r1 = Run {
            id: "aaaaaaaa-1".into(),
            agent: "sync-01".into(),
            sequence: "delta-cycle".into(),
            steps: vec![
                step(0, "AD", "Delta Import", 0, 10),
                step(1, "AD", "Delta Sync", 10, 20),
            ],
            ..Default::default()
        };
        let mut waiting = step(0, "AD", "Export", 18, 40);
        waiting.waiting_since = Some(to_proto(t(10)));
        waiting.wait_reason = "MA AD is running \"Delta Sync\"".into();
        waiting.waited_ms = 8_000;
        let r2 = Run {
            id: "bbbbbbbb-2".into(),
            agent: "sync-01".into(),
            steps: vec![waiting],
            ..Default::default()
        };
        let placed: BTreeMap<String, Vec<(&Run, Vec<Bar>)>> = [(
            "sync-01".to_string(),
            vec![
                (&r1, bars_of(&r1, Some(&a), t(100))),
                (&r2, bars_of(&r2, Some(&a), t(100))),
            ],
        )]
        .into_iter()
        .collect();
        let text = render(&placed, t(100), 40, false).unwrap();
        let colored = render(&placed, t(100), 40, true).unwrap();
        assert!(colored.contains("\x1b[1m#\x1b[0m"), "{colored:?}");
        assert!(colored.contains("\x1b[33;1m^\x1b[0m"), "{colored:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "sync-01");
        assert_eq!(
            lines[2],
            format!(
                "{:24}{}{}",
                "  aaaaaaaa delta-cycle",
                "=".repeat(10),
                "#".repeat(11)
            )
        );
        assert_eq!(
            lines[3],
            format!(
                "{:24}{}{}{}",
                "  bbbbbbbb ad-hoc",
                " ".repeat(10),
                ".".repeat(8),
                ">".repeat(22)
            )
        );
        // The export started 2 s before the sync of the other run ended.
        assert_eq!(lines[4], format!("{:24}{}^^^", "  overlap", " ".repeat(18)));
        assert!(
            lines[5].starts_with("legend: = import  # synchronization"),
            "{text}"
        );
        assert!(
            text.contains(
                "  sync-01 bbbbbbbb step 1 AD: Export waited 8s: MA AD is running \"Delta Sync\""
            ),
            "{text}"
        );
        let v = timeline_json(t(0), t(100), &placed);
        let server = &v["servers"][0];
        assert_eq!(server["agent"], "sync-01");
        assert_eq!(server["runs"][0]["steps"][1]["kind"], "sync");
        assert_eq!(server["runs"][1]["steps"][0]["waited_ms"], 8_000);
        assert_eq!(server["overlaps"].as_array().unwrap().len(), 1);
        assert_eq!(server["overlaps"][0]["synchronizations"], false);
    }
}
