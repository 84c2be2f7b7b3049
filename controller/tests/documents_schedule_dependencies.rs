//! The documents, schedule and metrics modules depend one way: `documents` only on the store,
//! the limits and the protocol; `schedule` not on the API or authentication; nothing below the
//! API on `metrics`; none of them on the gRPC transport. Checked on the source so that an import
//! circle is caught when it is written, not when the modules are next split.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `file:line: text` for every line of the module's sources that contains one of `forbidden`.
fn uses(module: &str, forbidden: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let mut found = Vec::new();
    for file in sources(&dir) {
        let text = fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn documents_depend_only_on_store_limits_and_protocol() {
    let found = uses(
        "documents",
        &[
            "crate::fleet",
            "crate::schedule",
            "crate::metrics",
            "crate::api",
            "crate::auth",
            "tonic",
        ],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn schedule_does_not_depend_on_api_auth_metrics_or_grpc() {
    let found = uses(
        "schedule",
        &["crate::api", "crate::auth", "crate::metrics", "tonic"],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn fleet_does_not_depend_on_metrics() {
    let found = uses("fleet", &["crate::metrics"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
