//! The gRPC edge: one file per service, and the only place where domain errors become
//! `tonic::Status` ([`status`]).
//!
//! Every call is authenticated by the caller's client certificate (verified by TLS against the
//! fleet CA); the identity comes from its `spiffe://<fleet>/<role>/<name>` SAN. Agents may only
//! open sessions, operators may only use the fleet API, and which operator role may call which
//! RPC is one table (`crate::auth::roles`), applied by [`authorize::Authorize::authorize`] at
//! the top of every fleet handler, which also audits denials and outcomes.

mod agent_service;
pub mod authorize;
mod enroll_service;
mod fleet_service;
pub mod status;
mod watch_runs;

pub use agent_service::AgentSvc;
pub use enroll_service::EnrollSvc;
pub use fleet_service::FleetSvc;
