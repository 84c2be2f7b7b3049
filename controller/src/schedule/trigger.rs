//! When a schedule fires: the compiled form of a schedule's `trigger`, `blackout`, `start_at` and
//! `end_at` (see [`ScheduleDoc`]). This module is the product's contract for fire times; the
//! scheduler loop, `syncfleet get` (next fire times) and catch-up after downtime all use it.
//!
//! # Cron or interval
//!
//! A trigger is either a list of cron expressions (`trigger.cron`) or an interval
//! (`trigger.every`, optionally `trigger.phase`). Exactly one of the two must be given.
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

use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::model::{BlackoutDoc, ScheduleDoc};

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

/// DST-rejected croner answers tolerated per single-expression search. Each rejection jumps
/// past a whole gap or repeated hour, so a handful is plenty; the bound only guards against a
/// misbehaving time zone database.
const DST_REJECT_LIMIT: usize = 64;

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

/// `epoch + n*every + phase`, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Grid {
    every: Duration,
    every_ns: i128,
    phase_ns: i128,
}

#[derive(Debug, Clone)]
struct Blackout {
    starts: CronTimes,
    duration: TimeDelta,
}

/// One cron expression with the DST rules of this module applied on top of croner.
#[derive(Debug, Clone)]
struct CronTimes {
    cron: Cron,
    /// The hour field names particular hours: a repeated wall-clock time fires once.
    once_per_wall_clock: bool,
}

