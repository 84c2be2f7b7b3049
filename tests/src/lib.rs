//! End-to-end tests live in `tests/` (their harness: `tests/common/mod.rs`). This library holds
//! the helpers that the daemons' own command-line tests share (`agent/tests`,
//! `controller/tests`), so that it needs nothing but std and no crate of the workspace.

pub mod daemon_config;
