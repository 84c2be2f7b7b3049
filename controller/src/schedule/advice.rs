//! Interval advice for `syncfleet schedules show` and `schedules list`: from measured run
//! durations, the shortest interval that keeps saturation under [`TARGET`] at the 95th
//! percentile of run duration, per schedule and per server.
//!
//! Why per server: every schedule targeting a server goes through that server's sync gate
//! (one synchronization at a time, `docs/engine.md`), so their loads add up. A server's load is
//! the sum, over the schedules targeting it, of p95 duration ÷ interval; a schedule's shortest
//! interval on a server is the one that keeps that sum under [`TARGET`] given the others'
//! load. Durations are whole runs (start to end) of the schedule's newest
//! [`RUNS_MEASURED`] finished runs, across its agents; advice needs [`RUNS_NEEDED`] of them.

use std::time::Duration;

use syncfleet_proto::v1;

use super::saturation::human;

/// The saturation advice keeps under.
pub const TARGET: f64 = 0.8;
/// Newest finished runs of a schedule that are measured.
pub const RUNS_MEASURED: usize = 50;
/// Finished runs needed before a p95 means anything.
pub const RUNS_NEEDED: usize = 5;
/// Servers listed per schedule, highest load first.
pub const MAX_SERVERS: usize = 100;

/// 95th percentile (nearest rank) of durations; `None` for no durations.
pub fn p95(durations_ms: &[i64]) -> Option<i64> {
    if durations_ms.is_empty() {
        return None;
    }
    let mut d = durations_ms.to_vec();
    d.sort_unstable();
    // Nearest rank: the smallest value with at least 95 % of the values at or below it.
    let rank = (d.len() * 95).div_ceil(100).max(1);
    d.get(rank - 1).copied()
}

/// Shortest interval in whole seconds (as ms) with `p95_ms ÷ interval + others_load` strictly
/// under [`TARGET`]; `None` when the others alone reach it.
pub fn shortest_interval_ms(p95_ms: i64, others_load: f64) -> Option<i64> {
    let p95_ms = p95_ms.max(0);
    if others_load <= 0.0 {
        // Integer arithmetic for the common case: interval > p95 × 5/4.
        return Some((p95_ms * 5 / 4000 + 1) * 1000);
    }
    let available = TARGET - others_load;
    if available <= 0.0 {
        return None;
    }
    let secs = (p95_ms as f64 / available / 1000.0).floor() as i64 + 1;
    Some(secs * 1000)
}

/// One schedule's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub name: String,
    /// Durations (ms) of its newest finished runs.
    pub durations_ms: Vec<i64>,
    /// Its interval (cron: the median gap), if it has one.
    pub interval: Option<Duration>,
}

impl Measured {
    fn enough(&self) -> bool {
        self.durations_ms.len() >= RUNS_NEEDED
    }

    /// p95 duration, once there are enough runs.
    pub fn p95_ms(&self) -> Option<i64> {
        self.enough().then(|| p95(&self.durations_ms)).flatten()
    }

    fn interval_ms(&self) -> Option<i64> {
        self.interval
            .filter(|i| !i.is_zero())
            .map(|i| i64::try_from(i.as_millis()).unwrap_or(i64::MAX))
    }

    /// p95 duration ÷ interval, when both are known.
    pub fn load(&self) -> Option<f64> {
        Some(self.p95_ms()? as f64 / self.interval_ms()? as f64)
    }
}

fn ms(v: i64) -> String {
    human(v as f64)
}

