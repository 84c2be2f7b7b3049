//! When a schedule fires: the compiled form of a schedule's `trigger`, `blackout`, `start_at` and
//! `end_at` (see [`ScheduleDoc`]). This module is the product's contract for fire times; the
//! scheduler loop, `syncfleet get` (next fire times) and catch-up after downtime all use it.
//!
//! # Cron or interval
//!
//! A trigger is either a list of cron expressions (`trigger.cron`) or an interval
//! (`trigger.every`, optionally `trigger.phase`). At most one of the two may be given, and one
//! must be unless `trigger.on_change` is: a change-only schedule has no fire times (its runs are
//! decided from the agents' change reports), and with `on_change` the cron or interval is the
//! fallback that fires whatever the sources say.
//!
//! **Cron.** The field count is checked, never guessed (Nomad #23753: a 7-field expression read
//! as seconds fired every few seconds for an hour):
//!
//! * 5 fields, `minute hour day month weekday`: minute precision, fires at second 0;
//! * 6 fields, `second minute hour day month weekday`: seconds first.
//!
//! Anything else (7 fields with a year, `@daily` nicknames, an empty string) is rejected. The
//! field syntax is croner's: lists, ranges, steps, `JAN`/`MON` names, `L`, `W`, `#`, and
//! day-of-month OR weekday as in Vixie cron (a weekday starting with `+` means AND). Several
//! expressions form a union: the schedule fires at every match of any of them, and an instant
//! matched by several fires once. An expression that can never match a real date
//! (`0 0 30 2 *`, February 30) is refused: a schedule (or blackout) that never fires is always
//! a mistake, and accepting it would hide that until someone wonders why nothing ran.
//!
//! **Time zone.** Cron expressions and blackout windows are matched against the wall clock of
//! `trigger.time_zone` (an IANA name, default `UTC`).
//!
//! **Interval.** Fire times are `epoch + n*every + phase` on the UTC time line (Temporal's
//! `IntervalSpec`), whatever the time zone and daylight saving time; `every` is at least 1 s,
//! `phase` is shorter than `every` and only allowed with `every`. With an interval the time zone
//! only matters for blackout windows.
//!
//! # Daylight saving time (cron only)
//!
//! * **Spring forward.** A wall-clock time that does not exist that day does not fire that day;
//!   it is not moved past the gap. In `Europe/Oslo` (02:00 → 03:00 on 2026-03-29) `30 2 * * *`
//!   does not fire on the 29th, and `0 * * * *` fires 23 times that day.
//! * **Fall back**, when a wall-clock hour happens twice (`Europe/Oslo`, 03:00 → 02:00 on
//!   2026-10-25), the hour field decides:
//!   * if it names particular hours (`30 2 * * *`, `0,30 2 * * *`, `0 */2 * * *`,
//!     `15 1-3 * * *`, i.e. anything but every hour), the expression names *times of day*, and
//!     a wall-clock time that happens twice fires **once**, at its first occurrence (the
//!     summer-time instant): `30 2 * * *` fires at 02:30 CEST only, `0,30 2 * * *` at 02:00 and
//!     02:30 CEST only;
//!   * if it matches every hour (`*`, `*/1`, `0-23`), the expression describes a *cadence*
//!     (`0 * * * *`, `*/15 * * * *`), and both instants of the repeated hour are distinct fire
//!     times: `0 * * * *` fires at 02:00 CEST and again at 02:00 CET, an hour later, like every
//!     other hour of the day (25 fire times that day). Deduplicating these would leave a
//!     two-hour hole in an hourly sync.
//!
//! What croner 4.0.3 does on its own (pinned by the `croner_alone_*` tests so an upgrade that
//! changes it is noticed): for "fixed-time" expressions (a single value in each of second,
//! minute and hour) it *moves* a time in the gap to the end of the gap (`30 2 * * *` fires at
//! 03:00 CEST on 2026-03-29) and fires once in the overlap; for every other expression it skips
//! gap times and fires at *both* instants of a repeated time (`0,30 2 * * *` fires four times
//! on 2026-10-25). The trigger filters croner's answers to enforce the rules above: a result
//! whose wall clock does not match the expression (a moved gap time) is dropped, and for
//! expressions naming particular hours the second instant of a repeated time is dropped.
//! Blackout window starts follow the same rules.
//!
//! # Blackout windows
//!
//! Each `blackout[i]` opens a window `[start, start + duration)` at every match of its cron
//! expression (same 5/6-field rule, in the schedule's time zone, `duration` > 0). Fire times
//! inside any window are skipped, not delayed: a fire time equal to a window's start is
//! skipped, one equal to its end fires.
//!
//! # Start and end
//!
//! No fire time before `start_at` or after `end_at` (both inclusive bounds); `end_at` must be
//! after `start_at`.
//!
//! # Searches are bounded
//!
//! [`Trigger::next_after`] looks at most [`SEARCH_MAX_CANDIDATES`] candidate times (blacked-out
//! ones included) and at most [`SEARCH_HORIZON`] past the later of `after` and `start_at`;
//! past either bound it answers `None`, so a trigger that never fires (or is blacked out for
//! good) costs a bounded search, never a hang.
//!
//! # Missed fire times
//!
//! [`Trigger::missed_between`] reports the fire times in `(from, to]` (the same filters:
//! start/end, blackouts; blacked-out times are not counted) without unbounded iteration, as
//! Kubernetes' `getMostRecentScheduleTime` does:
//!
//! * interval: `count` and `latest` are arithmetic (O(1)); blackout windows overlapping the
//!   span are enumerated, at most [`MISSED_WALK_LIMIT`] per blackout, and when a blackout has
//!   more, `count` only covers the part of the span up to the last enumerated window (a lower
//!   bound);
//! * cron: the fire times are walked forward, at most [`MISSED_WALK_LIMIT`] of them; when the
//!   span holds more, `count` is a lower bound (`count == MISSED_WALK_LIMIT` means "at least
//!   that many") and `latest` is found by searching backwards from `to` (croner's
//!   previous-occurrence search).
//!
//! `latest` is always exact.
//!
//! # Blacked-out fire times
//!
//! The scheduler counts blacked-out fire times (`skipped_blackout`) as they pass: its timer
//! follows [`Trigger::next_candidate_after`] (fire times inside start/end, blackouts *not*
//! applied) and asks [`Trigger::is_blacked_out`] for each. For a span it slept through (a
//! restart, a stall) [`Trigger::blacked_out_between`] counts them: arithmetically for an
//! interval (a lower bound where a blackout has more than [`MISSED_WALK_LIMIT`] windows in the
//! span), by walking at most [`SEARCH_MAX_CANDIDATES`] fire times for cron (a lower bound past
//! that). A fire time is thus either in [`Trigger::missed_between`]'s count or in this one.
//!
//! # Jitter
//!
//! [`Trigger::jitter_for`] is deterministic: FNV-1a (64 bit) over the seed's bytes and the
//! nominal time (nanoseconds since the epoch, 16 bytes little-endian), finished with the
//! splitmix64 mixer, scaled into `[0, bound)`. Both are fixed here, so the value is the same on
//! every platform, release and controller restart (a reload never moves a run, Salt #29302).
//! `bound` is the smallest of `max`, the gap to the next fire time and the gap to the next
//! blackout window start, so jitter never pushes a run past the next fire time (Temporal PR
//! #3059) or into a blackout window. Without a next fire time the bound is `max`.
//!
//! # Layout
//!
//! [`Trigger`] is compiled here and answers the next fire times; the pieces it is made of live
//! in submodules: cron expressions under the DST rules (`cron`), the interval grid
//! (`interval`), blackout windows (`blackout`), fire times in a span (`missed`) and jitter
//! (`jitter`).

