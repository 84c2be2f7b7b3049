//! Saturation of a schedule: how much of its interval its runs take (median run duration ÷
//! interval), shown by `syncfleet schedules show` with a plain warning above 0.8, and exported
//! as `syncfleet_schedule_saturation`.

use std::time::Duration;

use syncfleet_proto::time::to_millis;

use crate::store::{RunQuery, Store, StoreError};

/// How many of a schedule's newest runs its saturation is measured on.
pub const SATURATION_RUNS: usize = 10;

/// Durations (ms) of the schedule's newest [`SATURATION_RUNS`] runs that have both a start and
/// an end: the input of [`saturation`], read the same way by the metrics and the notifications.
pub async fn recent_durations(store: &dyn Store, schedule: &str) -> Result<Vec<i64>, StoreError> {
    let page = store
        .list_runs(&RunQuery {
            schedule: Some(schedule.to_string()),
            limit: SATURATION_RUNS,
            ..RunQuery::default()
        })
        .await?;
    Ok(page
        .runs
        .iter()
        .filter_map(|r| {
            Some(to_millis(r.finished_at.as_ref()?) - to_millis(r.started_at.as_ref()?))
        })
        .filter(|d| *d > 0)
        .collect())
}

/// Saturation: median run duration ÷ interval, from finished runs.
pub fn saturation(durations_ms: &[i64], interval: Option<Duration>) -> f64 {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        return 0.0;
    };
    if durations_ms.is_empty() {
        return 0.0;
    }
    let mut d = durations_ms.to_vec();
    d.sort_unstable();
    let median = if d.len() % 2 == 1 {
        d[d.len() / 2] as f64
    } else {
        (d[d.len() / 2 - 1] + d[d.len() / 2]) as f64 / 2.0
    };
    median / interval.as_millis() as f64
}

/// A duration for people: `1h5m`, `2m30s`, `8.5s`.
pub(crate) fn human(ms: f64) -> String {
    let d = Duration::from_millis(ms.max(0.0) as u64);
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The plain-language warning for a saturation above 0.8.
pub fn saturation_warning(sat: f64, interval: Option<Duration>) -> String {
    match interval {
        Some(i) if sat > 0.8 => {
            let interval_ms = i.as_millis() as f64;
            format!(
                "runs take {} of a {} interval: lengthen the interval or split the sequence",
                human(sat * interval_ms),
                human(interval_ms)
            )
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_is_median_over_interval_with_a_plain_warning() {
        let s = saturation(&[540_000, 530_000, 550_000], Some(Duration::from_secs(600)));
        assert!((s - 0.9).abs() < 1e-9, "{s}");
        assert_eq!(
            saturation_warning(s, Some(Duration::from_secs(600))),
            "runs take 9m0s of a 10m0s interval: lengthen the interval or split the sequence"
        );
        assert_eq!(saturation_warning(0.5, Some(Duration::from_secs(600))), "");
        assert_eq!(saturation(&[], Some(Duration::from_secs(1))), 0.0);
    }
}
