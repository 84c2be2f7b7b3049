//! Run-history XML parse throughput and memory: the agent's public parser
//! (`syncfleet_agent::engine::runhistory::parse`) on generated files, each parsed in a child
//! process (`fleet-bench parse-child FILE`) so that its peak memory (`VmHWM`) is the parser's
//! and not the benchmark's.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use serde_json::{Value, json};

use super::error::{BenchError, Result};
use super::procfs;
use super::report::{Budget, Report};
use super::xmlgen::{self, Shape};

/// Size of the node-heavy file relative to the errors-heavy one (41 and 53 MB were the sizes
/// the budget was set with).
const NODES_RATIO: f64 = 0.8;

/// The child: reads `file`, parses it once, prints JSON with the size, the parse time and the
/// peak RSS.
pub fn child(file: &Path) -> Result<Value> {
    let xml = std::fs::read_to_string(file)
        .map_err(BenchError::io(format!("cannot read {}", file.display())))?;
    let t = Instant::now();
    let parsed = syncfleet_agent::engine::runhistory::parse(&xml);
    let secs = t.elapsed().as_secs_f64();
    let peak = procfs::own()?.hwm;
    Ok(match parsed {
        Ok(runs) => json!({
            "bytes": xml.len(),
            "seconds": secs,
            "peak_rss": peak,
            "runs": runs.len(),
            "steps": runs.iter().map(|r| r.steps.len()).sum::<usize>(),
        }),
        Err(e) => json!({"bytes": xml.len(), "error": e.to_string()}),
    })
}

/// Measures both shapes, the errors-heavy file `errors_bytes` long.
pub async fn measure(work: &Path, errors_bytes: u64, report: &mut Report) -> Result<()> {
    let exe = std::env::current_exe().map_err(BenchError::io("cannot find fleet-bench itself"))?;
    let nodes_bytes = (errors_bytes as f64 * NODES_RATIO) as u64;
    for (shape, bytes) in [
        (Shape::ErrorsHeavy, errors_bytes),
        (Shape::NodeHeavy, nodes_bytes),
    ] {
        let path = work.join(format!("{}.xml", shape.name()));
        let size = xmlgen::generate(shape, bytes, &path)?;
        let out = tokio::process::Command::new(&exe)
            .arg("parse-child")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(BenchError::io("cannot start the parse child"))?;
        let _ = std::fs::remove_file(&path);
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            BenchError::Failed(format!(
                "the parse child printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        let name = shape.name();
        let size_mb = size as f64 / 1e6;
        let (speed, ratio, note) = match (v["seconds"].as_f64(), v["peak_rss"].as_f64()) {
            (Some(s), Some(peak)) => (
                Some((size_mb / s.max(1e-9) * 10.0).round() / 10.0),
                Some((peak / size as f64 * 100.0).round() / 100.0),
                format!(
                    "{size_mb:.1} MB file, {} runs, {} steps; peak RSS of the parsing process / file size",
                    v["runs"], v["steps"]
                ),
            ),
            _ => (
                None,
                None,
                format!("parser refused the {size_mb:.1} MB file: {}", v["error"]),
            ),
        };
        report.add(
            &format!("parse.{name}.mb_per_s"),
            &format!("run-history parse, {name}"),
            speed,
            "MB/s",
            Budget::AtLeast(100.0),
            note.clone(),
        );
        report.add(
            &format!("parse.{name}.memory_ratio"),
            &format!("run-history parse memory, {name}"),
            ratio,
            "× file",
            Budget::AtMost(3.0),
            note,
        );
        report.context(&format!("parse.{name}"), v);
    }
    Ok(())
}
