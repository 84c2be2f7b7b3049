//! Scheduling: the loop that turns a schedule's fire times (computed by
//! [`documents::trigger`](crate::documents::trigger)) into runs
//! ([`scheduler`]), with its overlap policies (`overlap`), catch-up after downtime (`catchup`)
//! and records in the store (`records`); how much of its interval a schedule's runs take
//! ([`saturation`]) and the interval advice drawn from it ([`advice`]); applying and deleting documents, then reloading the scheduler
//! ([`documents`](mod@documents)); a schedule's status and pause ([`status`]).

pub mod advice;
mod autonomy;
mod catchup;
pub mod documents;
mod error;
mod fire;
pub mod on_change;
mod overlap;
mod records;
pub mod saturation;
pub mod scheduler;
pub mod status;
#[cfg(test)]
mod testkit;

pub use error::ScheduleError;