/// The advice for one schedule on its own.
pub fn schedule_advice(m: &Measured) -> v1::IntervalAdvice {
    let runs = m.durations_ms.len();
    let mut a = v1::IntervalAdvice {
        runs_measured: u32::try_from(runs).unwrap_or(u32::MAX),
        runs_needed: u32::try_from(RUNS_NEEDED).unwrap_or(u32::MAX),
        interval_ms: m.interval_ms().unwrap_or(0),
        ..Default::default()
    };
    let Some(p95) = m.p95_ms() else {
        a.summary = format!(
            "not enough data: {runs} finished run{} measured, advice needs at least {RUNS_NEEDED} ({} more)",
            if runs == 1 { "" } else { "s" },
            RUNS_NEEDED - runs
        );
        return a;
    };
    a.p95_duration_ms = p95;
    let shortest = shortest_interval_ms(p95, 0.0).unwrap_or(0);
    a.shortest_interval_ms = shortest;
    let base = format!(
        "p95 run duration {} over {runs} runs: the shortest interval under {TARGET} saturation is {}",
        ms(p95),
        ms(shortest)
    );
    a.summary = match m.load() {
        Some(load) => {
            a.saturation_p95 = load;
            let verdict = if load < TARGET {
                "fine"
            } else {
                "too short: lengthen it"
            };
            format!(
                "{base}; the current {} interval gives {load:.2} ({verdict})",
                ms(a.interval_ms)
            )
        }
        None => format!("{base}; the schedule has no regular interval"),
    };
    a
}

