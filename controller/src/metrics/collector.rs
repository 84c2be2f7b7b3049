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
use crate::fleet::Fleet;
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

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        {
            let a = lock(&self.runs);
            counter_family(
                &mut enc,
                "syncfleet_runs",
                "Runs that ended, by agent, sequence (empty for ad-hoc runs) and end state.",
                a.runs.iter().map(|((agent, seq, state), v)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("sequence", seq.as_str()),
                            ("result", *state),
                        ],
                        *v,
                    )
                }),
            )?;
            counter_family(
                &mut enc,
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
                &mut enc,
                "syncfleet_runs_active",
                "Runs not ended yet, by state.",
                active.into_iter().map(|(s, v)| ([("state", s)], v)),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_run_duration_seconds",
                "Duration of runs that ended, from the agent's start to the end, by sequence.",
                RUN_DURATION_BUCKETS,
                a.run_duration
                    .iter()
                    .map(|(seq, h)| ([("sequence", seq.as_str())], h)),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_step_duration_seconds",
                "Duration of executed steps (engine run profile executions).",
                STEP_DURATION_BUCKETS,
                a.step_duration.iter().map(|((agent, ma, profile), h)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("profile", profile.as_str()),
                        ],
                        h,
                    )
                }),
            )?;
            counter_family(
                &mut enc,
                "syncfleet_step_objects",
                "Objects processed by executed steps, by engine counter (stage-*, export-*) or errors.",
                a.step_objects.iter().map(|((agent, ma, c), v)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("counter", *c),
                        ],
                        *v,
                    )
                }),
            )?;
            gauge_family(
                &mut enc,
                "syncfleet_last_success_timestamp_seconds",
                "End time of the last step with a success-class result, per agent, MA and run profile.",
                a.last_success.iter().map(|((agent, ma, profile), t)| {
                    (
                        [
                            ("agent", agent.as_str()),
                            ("ma", ma.as_str()),
                            ("profile", profile.as_str()),
                        ],
                        *t,
                    )
                }),
            )?;
            histogram_family(
                &mut enc,
                "syncfleet_schedule_lateness_seconds",
                "Time from a scheduled run's nominal fire time to its start on the agent.",
                LATENESS_BUCKETS,
                a.lateness
                    .iter()
                    .map(|(s, h)| ([("schedule", s.as_str())], h)),
            )?;
        }
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
        let mut by_state: BTreeMap<&'static str, f64> = ["connected", "disconnected", "lost"]
            .into_iter()
            .map(|s| (s, 0.0))
            .collect();
        for a in &g.agents {
            *by_state.entry(a.state).or_default() += 1.0;
        }
        gauge_family(
            &mut enc,
            "syncfleet_agents",
            "Agents by connection state.",
            by_state.into_iter().map(|(s, v)| ([("state", s)], v)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_agent_state",
            "1 for each agent's current connection state.",
            g.agents
                .iter()
                .map(|a| ([("agent", a.name.as_str()), ("state", a.state)], 1.0)),
        )?;
        gauge_family(
            &mut enc,
            "syncfleet_agent_engine_healthy",
            "Connected agents: 1 when the sync engine answered its last health probe.",
            g.agents.iter().filter_map(|a| {
                a.engine_healthy
                    .map(|h| ([("agent", a.name.as_str())], if h { 1.0 } else { 0.0 }))
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
        let pending = self.fleet.pending_exports.snapshot();
        let mut rows: Vec<(String, String, &'static str, u64)> = Vec::new();
        for (agent, mas) in &pending {
            if !self.fleet.is_connected(agent) {
                continue;
            }
            for (ma, [add, update, delete]) in mas {
                for (kind, v) in [("add", add), ("update", update), ("delete", delete)] {
                    rows.push((agent.clone(), ma.clone(), kind, *v));
                }
            }
        }
        rows.sort();
        gauge_family(
            &mut enc,
            "syncfleet_pending_exports",
            "Pending exports per connected agent and MA (NumExportAdd/Update/Delete) from heartbeats.",
            rows.iter().map(|(agent, ma, kind, v)| {
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
        let housekeeping = self.fleet.housekeeping();
        counter_family(
            &mut enc,
            "syncfleet_engine_clear_runs",
            "Successful ClearRuns calls on each agent's engine since the agent started (engine.clear_runs_older_than).",
            housekeeping
                .iter()
                .map(|(a, h)| ([("agent", a.as_str())], h.clear_runs_total)),
        )?;
        gauge_family(
            &mut enc,
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
            &mut enc,
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
        )?;
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
}
