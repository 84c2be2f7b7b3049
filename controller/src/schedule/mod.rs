//! Scheduling: when schedules fire ([`trigger`]) and the loop that turns fire times into runs
//! ([`scheduler`]), with its overlap policies (`overlap`), catch-up after downtime (`catchup`)
//! and records in the store (`records`); how much of its interval a schedule's runs take
//! ([`saturation`]).

mod catchup;
mod overlap;
mod records;
pub mod saturation;
pub mod scheduler;
pub mod status;
#[cfg(test)]
mod testkit;
pub mod trigger;
