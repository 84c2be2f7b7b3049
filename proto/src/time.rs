//! Timestamp conversions. The protocol uses `google.protobuf.Timestamp` (UTC); the store keeps
//! Unix milliseconds; humans and JSON get RFC 3339.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// Protobuf timestamp of a UTC instant.
pub fn to_proto(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        // Always in 0..1_000_000_000, so the cast cannot truncate.
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// UTC instant of a protobuf timestamp; `None` when it is out of chrono's range.
pub fn from_proto(t: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    Utc.timestamp_opt(t.seconds, nanos).single()
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    to_proto(Utc::now())
}

/// Unix milliseconds of a protobuf timestamp.
pub fn to_millis(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

/// Protobuf timestamp of Unix milliseconds.
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits in i32.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// RFC 3339 text (UTC, milliseconds) of a protobuf timestamp.
pub fn rfc3339(t: &Timestamp) -> String {
    from_proto(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_including_negative() {
        for ms in [0i64, 1, 999, 1000, 1_700_000_000_123, -1, -1001] {
            assert_eq!(to_millis(&from_millis(ms)), ms);
        }
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(
            rfc3339(&from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
