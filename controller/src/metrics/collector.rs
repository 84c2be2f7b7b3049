//! The Prometheus encoding of every family: the run aggregates, and the fleet-shaped gauges
//! (agents, schedules, pending exports) read at scrape time.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use syncfleet_proto::v1;

use super::aggregates::{
    Aggregates, Hist, LATENESS_BUCKETS, RUN_DURATION_BUCKETS, STEP_DURATION_BUCKETS,
};
use super::lock;
use crate::fleet::{Fleet, Housekeeping};
use crate::schedule::scheduler::counters;

// -------------------------------------------------------------------------------------------
// Fleet gauges (read at scrape time)

#[derive(Debug, Default, Clone)]
pub(super) struct AgentRow {
    pub(super) name: String,
    pub(super) state: &'static str,
    pub(super) engine_healthy: Option<bool>,
}

#[derive(Debug, Default, Clone)]
pub(super) struct ScheduleRow {
    pub(super) name: String,
    pub(super) counters: Vec<(String, u64)>,
    pub(super) saturation: f64,
    pub(super) paused_by: Option<&'static str>,
    /// The schedule has `trigger.on_change`.
    pub(super) on_change: bool,
}

#[derive(Debug, Default, Clone)]
pub(super) struct FleetGauges {
    pub(super) agents: Vec<AgentRow>,
    pub(super) schedules: Vec<ScheduleRow>,
    /// `(notifier, outcome, count)` of `syncfleet_notifications_total`.
    pub(super) notifications: Vec<(String, &'static str, u64)>,
}

/// The `reason` label of a schedule counter that counts fire times not run.
pub(super) fn skip_reason(counter: &str) -> Option<&str> {
    match counter {
        "missed_catchup" | "buffer_dropped" => Some(counter),
        c => c.strip_prefix("skipped_"),
    }
}

/// The schedule counters that count fire times not run, reported for every schedule from 0.
pub(super) const SKIP_COUNTERS: &[&str] = &[
    counters::SKIPPED_OVERLAP,
    counters::MISSED_CATCHUP,
    counters::BUFFER_DROPPED,
    counters::SKIPPED_PAUSED,
    counters::SKIPPED_DRAINED,
    counters::SKIPPED_NO_TARGET,
];

/// `syncfleet_schedule_skipped_total` of one schedule: every known reason (0 until it
/// happens, so the first skip is not lost to `increase()`), then any other skip counter stored.
pub(super) fn skip_rows(s: &ScheduleRow) -> Vec<(&str, u64)> {
    let value = |name: &str| {
        s.counters
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    };
    let mut rows: Vec<(&str, u64)> = SKIP_COUNTERS
        .iter()
        .filter_map(|c| skip_reason(c).map(|r| (r, value(c))))
        .collect();
    for (k, v) in &s.counters {
        if !SKIP_COUNTERS.contains(&k.as_str())
            && let Some(r) = skip_reason(k)
        {
            rows.push((r, *v));
        }
    }
    rows
}

// The collector

pub(super) struct Inner {
    pub(super) fleet: Arc<Fleet>,
    pub(super) runs: std::sync::Mutex<Aggregates>,
    pub(super) gauges: std::sync::Mutex<FleetGauges>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("metrics").finish_non_exhaustive()
    }
}

pub(super) type Fmt = Result<(), std::fmt::Error>;

pub(super) fn counter_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(super) fn gauge_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, f64)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(super) fn histogram_family<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    rows: impl Iterator<Item = (L, &'a Hist)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let mut fam = m.encode_family(&labels)?;
        fam.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets(bounds),
            None,
        )?;
    }
    Ok(())
}

/// A label set that starts with `agent` when `agent` is given (per-agent detail).
fn with_agent<'a>(
    agent: Option<&'a str>,
    rest: &[(&'static str, &'a str)],
) -> Vec<(&'static str, &'a str)> {
    agent
        .map(|a| ("agent", a))
        .into_iter()
        .chain(rest.iter().copied())
        .collect()
}

