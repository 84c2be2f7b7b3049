//! Test helpers shared by the trigger's tests.

pub(super) use std::time::{Duration, Instant};

pub(super) use chrono::{DateTime, TimeDelta, Utc};
pub(super) use chrono_tz::Tz;

pub(super) use super::{Missed, Trigger};
pub(super) use crate::schedule_model::{BlackoutDoc, Overlap, ScheduleDoc, Targets, TriggerDoc};

pub(super) fn schedule(trigger: TriggerDoc) -> ScheduleDoc {
    ScheduleDoc {
        name: "s".into(),
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
        blackout: Vec::new(),
        start_at: None,
        end_at: None,
        autonomy: None,
    }
}

pub(super) fn cron_doc(exprs: &[&str], tz: Option<&str>) -> ScheduleDoc {
    schedule(TriggerDoc {
        cron: exprs.iter().map(|e| e.to_string()).collect(),
        time_zone: tz.map(str::to_string),
        ..TriggerDoc::default()
    })
}

pub(super) fn every_doc(every: &str, phase: Option<&str>) -> ScheduleDoc {
    schedule(TriggerDoc {
        every: Some(humantime::parse_duration(every).unwrap()),
        phase: phase.map(|p| humantime::parse_duration(p).unwrap()),
        ..TriggerDoc::default()
    })
}

pub(super) fn cron(exprs: &[&str], tz: Option<&str>) -> Trigger {
    Trigger::compile(&cron_doc(exprs, tz)).unwrap()
}

pub(super) fn blackout(cron: &str, duration: &str) -> BlackoutDoc {
    BlackoutDoc {
        cron: cron.into(),
        duration: humantime::parse_duration(duration).unwrap(),
    }
}

pub(super) fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub(super) fn err(doc: &ScheduleDoc) -> String {
    Trigger::compile(doc).unwrap_err().to_string()
}

pub(super) fn oslo() -> Tz {
    "Europe/Oslo".parse().unwrap()
}

/// Local wall-clock rendering, e.g. `10-25 02:30 CEST`.
pub(super) fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&oslo())
        .format("%m-%d %H:%M %Z")
        .to_string()
}
