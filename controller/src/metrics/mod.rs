//! Prometheus metrics on the controller's HTTP port: `GET /metrics` (Prometheus text format
//! 0.0.4), plus `GET /readyz` (ready when the store answers).
//!
//! # Families
//!
//! | family | type | labels | what |
//! |---|---|---|---|
//! | `syncfleet_runs_total` | counter | sequence, result | runs that ended, by end state, every state from 0 once the sequence is known (`succeeded`, `completed_with_errors`, `failed`, `held`, `cancelled`, `skipped`, `unknown`: the labels of `syncfleet runs list`); `sequence=""` for ad-hoc runs; summed across agents (`agent` too with `metrics.per_agent_detail`) |
//! | `syncfleet_agent_runs_total` | counter | agent, result | runs that ended, per agent and end state (every state from 0 once the agent is known) |
//! | `syncfleet_autonomous_runs_total` | counter | agent | runs that ended and that an agent started on its own while no controller was reachable (origin `autonomous`) |
//! | `syncfleet_runs_active` | gauge | state | runs `pending`, `dispatched` or `running` now |
//! | `syncfleet_run_duration_seconds` | histogram | sequence | agent start to end of runs that ended |
//! | `syncfleet_step_duration_seconds` | histogram | ma, profile | executed steps (engine start to result), summed across agents (`agent` too with `metrics.per_agent_detail`) |
//! | `syncfleet_step_objects_total` | counter | ma, counter | objects changed by executed steps, summed across agents (`agent` too with `metrics.per_agent_detail`; every counter from 0 for the MAs of the agents' inventories): `counter` is the engine's run-history name (`stage-add`, `stage-update`, `stage-delete`, `stage-failure`, `export-add`, `export-update`, `export-delete`, `export-failure`) or `errors` (synchronization/import/export errors the engine listed) |
//! | `syncfleet_agent_object_errors_total` | counter | agent, ma | object-level errors of executed steps per agent and MA: `errors` + `stage-failure` + `export-failure` of `syncfleet_step_objects_total` (from 0 for the MAs of an agent's inventory) |
//! | `syncfleet_last_success_timestamp_seconds` | gauge | agent, ma, step_type | end of the last step with a success-class result (`success`, `completed-no-objects`, `completed-warnings`, ...) per agent, MA and step type: `sync` (profile names containing "sync", combined import-and-sync steps included), `import`, `export`, `other`, from the run profile's name (`profile` too with `metrics.per_agent_detail`) |
//! | `syncfleet_schedule_lateness_seconds` | histogram | schedule | nominal fire time to agent start of scheduled runs (jitter included) |
//! | `syncfleet_schedule_fires_total` | counter | schedule | fire times that created runs (`fired`) |
//! | `syncfleet_schedule_skipped_total` | counter | schedule, reason | fire times not run: `overlap`, `buffer_dropped`, `missed_catchup`, `paused`, `drained`, `no_target`, ... (the schedule's counters in `syncfleet schedules show`); every known reason from 0 |
//! | `syncfleet_schedule_saturation` | gauge | schedule | median duration of its last 10 runs / its interval (as `schedules show`) |
//! | `syncfleet_schedule_paused` | gauge | schedule, by | 1 while paused; `by="guard_rail"` when a held run paused it, `operator` otherwise |
//! | `syncfleet_agents` | gauge | state | agents by connection state (`connected`, `disconnected`, `lost`) |
//! | `syncfleet_agent_state` | gauge | agent, state | 1 for each agent's current state |
//! | `syncfleet_agent_engine_healthy` | gauge | agent | connected agents: 1 when the engine answered its last probe |
//! | `syncfleet_pending_exports` | gauge | agent, ma, kind | connected agents' pending exports per MA (`add`, `update`, `delete`) from their heartbeats |
//! | `syncfleet_engine_clear_runs_total`, `syncfleet_engine_runs_cleared_before_timestamp_seconds`, `syncfleet_engine_clear_runs_failing` | counter, gauge, gauge | agent | each agent's engine run-history housekeeping |
//!
//! # Cardinality
//!
//! No run ids, no result strings, no free text. By default each agent has at most
//! **13 + 8 per MA** series, however many run profiles and sequences it runs: 13 fixed
//! (`agent_state` 1, `agent_engine_healthy` 1, `agent_runs_total` 7, `autonomous_runs_total`
//! 1, engine housekeeping 3) and per MA 8 (`pending_exports` 3, `agent_object_errors_total` 1,
//! `last_success_timestamp_seconds` up to 4 step types): 45 for an agent with 4 MAs, ~450,000
//! series for 10,000 such agents. The fleet-wide families (`runs_total`, `step_duration_seconds`,
//! `step_objects_total`, `run_duration_seconds`, the schedule families) grow with distinct
//! sequences, MAs, run profiles and schedules, not with agents: 16 series per MA × profile
//! (step histogram), 9 per MA, 7 per sequence.
//!
//! `metrics.per_agent_detail = true` puts the agent back into the fleet-wide families and the
//! run profile into the last success: each agent then costs about **17 more series per MA ×
//! run profile**, 9 more per MA and 7 more per sequence it runs (282 instead of 40 for an agent
//! running 4 MAs × 3 profiles in 2 sequences). Queries that aggregate with `sum by`/`max by`
//! over the default labels (the shipped alerts and dashboard) give the same results either way.
//!
//! # Design: counts equal the store, scrapes stay cheap
//!
//! The run-derived families are aggregates kept in memory. When the controller starts they are
//! computed from every run in the store (one pass, newest first, 1000 runs per store call), and
//! from then on they follow [`Fleet::subscribe`]: each run is counted once, when this controller
//! first sees it end, and each executed step once, when it is first seen done. A scrape encodes
//! the aggregates and makes no store call for them, so its cost grows with the number of series,
//! not of runs (10,000 agents with years of history scrape as fast as a fresh fleet).
//! `/metrics` answers 503 until the startup pass is done.
//!
//! After a restart the families are rebuilt from the store, so `syncfleet_runs_total` (per
//! sequence) and `syncfleet_agent_runs_total` (per agent) equal the runs `syncfleet runs list`
//! shows in each end state, and counters only move forward across a
//! restart (the store keeps every run), which is what `increase()` expects. One difference is
//! accepted until the next restart: a run that ended `unknown` (its agent was lost) and is later
//! reported by the returning agent with its real outcome stays counted as `unknown`.
//! If this process misses run updates (the broadcast overflows), the aggregates are rebuilt from
//! the store the same way.
//!
//! Fleet-shaped gauges (agents, schedules, pending exports) are read at scrape time: agents and
//! schedules from the store at most every [`GAUGE_TTL`] (cached between scrapes); pending
//! exports from the agents' last heartbeats, held in memory ([`crate::pending::HeartbeatPending`]).
//!
//! # Layout
//!
//! - `aggregates`: the run-derived families kept in memory, rebuilt from the store;
//! - `collector`: the Prometheus encoding of every family, and the fleet-shaped gauges;
//! - `http`: the `/metrics` and `/readyz` routes.

