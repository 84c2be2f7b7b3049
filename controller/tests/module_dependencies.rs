//! The controller's modules depend one way: `api` → domain (`auth`, `fleet`, `schedule`,
//! `documents`) → `store`. `documents` depends only on the store, the limits and the protocol;
//! `schedule` not on the API or authentication; `fleet` not on authentication, schedules or the
//! API; nothing below the API on `metrics`; no domain module on the gRPC transport; and no two
//! top-level modules import each other, directly or through others. Checked on the source so
//! that an import circle is caught when it is written, not when the modules are next split.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
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

/// `file:line: text` for every code line of the module's sources that contains one of
/// `forbidden`.
fn uses(module: &str, forbidden: &[&str]) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let mut found = Vec::new();
    for file in sources(&dir) {
        let text = fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            // Comments may name other modules (`crate::api::status` maps these errors).
            if !line.trim_start().starts_with("//") && forbidden.iter().any(|f| line.contains(f)) {
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
fn fleet_does_not_depend_on_auth_schedule_api_metrics_or_grpc() {
    let found = uses(
        "fleet",
        &[
            "crate::metrics",
            "crate::auth",
            "crate::schedule",
            "crate::api",
            "tonic",
        ],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn auth_does_not_depend_on_api_schedule_documents_or_grpc() {
    let found = uses(
        "auth",
        &["crate::api", "crate::schedule", "crate::documents", "tonic"],
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The top-level modules each module's non-test code names through `crate::`.
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(top.as_str(), "lib" | "bin") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        // Test modules may reach anywhere; they sit at the end of their files.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    graph.entry(top.clone()).or_default().insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = module_imports();
    // A module that reaches itself through its imports is on a circle.
    let mut circles = Vec::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    circles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles between controller modules:\n{}",
        circles.join("\n")
    );
    // The walk sees the real imports (a parser that found nothing would pass vacuously).
    assert!(graph["api"].contains("fleet") && graph["schedule"].contains("store"));
}
