//! Trigger evaluation: the next fire time of each of 10,000 schedules, the work of the
//! scheduler when it (re)loads a fleet's schedules. The mix: cron expressions (5 and 6 fields,
//! several per schedule) in a dozen time zones, `every` intervals with phases, and a third of
//! the schedules with blackout windows.
//!
//! `cargo bench -p syncfleet-controller --bench trigger`.

#![allow(
    clippy::expect_used,
    reason = "benchmark setup: a schedule that does not compile must stop the run"
)]

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use syncfleet_controller::documents::trigger::Trigger;
use syncfleet_proto::schedule_model::{BlackoutDoc, Overlap, ScheduleDoc, Targets, TriggerDoc};

const SCHEDULES: usize = 10_000;

const ZONES: [&str; 12] = [
    "UTC",
    "Europe/Oslo",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Pacific/Auckland",
    "Africa/Johannesburg",
    "America/St_Johns",
];

fn schedule(i: usize) -> ScheduleDoc {
    let minute = i % 60;
    let hour = (i / 60) % 24;
    let trigger = match i % 6 {
        0 => TriggerDoc {
            cron: vec![format!("{minute} {hour} * * *")],
            ..TriggerDoc::default()
        },
        1 => TriggerDoc {
            cron: vec![format!("*/{} * * * *", 5 + i % 25)],
            ..TriggerDoc::default()
        },
        2 => TriggerDoc {
            cron: vec![
                format!("{minute} {hour} * * MON-FRI"),
                format!("{} {} * * SAT,SUN", (minute + 30) % 60, (hour + 6) % 24),
            ],
            ..TriggerDoc::default()
        },
        3 => TriggerDoc {
            cron: vec![format!("{} {minute} */2 * * *", i % 60)],
            ..TriggerDoc::default()
        },
        4 => TriggerDoc {
            cron: vec![format!("{minute} {hour} 1,15 * *")],
            ..TriggerDoc::default()
        },
        _ => TriggerDoc {
            every: Some(Duration::from_secs(60 * (1 + (i % 120) as u64))),
            phase: Some(Duration::from_secs((i % 60) as u64)),
            ..TriggerDoc::default()
        },
    };
    let trigger = TriggerDoc {
        time_zone: Some(ZONES[i % ZONES.len()].to_owned()),
        ..trigger
    };
    let blackout = if i.is_multiple_of(3) {
        vec![BlackoutDoc {
            cron: format!("0 {} * * *", (hour + 12) % 24),
            duration: Duration::from_secs(2 * 3600),
        }]
    } else {
        Vec::new()
    };
    ScheduleDoc {
        name: format!("s{i}"),
        description: String::new(),
        sequence: "seq".into(),
        targets: Targets {
            agents: vec!["a".into()],
            selector: None,
        },
        trigger,
        overlap: Overlap::default(),
        catchup_window: None,
        jitter: None,
        blackout,
        start_at: None,
        end_at: None,
        autonomy: None,
    }
}

fn bench(c: &mut Criterion) {
    let docs: Vec<ScheduleDoc> = (0..SCHEDULES).map(schedule).collect();
    let triggers: Vec<Trigger> = docs
        .iter()
        .map(|d| Trigger::compile(d).expect("benchmark schedule compiles"))
        .collect();
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-10-24T22:17:31Z")
        .expect("valid time")
        .with_timezone(&Utc);
    assert!(triggers.iter().all(|t| t.next_after(now).is_some()));

    let mut group = c.benchmark_group("trigger");
    // One iteration is tens of milliseconds: 20 samples keep a run under a minute.
    group.sample_size(20);
    group.throughput(Throughput::Elements(SCHEDULES as u64));
    group.bench_function("next_fire_10k_schedules", |b| {
        b.iter(|| {
            triggers
                .iter()
                .filter_map(|t| t.next_after(black_box(now)))
                .max()
        })
    });
    group.bench_function("compile_and_next_fire_10k_schedules", |b| {
        b.iter(|| {
            docs.iter()
                .filter_map(|d| Trigger::compile(black_box(d)).ok()?.next_after(now))
                .max()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
