//! `schedules list|show|pause|resume`: stored schedules with their state, next fire times,
//! recent runs and counters, and pausing one schedule.
//!
//! Table output puts the resulting state on stdout (one line, the table, or the `show` block)
//! and hints (what the change means, how to undo it) on stderr; `-o json`/`-o yaml` print the
//! status objects the controller returned ([`output`] shapes). Times are shown in each
//! schedule's own time zone.

use std::collections::{BTreeMap, HashMap};

use clap::Subcommand;
use syncfleet_proto::v1::{GetScheduleRequest, PauseScheduleRequest, ScheduleStatus};

use super::connect::Client;
use super::output::{self, out};
use super::table::{
    Table, display_zone, duration, instant, or_dash, pause_brief, signed_duration, zone,
    zoned_rfc3339, zoned_time,
};
use super::{CliError, EXIT_OK, OutputFormat, Session, non_blank};
use crate::documents;
use crate::documents::model::{Document, ScheduleDoc, Targets, TriggerDoc};

/// `schedules ...`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// One line per schedule: sequence, paused or active, trigger, targets, next fire time
    #[command(visible_alias = "ls")]
    List,
    /// A schedule's state, next 10 fire times, last 10 runs, counters and saturation
    Show {
        /// Schedule name
        name: String,
    },
    /// Stop a schedule from starting runs (running runs go on)
    Pause {
        /// Schedule name
        name: String,
        /// Why (required; shown to everyone who looks at the schedule)
        #[arg(long, required = true, value_name = "TEXT", value_parser = non_blank)]
        note: String,
    },
    /// Let a paused schedule start runs again
    Resume {
        /// Schedule name
        name: String,
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
}

/// The schedule document carried in a status, if it can be read.
pub fn status_doc(s: &ScheduleStatus) -> Option<ScheduleDoc> {
    match documents::from_json("Schedule", &s.json) {
        Ok(Document::Schedule(d)) => Some(d),
        _ => None,
    }
}

/// `schedule NAME: paused since … by …: "note"` / `schedule NAME: active`.
pub fn schedule_state_line(s: &ScheduleStatus) -> String {
    format!(
        "schedule {}: {}\n",
        s.name,
        pause_brief(s.pause.as_ref(), "paused", "active")
    )
}

