//! `fleet-bench`'s command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Measures a syncfleet controller against the scale budgets: N simulated agents speaking the
/// real agent protocol over mTLS, each with its own enrolled certificate, in this one process.
#[derive(Debug, Parser)]
#[command(name = "fleet-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub opts: Options,
    #[command(subcommand)]
    pub hidden: Option<Hidden>,
}

/// Internal subcommands: fleet-bench re-executes itself for measurements that need a process
/// of their own.
#[derive(Debug, Subcommand)]
pub enum Hidden {
    /// Parse one run-history file with the agent's parser and print JSON (bytes, seconds,
    /// peak RSS) on stdout.
    #[command(hide = true)]
    ParseChild { file: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// How long the scheduled fires (and the events phase) run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Interval of the benchmark schedule (`trigger: {every: ...}`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub schedule_every: Duration,
    /// Events each simulated run sends in the events phase (at least 4: RunStarted,
    /// StepStarted, StepProgress..., StepFinished, RunFinished).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=10_000))]
    pub events_per_run: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Runs in the store of the `runs list` measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub store_runs: u64,
    /// How long the controller is watched idle (every agent connected, nothing running).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// How long the real agent idles for its footprint.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub agent_idle: Duration,
    /// Size of the generated errors-heavy run-history file in MB (the node-heavy one is 80 %
    /// of it).
    #[arg(long, default_value_t = 50)]
    pub parse_mb: u64,
    /// Measure only these rows (comma list of: idle, schedule, adhoc, events, memory, metrics,
    /// reconnect, restart, agent, parse, runs-list).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Row>,
    /// Extra argument passed to `syncfleet-controller serve` (repeatable), e.g.
    /// `--controller-arg=--set --controller-arg=heartbeat_interval=30s`.
    #[arg(long, allow_hyphen_values = true)]
    pub controller_arg: Vec<String>,
    /// Use a running controller at this URL instead of starting one (needs --ca, --cert, --key
    /// of an operator). Rows that need the controller's process (memory, runs-list) are left
    /// out, and so are idle (it reads the controller's CPU) and restart.
    #[arg(long, requires_all = ["ca", "cert", "key"])]
    pub controller: Option<String>,
    /// `/metrics` URL of the running controller (the metrics row is left out without it).
    #[arg(long, requires = "controller")]
    pub metrics_url: Option<String>,
    /// CA certificate (PEM) of the running controller's fleet.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Operator certificate (PEM) for the running controller.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Operator key (PEM) for the running controller.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// TLS server name of the running controller's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Folder holding `syncfleet-controller` and `syncfleet-agent` (default: fleet-bench's own).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Concurrent enrollments.
    #[arg(long, default_value_t = 64)]
    pub enroll_parallelism: usize,
    /// Concurrent session connects (first connect and reconnect storm are not limited by
    /// this; it bounds only the initial fleet start).
    #[arg(long, default_value_t = 256)]
    pub connect_parallelism: usize,
}

/// One row of the budget table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Row {
    Idle,
    Schedule,
    Adhoc,
    Events,
    Memory,
    Metrics,
    Reconnect,
    Restart,
    Agent,
    Parse,
    RunsList,
}

impl Options {
    /// Whether `row` is measured in this invocation.
    pub fn wants(&self, row: Row) -> bool {
        self.only.is_empty() || self.only.contains(&row)
    }

    /// Whether any row needs the simulated fleet.
    pub fn wants_fleet(&self) -> bool {
        [
            Row::Idle,
            Row::Schedule,
            Row::Adhoc,
            Row::Events,
            Row::Memory,
            Row::Metrics,
            Row::Reconnect,
            Row::Restart,
        ]
        .iter()
        .any(|r| self.wants(*r))
    }

    /// Folder of the syncfleet binaries.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
                .unwrap_or_default()
        })
    }
}