mod blackout;
mod cron;
mod interval;
mod jitter;
mod missed;
#[cfg(test)]
mod testutil;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::schedule_model::ScheduleDoc;

use blackout::Blackout;
use cron::CronTimes;
use interval::Grid;

/// At most this many candidate times (blacked-out ones included) per [`Trigger::next_after`].
pub const SEARCH_MAX_CANDIDATES: usize = 100_000;

/// [`Trigger::next_after`] looks no further than this past the later of `after` and
/// `start_at` (five years).
pub const SEARCH_HORIZON: Duration = Duration::from_secs(5 * 366 * 24 * 3600);

/// [`Trigger::missed_between`] walks at most this many cron fire times (or blackout windows
/// per blackout for an interval); past it `count` is a lower bound.
pub const MISSED_WALK_LIMIT: u64 = 10_000;

/// [`Trigger::interval_hint`] takes the median gap of this many upcoming cron fire times.
pub const INTERVAL_HINT_SAMPLES: usize = 11;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A blackout window `[start, end)`.
type Window = (DateTime<Utc>, DateTime<Utc>);

/// Trigger problems; each names the field (`trigger.cron[0]`, `trigger.time_zone`, ...) and the
/// fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct TriggerError {
    pub field: String,
    pub problem: String,
}

impl TriggerError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        TriggerError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A compiled schedule trigger: cron expressions or an interval, time zone, start/end, blackout
/// windows.
#[derive(Debug, Clone)]
pub struct Trigger {
    tz: Tz,
    fire: Fire,
    blackouts: Vec<Blackout>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
}

