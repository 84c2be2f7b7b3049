//! Memory and CPU of a process from Linux's `/proc`: what the kernel accounts to it, so the
//! figures do not depend on the process's own reporting.

use super::error::{BenchError, Result};

/// One reading of a process's footprint.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`), bytes.
    pub hwm: u64,
    /// Proportional set size (`Pss` of `smaps_rollup`): shared pages divided among their users.
    pub pss: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Voluntary context switches: how often the process went to sleep waiting for something
    /// (a timer, a socket), a proxy for its wake-ups.
    pub voluntary_switches: u64,
}

fn read(pid: u32, file: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(BenchError::io(format!("cannot read {path}")))
}

/// A `Key:   123 kB` line of a `/proc` status file, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// Reads the footprint of process `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let status = read(pid, "status")?;
    let rollup = read(pid, "smaps_rollup").unwrap_or_default();
    let stat = read(pid, "stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `after` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let voluntary = voluntary_switches(pid, &status);
    Ok(ProcSample {
        rss: kb_field(&status, "VmRSS").unwrap_or(0),
        hwm: kb_field(&status, "VmHWM").unwrap_or(0),
        pss: kb_field(&rollup, "Pss").unwrap_or(0),
        cpu_seconds: (ticks(14) + ticks(15)) as f64 / CLOCK_TICKS,
        voluntary_switches: voluntary,
    })
}

/// Voluntary context switches of every live thread of `pid` (`/proc/PID/status` counts only the
/// main thread; a multi-threaded runtime sleeps and wakes on its worker threads). A thread that
/// exits takes its count with it, so the sum can go down between two samples: subtract with
/// `saturating_sub`. Falls back to the main thread's count when the task list cannot be read.
fn voluntary_switches(pid: u32, main_status: &str) -> u64 {
    let field = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .map(|s| field(&s))
            .sum(),
        Err(_) => field(main_status),
    }
}

/// The footprint of this process.
pub fn own() -> Result<ProcSample> {
    sample(std::process::id())
}

/// `MB` with one decimal, from bytes.
pub fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0
}

/// Machine description for the report: CPU count and model.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cpus, model)
}
