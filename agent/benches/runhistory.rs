//! Run-history XML parse throughput on the two large shapes the engine produces, built from the
//! real samples in `tests/data/run-history` by repeating elements (no large file in the
//! repository):
//!
//! - **errors-heavy** (~50 MB): the export sample's `<export-error>`, with its .NET stack trace,
//!   repeated (a run that hit thousands of export errors);
//! - **node-heavy** (~40 MB): the delta-import sample's step, renumbered and repeated (hundreds
//!   of thousands of small counter and connection elements).
//!
//! `cargo bench -p syncfleet-agent --bench runhistory`; throughput is reported in bytes/s.

#![allow(
    clippy::expect_used,
    reason = "benchmark setup: a sample that does not have the expected shape must stop the run"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncfleet_agent::engine::runhistory;

const DELTA_IMPORT: &str = include_str!(
    "../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
);
const EXPORT: &str = include_str!(
    "../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
);

/// The export sample with its one `<export-error>` repeated up to about `target` bytes.
fn errors_heavy(target: usize) -> (String, u64) {
    let start = EXPORT
        .find("<export-error")
        .expect("export sample has an export error");
    let end = EXPORT
        .find("</export-error>")
        .expect("export error is closed")
        + "</export-error>".len();
    let error = &EXPORT[start..end];
    let copies = target / (error.len() + 1) + 1;
    let mut xml = String::with_capacity(EXPORT.len() + copies * (error.len() + 1));
    xml.push_str(&EXPORT[..start]);
    for _ in 0..copies {
        xml.push_str(error);
        xml.push('\n');
    }
    xml.push_str(&EXPORT[end..]);
    (xml, copies as u64)
}

/// The delta-import sample's first step, renumbered and repeated up to about `target` bytes.
fn node_heavy(target: usize) -> (String, u64) {
    let start = DELTA_IMPORT
        .find("<step-details")
        .expect("sample has a step");
    let end = DELTA_IMPORT
        .find("</step-details>")
        .expect("step is closed")
        + "</step-details>".len();
    let last_end = DELTA_IMPORT
        .rfind("</step-details>")
        .expect("step is closed")
        + "</step-details>".len();
    let step = &DELTA_IMPORT[start..end];
    let numbered = step
        .find("step-number=\"2\"")
        .expect("first step is step 2");
    let copies = target / step.len() + 1;
    let mut xml = String::with_capacity(DELTA_IMPORT.len() + copies * (step.len() + 8));
    xml.push_str(&DELTA_IMPORT[..start]);
    for n in 1..=copies {
        xml.push_str(&step[..numbered]);
        xml.push_str(&format!("step-number=\"{n}\""));
        xml.push_str(&step[numbered + "step-number=\"2\"".len()..]);
        xml.push('\n');
    }
    xml.push_str(&DELTA_IMPORT[last_end..]);
    (xml, copies as u64)
}

fn bench(c: &mut Criterion) {
    let (errors, error_count) = errors_heavy(50_000_000);
    let run = runhistory::parse_one(&errors).expect("errors-heavy input parses");
    assert_eq!(run.steps[0].errors.count, error_count);
    let (nodes, step_count) = node_heavy(40_000_000);
    let run = runhistory::parse_one(&nodes).expect("node-heavy input parses");
    assert_eq!(run.steps.len() as u64, step_count);

    let mut group = c.benchmark_group("runhistory_parse");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, xml) in [("errors_heavy", &errors), ("node_heavy", &nodes)] {
        group.throughput(Throughput::Bytes(xml.len() as u64));
        group.bench_function(name, |b| b.iter(|| runhistory::parse(black_box(xml))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