/// Fire times missed in an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The most recent nominal fire time in the interval (not blacked out).
    pub latest: Option<DateTime<Utc>>,
    /// How many nominal fire times the interval held (blacked-out ones excluded).
    pub count: u64,
}

#[derive(Debug, Clone)]
enum Fire {
    Cron(Vec<CronTimes>),
    Every(Grid),
}

impl Trigger {
    /// Compile the trigger of a schedule document.
    pub fn compile(doc: &ScheduleDoc) -> Result<Trigger, TriggerError> {
        let t = &doc.trigger;
        let tz = match &t.time_zone {
            None => Tz::UTC,
            Some(name) => name.trim().parse::<Tz>().map_err(|_| {
                TriggerError::new(
                    "trigger.time_zone",
                    format!(
                        "unknown time zone {name:?}; use an IANA name such as Europe/Oslo or UTC"
                    ),
                )
            })?,
        };

        let fire = match (t.cron.is_empty(), t.every) {
            (false, Some(_)) => {
                return Err(TriggerError::new(
                    "trigger",
                    "give either trigger.cron or trigger.every, not both",
                ));
            }
            (true, None) if t.on_change.is_some() => {
                if t.phase.is_some() {
                    return Err(TriggerError::new(
                        "trigger.phase",
                        "phase only applies to trigger.every; remove it or use every",
                    ));
                }
                // Runs only when a change is reported: no fire times (an empty union of cron
                // expressions has none).
                Fire::Cron(Vec::new())
            }
            (true, None) => {
                return Err(TriggerError::new(
                    "trigger",
                    "give trigger.cron (cron expressions, e.g. \"0 2 * * *\"), trigger.every \
                     (an interval, e.g. 5m) or trigger.on_change (change detection)",
                ));
            }
            (false, None) => {
                if t.phase.is_some() {
                    return Err(TriggerError::new(
                        "trigger.phase",
                        "phase only applies to trigger.every; remove it or use every",
                    ));
                }
                let exprs = t
                    .cron
                    .iter()
                    .enumerate()
                    .map(|(i, e)| CronTimes::parse(&format!("trigger.cron[{i}]"), e))
                    .collect::<Result<Vec<_>, _>>()?;
                Fire::Cron(exprs)
            }
            (true, Some(every)) => Fire::Every(Grid::new(every, t.phase.unwrap_or_default())?),
        };

        let blackouts = doc
            .blackout
            .iter()
            .enumerate()
            .map(|(i, b)| Blackout::compile(i, b))
            .collect::<Result<Vec<_>, _>>()?;

        if let (Some(start), Some(end)) = (doc.start_at, doc.end_at)
            && end <= start
        {
            return Err(TriggerError::new(
                "end_at",
                format!(
                    "{} must be after start_at ({})",
                    end.to_rfc3339(),
                    start.to_rfc3339()
                ),
            ));
        }

        Ok(Trigger {
            tz,
            fire,
            blackouts,
            start_at: doc.start_at,
            end_at: doc.end_at,
        })
    }

