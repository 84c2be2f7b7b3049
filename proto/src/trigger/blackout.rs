//! Blackout windows: `[start, start + duration)` at every match of a cron expression, in the
//! schedule's time zone. Fire times inside one are skipped, not delayed.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::cron::CronTimes;
use super::{Fire, MISSED_WALK_LIMIT, SEARCH_MAX_CANDIDATES, Trigger, TriggerError, Window};
use crate::schedule_model::BlackoutDoc;

#[derive(Debug, Clone)]
pub(super) struct Blackout {
    pub(super) starts: CronTimes,
    pub(super) duration: TimeDelta,
}

impl Trigger {
    /// Whether the fire time `f` falls inside a blackout window.
    pub fn is_blacked_out(&self, f: DateTime<Utc>) -> bool {
        self.blackout_covering(f).is_some()
    }

    /// How many fire times in `(from, to]` (inside start/end) are blacked out.
    pub fn blacked_out_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
        if self.blackouts.is_empty() {
            return 0;
        }
        let Some((lo, hi)) = self.span_within(from, to) else {
            return 0;
        };
        match &self.fire {
            Fire::Every(grid) => {
                let (unblacked, cut) = self.grid_count_unblacked_to(grid, lo, hi);
                if cut <= lo {
                    return 0;
                }
                grid.count(lo, cut).saturating_sub(unblacked)
            }
            Fire::Cron(_) => {
                let mut t = lo;
                let mut count = 0u64;
                for _ in 0..SEARCH_MAX_CANDIDATES {
                    let Some(f) = self.nominal_after(t) else {
                        break;
                    };
                    if f > hi {
                        break;
                    }
                    if self.is_blacked_out(f) {
                        count += 1;
                    }
                    t = f;
                }
                count
            }
        }
    }

    /// If `f` is inside blackout windows: the earliest start and latest end of the windows that
    /// contain it.
    pub(super) fn blackout_covering(&self, f: DateTime<Utc>) -> Option<Window> {
        let mut covering: Option<Window> = None;
        for b in &self.blackouts {
            if let Some((start, end)) = b.window_containing(self.tz, f) {
                covering = Some(match covering {
                    None => (start, end),
                    Some((s, e)) => (s.min(start), e.max(end)),
                });
            }
        }
        covering
    }
}

impl Blackout {
    pub(super) fn compile(i: usize, doc: &BlackoutDoc) -> Result<Blackout, TriggerError> {
        let starts = CronTimes::parse(&format!("blackout[{i}].cron"), &doc.cron)?;
        if doc.duration.is_zero() {
            return Err(TriggerError::new(
                format!("blackout[{i}].duration"),
                "must be longer than 0, e.g. 4h",
            ));
        }
        let duration = TimeDelta::from_std(doc.duration).map_err(|_| {
            TriggerError::new(
                format!("blackout[{i}].duration"),
                format!("{} is too long", humantime::format_duration(doc.duration)),
            )
        })?;
        Ok(Blackout { starts, duration })
    }

    /// The window of the latest start at or before `f`, if it still contains `f`.
    pub(super) fn window_containing(&self, tz: Tz, f: DateTime<Utc>) -> Option<Window> {
        let start = self.starts.at_or_before(tz, f)?;
        let end = start
            .checked_add_signed(self.duration)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        (f < end).then_some((start, end))
    }

