//! Fleet documents: the declarative `Sequence`, `Schedule` and `Notifier` documents ([`model`];
//! notifiers are checked by [`notifier`]) and
//! loading ([`load`]), validating ([`validate`](mod@validate)), diffing ([`diff`](mod@diff)),
//! storing and rendering ([`codec`]) them, with one message style for every problem
//! ([`messages`]), when a schedule fires ([`trigger`]: compiling a schedule's trigger is how
//! it is validated), and the operations behind `FleetService` that apply, get and delete them
//! ([`apply`], refused with a [`DocumentError`]). Used by both the `syncfleet` CLI (`apply`,
//! `get`) and the controller's `Apply` RPC, so both sides report the same errors.
//!
//! Depends only on the store, the input limits and the protocol: the scheduler and the fleet use
//! these documents, so whoever applies them tells the scheduler (`schedule::documents`).
//!
//! Contracts:
//! - **Pure**: nothing here does I/O except [`load_paths`], which reads the files it is given,
//!   and [`apply`], which reads and writes the store.
//! - **Every error at once**: loading and validation never stop at the first problem; they
//!   return [`FleetFileErrors`] listing each problem on its own line as
//!   `FILE document N (KIND NAME): FIELD.PATH: what is wrong; how to fix it (line L)`.
//! - **Document numbers** are 1-based positions in the file, counting empty documents too, so
//!   they match what an editor shows between `---` lines. [`SourcedDoc::source`] is
//!   `"FILE#N"`.
//! - **Round trip**: [`parse_str`] of [`to_yaml`] gives back the same documents, and
//!   [`from_json`] of [`canonical_json`] too; equal documents give equal canonical JSON.

pub mod apply;
pub mod change_sources;
pub mod codec;
pub mod diff;
mod error;
pub mod load;
pub mod messages;
pub mod model;
pub mod notifier;
pub mod trigger;
pub mod validate;

pub use codec::{canonical_json, from_json, to_json_value, to_yaml};
pub use diff::{Action, Change, diff};
pub use error::DocumentError;
pub use load::{Loaded, SourcedDoc, load_paths, load_paths_lenient, parse_str, parse_str_lenient};
pub use messages::{FleetFileError, FleetFileErrors, describe_source};
pub use validate::{
    InventoryReport, InventoryWarning, KINDS, MAX_DESCRIPTION_LEN, MAX_ENGINE_NAME_LEN,
    MAX_NAME_LEN, MAX_SCHEDULE_DELAY, ResolvedTargets, check_inventory, valid_name, validate,
};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures: a failed unwrap is a failed test"
)]
mod testkit;