    /// The first fire time strictly after `after` that is inside start/end and not blacked out.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (mut t, horizon) = self.search_from(after)?;
        for _ in 0..SEARCH_MAX_CANDIDATES {
            let f = self.nominal_after(t)?;
            if f > horizon || self.end_at.is_some_and(|end| f > end) {
                return None;
            }
            match self.blackout_covering(f) {
                None => return Some(f),
                // The first candidate at or after the end of the window.
                Some((_, end)) => t = just_before(end).max(f),
            }
        }
        None
    }

    /// The first fire time strictly after `after` inside start/end, blacked out or not (at
    /// most [`SEARCH_HORIZON`] ahead). The scheduler wakes at each one, to fire it or to count it
    /// as blacked out.
    pub fn next_candidate_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (t, horizon) = self.search_from(after)?;
        let f = self.nominal_after(t)?;
        (f <= horizon && self.end_at.is_none_or(|end| f <= end)).then_some(f)
    }

    /// Where a search for the next fire time after `after` starts (just before `start_at` when
    /// `after` is earlier) and the latest time it may return ([`SEARCH_HORIZON`] later).
    fn search_from(&self, after: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let t = self.not_before_start(after);
        let horizon = t
            .checked_add_signed(TimeDelta::from_std(SEARCH_HORIZON).ok()?)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Some((t, horizon))
    }

    /// `t`, or just before `start_at` when `t` is earlier, so that fire times strictly after
    /// it are inside the schedule's start.
    fn not_before_start(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self.start_at {
            Some(start) if t < start => just_before(start),
            _ => t,
        }
    }

    /// The part `(lo, hi]` of `(from, to]` inside start/end; `None` when nothing is left.
    fn span_within(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let lo = self.not_before_start(from);
        let hi = match self.end_at {
            Some(end) => to.min(end),
            None => to,
        };
        (lo < hi).then_some((lo, hi))
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut t = after;
        while out.len() < n {
            let Some(f) = self.next_after(t) else { break };
            out.push(f);
            t = f;
        }
        out
    }

    /// Typical gap between fire times (for saturation): `every`, or for cron the median gap of the
    /// next fire times.
    pub fn interval_hint(&self, after: DateTime<Utc>) -> Option<Duration> {
        match &self.fire {
            Fire::Every(grid) => Some(grid.every),
            Fire::Cron(_) => {
                let times = self.upcoming(after, INTERVAL_HINT_SAMPLES);
                let mut gaps: Vec<TimeDelta> = times.windows(2).map(|w| w[1] - w[0]).collect();
                if gaps.is_empty() {
                    return None;
                }
                gaps.sort();
                // The lower median: an actual gap, no averaging.
                gaps.get((gaps.len() - 1) / 2)?.to_std().ok()
            }
        }
    }

    /// The IANA time zone name the trigger uses.
    pub fn time_zone_name(&self) -> &str {
        self.tz.name()
    }

    /// The first nominal (not blackout-filtered, not start/end-bounded) fire time strictly after
    /// `t`.
    fn nominal_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.fire {
            Fire::Every(grid) => grid.after(t),
            Fire::Cron(exprs) => exprs.iter().filter_map(|c| c.next_after(self.tz, t)).min(),
        }
    }

    /// The last nominal fire time at or before `t`.
    fn nominal_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.fire {
            Fire::Every(grid) => grid.at_or_before(t),
            Fire::Cron(exprs) => exprs
                .iter()
                .filter_map(|c| c.at_or_before(self.tz, t))
                .max(),
        }
    }
}

fn nanos(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * NANOS_PER_SEC + i128::from(t.timestamp_subsec_nanos())
}

fn from_nanos(n: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(n.div_euclid(NANOS_PER_SEC)).ok()?;
    let sub = u32::try_from(n.rem_euclid(NANOS_PER_SEC)).ok()?;
    DateTime::from_timestamp(secs, sub)
}

