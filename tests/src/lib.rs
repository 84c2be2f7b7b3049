//! End-to-end tests live in `tests/` (their harness: `tests/common/mod.rs`). This library holds
//! test support shared with the daemons' own tests: the command-line test runner of
//! `agent/tests` and `controller/tests` ([`daemon_config`]) and [`postgres::TestPostgres`], a
//! throwaway PostgreSQL server for the controller's store tests and the end-to-end tests,
//! [`slapd::TestSlapd`], a throwaway OpenLDAP server for the agent's LDAP change source, and
//! [`wine`], the Windows binaries built and run under Wine; and [`bench`], the `fleet-bench`
//! tool (src/bin/fleet-bench.rs) that measures the controller against the scale budgets.
#![allow(
    clippy::disallowed_methods,
    reason = "the harness and fleet-bench wait and measure in real time, next to real processes; paused tokio time is for the product's own code"
)]

pub mod bench;
pub mod daemon_config;
pub mod postgres;
pub mod slapd;
pub mod wine;