mod aggregates;
mod collector;
mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use syncfleet_proto::sync::lock;
use tokio::time::Instant;

use prometheus_client::registry::Registry;
use syncfleet_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::schedule::saturation::saturation;
use crate::schedule::scheduler::Scheduler;
use crate::store::StoreError;

use aggregates::{Aggregates, scan, state_of};
use collector::{AgentRow, FleetGauges, Inner, ScheduleRow};

pub use http::routes;

/// How long agent and schedule gauges read from the store are reused between scrapes.
pub const GAUGE_TTL: Duration = Duration::from_secs(5);

/// The controller's metrics: in-memory run aggregates fed by the fleet's run updates, plus
/// gauges read at scrape time.
pub struct Metrics {
    /// This controller's role, for `/readyz` and the `syncfleet_leader` gauges.
    pub(super) leadership: crate::leader::Leadership,
    inner: Arc<Inner>,
    scheduler: Arc<Scheduler>,
    registry: Registry,
    loaded: AtomicBool,
    gauges_at: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("loaded", &self.loaded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

enum Update {
    Run(Box<v1::Run>),
    /// Updates were lost: rebuild from the store.
    Rebuild,
}

impl Metrics {
    /// Subscribe to the fleet's run updates now (nothing created from here on is missed), then
    /// read the store in the background and follow the updates until `shutdown`.
    pub fn start(
        fleet: Arc<Fleet>,
        scheduler: Arc<Scheduler>,
        leadership: crate::leader::Leadership,
        settings: &crate::config::MetricsSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut updates = fleet.subscribe();
        let detail = settings.per_agent_detail;
        let inner = Arc::new(Inner {
            fleet: Arc::clone(&fleet),
            runs: std::sync::Mutex::new(Aggregates::new(detail)),
            gauges: std::sync::Mutex::new(FleetGauges::default()),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&inner)));
        let leader_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        let epoch_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        registry.register(
            "syncfleet_leader",
            "1 while this controller holds the leader lease (runs the scheduler, dispatch and agent sessions), 0 as a follower",
            leader_gauge.clone(),
        );
        registry.register(
            "syncfleet_leader_epoch",
            "Epoch of the leader lease as this controller last saw it (grows on every change of leader)",
            epoch_gauge.clone(),
        );
        {
            let mut watch = leadership.subscribe();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let s = watch.borrow_and_update().clone();
                    leader_gauge.set(i64::from(s.leader));
                    epoch_gauge.set(s.epoch);
                    tokio::select! {
                        r = watch.changed() => if r.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                }
            });
        }
        let metrics = Arc::new(Self {
            leadership,
            inner,
            scheduler,
            registry,
            loaded: AtomicBool::new(false),
            gauges_at: tokio::sync::Mutex::new(None),
        });
        // Drain the broadcast at once into an unbounded queue, so the store pass (which may
        // take a while on a large store) never makes this subscriber lag.
        let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    r = updates.recv() => r,
                    () = stop.cancelled() => return,
                };
                let sent = match msg {
                    Ok(run) => tx.send(Update::Run(Box::new(run))),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "metrics missed run updates; rebuilding them from the store"
                        );
                        tx.send(Update::Rebuild)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            if !m.rebuild().await {
                return;
            }
            loop {
                let msg = tokio::select! {
                    r = rx.recv() => r,
                    () = shutdown.cancelled() => return,
                };
                match msg {
                    Some(Update::Run(run)) => m.apply(&run),
                    Some(Update::Rebuild) => {
                        // Everything queued so far is in the store already.
                        while rx.try_recv().is_ok() {}
                        if !m.rebuild().await {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        metrics
    }

    fn apply(&self, run: &v1::Run) {
        let ended = lock(&self.inner.runs).apply(run);
        if ended {
            let state = state_of(run);
            tracing::info!(
                run_id = %run.id,
                trace_id = crate::telemetry::trace_id(run),
                agent = %run.agent,
                state = state.label(),
                result = %run.result,
                "run ended"
            );
        }
    }

    /// Recompute the run aggregates from the store (retrying while the store fails). False when
    /// the store worker is gone.
    async fn rebuild(&self) -> bool {
        let started = Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            let detail = lock(&self.inner.runs).detail;
            match scan(self.inner.fleet.store.as_ref(), detail).await {
                Ok(agg) => {
                    let runs = agg.agent_runs.values().sum::<u64>() + agg.active.len() as u64;
                    *lock(&self.inner.runs) = agg;
                    self.loaded.store(true, Ordering::Relaxed);
                    tracing::info!(
                        runs,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "run metrics loaded from the store"
                    );
                    return true;
                }
                Err(StoreError::Worker(e)) => {
                    tracing::error!(error = %e, "metrics: the store worker stopped");
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics: cannot read runs from the store; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Whether the startup pass over the store is done.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Refresh the agent and schedule gauges when older than [`GAUGE_TTL`].
    async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let mut at = self.gauges_at.lock().await;
        if at.is_some_and(|t| t.elapsed() < GAUGE_TTL) {
            return Ok(());
        }
        let fleet = &self.inner.fleet;
        let (agents, schedules, notifications) = {
            let s = &fleet.store;
            async move {
                let agents = s.list_agents().await?;
                let mut schedules = Vec::new();
                for d in s.list_documents(Some("Schedule")).await? {
                    let counters = s.counters(&d.name).await?;
                    let durations =
                        crate::schedule::saturation::recent_durations(s.as_ref(), &d.name).await?;
                    let pause = s
                        .get_state(&crate::store::keys::schedule_pause(&d.name))
                        .await?
                        .and_then(|b| <v1::Pause as prost::Message>::decode(b.as_slice()).ok())
                        .filter(|p| p.paused);
                    let doc = match crate::documents::from_json(&d.kind, &d.json) {
                        Ok(crate::documents::model::Document::Schedule(doc)) => Some(doc),
                        _ => None,
                    };
                    schedules.push((d.name, counters, durations, pause, doc));
                }
                let notifications = crate::notify::outcome_counts(s.as_ref()).await?;
                Ok::<_, StoreError>((agents, schedules, notifications))
            }
        }
        .await?;
        let mut g = FleetGauges {
            notifications,
            ..FleetGauges::default()
        };
        {
            // Series from 0 for what may happen next: ad-hoc runs of every agent, the runs of
            // every schedule on the agents it targets, the object counters of every MA.
            let mut runs = lock(&self.inner.runs);
            for a in &agents {
                runs.know(&a.name, "");
                for ma in &a.management_agents {
                    runs.know_ma(&a.name, &ma.name);
                }
                for doc in schedules.iter().filter_map(|s| s.4.as_ref()) {
                    if doc.targets.matches(&a.name, &a.labels) {
                        runs.know(&a.name, &doc.sequence);
                    }
                }
            }
        }
        for a in agents {
            let a = fleet.agent_view(a);
            let state = v1::AgentState::try_from(a.state).unwrap_or(v1::AgentState::Unspecified);
            let connected = fleet.is_connected(&a.name);
            g.agents.push(AgentRow {
                engine_healthy: connected.then_some(a.engine_healthy),
                name: a.name,
                state: state.label(),
            });
        }
        for (name, counters, durations, pause, doc) in schedules {
            let interval = self.scheduler.interval(&name).await;
            g.schedules.push(ScheduleRow {
                on_change: doc.is_some_and(|d| d.trigger.on_change.is_some()),
                saturation: saturation(&durations, interval),
                paused_by: pause.map(|p| {
                    if p.by.contains("guard rail") {
                        "guard_rail"
                    } else {
                        "operator"
                    }
                }),
                name,
                counters,
            });
        }
        *lock(&self.inner.gauges) = g;
        *at = Some(Instant::now());
        Ok(())
    }

    /// The text exposition of every family.
    pub async fn render(&self) -> Result<String, String> {
        if let Err(e) = self.refresh_gauges().await {
            // Serve the last gauges rather than nothing.
            tracing::warn!(error = %e, "metrics: cannot refresh agent and schedule gauges");
        }
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn alert_annotations_name_commands_the_cli_accepts() {
        use clap::Parser as _;
        let text = include_str!("../../../deploy/prometheus/alerts.yml");
        let doc: serde_norway::Value = serde_norway::from_str(text).unwrap();
        let mut checked = 0;
        for group in doc["groups"].as_sequence().unwrap() {
            for rule in group["rules"].as_sequence().unwrap() {
                let Some(annotations) = rule.get("annotations").and_then(|a| a.as_mapping()) else {
                    continue;
                };
                for (_, value) in annotations {
                    let text = value.as_str().unwrap();
                    // Commands are written between backticks.
                    for (i, quoted) in text.split('`').enumerate() {
                        if i % 2 == 0 || !quoted.trim_start().starts_with("syncfleet ") {
                            continue;
                        }
                        let mut command = quoted.to_string();
                        // Template placeholders become sample values.
                        while let Some(start) = command.find("{{") {
                            let end = command[start..].find("}}").unwrap() + start + 2;
                            command.replace_range(start..end, "sample-1");
                        }
                        let args: Vec<&str> = command.split_whitespace().collect();
                        if let Err(e) = crate::cli::Cli::try_parse_from(&args) {
                            panic!(
                                "alert {:?} tells operators to run `{quoted}`, which the CLI refuses:\n{e}",
                                rule["alert"]
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 5, "only {checked} commands found");
    }
}