/// The run-derived families. Without per-agent detail the fleet-wide families have no
/// `agent` label (their keys hold an empty agent).
pub(super) fn encode_runs(a: &Aggregates, enc: &mut DescriptorEncoder) -> Fmt {
    counter_family(
        enc,
        "syncfleet_runs",
        "Runs that ended, by sequence (empty for ad-hoc runs) and end state (and agent with \
         metrics.per_agent_detail).",
        a.runs.iter().map(|((agent, seq, state), v)| {
            (
                with_agent(
                    a.detail.then_some(agent.as_str()),
                    &[("sequence", seq.as_str()), ("result", *state)],
                ),
                *v,
            )
        }),
    )?;
    counter_family(
        enc,
        "syncfleet_agent_runs",
        "Runs that ended, by agent and end state.",
        a.agent_runs
            .iter()
            .map(|((agent, state), v)| ([("agent", agent.as_str()), ("result", *state)], *v)),
    )?;
    counter_family(
        enc,
        "syncfleet_autonomous_runs",
        "Runs that ended and that an agent started on its own while no controller was \
         reachable (origin autonomous), by agent.",
        a.autonomous
            .iter()
            .map(|(agent, v)| ([("agent", agent.as_str())], *v)),
    )?;
    let mut active: BTreeMap<&'static str, f64> = [
        (v1::RunState::Pending.label(), 0.0),
        (v1::RunState::Dispatched.label(), 0.0),
        (v1::RunState::Running.label(), 0.0),
    ]
    .into_iter()
    .collect();
    for r in a.active.values() {
        let s = v1::RunState::try_from(r.state).unwrap_or(v1::RunState::Pending);
        *active.entry(s.label()).or_default() += 1.0;
    }
    gauge_family(
        enc,
        "syncfleet_runs_active",
        "Runs not ended yet, by state.",
        active.into_iter().map(|(s, v)| ([("state", s)], v)),
    )?;
    histogram_family(
        enc,
        "syncfleet_run_duration_seconds",
        "Duration of runs that ended, from the agent's start to the end, by sequence.",
        RUN_DURATION_BUCKETS,
        a.run_duration
            .iter()
            .map(|(seq, h)| ([("sequence", seq.as_str())], h)),
    )?;
    histogram_family(
        enc,
        "syncfleet_step_duration_seconds",
        "Duration of executed steps (engine run profile executions), by MA and run profile \
         (and agent with metrics.per_agent_detail).",
        STEP_DURATION_BUCKETS,
        a.step_duration.iter().map(|((agent, ma, profile), h)| {
            (
                with_agent(
                    a.detail.then_some(agent.as_str()),
                    &[("ma", ma.as_str()), ("profile", profile.as_str())],
                ),
                h,
            )
        }),
    )?;
    counter_family(
        enc,
        "syncfleet_step_objects",
        "Objects processed by executed steps, by MA and engine counter (stage-*, export-*) or \
         errors (and agent with metrics.per_agent_detail).",
        a.step_objects.iter().map(|((agent, ma, c), v)| {
            (
                with_agent(
                    a.detail.then_some(agent.as_str()),
                    &[("ma", ma.as_str()), ("counter", *c)],
                ),
                *v,
            )
        }),
    )?;
    counter_family(
        enc,
        "syncfleet_agent_object_errors",
        "Object-level errors of executed steps per agent and MA: errors the engine listed plus \
         its stage-failure and export-failure counters.",
        a.agent_errors
            .iter()
            .map(|((agent, ma), v)| ([("agent", agent.as_str()), ("ma", ma.as_str())], *v)),
    )?;
    gauge_family(
        enc,
        "syncfleet_last_success_timestamp_seconds",
        "End time of the last step with a success-class result, per agent, MA and step type \
         (sync, import, export, other; and run profile with metrics.per_agent_detail).",
        a.last_success
            .iter()
            .map(|((agent, ma, step_type, profile), t)| {
                let mut labels = vec![
                    ("agent", agent.as_str()),
                    ("ma", ma.as_str()),
                    ("step_type", *step_type),
                ];
                if a.detail {
                    labels.push(("profile", profile.as_str()));
                }
                (labels, *t)
            }),
    )?;
    histogram_family(
        enc,
        "syncfleet_schedule_lateness_seconds",
        "Time from a scheduled run's nominal fire time to its start on the agent.",
        LATENESS_BUCKETS,
        a.lateness
            .iter()
            .map(|(s, h)| ([("schedule", s.as_str())], h)),
    )
}

