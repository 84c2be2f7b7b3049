//! What the fleet's data looks like to people and scripts, independent of where it is shown:
//! the JSON shapes of `syncfleet … -o json` ([`json`]), which the web console's API returns
//! too, and the timeline's facts ([`timeline`]). Pure functions of `syncfleet.v1` messages;
//! `crate::cli` prints them, `crate::console` serves them.

pub mod json;
pub mod timeline;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// A timestamp as an instant; `None` when unset or zero.
pub fn instant(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.filter(|t| t.seconds != 0 || t.nanos != 0)
        .and_then(syncfleet_proto::time::from_proto)
}