/// One nanosecond earlier: searching strictly after it finds times at or after `t`.
fn just_before(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_sub_signed(TimeDelta::nanoseconds(1)).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::schedule_model::TriggerDoc;

    // ---- compile: validation and messages -------------------------------------------------

    #[test]
    fn cron_field_count_is_checked_not_guessed() {
        assert_eq!(
            err(&cron_doc(&["0 * * * *", "*/5 * * * * * *"], None)),
            "trigger.cron[1]: \"*/5 * * * * * *\" has 7 fields; use 5 (minute hour day month \
             weekday) or 6 (second minute hour day month weekday)"
        );
        assert_eq!(
            err(&cron_doc(&["* * * *"], None)),
            "trigger.cron[0]: \"* * * *\" has 4 fields; use 5 (minute hour day month weekday) or \
             6 (second minute hour day month weekday)"
        );
        assert!(
            err(&cron_doc(&["@daily"], None))
                .starts_with("trigger.cron[0]: \"@daily\" has 1 field;")
        );
        assert!(err(&cron_doc(&[""], None)).starts_with("trigger.cron[0]: \"\" has 0 fields;"));
    }

    #[test]
    fn invalid_cron_names_index_and_croner_message() {
        let e = Trigger::compile(&cron_doc(&["0 2 * * *", "61 * * * *"], None)).unwrap_err();
        assert_eq!(e.field, "trigger.cron[1]");
        assert!(
            e.problem
                .starts_with("\"61 * * * *\" is not a valid cron expression: "),
            "{e}"
        );
        // croner's own message follows.
        assert!(e.problem.len() > "\"61 * * * *\" is not a valid cron expression: ".len());
        let e = Trigger::compile(&cron_doc(&["0 2 * * FOO"], None)).unwrap_err();
        assert_eq!(e.field, "trigger.cron[0]");
    }

    #[test]
    fn time_zone_must_be_iana() {
        assert_eq!(
            err(&cron_doc(&["0 2 * * *"], Some("Europe/Olso"))),
            "trigger.time_zone: unknown time zone \"Europe/Olso\"; use an IANA name such as \
             Europe/Oslo or UTC"
        );
        assert_eq!(cron(&["0 2 * * *"], None).time_zone_name(), "UTC");
        assert_eq!(
            cron(&["0 2 * * *"], Some("Europe/Oslo")).time_zone_name(),
            "Europe/Oslo"
        );
    }

    #[test]
    fn exactly_one_of_cron_or_every() {
        let mut both = every_doc("5m", None);
        both.trigger.cron = vec!["0 * * * *".into()];
        assert_eq!(
            err(&both),
            "trigger: give either trigger.cron or trigger.every, not both"
        );
        let neither = schedule(TriggerDoc::default());
        let e = err(&neither);
        assert!(e.starts_with("trigger: give trigger.cron"), "{e}");
        assert!(e.contains("trigger.every"), "{e}");
    }

    #[test]
    fn a_change_only_trigger_has_no_fire_times_and_a_fallback_fires_as_usual() {
        let doc: crate::schedule_model::ScheduleDoc = serde_json::from_value(serde_json::json!({
            "name": "s", "sequence": "q", "targets": {"agents": ["a"]},
            "trigger": {"on_change": {"sources": [{"name": "people",
                "ldap": {"url": "ldap://dc01", "base": "ou=People,dc=example,dc=org"}}]}}
        }))
        .unwrap();
        let t = Trigger::compile(&doc).unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(t.next_after(now), None);
        assert!(t.upcoming(now, 3).is_empty());
        assert_eq!(
            t.missed_between(now - chrono::Duration::days(1), now).count,
            0
        );
        assert_eq!(t.interval_hint(now), None);
        let mut fallback = doc.clone();
        fallback.trigger.every = Some(Duration::from_secs(6 * 3600));
        let t = Trigger::compile(&fallback).unwrap();
        assert_eq!(
            t.next_after(now),
            DateTime::from_timestamp(1_800_000_000 - 1_800_000_000 % 21_600 + 21_600, 0)
        );
        let mut phased = doc;
        phased.trigger.phase = Some(Duration::from_secs(30));
        assert_eq!(
            err(&phased),
            "trigger.phase: phase only applies to trigger.every; remove it or use every"
        );
    }

    #[test]
    fn every_and_phase_are_validated() {
        assert_eq!(
            err(&every_doc("500ms", None)),
            "trigger.every: 500ms is too short; use at least 1s"
        );
        assert_eq!(
            err(&every_doc("5m", Some("5m"))),
            "trigger.phase: 5m must be shorter than trigger.every (5m)"
        );
        let mut phase_with_cron = cron_doc(&["0 * * * *"], None);
        phase_with_cron.trigger.phase = Some(Duration::from_secs(30));
        assert!(err(&phase_with_cron).starts_with("trigger.phase: phase only applies"));
        assert!(Trigger::compile(&every_doc("1s", None)).is_ok());
    }

    #[test]
    fn blackouts_and_start_end_are_validated() {
        let mut doc = every_doc("5m", None);
        doc.blackout = vec![
            blackout("0 22 * * 6", "4h"),
            blackout("0 22 * * * * *", "4h"),
        ];
        assert!(err(&doc).starts_with("blackout[1].cron: \"0 22 * * * * *\" has 7 fields"));
        doc.blackout = vec![blackout("0 22 * * 6", "4h"), blackout("0 99 * * *", "1h")];
        assert!(err(&doc).starts_with("blackout[1].cron: \"0 99 * * *\" is not a valid cron"));
        doc.blackout = vec![BlackoutDoc {
            cron: "0 22 * * 6".into(),
            duration: Duration::ZERO,
        }];
        assert_eq!(
            err(&doc),
            "blackout[0].duration: must be longer than 0, e.g. 4h"
        );

        let mut doc = every_doc("5m", None);
        doc.start_at = Some(utc("2026-01-02T00:00:00Z"));
        doc.end_at = Some(utc("2026-01-01T00:00:00Z"));
        assert_eq!(
            err(&doc),
            "end_at: 2026-01-01T00:00:00+00:00 must be after start_at (2026-01-02T00:00:00+00:00)"
        );
        doc.end_at = doc.start_at;
        assert!(err(&doc).starts_with("end_at: "));
    }

    #[test]
    fn several_cron_expressions_form_a_union() {
        // 2026-06-07 is a Sunday.
        let t = cron(&["0 9 * * *", "0 9 * * 1", "30 9 * * *"], None);
        assert_eq!(
            t.upcoming(utc("2026-06-07T12:00:00Z"), 3),
            vec![
                utc("2026-06-08T09:00:00Z"),
                utc("2026-06-08T09:30:00Z"),
                utc("2026-06-09T09:00:00Z"),
            ]
        );
    }

    #[test]
    fn upcoming_daily_at_two_in_oslo_shows_local_two() {
        let t = cron(&["0 2 * * *"], Some("Europe/Oslo"));
        let times = t.upcoming(utc("2026-06-01T12:00:00Z"), 5);
        assert_eq!(
            times.iter().map(|t| local(*t)).collect::<Vec<_>>(),
            [
                "06-02 02:00 CEST",
                "06-03 02:00 CEST",
                "06-04 02:00 CEST",
                "06-05 02:00 CEST",
                "06-06 02:00 CEST"
            ]
        );
        assert_eq!(times[0], utc("2026-06-02T00:00:00Z"));
        // Across spring forward: 02:00 does not exist on 2026-03-29, so that day is skipped.
        let times = t.upcoming(utc("2026-03-26T12:00:00Z"), 5);
        assert_eq!(
            times.iter().map(|t| local(*t)).collect::<Vec<_>>(),
            [
                "03-27 02:00 CET",
                "03-28 02:00 CET",
                "03-30 02:00 CEST",
                "03-31 02:00 CEST",
                "04-01 02:00 CEST"
            ]
        );
    }

    #[test]
    fn start_at_and_end_at_are_inclusive_bounds() {
        let mut doc = every_doc("1h", None);
        doc.start_at = Some(utc("2026-01-01T10:00:00Z"));
        doc.end_at = Some(utc("2026-01-01T12:00:00Z"));
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.upcoming(utc("2025-06-01T00:00:00Z"), 10),
            vec![
                utc("2026-01-01T10:00:00Z"),
                utc("2026-01-01T11:00:00Z"),
                utc("2026-01-01T12:00:00Z"),
            ]
        );
        assert_eq!(t.next_after(utc("2026-01-01T12:00:00Z")), None);
        assert_eq!(
            t.missed_between(utc("2025-01-01T00:00:00Z"), utc("2027-01-01T00:00:00Z")),
            Missed {
                latest: Some(utc("2026-01-01T12:00:00Z")),
                count: 3
            }
        );
        // A start far in the future is still found (the horizon counts from start_at).
        let mut doc = cron_doc(&["0 2 * * *"], None);
        doc.start_at = Some(utc("2040-01-01T00:00:00Z"));
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2040-01-01T02:00:00Z"))
        );
    }

    #[test]
    fn interval_hint_is_every_or_median_cron_gap() {
        let now = utc("2026-06-01T00:00:00Z");
        let t = Trigger::compile(&every_doc("5m", Some("30s"))).unwrap();
        assert_eq!(t.interval_hint(now), Some(Duration::from_secs(300)));
        assert_eq!(
            cron(&["*/15 * * * *"], None).interval_hint(now),
            Some(Duration::from_secs(900))
        );
        // Weekdays: mostly one day apart, once three days (the weekend).
        assert_eq!(
            cron(&["0 9 * * 1-5"], None).interval_hint(now),
            Some(Duration::from_secs(86_400))
        );
    }
}