impl Session<'_> {
    /// Runs one `schedules ...` command.
    pub(super) async fn schedules(
        &self,
        client: &mut Client,
        cmd: &SchedulesCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            SchedulesCommand::List => self.schedules_list(client).await,
            SchedulesCommand::Show { name } => self.schedules_show(client, name).await,
            SchedulesCommand::Pause { name, note } => {
                self.schedules_pause(client, name, note, true).await
            }
            SchedulesCommand::Resume { name, note } => {
                self.schedules_pause(client, name, note, false).await
            }
        }
    }

    pub(super) async fn schedules_list(&self, client: &mut Client) -> Result<u8, CliError> {
        let docs = self.all_documents(client, "Schedule").await?;
        let mut rows = Vec::new();
        for d in docs {
            let Document::Schedule(doc) = d else { continue };
            match client
                .get_schedule(GetScheduleRequest {
                    name: doc.name.clone(),
                })
                .await
            {
                Ok(s) => rows.push(ScheduleRow {
                    doc,
                    status: s.into_inner(),
                }),
                // Deleted since the list was read.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(self.rpc_err(&status)),
            }
        }
        self.print_list(
            &serde_json::Value::Array(
                rows.iter()
                    .map(|r| output::schedule_status_json(&r.status))
                    .collect(),
            ),
            rows.is_empty(),
            || schedules_table(&rows),
            "no schedules yet; create them with 'syncfleet apply -f FILE|DIR'",
        )
    }

    pub(super) async fn schedules_show(
        &self,
        client: &mut Client,
        name: &str,
    ) -> Result<u8, CliError> {
        let s = client
            .get_schedule(GetScheduleRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => {
                self.data(&output::schedule_status_json(&s))?;
            }
            OutputFormat::Table => out(&schedule_details(&s, status_doc(&s).as_ref()))?,
        }
        Ok(EXIT_OK)
    }

    pub(super) async fn schedules_pause(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
        pause: bool,
    ) -> Result<u8, CliError> {
        let req = PauseScheduleRequest {
            name: name.to_string(),
            note: note.to_string(),
        };
        let s = if pause {
            client.pause_schedule(req).await
        } else {
            client.resume_schedule(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        let hint = if pause {
            Some(format!(
                "running runs go on; no new runs until 'syncfleet schedules resume {}'",
                s.name
            ))
        } else {
            s.next.first().map(|t| {
                let tz = zone(&s.time_zone).unwrap_or(chrono_tz::Tz::UTC);
                format!("next fire time: {}", zoned_rfc3339(Some(t), tz))
            })
        };
        self.print_result(
            &output::schedule_status_json(&s),
            &schedule_state_line(&s),
            hint.as_deref(),
        )
    }
}

/// `every 5m, phase 30s` or `cron "0 2 * * 0" (Europe/Oslo)`.
pub fn trigger_brief(t: &TriggerDoc) -> String {
    let mut parts = Vec::new();
    if !t.cron.is_empty() {
        let crons: Vec<String> = t.cron.iter().map(|c| format!("{c:?}")).collect();
        parts.push(format!("cron {}", crons.join(" | ")));
    }
    if let Some(e) = t.every {
        let mut s = format!("every {}", humantime::format_duration(e));
        if let Some(p) = t.phase.filter(|p| !p.is_zero()) {
            s.push_str(&format!(", phase {}", humantime::format_duration(p)));
        }
        parts.push(s);
    }
    if let Some(c) = &t.on_change {
        let sources: Vec<String> = c
            .sources
            .iter()
            .map(|s| format!("{} ({})", s.name, s.kind()))
            .collect();
        let on = format!(
            "on change of {}, quiet for {}, at most every {}",
            sources.join(", "),
            humantime::format_duration(c.quiet_for()),
            humantime::format_duration(c.min_interval())
        );
        if parts.is_empty() {
            parts.push(on);
        } else {
            // The cron or interval is the fallback.
            parts = vec![format!("{on}; fallback {}", parts.join("; "))];
        }
    }
    let mut out = parts.join("; ");
    if let Some(z) = &t.time_zone {
        out.push_str(&format!(" ({z})"));
    }
    if out.is_empty() { "-".to_string() } else { out }
}

/// `agents sync01, sync02; selector env=prod`.
pub fn targets_brief(t: &Targets) -> String {
    let mut parts = Vec::new();
    if !t.agents.is_empty() {
        parts.push(format!("agents {}", t.agents.join(", ")));
    }
    if let Some(sel) = t.selector.as_deref().filter(|s| !s.trim().is_empty()) {
        parts.push(format!("selector {sel}"));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

/// The schedule counters in a fixed order (the documented ones first, zeros included, then any
/// others sorted): `fired=12 skipped_overlap=1 ...`.
pub fn schedule_counters_brief(counters: &HashMap<String, u64>) -> String {
    const ORDER: [&str; 9] = [
        "fired",
        "skipped_overlap",
        "missed_catchup",
        "buffer_dropped",
        "held",
        "cancelled_other",
        "skipped_blackout",
        "skipped_paused",
        "skipped_drained",
    ];
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|k| counters.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    let others: BTreeMap<_, _> = counters
        .iter()
        .filter(|(k, _)| !ORDER.contains(&k.as_str()))
        .collect();
    parts.extend(others.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// `schedules show`: the warning first (when the schedule is close to saturation), then its
/// fields, pause state, targets, next fire times in its own time zone, recent runs (nominal
/// vs actual start, lateness, duration, outcome; times in the schedule's zone) and counters.
/// `doc` is the schedule document parsed from `s.json` (`None` if it could not be read).
pub fn schedule_details(s: &ScheduleStatus, doc: Option<&ScheduleDoc>) -> String {
    let (tz, tz_label) = display_zone(&s.time_zone);
    let mut out = String::new();
    if !s.warning.is_empty() {
        out.push_str(&format!("WARNING: {}\n", s.warning));
    }
    let mut kv = Table::new(&["", ""]);
    let mut add = |k: &str, v: String| kv.row(vec![format!("{k}:"), v]);
    add("name", s.name.clone());
    if let Some(d) = doc {
        if !d.description.is_empty() {
            add("description", d.description.clone());
        }
        add("sequence", d.sequence.clone());
    }
    add("state", pause_brief(s.pause.as_ref(), "PAUSED", "active"));
    if let Some(d) = doc {
        add("targets", targets_brief(&d.targets));
    }
    add(
        "targeted now",
        if s.targets.is_empty() {
            "no agents".to_string()
        } else {
            s.targets.join(", ")
        },
    );
    add("time zone", tz_label.clone());
    if let Some(d) = doc {
        add("trigger", trigger_brief(&d.trigger));
        for b in &d.blackout {
            add(
                "blackout",
                format!(
                    "{:?} for {}",
                    b.cron,
                    humantime::format_duration(b.duration)
                ),
            );
        }
        add(
            "overlap",
            match d.overlap {
                crate::documents::model::Overlap::Skip => "skip",
                crate::documents::model::Overlap::BufferOne => "buffer_one",
                crate::documents::model::Overlap::CancelOther => "cancel_other",
            }
            .to_string(),
        );
        add(
            "catch-up",
            match d.catchup_window.filter(|w| !w.is_zero()) {
                Some(w) => format!("within {}", humantime::format_duration(w)),
                None => "never".to_string(),
            },
        );
        if let Some(j) = d.jitter.filter(|j| !j.is_zero()) {
            add("jitter", format!("up to {}", humantime::format_duration(j)));
        }
        if let Some(t) = d.start_at {
            add("start at", t.to_rfc3339());
        }
        if let Some(t) = d.end_at {
            add("end at", t.to_rfc3339());
        }
    }
    add(
        "saturation",
        if s.saturation > 0.0 {
            format!(
                "{:.0}% (median run duration / interval)",
                s.saturation * 100.0
            )
        } else {
            "unknown".to_string()
        },
    );
    if let Some(a) = &s.advice {
        add("advice", a.summary.clone());
    }
    add("counters", schedule_counters_brief(&s.counters));
    let rendered = kv.render();
    out.extend(rendered.lines().skip(1).map(|l| format!("{l}\n")));
    if !s.servers.is_empty() {
        out.push_str(&format!(
            "servers (load: p95 run duration / interval, summed over the schedules targeting each; keep it under {}):\n",
            crate::schedule::advice::TARGET
        ));
        let mut t = Table::new(&[
            "SERVER",
            "LOAD",
            "SHORTEST",
            "COMPETES WITH",
            "NOT MEASURED",
        ]);
        for v in &s.servers {
            t.row(vec![
                v.agent.clone(),
                format!("{:.2}", v.load_p95),
                shortest_brief(v.shortest_interval_ms),
                if v.competing.is_empty() {
                    "-".to_string()
                } else {
                    v.competing.join(", ")
                },
                if v.unmeasured.is_empty() {
                    "-".to_string()
                } else {
                    v.unmeasured.join(", ")
                },
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }

    if !s.change_sources.is_empty() {
        out.push_str(&format!(
            "change sources (per agent; times in {tz_label}):\n"
        ));
        let mut t = Table::new(&[
            "AGENT",
            "SOURCE",
            "CURSOR",
            "LAST CHANGE",
            "PENDING",
            "LAST RUN",
            "COALESCED",
            "ERROR",
        ]);
        for v in &s.change_sources {
            let status = v.status.as_ref();
            let cursor = status
                .map(|st| st.cursor.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| v.reported_cursor.clone());
            let last_change = status
                .and_then(|st| st.last_change.as_ref())
                .or(v.last_reported.as_ref());
            let error = match status {
                Some(st) if !st.error.is_empty() => format!(
                    "{} ({} in a row since {})",
                    st.error,
                    st.consecutive_errors,
                    zoned_time(st.error_since.as_ref(), tz)
                ),
                Some(_) => "-".to_string(),
                None => "not reported by the agent yet".to_string(),
            };
            t.row(vec![
                v.agent.clone(),
                v.source.clone(),
                or_dash(&cursor).to_string(),
                zoned_time(last_change, tz),
                v.pending_changes.to_string(),
                if v.last_run_id.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{} at {}",
                        v.last_run_id,
                        zoned_time(v.last_run_at.as_ref(), tz)
                    )
                },
                if v.last_run_id.is_empty() {
                    "-".to_string()
                } else {
                    v.last_run_changes.to_string()
                },
                error,
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out.push_str(&format!("next fire times ({tz_label}):\n"));
    if s.next.is_empty() {
        out.push_str("  none\n");
    }
    for t in &s.next {
        out.push_str(&format!("  {}\n", zoned_rfc3339(Some(t), tz)));
    }
    out.push_str(&format!(
        "recent runs ({}, newest first, times in {tz_label}):\n",
        s.recent.len()
    ));
    if s.recent.is_empty() {
        out.push_str("  none yet\n");
    } else {
        let mut t = Table::new(&[
            "RUN", "AGENT", "ORIGIN", "NOMINAL", "STARTED", "LATE", "DURATION", "STATE", "RESULT",
        ]);
        for r in &s.recent {
            let started = instant(r.started_at.as_ref()).is_some();
            t.row(vec![
                r.run_id.clone(),
                r.agent.clone(),
                if r.coalesced_changes > 0 {
                    format!("{} ({} changes)", r.origin, r.coalesced_changes)
                } else {
                    or_dash(&r.origin).to_string()
                },
                zoned_time(r.nominal_time.as_ref(), tz),
                zoned_time(r.started_at.as_ref(), tz),
                if started {
                    signed_duration(r.lateness_ms)
                } else {
                    "-".to_string()
                },
                if r.duration_ms > 0 {
                    duration(chrono::TimeDelta::milliseconds(r.duration_ms))
                } else if started && !r.state().is_terminal() {
                    "running".to_string()
                } else {
                    "-".to_string()
                },
                r.state().label().to_string(),
                or_dash(super::output::run_result(r.state(), &r.result)).to_string(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out
}

/// A shortest interval for a table cell: `1m38s`, or `-` when there is none.
fn shortest_brief(ms: i64) -> String {
    if ms > 0 {
        duration(chrono::TimeDelta::milliseconds(ms))
    } else {
        "-".to_string()
    }
}

/// The `MIN INTERVAL` cell of `schedules list`: the shortest advised interval over the
/// schedule's servers (the schedule's own when it targets none), or how many runs are missing.
fn min_interval_cell(s: &ScheduleStatus) -> String {
    let Some(a) = &s.advice else {
        return "-".to_string();
    };
    if a.runs_measured < a.runs_needed {
        return format!("needs {} runs", a.runs_needed - a.runs_measured);
    }
    if s.servers.is_empty() {
        return shortest_brief(a.shortest_interval_ms);
    }
    // The busiest server sets the limit; on a server the others already saturate there is none.
    match s.servers.iter().map(|v| v.shortest_interval_ms).max() {
        Some(ms) if s.servers.iter().all(|v| v.shortest_interval_ms > 0) => shortest_brief(ms),
        _ => "none (server full)".to_string(),
    }
}

/// One `schedules list` row's worth of data.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    /// The stored schedule document.
    pub doc: ScheduleDoc,
    /// Its status from `GetSchedule`.
    pub status: ScheduleStatus,
}

/// `schedules list` table: NAME SEQUENCE STATE TRIGGER TARGETS NEXT MIN INTERVAL (`paused` or
/// `active`; the next fire time in the schedule's zone, RFC 3339 with offset; the shortest
/// advised interval, see [`min_interval_cell`]).
pub fn schedules_table(rows: &[ScheduleRow]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "SEQUENCE",
        "STATE",
        "TRIGGER",
        "TARGETS",
        "NEXT",
        "MIN INTERVAL",
    ]);
    for r in rows {
        let s = &r.status;
        let state = if s.pause.as_ref().is_some_and(|p| p.paused) {
            "paused"
        } else {
            "active"
        };
        let next = s.next.first().map_or_else(
            || "-".to_string(),
            |t| zoned_rfc3339(Some(t), display_zone(&s.time_zone).0),
        );
        t.row(vec![
            r.doc.name.clone(),
            r.doc.sequence.clone(),
            state.to_string(),
            trigger_brief(&r.doc.trigger),
            targets_brief(&r.doc.targets),
            next,
            min_interval_cell(s),
        ]);
    }
    t.render()
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
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::RunState;

    fn status() -> ScheduleStatus {
        let mut s = ScheduleStatus {
            name: "delta-every-5m".into(),
            json: r#"{"kind":"Schedule","name":"delta-every-5m","sequence":"delta-cycle","targets":{"selector":"env=prod"},"trigger":{"every":"5m","phase":"30s"},"overlap":"buffer_one","catchup_window":"10m","jitter":"10s","blackout":[{"cron":"0 22 * * 6","duration":"4h"}]}"#.into(),
            pause: Some(pause("AD maintenance")),
            time_zone: "Europe/Oslo".into(),
            // 2024-01-15T09:00:30Z, 09:05:30Z
            next: vec![from_millis(1_705_309_230_000), from_millis(1_705_309_530_000)],
            recent: vec![syncfleet_proto::v1::ScheduleRunSummary {
                run_id: "r1".into(),
                agent: "sync01".into(),
                nominal_time: Some(from_millis(1_705_308_630_000)),
                started_at: Some(from_millis(1_705_308_641_500)),
                lateness_ms: 11_500,
                duration_ms: 243_000,
                state: RunState::Succeeded as i32,
                result: "success".into(),
                origin: "schedule".into(),
                coalesced_changes: 0,
            }],
            saturation: 0.85,
            warning: "runs take 85% of the 5m interval; expect skipped fire times".into(),
            targets: vec!["sync01".into(), "sync02".into()],
            ..Default::default()
        };
        s.counters.insert("skipped_overlap".into(), 3);
        s.counters.insert("fired".into(), 120);
        s.counters.insert("zz_custom".into(), 1);
        s
    }

    #[test]
    fn schedule_details_show_state_zone_times_runs_and_warning() {
        let s = status();
        let doc = match crate::documents::from_json("Schedule", &s.json).unwrap() {
            crate::documents::model::Document::Schedule(d) => d,
            _ => panic!("not a schedule"),
        };
        let text = schedule_details(&s, Some(&doc));
        assert!(
            text.starts_with(
                "WARNING: runs take 85% of the 5m interval; expect skipped fire times\n"
            ),
            "{text}"
        );
        for want in [
            "name:          delta-every-5m\n",
            "sequence:      delta-cycle\n",
            " by alice: \"AD maintenance\"\n",
            "targets:       selector env=prod\n",
            "targeted now:  sync01, sync02\n",
            "time zone:     Europe/Oslo\n",
            "trigger:       every 5m, phase 30s\n",
            "blackout:      \"0 22 * * 6\" for 4h\n",
            "overlap:       buffer_one\n",
            "catch-up:      within 10m\n",
            "jitter:        up to 10s\n",
            "saturation:    85% (median run duration / interval)\n",
            "counters:      fired=120 skipped_overlap=3 zz_custom=1\n",
            "next fire times (Europe/Oslo):\n  2024-01-15T10:00:30+01:00\n  2024-01-15T10:05:30+01:00\n",
            "recent runs (1, newest first, times in Europe/Oslo):\n",
            "r1   sync01  schedule  2024-01-15 09:50:30  2024-01-15 09:50:41  11s   4m03s     succeeded  success\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.contains("state:         PAUSED since "), "{text}");
        // Without a readable document the status still shows.
        let text = schedule_details(&s, None);
        assert!(text.contains("state:         PAUSED"), "{text}");
        assert!(!text.contains("trigger:"), "{text}");
    }

    #[test]
    fn schedules_table_has_one_line_per_schedule() {
        let s = status();
        let doc = match crate::documents::from_json("Schedule", &s.json).unwrap() {
            crate::documents::model::Document::Schedule(d) => d,
            _ => panic!("not a schedule"),
        };
        let mut active = s.clone();
        active.pause = None;
        active.next.clear();
        let mut doc2 = doc.clone();
        doc2.name = "nightly".into();
        doc2.targets.agents = vec!["sync01".into()];
        doc2.targets.selector = None;
        doc2.trigger = crate::documents::model::TriggerDoc {
            cron: vec!["0 2 * * *".into()],
            time_zone: Some("Europe/Oslo".into()),
            ..Default::default()
        };
        let mut s = s;
        s.advice = Some(syncfleet_proto::v1::IntervalAdvice {
            runs_measured: 3,
            runs_needed: 5,
            ..Default::default()
        });
        let text = schedules_table(&[
            ScheduleRow { doc, status: s },
            ScheduleRow {
                doc: doc2,
                status: active,
            },
        ]);
        assert_eq!(
            text,
            "NAME            SEQUENCE     STATE   TRIGGER                         TARGETS            NEXT                       MIN INTERVAL\n\
             delta-every-5m  delta-cycle  paused  every 5m, phase 30s             selector env=prod  2024-01-15T10:00:30+01:00  needs 2 runs\n\
             nightly         delta-cycle  active  cron \"0 2 * * *\" (Europe/Oslo)  agents sync01      -                          -\n"
        );
    }

    #[test]
    fn advice_and_servers_are_shown_and_the_busiest_server_sets_the_min_interval() {
        let mut s = status();
        s.advice = Some(syncfleet_proto::v1::IntervalAdvice {
            runs_measured: 20,
            runs_needed: 5,
            shortest_interval_ms: 98_000,
            summary: "p95 run duration 1m18s over 20 runs".into(),
            ..Default::default()
        });
        s.servers = vec![
            syncfleet_proto::v1::ServerAdvice {
                agent: "sync01".into(),
                load_p95: 0.625,
                competing: vec!["full".into(), "nightly".into()],
                unmeasured: vec!["nightly".into()],
                shortest_interval_ms: 156_000,
                summary: String::new(),
            },
            syncfleet_proto::v1::ServerAdvice {
                agent: "sync02".into(),
                load_p95: 0.3,
                shortest_interval_ms: 98_000,
                ..Default::default()
            },
        ];
        let text = schedule_details(&s, status_doc(&s).as_ref());
        for want in [
            "advice:        p95 run duration 1m18s over 20 runs\n",
            "  SERVER  LOAD  SHORTEST  COMPETES WITH  NOT MEASURED\n",
            "  sync01  0.62  2m36s     full, nightly  nightly\n",
            "  sync02  0.30  1m38s     -              -\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(min_interval_cell(&s), "2m36s");
        s.servers[0].shortest_interval_ms = 0;
        assert_eq!(min_interval_cell(&s), "none (server full)");
    }
}
