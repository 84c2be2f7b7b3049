//! `fleet-bench`: measures a syncfleet controller against the scale budgets with simulated
//! agents that speak the real protocol over real mTLS, a real agent process, the agent's
//! run-history parser and a large store. One concept per module: the controller under test
//! ([`controller`]), enrollment ([`enroll`]), the agent simulator ([`sim`]), one module per
//! measurement, and the report ([`report`]).

pub mod adhoc;
pub mod controller;
pub mod enroll;
pub mod error;
pub mod events;
pub mod fanout;
pub mod footprint;
pub mod http;
pub mod idle;
pub mod options;
pub mod parse;
pub mod phase;
pub mod procfs;
pub mod reconnect;
pub mod report;
pub mod restart;
pub mod runs_list;
pub mod schedule;
pub mod scrape;
pub mod sim;
pub mod stats;
pub mod xmlgen;

use std::path::Path;

use serde_json::json;

use controller::{Access, ControllerProc};
use error::{BenchError, Result};
use options::{Options, Row};
use procfs::mb;
use report::{Budget, Report};

/// Output of `git ARGS` in the source tree fleet-bench was built from, when git answers.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The commit of that source tree, with `+uncommitted` when files differ from it.
fn git_commit() -> String {
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head}+uncommitted"),
        _ => head,
    }
}

fn failed(report: &mut Report, errors: &mut Vec<String>, row: &str, e: &BenchError) {
    report.add(
        &format!("{row}.error"),
        &format!("{row}: not measured"),
        None,
        "",
        Budget::None,
        e.to_string(),
    );
    errors.push(format!("{row}: {e}"));
}

/// Measures the rows `opts` asks for. Returns the report and the errors of rows that failed.
pub async fn run(opts: &Options) -> Result<(Report, Vec<String>)> {
    let mut report = Report::default();
    let mut errors = Vec::new();
    let (cpus, model) = procfs::machine();
    report.context("machine", json!({"nproc": cpus, "model": model}));
    report.context("git_commit", json!(git_commit()));
    report.context(
        "options",
        json!({
            "agents": opts.agents,
            "idle_s": opts.idle.as_secs_f64(),
            "duration_s": opts.duration.as_secs_f64(),
            "schedule_every_s": opts.schedule_every.as_secs_f64(),
            "events_per_run": opts.events_per_run,
            "store_runs": opts.store_runs,
            "agent_idle_s": opts.agent_idle.as_secs_f64(),
            "parse_mb": opts.parse_mb,
            "controller": opts.controller.clone().unwrap_or_else(|| "started".into()),
        }),
    );
    let work = tempfile::Builder::new()
        .prefix("fleet-bench-")
        .tempdir()
        .map_err(BenchError::io("cannot create a temporary folder"))?;
    let bin_dir = opts.bin_dir();

    let needs_controller = opts.wants_fleet() || opts.wants(Row::Agent);
    let mut started: Option<ControllerProc> = None;
    let access: Option<Access> = if !needs_controller {
        None
    } else if let (Some(url), Some(ca), Some(cert), Some(key)) =
        (&opts.controller, &opts.ca, &opts.cert, &opts.key)
    {
        let read = |p: &Path| {
            std::fs::read(p).map_err(BenchError::io(format!("cannot read {}", p.display())))
        };
        Some(Access {
            url: url.clone(),
            server_name: opts.server_name.clone(),
            ca_pem: read(ca)?,
            operator_cert: read(cert)?,
            operator_key: read(key)?,
        })
    } else {
        let data = work.path().join("controller");
        controller::init(&bin_dir, &data).await?;
        let proc =
            ControllerProc::serve(&bin_dir, &data, opts.agents, &opts.controller_arg).await?;
        let access = proc.access.clone();
        started = Some(proc);
        Some(access)
    };
    if let (Some(access), true) = (&access, opts.wants_fleet()) {
        fleet_rows(opts, access, started.as_mut(), &mut report, &mut errors).await?;
    }
    if let (Some(access), true) = (&access, opts.wants(Row::Agent)) {
        let mut op = access.operator().await?;
        if let Err(e) = footprint::measure(
            access,
            &mut op,
            &bin_dir,
            work.path(),
            opts.agent_idle,
            &mut report,
        )
        .await
        {
            failed(&mut report, &mut errors, "agent", &e);
        }
    }
    if let Some(p) = started.take() {
        p.stop().await;
    }
    if opts.wants(Row::Parse)
        && let Err(e) = parse::measure(work.path(), opts.parse_mb * 1_000_000, &mut report).await
    {
        failed(&mut report, &mut errors, "parse", &e);
    }
    if opts.wants(Row::RunsList) {
        if opts.controller.is_some() {
            report.context("runs_list.skipped", json!("needs a controller of its own"));
        } else if let Err(e) = runs_list::measure(
            &bin_dir,
            work.path(),
            opts.store_runs,
            &opts.controller_arg,
            &mut report,
        )
        .await
        {
            failed(&mut report, &mut errors, "runs_list", &e);
        }
    }
    Ok((report, errors))
}

