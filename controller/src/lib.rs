//! syncfleet controller: holds runs and agents, dispatches runs to agents over their session
//! streams, serves the operator API (`FleetService`), gRPC health and reflection, and issues
//! certificates from the fleet CA.
//!
//! Decisions recorded here (see also design.md):
//! - The store is the source of truth: a run is stored before it is sent, and an agent event is
//!   acknowledged only after the transaction that applies it commits ([`fleet`]).
//! - A run whose agent is offline stays `pending` until the agent reconnects or the
//!   `pending_deadline` passes; it then ends `failed` with a message saying why.
//! - Client certificates are optional at the TLS layer (health checks need none) but every
//!   syncfleet RPC requires one from the fleet CA, with a `spiffe://<fleet>/<role>/<name>`
//!   identity ([`services::caller`]); agents may only open sessions as themselves.
//! - The run's result is the most severe step result (`syncfleet_proto::vocab`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod dev;
pub mod fleet;
pub mod fleetfile;
pub mod init;
pub mod metrics;
pub mod model;
pub mod operations;
pub mod pki;
pub mod schedule;
pub mod security;
pub mod server;
pub mod services;
pub mod store;
pub mod telemetry;