    /// Windows overlapping `(lo, hi]`, at most [`MISSED_WALK_LIMIT`]; `false` when cut short.
    pub(super) fn windows_overlapping(
        &self,
        tz: Tz,
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
    ) -> (Vec<Window>, bool) {
        let mut out = Vec::new();
        // The window open at lo (the latest start at or before lo has the latest end).
        if let Some(w) = self.window_containing(tz, lo) {
            out.push(w);
        }
        let mut t = lo;
        while let Some(start) = self.starts.next_after(tz, t) {
            if start > hi {
                return (out, true);
            }
            if out.len() as u64 >= MISSED_WALK_LIMIT {
                return (out, false);
            }
            let end = start
                .checked_add_signed(self.duration)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            out.push((start, end));
            t = start;
        }
        (out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::testutil::*;

    // ---- blackouts, start and end --------------------------------------------------------

    #[test]
    fn weekly_blackout_skips_fire_times_inside_the_window() {
        // 2026-06-06 is a Saturday.
        let mut doc = every_doc("30m", None);
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-06-06T21:00:00Z"), 3),
            vec![
                utc("2026-06-06T21:30:00Z"),
                // 22:00 (the window's start) .. 01:30 are skipped; 02:00 (its end) fires.
                utc("2026-06-07T02:00:00Z"),
                utc("2026-06-07T02:30:00Z"),
            ]
        );
        // A week holds 336 half hours, 8 of them blacked out.
        let week = t.missed_between(utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"));
        assert_eq!(week.count, 328);
        assert_eq!(week.latest, Some(utc("2026-06-08T00:00:00Z")));
        // Ending inside the window: the latest is the last time before it.
        let m = t.missed_between(utc("2026-06-06T12:00:00Z"), utc("2026-06-07T01:00:00Z"));
        assert_eq!(
            m,
            Missed {
                latest: Some(utc("2026-06-06T21:30:00Z")),
                count: 19
            }
        );
        // Arithmetic agrees with walking.
        let walked = t
            .upcoming(utc("2026-06-01T00:00:00Z"), 400)
            .into_iter()
            .filter(|f| *f <= utc("2026-06-08T00:00:00Z"))
            .count();
        assert_eq!(walked, 328);
    }

    #[test]
    fn blacked_out_fire_times_are_candidates_and_counted() {
        // Interval: a week holds 336 half hours; 8 are blacked out (Saturday 22:00..02:00).
        let mut doc = every_doc("30m", None);
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        let (from, to) = (utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"));
        assert_eq!(t.blacked_out_between(from, to), 8);
        assert_eq!(
            t.blacked_out_between(from, to) + t.missed_between(from, to).count,
            336
        );
        // The scheduler's timer sees the blacked-out times too, and knows them.
        let sat = utc("2026-06-06T21:30:00Z");
        assert_eq!(
            t.next_candidate_after(sat),
            Some(utc("2026-06-06T22:00:00Z"))
        );
        assert!(t.is_blacked_out(utc("2026-06-06T22:00:00Z")));
        assert!(!t.is_blacked_out(utc("2026-06-07T02:00:00Z")));
        assert!(!t.is_blacked_out(sat));

        // Cron, the same week and window, walked.
        let mut doc = cron_doc(&["*/30 * * * *"], None);
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(t.blacked_out_between(from, to), 8);
        assert_eq!(t.missed_between(from, to).count, 328);
        // Start and end bound the candidates.
        doc.end_at = Some(utc("2026-06-06T23:00:00Z"));
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(t.blacked_out_between(from, to), 3);
        assert_eq!(t.next_candidate_after(utc("2026-06-06T23:00:00Z")), None);
        // No blackout: nothing to count.
        assert_eq!(
            Trigger::compile(&every_doc("1s", None))
                .unwrap()
                .blacked_out_between(from, to),
            0
        );
    }

    #[test]
    fn blackout_is_matched_in_the_schedule_time_zone() {
        // Saturday 22:00 in Oslo (CEST) is 20:00Z; the window ends Sunday 00:00Z.
        let mut doc = cron_doc(&["0 * * * *"], Some("Europe/Oslo"));
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-06-06T18:30:00Z"), 3),
            vec![
                utc("2026-06-06T19:00:00Z"),
                utc("2026-06-07T00:00:00Z"),
                utc("2026-06-07T01:00:00Z"),
            ]
        );
        let week = t.missed_between(utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"));
        assert_eq!(week.count, 168 - 4);
        // With an interval, too.
        let mut doc = every_doc("1h", None);
        doc.trigger.time_zone = Some("Europe/Oslo".into());
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.next_after(utc("2026-06-06T19:30:00Z")),
            Some(utc("2026-06-07T00:00:00Z"))
        );
        assert_eq!(
            t.missed_between(utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"))
                .count,
            168 - 4
        );
    }

    #[test]
    fn overlapping_blackouts_are_not_subtracted_twice() {
        let mut doc = every_doc("1h", None);
        doc.blackout = vec![blackout("0 22 * * *", "4h"), blackout("0 0 * * *", "3h")];
        let t = Trigger::compile(&doc).unwrap();
        // Daily 22:00..03:00 blacked out: 5 of 24 hours.
        let m = t.missed_between(utc("2026-06-01T00:00:00Z"), utc("2026-06-04T00:00:00Z"));
        let walked = t
            .upcoming(utc("2026-06-01T00:00:00Z"), 100)
            .into_iter()
            .filter(|f| *f <= utc("2026-06-04T00:00:00Z"))
            .count() as u64;
        assert_eq!(m.count, walked);
        assert_eq!(m.count, 3 * 19);
        assert_eq!(m.latest, Some(utc("2026-06-03T21:00:00Z")));
    }

    #[test]
    fn a_trigger_blacked_out_for_good_answers_quickly() {
        let now = utc("2026-01-01T00:00:00Z");
        // Blacked out for good: the bounded search gives up.
        let mut doc = cron_doc(&["0 0 * * *"], None);
        doc.blackout = vec![blackout("0 0 * * *", "1d")];
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(t.next_after(now), None);
        assert_eq!(t.missed_between(now, utc("2027-01-01T00:00:00Z")).count, 0);
    }
}