/// The rows measured with the simulated fleet connected.
async fn fleet_rows(
    opts: &Options,
    access: &Access,
    started: Option<&mut ControllerProc>,
    report: &mut Report,
    errors: &mut Vec<String>,
) -> Result<()> {
    let n = opts.agents;
    let pid = started.as_ref().map(|p| p.pid);
    let mut op = access.operator().await?;
    let names: Vec<String> = (0..n).map(enroll::agent_name).collect();
    let (ids, cost) = enroll::enroll_all(access, names, opts.enroll_parallelism).await?;
    report.context(
        "enrollment",
        json!({
            "agents": n,
            "wall_s": cost.wall.as_secs_f64(),
            "keygen_total_s": cost.keygen.as_secs_f64(),
            "keygen_per_agent_ms": cost.keygen.as_secs_f64() * 1000.0 / n.max(1) as f64,
        }),
    );
    let sim_before = procfs::own()?;
    let t = std::time::Instant::now();
    let fleet =
        sim::SimFleet::start(access, ids, opts.events_per_run, opts.connect_parallelism).await?;
    report.context("fleet_connect_s", json!(t.elapsed().as_secs_f64()));
    let sim_connected = procfs::own()?;

    let memory = opts.wants(Row::Memory) && pid.is_some();
    let mem_budget = if n >= 10_000 {
        Budget::AtMost(500.0)
    } else {
        Budget::None
    };
    if let (true, Some(pid)) = (memory, pid) {
        // Let the connect burst's buffers settle.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let s = procfs::sample(pid)?;
        report.add(
            "memory.idle_rss_mb",
            &format!("controller RSS, {n} agents connected, idle"),
            Some(mb(s.rss)),
            "MB",
            mem_budget,
            "VmRSS",
        );
        report.add(
            "memory.idle_pss_mb",
            &format!("controller PSS, {n} agents connected, idle"),
            Some(mb(s.pss)),
            "MB",
            Budget::None,
            "smaps_rollup Pss",
        );
    } else if opts.wants(Row::Memory) {
        report.context(
            "memory.skipped",
            json!("the controller is not a child of fleet-bench"),
        );
    }
    if opts.wants(Row::Idle) {
        match pid {
            Some(pid) => {
                if let Err(e) = idle::measure(pid, n, opts.idle, report).await {
                    failed(report, errors, "idle", &e);
                }
            }
            None => report.context(
                "idle.skipped",
                json!("the controller is not a child of fleet-bench"),
            ),
        }
    }
    if opts.wants(Row::Schedule)
        && let Err(e) = schedule::measure(
            &mut op,
            &fleet,
            opts.schedule_every,
            opts.duration,
            pid,
            report,
        )
        .await
    {
        failed(report, errors, "schedule", &e);
    }
    if opts.wants(Row::Adhoc)
        && let Err(e) = adhoc::measure(&op, &fleet, pid, report).await
    {
        failed(report, errors, "adhoc", &e);
    }
    if opts.wants(Row::Events)
        && let Err(e) =
            events::measure(&op, &fleet, opts.duration, opts.events_per_run, pid, report).await
    {
        failed(report, errors, "events", &e);
    }
    if let (true, Some(pid)) = (memory, pid) {
        let s = procfs::sample(pid)?;
        report.add(
            "memory.after_runs_rss_mb",
            &format!("controller RSS, {n} agents connected, after the runs"),
            Some(mb(s.rss)),
            "MB",
            mem_budget,
            "VmRSS",
        );
        report.add(
            "memory.after_runs_pss_mb",
            &format!("controller PSS, {n} agents connected, after the runs"),
            Some(mb(s.pss)),
            "MB",
            Budget::None,
            "smaps_rollup Pss",
        );
    }
    if opts.wants(Row::Metrics) {
        let url = match (&started, &opts.metrics_url) {
            (Some(p), _) => Some(format!("{}/metrics", p.http_url)),
            (None, url) => url.clone(),
        };
        match url {
            Some(url) => {
                if let Err(e) = scrape::measure(&url, n, report).await {
                    failed(report, errors, "metrics", &e);
                }
            }
            None => report.context(
                "metrics.skipped",
                json!("no --metrics-url for the running controller"),
            ),
        }
    }
    if opts.wants(Row::Reconnect)
        && let Err(e) = reconnect::measure(&mut op, &fleet, pid, report).await
    {
        failed(report, errors, "reconnect", &e);
    }
    if opts.wants(Row::Restart) {
        match started {
            Some(proc) => {
                if let Err(e) = restart::measure(proc, access, &fleet, report).await {
                    failed(report, errors, "restart", &e);
                }
            }
            None => report.context(
                "restart.skipped",
                json!("the controller is not a child of fleet-bench"),
            ),
        }
    }
    // Let the last acknowledgements arrive, then compare what was sent and stored.
    let shared = std::sync::Arc::clone(&fleet.shared);
    let settled = error::wait_until(
        "every event sent to be acknowledged",
        std::time::Duration::from_secs(60),
        || {
            let sent = shared.events_sent.load(std::sync::atomic::Ordering::SeqCst);
            (shared
                .events_acked
                .load(std::sync::atomic::Ordering::SeqCst)
                >= sent)
                .then_some(())
        },
    )
    .await;
    if let Err(e) = settled {
        errors.push(e.to_string());
    }
    let sim_end = procfs::own()?;
    report.add(
        "simulator.rss_mb",
        &format!("simulator RSS ({n} agents, subtract from machine totals)"),
        Some(mb(sim_end.hwm)),
        "MB",
        Budget::None,
        format!(
            "peak; {} MB before the agents connected, {} MB once connected",
            mb(sim_before.rss),
            mb(sim_connected.rss)
        ),
    );
    use std::sync::atomic::Ordering::SeqCst;
    report.check("events_sent", json!(shared.events_sent.load(SeqCst)));
    report.check("events_acked", json!(shared.events_acked.load(SeqCst)));
    report.check(
        "duplicate_start_runs",
        json!(shared.duplicates.load(SeqCst)),
    );
    report.check(
        "session_failures",
        json!(shared.session_failures.load(SeqCst)),
    );
    report.context("simulator.cpu_s", json!(sim_end.cpu_seconds));
    report.context("simulator.last_session_error", json!(shared.last_error()));
    fleet.stop().await;
    Ok(())
}
