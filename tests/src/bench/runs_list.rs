//! `runs list` first page on a large store: a store of `runs` realistic runs (10 steps each,
//! 50 agents, created over 30 days, mostly finished) is written with the controller's own
//! `SqliteStore::insert_runs` in batches, a controller is started on it, and the first page of
//! `ListRuns` (default page size) is timed.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use syncfleet_controller::store::Store;
use syncfleet_controller::store::sqlite::SqliteStore;
use syncfleet_proto::v1;

use super::controller::{self, ControllerProc};
use super::error::{BenchError, Result};
use super::report::{Budget, Report};
use super::stats::percentile;

const BATCH: u64 = 10_000;
const AGENTS: u64 = 50;
const CALLS: usize = 50;
const WARMUP: usize = 3;
const SPAN_MS: i64 = 30 * 24 * 3600 * 1000;

const PROFILES: [(&str, &str); 10] = [
    ("AD", "Delta Import"),
    ("HR", "Delta Import"),
    ("MIM Service", "Delta Import"),
    ("HR", "Delta Sync"),
    ("AD", "Delta Sync"),
    ("MIM Service", "Delta Sync"),
    ("AD", "Export"),
    ("MIM Service", "Export"),
    ("AD", "Delta Import"),
    ("MIM Service", "Delta Import"),
];

/// Run number `i` of `total`, created at a time spread evenly over the 30 days before `now_ms`.
fn run(i: u64, total: u64, now_ms: i64) -> v1::Run {
    let created = now_ms - SPAN_MS + (i as i64 * SPAN_MS) / total.max(1) as i64;
    let ts = syncfleet_proto::time::from_millis;
    let failed = i.is_multiple_of(20);
    let steps = PROFILES
        .iter()
        .enumerate()
        .map(|(k, (ma, profile))| {
            let start = created + 1000 + k as i64 * 30_000;
            let mut counters = v1::StepCounters::default();
            counters
                .counters
                .insert("stage-update".into(), (i * 7 + k as u64) % 500);
            counters
                .counters
                .insert("stage-add".into(), (i + k as u64) % 13);
            v1::Step {
                index: k as u32,
                ma: (*ma).into(),
                profile: (*profile).into(),
                state: v1::StepState::Done as i32,
                result: if failed && k == 9 {
                    "stopped-connectivity"
                } else {
                    "success"
                }
                .into(),
                started_at: Some(ts(start)),
                finished_at: Some(ts(start + 25_000)),
                counters: Some(counters),
                run_number: i * 10 + k as u64,
                stage: k as u32,
                attempts: 1,
                ..Default::default()
            }
        })
        .collect();
    v1::Run {
        id: uuid::Uuid::new_v4().to_string(),
        agent: format!("sync-{:02}", i % AGENTS),
        state: if failed {
            v1::RunState::Failed
        } else {
            v1::RunState::Succeeded
        } as i32,
        result: if failed {
            "stopped-connectivity"
        } else {
            "success"
        }
        .into(),
        origin: "schedule".into(),
        created_at: Some(ts(created)),
        started_at: Some(ts(created + 1000)),
        finished_at: Some(ts(created + 300_000)),
        steps,
        requested_by: "schedule/delta".into(),
        schedule: "delta-every-5m".into(),
        sequence: "delta-cycle".into(),
        nominal_time: Some(ts(created)),
        ..Default::default()
    }
}

pub async fn measure(
    bin_dir: &Path,
    work: &Path,
    runs: u64,
    extra: &[String],
    report: &mut Report,
) -> Result<()> {
    let data = work.join("store-controller");
    controller::init(bin_dir, &data).await?;
    let t = Instant::now();
    let store = SqliteStore::open(&data.join("controller.db"))
        .map_err(|e| BenchError::Failed(format!("cannot open the store: {e}")))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut i = 0;
    while i < runs {
        let end = (i + BATCH).min(runs);
        let batch: Vec<v1::Run> = (i..end).map(|k| run(k, runs, now_ms)).collect();
        store
            .insert_runs(&batch)
            .await
            .map_err(|e| BenchError::Failed(format!("cannot insert runs: {e}")))?;
        i = end;
    }
    drop(store);
    let built = t.elapsed();
    let db_bytes = std::fs::metadata(data.join("controller.db")).map_or(0, |m| m.len());

    let proc = ControllerProc::serve(bin_dir, &data, 0, extra).await?;
    let mut op = proc.access.operator().await?;
    let mut times = Vec::with_capacity(CALLS);
    let mut page_len = 0;
    for k in 0..WARMUP + CALLS {
        let t = Instant::now();
        let page = tokio::time::timeout(
            Duration::from_secs(60),
            op.list_runs(v1::ListRunsRequest::default()),
        )
        .await
        .map_err(|_| BenchError::Timeout(Duration::from_secs(60), "a ListRuns answer".into()))?
        .map_err(BenchError::rpc("ListRuns on the large store"))?
        .into_inner();
        if k >= WARMUP {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        page_len = page.runs.len();
    }
    proc.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    let note = format!(
        "{runs} runs of 10 steps, {CALLS} calls after {WARMUP} warm-up, page of {page_len}"
    );
    report.add(
        "runs_list.p50_ms",
        "runs list first page, p50",
        percentile(&times, 50.0),
        "ms",
        Budget::AtMost(20.0),
        note.clone(),
    );
    report.add(
        "runs_list.p99_ms",
        "runs list first page, p99",
        percentile(&times, 99.0),
        "ms",
        Budget::AtMost(20.0),
        note,
    );
    report.check("runs_list.store_runs", json!(runs));
    report.check("runs_list.page_len", json!(page_len));
    report.context("runs_list.store_build_s", json!(built.as_secs_f64()));
    report.context("runs_list.store_bytes", json!(db_bytes));
    Ok(())
}
