//! One cron expression (5 or 6 fields) with the daylight saving time rules of [`super`]
//! applied on top of croner: a time in the spring-forward gap does not fire that day, and a
//! repeated wall-clock time fires once unless the hour field matches every hour.

use chrono::{DateTime, LocalResult, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::TriggerError;

/// DST-rejected croner answers tolerated per single-expression search. Each rejection jumps
/// past a whole gap or repeated hour, so a handful is plenty; the bound only guards against a
/// misbehaving time zone database.
pub(super) const DST_REJECT_LIMIT: usize = 64;

/// One cron expression with the DST rules of this module applied on top of croner.
#[derive(Debug, Clone)]
pub(super) struct CronTimes {
    pub(super) cron: Cron,
    /// The hour field names particular hours: a repeated wall-clock time fires once.
    pub(super) once_per_wall_clock: bool,
}

/// What the DST rules say about one croner answer.
pub(super) enum Verdict {
    Keep,
    /// Croner moved a time from the spring-forward gap to the end of the gap.
    MovedFromGap,
    /// The second instant of a repeated wall-clock time, for an expression that fires once.
    RepeatedTwin,
}

impl CronTimes {
    /// Parse with the field count checked: 5 = minute precision, 6 = seconds first.
    pub(super) fn parse(field: &str, expr: &str) -> Result<CronTimes, TriggerError> {
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

    pub(super) fn verdict(&self, r: &DateTime<Tz>) -> Verdict {
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
    pub(super) fn next_after(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
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
    pub(super) fn at_or_before(&self, tz: Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
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
pub(super) fn repeated_twin(tz: Tz, t: DateTime<Utc>) -> Option<TimeDelta> {
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
pub(super) fn repeated_pass_edge(tz: Tz, r: DateTime<Utc>, forward: bool) -> DateTime<Utc> {
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

#[cfg(test)]
mod tests {
    use chrono::NaiveDateTime;

    use super::super::Trigger;
    use super::*;
    use crate::trigger::testutil::*;

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
}