/// What the DST rules say about one croner answer.
enum Verdict {
    Keep,
    /// Croner moved a time from the spring-forward gap to the end of the gap.
    MovedFromGap,
    /// The second instant of a repeated wall-clock time, for an expression that fires once.
    RepeatedTwin,
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
            (true, None) => {
                return Err(TriggerError::new(
                    "trigger",
                    "give trigger.cron (cron expressions, e.g. \"0 2 * * *\") or trigger.every \
                     (an interval, e.g. 5m)",
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
        let mut t = after;
        if let Some(start) = self.start_at
            && t < start
        {
            t = just_before(start);
        }
        let horizon = t
            .checked_add_signed(TimeDelta::from_std(SEARCH_HORIZON).ok()?)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
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
        let mut t = after;
        if let Some(start) = self.start_at
            && t < start
        {
            t = just_before(start);
        }
        let horizon = t
            .checked_add_signed(TimeDelta::from_std(SEARCH_HORIZON).ok()?)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let f = self.nominal_after(t)?;
        (f <= horizon && self.end_at.is_none_or(|end| f <= end)).then_some(f)
    }

    /// Whether the fire time `f` falls inside a blackout window.
    pub fn is_blacked_out(&self, f: DateTime<Utc>) -> bool {
        self.blackout_covering(f).is_some()
    }

    /// How many fire times in `(from, to]` (inside start/end) are blacked out.
    pub fn blacked_out_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
        if self.blackouts.is_empty() {
            return 0;
        }
        let mut lo = from;
        if let Some(start) = self.start_at
            && lo < start
        {
            lo = just_before(start);
        }
        let hi = match self.end_at {
            Some(end) => to.min(end),
            None => to,
        };
        if hi <= lo {
            return 0;
        }
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

    /// Fire times in `(from, to]`.
    pub fn missed_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Missed {
        let none = Missed {
            latest: None,
            count: 0,
        };
        // Fire times are in (lo, hi].
        let mut lo = from;
        if let Some(start) = self.start_at
            && lo < start
        {
            lo = just_before(start);
        }
        let hi = match self.end_at {
            Some(end) => to.min(end),
            None => to,
        };
        if hi <= lo {
            return none;
        }
        match &self.fire {
            Fire::Every(grid) => Missed {
                latest: self.latest_in(lo, hi),
                count: self.grid_count_unblacked(grid, lo, hi),
            },
            Fire::Cron(_) => self.walk_missed(lo, hi),
        }
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

    /// Deterministic jitter for a fire time, in `[0, max)`, bounded by the gap to the next fire
    /// time.
    pub fn jitter_for(&self, nominal: DateTime<Utc>, max: Duration, seed: &str) -> Duration {
        let mut bound = max;
        let next_fire = self.next_after(nominal);
        let next_blackout = self
            .blackouts
            .iter()
            .filter_map(|b| b.starts.next_after(self.tz, nominal))
            .min();
        for limit in [next_fire, next_blackout].into_iter().flatten() {
            let gap = (limit - nominal).to_std().unwrap_or(Duration::ZERO);
            bound = bound.min(gap);
        }
        let bound_ns = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        if bound_ns == 0 {
            return Duration::ZERO;
        }
        let h = jitter_hash(seed, nominal);
        // Multiply-shift scaling: uniform enough, always < bound_ns.
        let scaled = ((u128::from(h) * u128::from(bound_ns)) >> 64) as u64;
        Duration::from_nanos(scaled)
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

    /// If `f` is inside blackout windows: the earliest start and latest end of the windows that
    /// contain it.
    fn blackout_covering(&self, f: DateTime<Utc>) -> Option<Window> {
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

    /// The latest fire time in `(lo, hi]`, searching backwards from `hi` (bounded).
    fn latest_in(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Option<DateTime<Utc>> {
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
    fn walk_missed(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Missed {
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
    fn grid_count_unblacked(&self, grid: &Grid, lo: DateTime<Utc>, hi: DateTime<Utc>) -> u64 {
        self.grid_count_unblacked_to(grid, lo, hi).0
    }

    /// Grid points in `(lo, cut]` outside blackout windows, and `cut`: `hi`, or earlier when a
    /// blackout has more windows in the span than are enumerated.
    fn grid_count_unblacked_to(
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

impl Grid {
    fn new(every: Duration, phase: Duration) -> Result<Grid, TriggerError> {
        if every < Duration::from_secs(1) {
            return Err(TriggerError::new(
                "trigger.every",
                format!(
                    "{} is too short; use at least 1s",
                    humantime::format_duration(every)
                ),
            ));
        }
        if phase >= every {
            return Err(TriggerError::new(
                "trigger.phase",
                format!(
                    "{} must be shorter than trigger.every ({})",
                    humantime::format_duration(phase),
                    humantime::format_duration(every)
                ),
            ));
        }
        let every_ns = i128::try_from(every.as_nanos()).map_err(|_| {
            TriggerError::new("trigger.every", "is too long; use at most a few years")
        })?;
        // Checked above: phase < every.
        let phase_ns = phase.as_nanos() as i128;
        Ok(Grid {
            every,
            every_ns,
            phase_ns,
        })
    }

    /// Index of the last grid point at or before `t`.
    fn index_at_or_before(&self, t: DateTime<Utc>) -> i128 {
        (nanos(t) - self.phase_ns).div_euclid(self.every_ns)
    }

    fn point(&self, k: i128) -> Option<DateTime<Utc>> {
        from_nanos(k.checked_mul(self.every_ns)?.checked_add(self.phase_ns)?)
    }

    fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.point(self.index_at_or_before(t) + 1)
    }

    fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.point(self.index_at_or_before(t))
    }

    /// Grid points in `(lo, hi]`.
    fn count(&self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> u64 {
        let n = self.index_at_or_before(hi) - self.index_at_or_before(lo);
        u64::try_from(n.max(0)).unwrap_or(u64::MAX)
    }
}

impl Blackout {
    fn compile(i: usize, doc: &BlackoutDoc) -> Result<Blackout, TriggerError> {
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
    fn window_containing(&self, tz: Tz, f: DateTime<Utc>) -> Option<Window> {
        let start = self.starts.at_or_before(tz, f)?;
        let end = start
            .checked_add_signed(self.duration)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        (f < end).then_some((start, end))
    }

    /// Windows overlapping `(lo, hi]`, at most [`MISSED_WALK_LIMIT`]; `false` when cut short.
    fn windows_overlapping(
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

impl CronTimes {
    /// Parse with the field count checked: 5 = minute precision, 6 = seconds first.
    fn parse(field: &str, expr: &str) -> Result<CronTimes, TriggerError> {
        let fields = expr.split_whitespace().count();
        let seconds = match fields {
            5 => Seconds::Disallowed,
            6 => Seconds::Required,
            n => {
                let noun = if n == 1 { "field" } else { "fields" };
                return Err(TriggerError::new(
                    field,
                    format!(
                        "{expr:?} has {n} {noun}; use 5 (minute hour day month weekday) or 6 \
                         (second minute hour day month weekday)"
                    ),
                ));
            }
        };
        let cron = CronParser::builder()
            .seconds(seconds)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                TriggerError::new(
                    field,
                    format!("{expr:?} is not a valid cron expression: {e}"),
                )
            })?;
        let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
        // Every 5/6-field expression that matches at all matches within a few decades (the
        // 28-year weekday/leap-year cycle) and then recurs; croner gives up only for impossible
        // dates. Refusing those here also keeps every later query cheap.
        if cron
            .find_next_occurrence(&DateTime::<Utc>::UNIX_EPOCH, true)
            .is_err()
        {
            return Err(TriggerError::new(
                field,
                format!(
                    "{expr:?} never fires: no calendar date matches its day and month fields \
                     (e.g. February 30 or April 31); fix the day or month"
                ),
            ));
        }
        Ok(CronTimes {
            cron,
            once_per_wall_clock: !every_hour,
        })
    }

    fn verdict(&self, r: &DateTime<Tz>) -> Verdict {
        if !self.cron.is_time_matching(r).unwrap_or(false) {
            return Verdict::MovedFromGap;
        }
        if self.once_per_wall_clock && repeated_twin(r.timezone(), r.with_timezone(&Utc)).is_some()
        {
            return Verdict::RepeatedTwin;
        }
        Verdict::Keep
    }

    /// The first time strictly after `t` matching the expression, under this module's DST rules.
    fn next_after(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = t.with_timezone(&tz);
        for _ in 0..DST_REJECT_LIMIT {
            let r = self.cron.find_next_occurrence(&from, false).ok()?;
            match self.verdict(&r) {
                Verdict::Keep => return Some(r.with_timezone(&Utc)),
                Verdict::MovedFromGap => from = r,
                Verdict::RepeatedTwin => {
                    // Skip the rest of the repeated hour's second pass in one step.
                    let last = repeated_pass_edge(tz, r.with_timezone(&Utc), true);
                    from = last.max(r.with_timezone(&Utc)).with_timezone(&tz);
                }
            }
        }
        None
    }

    /// The last time at or before `t` matching the expression, under this module's DST rules.
    fn at_or_before(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = t.with_timezone(&tz);
        let mut inclusive = true;
        for _ in 0..DST_REJECT_LIMIT {
            let r = self.cron.find_previous_occurrence(&from, inclusive).ok()?;
            inclusive = false;
            match self.verdict(&r) {
                Verdict::Keep => return Some(r.with_timezone(&Utc)),
                Verdict::MovedFromGap => from = r,
                Verdict::RepeatedTwin => {
                    // Skip back over the repeated hour's second pass in one step.
                    let first = repeated_pass_edge(tz, r.with_timezone(&Utc), false);
                    from = first.min(r.with_timezone(&Utc)).with_timezone(&tz);
                }
            }
        }
        None
    }
}

/// If `t` is the second instant of a repeated wall-clock time: the length of the repetition
/// (later minus earlier instant).
fn repeated_twin(tz: Tz, t: DateTime<Utc>) -> Option<TimeDelta> {
    let local = t.with_timezone(&tz).naive_local();
    match tz.from_local_datetime(&local) {
        LocalResult::Ambiguous(a, b) => {
            let (earlier, later) = if a <= b { (a, b) } else { (b, a) };
            (later == t && earlier != later).then(|| later - earlier)
        }
        _ => None,
    }
}

/// `r` is in the second pass of a repeated hour; the last (`forward`) or first second of that
/// pass, found by bisection (a dozen time zone look-ups, once per fall-back day).
fn repeated_pass_edge(tz: Tz, r: DateTime<Utc>, forward: bool) -> DateTime<Utc> {
    let Some(len) = repeated_twin(tz, r) else {
        return r;
    };
    let len = len.num_seconds().max(1);
    let at = |k: i64| r.checked_add_signed(TimeDelta::seconds(k)).unwrap_or(r);
    let in_pass = |k: i64| repeated_twin(tz, at(k)).is_some();
    // Offsets from r: `inside` is in the pass, `outside` is not; the pass is at most `len` long.
    let (mut inside, mut outside) = if forward { (0, len) } else { (0, -len) };
    if in_pass(outside) {
        return at(outside);
    }
    while (outside - inside).abs() > 1 {
        let mid = inside + (outside - inside) / 2;
        if in_pass(mid) {
            inside = mid;
        } else {
            outside = mid;
        }
    }
    at(inside)
}

fn jitter_hash(seed: &str, nominal: DateTime<Utc>) -> u64 {
    let nominal = nanos(nominal).to_le_bytes();
    splitmix64(fnv1a64(
        seed.as_bytes().iter().chain(nominal.iter()).copied(),
    ))
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(FNV_OFFSET, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The splitmix64 output function (one step from state `z`).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    use std::time::Instant;

    use chrono::NaiveDateTime;
    use croner::parser::{CronParser, Seconds, Year};

    use super::*;
    use crate::model::{Overlap, Targets, TriggerDoc};

    fn schedule(trigger: TriggerDoc) -> ScheduleDoc {
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
        }
    }

    fn cron_doc(exprs: &[&str], tz: Option<&str>) -> ScheduleDoc {
        schedule(TriggerDoc {
            cron: exprs.iter().map(|e| e.to_string()).collect(),
            time_zone: tz.map(str::to_string),
            ..TriggerDoc::default()
        })
    }

    fn every_doc(every: &str, phase: Option<&str>) -> ScheduleDoc {
        schedule(TriggerDoc {
            every: Some(humantime::parse_duration(every).unwrap()),
            phase: phase.map(|p| humantime::parse_duration(p).unwrap()),
            ..TriggerDoc::default()
        })
    }

    fn cron(exprs: &[&str], tz: Option<&str>) -> Trigger {
        Trigger::compile(&cron_doc(exprs, tz)).unwrap()
    }

    fn blackout(cron: &str, duration: &str) -> BlackoutDoc {
        BlackoutDoc {
            cron: cron.into(),
            duration: humantime::parse_duration(duration).unwrap(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn err(doc: &ScheduleDoc) -> String {
        Trigger::compile(doc).unwrap_err().to_string()
    }

    fn oslo() -> Tz {
        "Europe/Oslo".parse().unwrap()
    }

    /// Local wall-clock rendering, e.g. `10-25 02:30 CEST`.
    fn local(t: DateTime<Utc>) -> String {
        t.with_timezone(&oslo())
            .format("%m-%d %H:%M %Z")
            .to_string()
    }

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

    // ---- fire times ----------------------------------------------------------------------

    #[test]
    fn six_fields_have_seconds_five_fields_fire_at_second_zero() {
        let t = cron(&["*/2 * * * * *"], None);
        assert_eq!(
            t.upcoming(utc("2026-01-01T10:00:00.5Z"), 3),
            vec![
                utc("2026-01-01T10:00:02Z"),
                utc("2026-01-01T10:00:04Z"),
                utc("2026-01-01T10:00:06Z"),
            ]
        );
        let t = cron(&["* * * * *"], None);
        assert_eq!(
            t.next_after(utc("2026-01-01T10:00:30Z")),
            Some(utc("2026-01-01T10:01:00Z"))
        );
        // Strictly after.
        assert_eq!(
            t.next_after(utc("2026-01-01T10:01:00Z")),
            Some(utc("2026-01-01T10:02:00Z"))
        );
    }

    #[test]
    fn every_with_phase_is_epoch_aligned() {
        let t = Trigger::compile(&every_doc("5m", Some("30s"))).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-01-01T10:00:00Z"), 2),
            vec![utc("2026-01-01T10:00:30Z"), utc("2026-01-01T10:05:30Z")]
        );
        assert_eq!(
            t.next_after(utc("2026-01-01T10:00:30Z")),
            Some(utc("2026-01-01T10:05:30Z"))
        );
        assert_eq!(
            t.next_after(utc("2026-01-01T10:00:29.999Z")),
            Some(utc("2026-01-01T10:00:30Z"))
        );
        // An interval ignores the time zone and DST: still every 5 minutes on the UTC line.
        let mut doc = every_doc("1h", None);
        doc.trigger.time_zone = Some("Europe/Oslo".into());
        let t = Trigger::compile(&doc).unwrap();
        assert_eq!(
            t.upcoming(utc("2026-10-24T23:30:00Z"), 3),
            vec![
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z"),
            ]
        );
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

    // ---- daylight saving time ------------------------------------------------------------

    fn croner5(expr: &str) -> Cron {
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .unwrap()
    }

    fn croner_upcoming(expr: &str, from: DateTime<Utc>, n: usize) -> Vec<String> {
        let c = croner5(expr);
        let mut t = from.with_timezone(&oslo());
        (0..n)
            .map(|_| {
                t = c.find_next_occurrence(&t, false).unwrap();
                local(t.with_timezone(&Utc))
            })
            .collect()
    }

    /// What croner 4 does by itself (observed); the trigger corrects it. If this test breaks
    /// after a croner upgrade, re-check the DST filters in `CronTimes::verdict`.
    #[test]
    fn croner_alone_moves_gap_times_and_doubles_repeated_times() {
        // Spring forward: the fixed-time 02:30 is moved to 03:00.
        assert_eq!(
            croner_upcoming("30 2 * * *", utc("2026-03-28T12:00:00Z"), 2),
            ["03-29 03:00 CEST", "03-30 02:30 CEST"]
        );
        // Fall back: a fixed time fires once, but a list of minutes fires on both passes.
        assert_eq!(
            croner_upcoming("30 2 * * *", utc("2026-10-24T12:00:00Z"), 2),
            ["10-25 02:30 CEST", "10-26 02:30 CET"]
        );
        assert_eq!(
            croner_upcoming("0,30 2 * * *", utc("2026-10-24T12:00:00Z"), 4),
            [
                "10-25 02:00 CEST",
                "10-25 02:30 CEST",
                "10-25 02:00 CET",
                "10-25 02:30 CET"
            ]
        );
    }

    #[test]
    fn spring_forward_gap_time_does_not_fire_that_day() {
        let t = cron(&["30 2 * * *"], Some("Europe/Oslo"));
        let times = t.upcoming(utc("2026-03-27T12:00:00Z"), 3);
        assert_eq!(
            times.iter().map(|t| local(*t)).collect::<Vec<_>>(),
            ["03-28 02:30 CET", "03-30 02:30 CEST", "03-31 02:30 CEST"]
        );
        // Backwards too (catch-up after downtime over the gap day).
        let m = t.missed_between(utc("2026-03-28T12:00:00Z"), utc("2026-03-29T23:00:00Z"));
        assert_eq!(
            m,
            Missed {
                latest: None,
                count: 0
            }
        );
        assert_eq!(
            t.latest_in(utc("2026-03-27T12:00:00Z"), utc("2026-03-29T23:00:00Z")),
            Some(utc("2026-03-28T01:30:00Z"))
        );
        // An hourly expression fires 23 times on the short day, never at 02:00.
        let hourly = cron(&["0 * * * *"], Some("Europe/Oslo"));
        let day = hourly.missed_between(utc("2026-03-28T23:00:00Z"), utc("2026-03-29T22:00:00Z"));
        assert_eq!(day.count, 23);
        assert_eq!(
            hourly
                .upcoming(utc("2026-03-28T23:30:00Z"), 2)
                .into_iter()
                .map(local)
                .collect::<Vec<_>>(),
            ["03-29 01:00 CET", "03-29 03:00 CEST"]
        );
    }

    #[test]
    fn fall_back_repeated_time_fires_once_for_times_of_day() {
        let t = cron(&["30 2 * * *"], Some("Europe/Oslo"));
        assert_eq!(
            t.upcoming(utc("2026-10-24T12:00:00Z"), 2),
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
        // From inside the repeated hour's second pass: 02:30 already happened today.
        assert_eq!(
            t.next_after(utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        // A list of times of day: each wall-clock time once, at its first occurrence.
        let t = cron(&["0,30 2 * * *"], Some("Europe/Oslo"));
        assert_eq!(
            t.upcoming(utc("2026-10-24T12:00:00Z"), 3)
                .into_iter()
                .map(local)
                .collect::<Vec<_>>(),
            ["10-25 02:00 CEST", "10-25 02:30 CEST", "10-26 02:00 CET"]
        );
        assert_eq!(
            t.missed_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z")),
            Missed {
                latest: Some(utc("2026-10-25T00:30:00Z")),
                count: 2
            }
        );
        assert_eq!(
            t.latest_in(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn fall_back_hourly_fires_at_both_instants() {
        let t = cron(&["0 * * * *"], Some("Europe/Oslo"));
        let times = t.upcoming(utc("2026-10-24T22:30:00Z"), 4);
        assert_eq!(
            times,
            vec![
                utc("2026-10-24T23:00:00Z"),
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z"),
            ]
        );
        assert_eq!(
            times.into_iter().map(local).collect::<Vec<_>>(),
            [
                "10-25 01:00 CEST",
                "10-25 02:00 CEST",
                "10-25 02:00 CET",
                "10-25 03:00 CET"
            ]
        );
        // 25 fire times on the long day (local midnight to local midnight).
        let day = t.missed_between(utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z"));
        assert_eq!(day.count, 25);
    }

    /// Brute force over every second / minute around both Oslo transitions, compared with
    /// forward (`next_after`) and backward (`latest_in`) searches.
    #[test]
    fn dst_rules_match_a_brute_force_oracle() {
        let tz = oslo();
        let cases: &[(&str, i64)] = &[
            ("30 2 * * *", 60),
            ("0 2 * * *", 60),
            ("0 3 * * *", 60),
            ("59 1 * * *", 60),
            ("0,30 2 * * *", 60),
            ("15 1-3 * * *", 60),
            ("0 */2 * * *", 60),
            ("*/20 2 * * *", 60),
            ("0 * * * *", 60),
            ("*/20 * * * *", 60),
            ("*/10 30 2 * * *", 1),
            ("0 59 2 * * *", 1),
            ("*/15 * * * * *", 1),
        ];
        for day in ["2026-03-29", "2026-10-25"] {
            let start = utc(&format!("{day}T00:00:00Z")) - TimeDelta::hours(2);
            let end = utc(&format!("{day}T00:00:00Z")) + TimeDelta::hours(5);
            for &(expr, step) in cases {
                let c = CronTimes::parse("x", expr).unwrap().cron;
                let every_hour = (0..24).all(|h| c.pattern.hour_match(h).unwrap());
                let mut oracle = Vec::new();
                let mut i = start + TimeDelta::seconds(step);
                while i <= end {
                    let naive: NaiveDateTime = i.with_timezone(&tz).naive_local();
                    let first = tz.from_local_datetime(&naive).earliest().unwrap();
                    if c.is_time_matching(&naive).unwrap() && (every_hour || first == i) {
                        oracle.push(i);
                    }
                    i += TimeDelta::seconds(step);
                }
                let t = cron(&[expr], Some("Europe/Oslo"));
                let mut got = Vec::new();
                let mut at = start;
                while let Some(f) = t.next_after(at).filter(|f| *f <= end) {
                    got.push(f);
                    at = f;
                }
                assert_eq!(got, oracle, "{expr} forward on {day}");
                let m = t.missed_between(start, end);
                assert_eq!(m.count, oracle.len() as u64, "{expr} count on {day}");
                assert_eq!(m.latest, oracle.last().copied(), "{expr} latest on {day}");
                // Backward from every 7 minutes.
                let mut to = start;
                while to <= end {
                    let want = oracle.iter().rev().find(|o| **o <= to).copied();
                    assert_eq!(
                        t.latest_in(start, to),
                        want,
                        "{expr} backward to {to} on {day}"
                    );
                    to += TimeDelta::minutes(7);
                }
            }
        }
    }

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

    // ---- never, hints, jitter ------------------------------------------------------------

    #[test]
    fn a_cron_that_never_fires_is_refused_naming_the_field() {
        let started = Instant::now();
        assert_eq!(
            err(&cron_doc(&["0 2 * * *", "0 0 30 2 *"], Some("Europe/Oslo"))),
            "trigger.cron[1]: \"0 0 30 2 *\" never fires: no calendar date matches its day and \
             month fields (e.g. February 30 or April 31); fix the day or month"
        );
        assert!(err(&cron_doc(&["0 0 31 4,6,9,11 *"], None)).contains("never fires"));
        let mut doc = every_doc("5m", None);
        doc.blackout = vec![blackout("0 22 31 11 *", "4h")];
        assert!(
            err(&doc).starts_with("blackout[0].cron: \"0 22 31 11 *\" never fires"),
            "{}",
            err(&doc)
        );
        // Rare but real dates are fine: February 29, the fifth Friday.
        assert!(Trigger::compile(&cron_doc(&["0 0 29 2 *"], None)).is_ok());
        assert!(Trigger::compile(&cron_doc(&["0 0 * * 5#5"], None)).is_ok());
        assert!(started.elapsed() < Duration::from_secs(5));
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

    #[test]
    fn jitter_is_deterministic_and_bounded_by_the_next_fire_time() {
        let t = Trigger::compile(&every_doc("10s", None)).unwrap();
        let max = Duration::from_secs(3600);
        let mut distinct = std::collections::HashSet::new();
        for k in 0..500 {
            let nominal = utc("2026-01-01T00:00:00Z") + TimeDelta::seconds(10 * k);
            let j = t.jitter_for(nominal, max, "delta-every-5m/agent-1");
            assert!(j < Duration::from_secs(10), "{j:?}");
            assert_eq!(j, t.jitter_for(nominal, max, "delta-every-5m/agent-1"));
            distinct.insert(j);
        }
        assert!(
            distinct.len() > 400,
            "jitter should spread: {}",
            distinct.len()
        );

        let t = cron(&["0 * * * *"], None);
        let nominal = utc("2026-01-01T10:00:00Z");
        let max = Duration::from_secs(600);
        let seeds: Vec<Duration> = (0..50)
            .map(|i| t.jitter_for(nominal, max, &format!("agent-{i}")))
            .collect();
        assert!(seeds.iter().all(|j| *j < max));
        let unique: std::collections::HashSet<_> = seeds.iter().collect();
        assert!(unique.len() > 45, "different seeds give different jitter");
        assert_ne!(
            t.jitter_for(nominal, max, "a"),
            t.jitter_for(nominal, max, "b")
        );
        // Stable across releases and platforms: fixed hash functions (reference vectors) and a
        // pinned value.
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            t.jitter_for(nominal, max, "a"),
            Duration::from_nanos(PINNED_JITTER_A_NS)
        );
        assert_eq!(t.jitter_for(nominal, Duration::ZERO, "a"), Duration::ZERO);
    }

    const PINNED_JITTER_A_NS: u64 = 306_003_304_341;

    #[test]
    fn jitter_stays_out_of_blackouts_and_uses_max_after_the_last_fire_time() {
        // 21:00 fires, 22:00..02:00 is blacked out: the next fire time is 5h away, but the
        // window starts in 1h.
        let mut doc = every_doc("1h", None);
        doc.blackout = vec![blackout("0 22 * * *", "4h")];
        let t = Trigger::compile(&doc).unwrap();
        let nominal = utc("2026-01-01T21:00:00Z");
        for i in 0..200 {
            let j = t.jitter_for(nominal, Duration::from_secs(3 * 3600), &i.to_string());
            assert!(j < Duration::from_secs(3600), "{j:?}");
        }
        // No next fire time (end_at reached): bounded by max only.
        let mut doc = every_doc("1h", None);
        doc.end_at = Some(nominal);
        let t = Trigger::compile(&doc).unwrap();
        let js: Vec<_> = (0..200)
            .map(|i| t.jitter_for(nominal, Duration::from_secs(3 * 3600), &i.to_string()))
            .collect();
        assert!(js.iter().all(|j| *j < Duration::from_secs(3 * 3600)));
        assert!(js.iter().any(|j| *j > Duration::from_secs(3600)));
    }
}
