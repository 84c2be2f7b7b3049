//! Scheduling: when schedules fire ([`trigger`]) and the loop that turns fire times into runs
//! ([`scheduler`]).

pub mod saturation;
pub mod scheduler;
pub mod trigger;
