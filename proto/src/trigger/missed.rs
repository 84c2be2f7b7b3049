//! Fire times in a span `(from, to]` (catch-up after downtime, a stalled loop), without
//! unbounded iteration: arithmetic for intervals, a bounded walk for cron, and a backward
//! search for the latest one.

use chrono::{DateTime, Utc};

use super::interval::Grid;
use super::{Fire, MISSED_WALK_LIMIT, Missed, SEARCH_MAX_CANDIDATES, Trigger, Window, just_before};

impl Trigger {
    /// Fire times in `(from, to]`.
    pub fn missed_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Missed {
        let none = Missed {
            latest: None,
            count: 0,
        };
        // Fire times are in (lo, hi].
        let Some((lo, hi)) = self.span_within(from, to) else {
            return none;
        };
        match &self.fire {
            Fire::Every(grid) => Missed {
                latest: self.latest_in(lo, hi),
                count: self.grid_count_unblacked(grid, lo, hi),
            },
            Fire::Cron(_) => self.walk_missed(lo, hi),
        }
    }

    /// The latest fire time in `(lo, hi]`, searching backwards from `hi` (bounded).
    pub(super) fn latest_in(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = hi;
        for _ in 0..SEARCH_MAX_CANDIDATES {
            let f = self.nominal_at_or_before(t)?;
            if f <= lo {
                return None;
            }
            match self.blackout_covering(f) {
                None => return Some(f),
                // The last candidate before the window started.
                Some((start, _)) => t = just_before(start).min(just_before(f)),
            }
        }
        None
    }

