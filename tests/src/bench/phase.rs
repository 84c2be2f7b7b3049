//! CPU used by the simulator and by the controller during one measurement, so readers can see
//! which side was busy (on a 2-core machine both share the same cores).

use std::time::Instant;

use serde_json::{Value, json};

use super::procfs;

/// CPU readings at the start of a phase.
#[derive(Debug)]
pub struct Phase {
    start: Instant,
    sim_cpu: f64,
    controller: Option<(u32, f64)>,
}

impl Phase {
    pub fn begin(controller_pid: Option<u32>) -> Phase {
        Phase {
            start: Instant::now(),
            sim_cpu: procfs::own().map_or(0.0, |s| s.cpu_seconds),
            controller: controller_pid
                .map(|pid| (pid, procfs::sample(pid).map_or(0.0, |s| s.cpu_seconds))),
        }
    }

    /// Wall time and CPU seconds of the simulator and the controller since `begin`, with each
    /// one's share of one core.
    pub fn end(&self) -> Value {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let sim = procfs::own().map_or(0.0, |s| s.cpu_seconds) - self.sim_cpu;
        let ctl = self
            .controller
            .map(|(pid, c0)| procfs::sample(pid).map_or(0.0, |s| s.cpu_seconds) - c0);
        json!({
            "wall_s": round3(wall),
            "simulator_cpu_s": round3(sim),
            "simulator_cores": round3(sim / wall),
            "controller_cpu_s": ctl.map(round3),
            "controller_cores": ctl.map(|c| round3(c / wall)),
        })
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
