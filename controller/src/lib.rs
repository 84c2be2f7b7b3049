//! syncfleet controller: holds runs and agents, dispatches runs to agents over their session
//! streams, serves the operator API (`FleetService`), gRPC health and reflection, and issues
//! certificates from the fleet CA.
//!
//! Decisions recorded here (the whole picture, with the agent's side: `ARCHITECTURE.md`):
//! - The store is the source of truth: a run is stored before it is sent, and an agent event is
//!   acknowledged only after the transaction that applies it commits ([`fleet`]).
//! - A run whose agent is offline stays `pending` until the agent reconnects or the
//!   `pending_deadline` passes; it then ends `failed` with a message saying why.
//! - Client certificates are optional at the TLS layer (health checks need none) but every
//!   syncfleet RPC requires one from the fleet CA, with a `spiffe://<fleet>/<role>/<name>`
//!   identity ([`api::authorize::caller`]); agents may only open sessions as themselves.
//! - The run's result is the most severe step result (`syncfleet_proto::vocab`).
//! - Observability: every run gets a root span and a W3C `traceparent` when
//!   it is created, stored on the run and sent in every `StartRun`, so a run is one trace across
//!   controller and agent; OTLP export only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//!   ([`telemetry`]). `/metrics` serves in-memory run aggregates rebuilt from the store at
//!   startup and fed by run updates, so counts equal the store's runs across restarts and a
//!   scrape never reads the runs table ([`metrics`]).
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "unit tests may block their own thread, e.g. to let blocking store calls settle"
    )
)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connections;
pub mod console;
pub mod contexts;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
pub mod dev_ldap;
pub mod documents;
pub mod fleet;
pub mod healthcheck;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod notify;
#[cfg(feature = "dev")]
pub mod open_files;
pub mod pending;
pub mod retention;
pub mod run_ids;
pub mod schedule;
pub mod server;

pub mod store;
pub mod telemetry;
pub mod views;