/// The advice for `this` schedule on `agent`, which `others` (the other schedules targeting
/// it) also use.
pub fn server_advice(agent: &str, this: &Measured, others: &[&Measured]) -> v1::ServerAdvice {
    let mut competing: Vec<String> = others.iter().map(|o| o.name.clone()).collect();
    competing.sort();
    let mut unmeasured: Vec<String> = std::iter::once(this)
        .chain(others.iter().copied())
        .filter(|m| m.load().is_none())
        .map(|m| m.name.clone())
        .collect();
    unmeasured.sort();
    let others_load: f64 = others.iter().filter_map(|o| o.load()).sum();
    let load = others_load + this.load().unwrap_or(0.0);
    let shortest = this
        .p95_ms()
        .and_then(|p95| shortest_interval_ms(p95, others_load));
    let mut summary = match (this.p95_ms(), shortest) {
        (None, _) => format!(
            "load {load:.2} at p95; this schedule has too few runs to advise on ({} of {RUNS_NEEDED})",
            this.durations_ms.len()
        ),
        (Some(_), None) => format!(
            "load {load:.2} at p95; the other schedules alone load it to {others_load:.2}: no interval of this schedule keeps it under {TARGET}, lengthen or move them"
        ),
        (Some(_), Some(s)) => format!(
            "load {load:.2} at p95; with the other schedules' load ({others_load:.2}) this schedule can run every {} or more",
            ms(s)
        ),
    };
    if competing.is_empty() {
        summary.push_str("; no other schedule targets it");
    } else {
        summary.push_str(&format!("; competes with {}", competing.join(", ")));
    }
    if !unmeasured.is_empty() {
        summary.push_str(&format!(
            "; not counted (too few runs or no interval): {}",
            unmeasured.join(", ")
        ));
    }
    v1::ServerAdvice {
        agent: agent.to_string(),
        load_p95: load,
        competing,
        unmeasured,
        shortest_interval_ms: shortest.unwrap_or(0),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, durations_s: &[i64], every_s: u64) -> Measured {
        Measured {
            name: name.into(),
            durations_ms: durations_s.iter().map(|s| s * 1000).collect(),
            interval: Some(Duration::from_secs(every_s)),
        }
    }

    #[test]
    fn p95_is_the_nearest_rank() {
        let d: Vec<i64> = (1..=20).map(|i| i * 1000).collect();
        assert_eq!(p95(&d), Some(19_000));
        let d: Vec<i64> = (1..=100).collect();
        assert_eq!(p95(&d), Some(95));
        assert_eq!(p95(&[7]), Some(7));
        assert_eq!(p95(&[]), None);
    }

    #[test]
    fn the_shortest_interval_keeps_saturation_strictly_under_the_target() {
        // 8 s at p95: 10 s would be exactly 0.8, so 11 s.
        assert_eq!(shortest_interval_ms(8_000, 0.0), Some(11_000));
        // 100 s at p95: 125 s is 0.8, so 126 s.
        assert_eq!(shortest_interval_ms(100_000, 0.0), Some(126_000));
        assert_eq!(shortest_interval_ms(7_900, 0.0), Some(10_000));
        // Others use 0.4 of the gate: 40 s / 0.4 = 100 s is the limit, so 101 s.
        assert_eq!(shortest_interval_ms(40_000, 0.4), Some(101_000));
        assert_eq!(shortest_interval_ms(1_000, 0.8), None);
        assert_eq!(shortest_interval_ms(1_000, 0.95), None);
    }

    #[test]
    fn a_schedule_with_known_durations_gets_its_figures() {
        // Durations 60..=79 s (20 runs): p95 is 78 s; interval 90 s.
        let durations: Vec<i64> = (60..80).collect();
        let a = schedule_advice(&m("delta", &durations, 90));
        assert_eq!(a.runs_measured, 20);
        assert_eq!(a.p95_duration_ms, 78_000);
        assert_eq!(a.interval_ms, 90_000);
        assert!((a.saturation_p95 - 78.0 / 90.0).abs() < 1e-9);
        // 78 / 0.8 = 97.5 s, so 98 s.
        assert_eq!(a.shortest_interval_ms, 98_000);
        assert_eq!(
            a.summary,
            "p95 run duration 1m18s over 20 runs: the shortest interval under 0.8 saturation is 1m38s; the current 1m30s interval gives 0.87 (too short: lengthen it)"
        );
    }

    #[test]
    fn too_few_runs_say_how_many_are_needed() {
        let a = schedule_advice(&m("new", &[10, 12, 11], 60));
        assert_eq!((a.runs_measured, a.runs_needed), (3, 5));
        assert_eq!((a.p95_duration_ms, a.shortest_interval_ms), (0, 0));
        assert_eq!(
            a.summary,
            "not enough data: 3 finished runs measured, advice needs at least 5 (2 more)"
        );
        let s = server_advice("sync-01", &m("new", &[10], 60), &[]);
        assert_eq!(s.unmeasured, ["new"]);
        assert_eq!(s.shortest_interval_ms, 0);
        assert!(
            s.summary.contains("too few runs to advise on (1 of 5)"),
            "{}",
            s.summary
        );
    }

    #[test]
    fn schedules_on_one_server_add_up() {
        // full: p95 120 s every 600 s = 0.2; delta: p95 30 s every 300 s = 0.1;
        // this: p95 40 s every 120 s = 0.333.
        let full = m("full", &[100, 110, 120, 115, 105], 600);
        let delta = m("delta", &[30, 30, 30, 30, 30], 300);
        let fresh = m("fresh", &[5], 60);
        let this = m("this", &[40, 35, 38, 40, 39], 120);
        let s = server_advice("sync-01", &this, &[&full, &delta, &fresh]);
        assert!(
            (s.load_p95 - (0.2 + 0.1 + 40.0 / 120.0)).abs() < 1e-9,
            "{}",
            s.load_p95
        );
        assert_eq!(s.competing, ["delta", "fresh", "full"]);
        assert_eq!(s.unmeasured, ["fresh"]);
        // 0.8 - 0.3 = 0.5 left: 40 s / 0.5 = 80 s, so 81 s.
        assert_eq!(s.shortest_interval_ms, 81_000);
        assert_eq!(
            s.summary,
            "load 0.63 at p95; with the other schedules' load (0.30) this schedule can run every 1m21s or more; competes with delta, fresh, full; not counted (too few runs or no interval): fresh"
        );
        // Others at 0.9: no interval helps.
        let heavy = m("heavy", &[540, 540, 540, 540, 540], 600);
        let s = server_advice("sync-02", &this, &[&heavy]);
        assert_eq!(s.shortest_interval_ms, 0);
        assert!(
            s.summary
                .contains("no interval of this schedule keeps it under 0.8"),
            "{}",
            s.summary
        );
    }
}