    /// Cron: walk the fire times of `(lo, hi]`, at most [`MISSED_WALK_LIMIT`] of them.
    pub(super) fn walk_missed(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Missed {
        let mut t = lo;
        let mut count = 0u64;
        let mut latest = None;
        let mut candidates = 0usize;
        loop {
            if count >= MISSED_WALK_LIMIT || candidates >= SEARCH_MAX_CANDIDATES {
                // Too many to walk: count is a lower bound, latest comes from a backward search.
                return Missed {
                    latest: self.latest_in(lo, hi),
                    count,
                };
            }
            let Some(f) = self.nominal_after(t) else {
                break;
            };
            if f > hi {
                break;
            }
            candidates += 1;
            match self.blackout_covering(f) {
                Some((_, end)) => t = just_before(end).max(f),
                None => {
                    count += 1;
                    latest = Some(f);
                    t = f;
                }
            }
        }
        Missed { latest, count }
    }

    /// Interval: grid points in `(lo, hi]` outside blackout windows, arithmetically.
    pub(super) fn grid_count_unblacked(
        &self,
        grid: &Grid,
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
    ) -> u64 {
        self.grid_count_unblacked_to(grid, lo, hi).0
    }

    /// Grid points in `(lo, cut]` outside blackout windows, and `cut`: `hi`, or earlier when a
    /// blackout has more windows in the span than are enumerated.
    pub(super) fn grid_count_unblacked_to(
        &self,
        grid: &Grid,
        lo: DateTime<Utc>,
        hi: DateTime<Utc>,
    ) -> (u64, DateTime<Utc>) {
        // Windows overlapping (lo, hi], and how far they are known (`cut`).
        let mut cut = hi;
        let mut windows: Vec<Window> = Vec::new();
        for b in &self.blackouts {
            let (mut ws, complete) = b.windows_overlapping(self.tz, lo, hi);
            if !complete && let Some(&(last_start, _)) = ws.last() {
                cut = cut.min(last_start);
            }
            windows.append(&mut ws);
        }
        if cut <= lo {
            return (0, cut);
        }
        let mut count = grid.count(lo, cut);
        // Merge the windows, then remove the grid points they hold.
        windows.sort();
        let mut merged: Vec<Window> = Vec::new();
        for (s, e) in windows {
            match merged.last_mut() {
                Some((_, last_end)) if s <= *last_end => *last_end = (*last_end).max(e),
                _ => merged.push((s, e)),
            }
        }
        for (s, e) in merged {
            // Grid points in [s, e) ∩ (lo, cut] = (max(lo, s-), min(cut, e-)].
            let a = lo.max(just_before(s));
            let b = cut.min(just_before(e));
            if b > a {
                count = count.saturating_sub(grid.count(a, b));
            }
        }
        (count, cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::testutil::*;

    /// The arithmetic and the backward search agree with walking `next_after`, for intervals and
    /// cron, with blackouts in a DST zone, over spans crossing the fall-back night.
    #[test]
    fn missed_between_agrees_with_walking() {
        struct Case {
            every: Option<(&'static str, Option<&'static str>)>,
            crons: &'static [&'static str],
            blackouts: &'static [(&'static str, &'static str)],
        }
        let cases = [
            Case {
                every: Some(("7m", Some("3m"))),
                crons: &[],
                blackouts: &[("0 22 * * 6", "4h")],
            },
            Case {
                every: Some(("1h", None)),
                crons: &[],
                blackouts: &[("30 2 * * *", "45m"), ("15 */5 * * *", "90m")],
            },
            Case {
                every: Some(("90s", Some("1s"))),
                crons: &[],
                blackouts: &[("0 */6 * * *", "1h"), ("0 5 * * *", "3h")],
            },
            Case {
                every: None,
                crons: &["*/20 * * * *"],
                blackouts: &[("0 2 * * *", "90m")],
            },
            Case {
                every: None,
                crons: &["0 9 * * 1-5", "0 * * * 6,0"],
                blackouts: &[("0 22 * * 6", "4h")],
            },
        ];
        for case in cases {
            let mut doc = match case.every {
                Some((every, phase)) => every_doc(every, phase),
                None => cron_doc(case.crons, None),
            };
            doc.trigger.time_zone = Some("Europe/Oslo".into());
            doc.blackout = case.blackouts.iter().map(|(c, d)| blackout(c, d)).collect();
            let t = Trigger::compile(&doc).unwrap();
            let mut total = 0;
            for (from, to) in [
                ("2026-10-22T03:17:00Z", "2026-10-27T00:00:00Z"),
                ("2026-10-24T21:59:59Z", "2026-10-25T04:00:01Z"),
                ("2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"),
            ] {
                let (from, to) = (utc(from), utc(to));
                let mut walked = Vec::new();
                let mut at = from;
                while let Some(f) = t.next_after(at).filter(|f| *f <= to) {
                    walked.push(f);
                    at = f;
                }
                let m = t.missed_between(from, to);
                assert_eq!(m.count, walked.len() as u64, "{doc:?} {from} {to}");
                assert_eq!(m.latest, walked.last().copied(), "{doc:?} {from} {to}");
                assert_eq!(t.latest_in(from, to), walked.last().copied());
                total += walked.len();
            }
            assert!(
                total > 20,
                "{doc:?} should fire in the spans, fired {total} times"
            );
        }
    }

    // ---- missed fire times ---------------------------------------------------------------

    #[test]
    fn missed_between_for_every_is_arithmetic() {
        let t = Trigger::compile(&every_doc("5m", Some("30s"))).unwrap();
        let m = t.missed_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-04T00:00:00Z"));
        assert_eq!(
            m,
            Missed {
                latest: Some(utc("2026-01-03T23:55:30Z")),
                count: 3 * 24 * 12
            }
        );
        // (from, to]: from excluded, to included.
        let m = t.missed_between(utc("2026-01-01T10:00:30Z"), utc("2026-01-01T10:05:30Z"));
        assert_eq!(
            m,
            Missed {
                latest: Some(utc("2026-01-01T10:05:30Z")),
                count: 1
            }
        );
        assert_eq!(
            t.missed_between(utc("2026-01-01T10:00:31Z"), utc("2026-01-01T10:05:29Z")),
            Missed {
                latest: None,
                count: 0
            }
        );
        assert_eq!(
            t.missed_between(utc("2026-01-02T00:00:00Z"), utc("2026-01-01T00:00:00Z"))
                .count,
            0
        );
        // A century of seconds, without iterating.
        let t = Trigger::compile(&every_doc("1s", None)).unwrap();
        let started = Instant::now();
        let m = t.missed_between(utc("2000-01-01T00:00:00Z"), utc("2100-01-01T00:00:00Z"));
        assert_eq!(m.count, 36_525 * 86_400);
        assert_eq!(m.latest, Some(utc("2100-01-01T00:00:00Z")));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn missed_between_for_cron() {
        let t = cron(&["0 * * * *"], None);
        let m = t.missed_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-04T00:00:00Z"));
        assert_eq!(
            m,
            Missed {
                latest: Some(utc("2026-01-04T00:00:00Z")),
                count: 72
            }
        );
        let mut doc = cron_doc(&["0 * * * *"], None);
        doc.blackout = vec![blackout("0 22 * * 6", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        let m = t.missed_between(utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"));
        assert_eq!(m.count, 168 - 4);
        // More than the walk limit: count is a lower bound, latest is still exact.
        let t = cron(&["* * * * * *"], None);
        let m = t.missed_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00.5Z"));
        assert_eq!(m.count, MISSED_WALK_LIMIT);
        assert_eq!(m.latest, Some(utc("2026-01-02T00:00:00Z")));
    }
}
