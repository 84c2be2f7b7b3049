//! When a schedule fires: the trigger lives in `syncfleet_proto::trigger`, shared with the
//! agents, which fire schedules themselves while no controller is reachable.

pub use syncfleet_proto::trigger::*;