/// `(agent, ma, kind, value)` of `syncfleet_pending_exports`.
pub(super) type PendingRow = (String, String, &'static str, u64);

/// The per-agent gauges read at scrape time: connection state, engine health, pending
/// exports (`pending`: connected agents only) and engine run-history housekeeping.
pub(super) fn encode_agents(
    g: &FleetGauges,
    pending: &[PendingRow],
    housekeeping: &[(String, Housekeeping)],
    enc: &mut DescriptorEncoder,
) -> Fmt {
    let mut by_state: BTreeMap<&'static str, f64> = ["connected", "disconnected", "lost"]
        .into_iter()
        .map(|s| (s, 0.0))
        .collect();
    for a in &g.agents {
        *by_state.entry(a.state).or_default() += 1.0;
    }
    gauge_family(
        enc,
        "syncfleet_agents",
        "Agents by connection state.",
        by_state.into_iter().map(|(s, v)| ([("state", s)], v)),
    )?;
    gauge_family(
        enc,
        "syncfleet_agent_state",
        "1 for each agent's current connection state.",
        g.agents
            .iter()
            .map(|a| ([("agent", a.name.as_str()), ("state", a.state)], 1.0)),
    )?;
    gauge_family(
        enc,
        "syncfleet_agent_engine_healthy",
        "Connected agents: 1 when the sync engine answered its last health probe.",
        g.agents.iter().filter_map(|a| {
            a.engine_healthy
                .map(|h| ([("agent", a.name.as_str())], if h { 1.0 } else { 0.0 }))
        }),
    )?;
    gauge_family(
        enc,
        "syncfleet_pending_exports",
        "Pending exports per connected agent and MA (NumExportAdd/Update/Delete) from heartbeats.",
        pending.iter().map(|(agent, ma, kind, v)| {
            (
                [
                    ("agent", agent.as_str()),
                    ("ma", ma.as_str()),
                    ("kind", *kind),
                ],
                *v as f64,
            )
        }),
    )?;
    // Engine run-history housekeeping reported by the agents.
    counter_family(
        enc,
        "syncfleet_engine_clear_runs",
        "Successful ClearRuns calls on each agent's engine since the agent started (engine.clear_runs_older_than).",
        housekeeping
            .iter()
            .map(|(a, h)| ([("agent", a.as_str())], h.clear_runs_total)),
    )?;
    gauge_family(
        enc,
        "syncfleet_engine_runs_cleared_before_timestamp_seconds",
        "Cutoff of each agent's last successful ClearRuns: the engine's run history holds no run that ended before it (Unix seconds).",
        housekeeping
            .iter()
            .filter(|(_, h)| h.runs_cleared_before_ms > 0)
            .map(|(a, h)| {
                (
                    [("agent", a.as_str())],
                    h.runs_cleared_before_ms as f64 / 1000.0,
                )
            }),
    )?;
    gauge_family(
        enc,
        "syncfleet_engine_clear_runs_failing",
        "1 when an agent's last ClearRuns failed (see its log and `agents show`), else 0.",
        housekeeping.iter().map(|(a, h)| {
            (
                [("agent", a.as_str())],
                if h.clear_runs_problem.is_empty() {
                    0.0
                } else {
                    1.0
                },
            )
        }),
    )
}

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        encode_runs(&lock(&self.runs), &mut enc)?;
        let g = lock(&self.gauges).clone();
        counter_family(
            &mut enc,
            "syncfleet_schedule_fires",
            "Fire times of a schedule that created runs.",
            g.schedules.iter().map(|s| {
                let fired = s
                    .counters
                    .iter()
                    .find(|(k, _)| k == "fired")
                    .map_or(0, |(_, v)| *v);
                ([("schedule", s.name.as_str())], fired)
            }),
        )?;
        counter_family(
            &mut enc,
            "syncfleet_schedule_skipped",
            "Fire times of a schedule that did not run, by reason.",
            g.schedules.iter().flat_map(|s| {
                skip_rows(s)
                    .into_iter()
                    .map(|(r, v)| ([("schedule", s.name.as_str()), ("reason", r)], v))
            }),
        )?;
        let counter_of = |s: &ScheduleRow, name: &str| {
            s.counters
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0, |(_, v)| *v)
        };
        counter_family(
            &mut enc,
            "syncfleet_changes_detected",
            "Changes the agents' change sources reported for a schedule (trigger.on_change).",
            g.schedules.iter().filter(|s| s.on_change).map(|s| {
                (
                    [("schedule", s.name.as_str())],
                    counter_of(s, crate::fleet::changes::CHANGES_DETECTED),
                )
            }),
        )?;
        counter_family(
            &mut enc,
            "syncfleet_change_runs",
            "Runs changes started for a schedule, each coalescing every change reported before it.",
            g.schedules.iter().filter(|s| s.on_change).map(|s| {
                (
                    [("schedule", s.name.as_str())],
                    counter_of(s, crate::fleet::changes::CHANGE_RUNS),
                )
            }),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_change_source_errors",
            "Agents whose change source of a schedule failed its last poll (see `schedules show`).",
            self.fleet
                .change_source_errors()
                .into_iter()
                .map(|(s, src, n)| ([("schedule", s), ("source", src)], n as f64)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_schedule_saturation",
            "Median duration of a schedule's last 10 runs divided by its interval.",
            g.schedules
                .iter()
                .map(|s| ([("schedule", s.name.as_str())], s.saturation)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_schedule_paused",
            "1 while a schedule is paused; by=guard_rail when a held run paused it.",
            g.schedules.iter().filter_map(|s| {
                s.paused_by
                    .map(|by| ([("schedule", s.name.as_str()), ("by", by)], 1.0))
            }),
        )?;
        // Notifications: delivery outcomes per notifier, from the notifiers' status records.
        counter_family(
            &mut enc,
            "syncfleet_notifications",
            "Notification deliveries per notifier: sent (new problems), resolved (cleared problems), failed (attempts), given_up (messages abandoned after the last retry).",
            g.notifications
                .iter()
                .map(|(n, o, v)| ([("notifier", n.as_str()), ("outcome", *o)], *v)),
        )?;
        let mut pending: Vec<PendingRow> = Vec::new();
        for (agent, mas) in &self.fleet.pending_exports.snapshot() {
            if !self.fleet.is_connected(agent) {
                continue;
            }
            for (ma, [add, update, delete]) in mas {
                for (kind, v) in [("add", add), ("update", update), ("delete", delete)] {
                    pending.push((agent.clone(), ma.clone(), kind, *v));
                }
            }
        }
        pending.sort();
        encode_agents(&g, &pending, &self.fleet.housekeeping(), &mut enc)?;
        // Store retention (`crate::retention`).
        let pruned = self.fleet.retention.snapshot();
        counter_family(
            &mut enc,
            "syncfleet_retention_pruned_rows",
            "Rows deleted by store retention since this controller started, by kind (runs, events, audit).",
            pruned.iter().map(|(k, s)| ([("kind", k.name())], s.pruned)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_retention_last_prune_timestamp_seconds",
            "When this controller last finished pruning a kind (Unix seconds; absent until it has, and on followers).",
            pruned
                .iter()
                .filter(|(_, s)| s.last_prune_ms > 0)
                .map(|(k, s)| ([("kind", k.name())], s.last_prune_ms as f64 / 1000.0)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_reason_of_a_schedule_is_reported_from_zero() {
        let row = ScheduleRow {
            name: "every-5m".into(),
            counters: vec![("skipped_overlap".into(), 2), ("fired".into(), 9)],
            ..Default::default()
        };
        let rows = skip_rows(&row);
        assert!(rows.contains(&("overlap", 2)), "{rows:?}");
        for reason in [
            "missed_catchup",
            "buffer_dropped",
            "paused",
            "drained",
            "no_target",
        ] {
            assert!(rows.contains(&(reason, 0)), "{reason}: {rows:?}");
        }
    }

    #[test]
    fn skip_reasons_come_from_the_schedule_counters() {
        assert_eq!(skip_reason("skipped_overlap"), Some("overlap"));
        assert_eq!(skip_reason("skipped_paused"), Some("paused"));
        assert_eq!(skip_reason("missed_catchup"), Some("missed_catchup"));
        assert_eq!(skip_reason("buffer_dropped"), Some("buffer_dropped"));
        assert_eq!(skip_reason("fired"), None);
        assert_eq!(skip_reason("held"), None);
    }

    /// The families of a synthetic fleet, encoded by the same functions as `/metrics`.
    #[derive(Debug)]
    struct Snapshot {
        runs: Aggregates,
        gauges: FleetGauges,
        pending: Vec<PendingRow>,
        housekeeping: Vec<(String, Housekeeping)>,
    }

    impl Collector for Snapshot {
        fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
            encode_runs(&self.runs, &mut enc)?;
            encode_agents(&self.gauges, &self.pending, &self.housekeeping, &mut enc)
        }
    }

    const MAS: [&str; 4] = ["AD", "HR", "MIM Service", "LDAP"];
    const PROFILES: [&str; 3] = ["Delta Import", "Delta Sync", "Export"];

    fn step(index: u32, ma: &str, profile: &str, result: &str) -> v1::Step {
        use syncfleet_proto::time::from_millis;
        v1::Step {
            index,
            ma: ma.into(),
            profile: profile.into(),
            state: v1::StepState::Done as i32,
            result: result.into(),
            started_at: Some(from_millis(1_000)),
            finished_at: Some(from_millis(2_000 + i64::from(index))),
            counters: Some(v1::StepCounters {
                counters: [
                    ("stage-add".to_string(), 3),
                    ("export-failure".to_string(), 1),
                ]
                .into_iter()
                .collect(),
                outbound: Default::default(),
            }),
            error_count: 2,
            ..Default::default()
        }
    }

    /// `agents` connected agents with 4 MAs of 3 run profiles each, fed through the run update
    /// path: each ran sequence `delta` (every MA and profile, succeeded) and one ad-hoc run
    /// (failed), reports pending exports for every MA and has engine housekeeping.
    fn fleet(agents: usize, detail: bool) -> Snapshot {
        use syncfleet_proto::time::from_millis;
        let mut runs = Aggregates::new(detail);
        let mut gauges = FleetGauges::default();
        let mut pending = Vec::new();
        let mut housekeeping = Vec::new();
        for i in 0..agents {
            let agent = format!("sync-{i:05}");
            runs.know(&agent, "");
            for ma in MAS {
                runs.know_ma(&agent, ma);
                for kind in ["add", "update", "delete"] {
                    pending.push((agent.clone(), ma.to_string(), kind, 1));
                }
            }
            let steps: Vec<v1::Step> = MAS
                .iter()
                .flat_map(|ma| PROFILES.iter().map(move |p| (*ma, *p)))
                .enumerate()
                .map(|(n, (ma, p))| step(n as u32, ma, p, "success"))
                .collect();
            for (id, sequence, state, steps) in [
                ("d", "delta", v1::RunState::Succeeded, steps),
                (
                    "a",
                    "",
                    v1::RunState::Failed,
                    vec![step(0, "AD", "Delta Import", "stopped-connectivity")],
                ),
            ] {
                let mut run = v1::Run {
                    id: format!("{agent}-{id}"),
                    agent: agent.clone(),
                    sequence: sequence.into(),
                    state: v1::RunState::Running as i32,
                    started_at: Some(from_millis(500)),
                    ..Default::default()
                };
                runs.apply(&run);
                run.state = state as i32;
                run.finished_at = Some(from_millis(9_000));
                run.steps = steps;
                assert!(runs.apply(&run));
            }
            gauges.agents.push(AgentRow {
                name: agent.clone(),
                state: "connected",
                engine_healthy: Some(true),
            });
            housekeeping.push((
                agent,
                Housekeeping {
                    runs_cleared_before_ms: 1_000,
                    clear_runs_total: 1,
                    clear_runs_problem: String::new(),
                },
            ));
        }
        Snapshot {
            runs,
            gauges,
            pending,
            housekeeping,
        }
    }

    /// Series in the encoded text: (per agent label value, count), and the number of series
    /// without an agent label.
    fn series(snapshot: Snapshot) -> (String, BTreeMap<String, usize>, usize) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
        let mut fleet_wide = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.split_once("agent=\"") {
                Some((_, rest)) => {
                    let name = rest.split('"').next().unwrap().to_string();
                    *per_agent.entry(name).or_default() += 1;
                }
                None => fleet_wide += 1,
            }
        }
        (text, per_agent, fleet_wide)
    }

    /// Per-agent series at most `FIXED + PER_MA × MAs` by default (see `metrics` module docs):
    /// agent state, engine health, 7 run outcomes, autonomous runs, 3 housekeeping series;
    /// per MA 3 pending-export kinds, 1 object-error counter, last success by up to 4 step types.
    const FIXED: usize = 13;
    const PER_MA: usize = 8;

    #[test]
    fn series_per_agent_stay_bounded_with_ten_thousand_agents() {
        let (text, per_agent, fleet_wide) = series(fleet(10_000, false));
        assert_eq!(per_agent.len(), 10_000);
        let bound = FIXED + PER_MA * MAS.len();
        // 7 run outcomes + state + engine + 3 housekeeping + 4 MAs × (3 pending + 1 errors
        // + 3 step types with a success).
        for (agent, n) in &per_agent {
            assert_eq!(*n, 12 + 4 * 7, "{agent}");
            assert!(*n <= bound, "{agent}: {n} > {bound}");
        }
        // The fleet-wide view does not grow with agents: the same series as with 10 agents.
        let (_, small, small_fleet_wide) = series(fleet(10, false));
        assert_eq!(small.len(), 10);
        assert_eq!(
            fleet_wide, small_fleet_wide,
            "fleet-wide series grow with agents"
        );
        assert!(fleet_wide < 400, "{fleet_wide} fleet-wide series");
        let total = fleet_wide + per_agent.values().sum::<usize>();
        assert!(total <= 10_000 * bound + 400, "{total} series");
        // The fleet-wide view is kept: step durations by MA and profile, runs by sequence and
        // result, objects by MA and counter, all summed across agents.
        for line in [
            "syncfleet_step_duration_seconds_count{ma=\"HR\",profile=\"Delta Sync\"} 10000",
            "syncfleet_runs_total{sequence=\"delta\",result=\"succeeded\"} 10000",
            "syncfleet_runs_total{sequence=\"\",result=\"failed\"} 10000",
            "syncfleet_step_objects_total{ma=\"AD\",counter=\"stage-add\"} 120000",
            "syncfleet_agent_runs_total{agent=\"sync-09999\",result=\"failed\"} 1",
            // 3 profiles × (2 errors + 1 export-failure) + the failed ad-hoc step's 3.
            "syncfleet_agent_object_errors_total{agent=\"sync-00042\",ma=\"AD\"} 12",
            "syncfleet_last_success_timestamp_seconds{agent=\"sync-00042\",ma=\"LDAP\",step_type=\"sync\"} 2.01",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
        for family in [
            "syncfleet_runs_total",
            "syncfleet_step_duration_seconds",
            "syncfleet_step_objects_total",
        ] {
            assert!(
                !text
                    .lines()
                    .any(|l| l.starts_with(family) && l.contains("agent=")),
                "{family} has an agent label by default"
            );
        }
    }

    #[test]
    fn per_agent_detail_brings_back_the_agent_and_profile_labels() {
        let (text, per_agent, fleet_wide) = series(fleet(100, true));
        assert_eq!(per_agent.len(), 100);
        // The default 40 (minus last success by step type: 12 by profile instead) plus
        // 2 sequences × 7 results, 12 MA × profile histograms of 16 series, 4 MAs × 9 object
        // counters.
        let per_agent_detail = 40 + 2 * 7 + 12 * 16 + 4 * 9;
        for (agent, n) in &per_agent {
            assert_eq!(*n, per_agent_detail, "{agent}");
        }
        assert!(fleet_wide < 50, "{fleet_wide} series without an agent");
        for line in [
            "syncfleet_step_duration_seconds_count{agent=\"sync-00007\",ma=\"HR\",profile=\"Delta Sync\"} 1",
            "syncfleet_runs_total{agent=\"sync-00007\",sequence=\"delta\",result=\"succeeded\"} 1",
            "syncfleet_step_objects_total{agent=\"sync-00007\",ma=\"AD\",counter=\"stage-add\"} 12",
            "syncfleet_last_success_timestamp_seconds{agent=\"sync-00007\",ma=\"LDAP\",step_type=\"sync\",profile=\"Delta Sync\"} 2.01",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
    }

    /// The PromQL expressions of the shipped alert rules and Grafana dashboard.
    fn shipped_queries() -> Vec<String> {
        let alerts: serde_norway::Value =
            serde_norway::from_str(include_str!("../../../deploy/prometheus/alerts.yml")).unwrap();
        let mut out: Vec<String> = alerts["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
            .map(|r| r["expr"].as_str().unwrap().to_string())
            .collect();
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../../deploy/grafana/syncfleet-dashboard.json"
        ))
        .unwrap();
        for p in dashboard["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        out
    }

    /// `(series names with their matcher label names, by-clause label names)` of a query.
    fn query_labels(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
        let mut series = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("syncfleet_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end].to_string();
            let mut labels = Vec::new();
            if let Some(m) = tail[end..].strip_prefix('{') {
                let close = m.find('}').unwrap();
                for matcher in m[..close].split(',').filter(|m| !m.trim().is_empty()) {
                    let key = matcher.split(['=', '!']).next().unwrap().trim();
                    labels.push(key.to_string());
                }
            }
            series.push((name, labels));
            rest = &tail[end..];
        }
        let mut by = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("by (") {
            let tail = &rest[i + 4..];
            let close = tail.find(')').unwrap();
            by.extend(tail[..close].split(',').map(|l| l.trim().to_string()));
            rest = &tail[close..];
        }
        (series, by)
    }

    /// Every label an alert rule or dashboard query matches on or groups by exists, with the
    /// default label sets, on a family the query reads: a query still written for a removed
    /// label (e.g. `agent` on the step families) would silently match nothing.
    #[test]
    fn shipped_alerts_and_dashboard_use_the_default_label_sets() {
        let (text, _, _) = series(fleet(3, false));
        let mut labels_of: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, rest) = line.split_once('{').unwrap_or((line, ""));
            let name = name.split(' ').next().unwrap().to_string();
            let set = labels_of.entry(name).or_default();
            for pair in rest.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    set.insert(k.to_string());
                }
            }
        }
        let mut checked = 0;
        for expr in shipped_queries() {
            let (series, by) = query_labels(&expr);
            let known: Vec<&(String, Vec<String>)> = series
                .iter()
                .filter(|(n, _)| labels_of.contains_key(n))
                .collect();
            if known.is_empty() {
                // Schedule, notification and retention families: not encoded by these functions.
                continue;
            }
            for (name, matchers) in &known {
                for l in matchers {
                    assert!(
                        labels_of[name].contains(l),
                        "`{expr}` matches on {l}, which {name} does not have"
                    );
                }
            }
            for l in &by {
                assert!(
                    known.iter().any(|(n, _)| labels_of[n].contains(l)),
                    "`{expr}` groups by {l}, which none of its families has"
                );
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} queries checked");
    }
}
