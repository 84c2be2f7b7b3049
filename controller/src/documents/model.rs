//! Fleet documents: the types live in `syncfleet_proto::schedule_model`, shared with the agents,
//! which fire schedules themselves while no controller is reachable.

pub use syncfleet_proto::schedule_model::*;
