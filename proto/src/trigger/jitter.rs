//! Deterministic jitter: the same schedule, agent and fire time always get the same delay, on
//! every platform, release and controller restart.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Trigger, nanos};

impl Trigger {
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
}

pub(super) fn jitter_hash(seed: &str, nominal: DateTime<Utc>) -> u64 {
    let nominal = nanos(nominal).to_le_bytes();
    splitmix64(fnv1a64(
        seed.as_bytes().iter().chain(nominal.iter()).copied(),
    ))
}

/// 64-bit FNV-1a.
pub(super) fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(FNV_OFFSET, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The splitmix64 output function (one step from state `z`).
pub(super) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::testutil::*;

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
