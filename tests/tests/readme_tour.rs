//! The README is the front door: its first command brings a fleet up and every line of its tour
//! works exactly as written. This test reads README.md, starts the fleet command's equivalent
//! from the built binaries (`cargo run -p syncfleet-controller -- dev` runs the package's
//! default binary with `dev`), with a fresh `HOME` and the binaries' folder on `PATH`, then runs
//! every line of the tour block with `bash -c`, literally, in order; each must exit 0. A
//! placeholder `<RUN-ID>` is filled with the run id the line before printed.
//!
//! The fleet listens on the README's addresses (127.0.0.1:7443 and :7080, its directory on
//! :7389), which no other test uses (the other tests that start `dev` give it
//! `--ldap-listen 127.0.0.1:0`).
#![allow(
    clippy::disallowed_methods,
    reason = "a test measures and waits in real time, next to real processes"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Proc, bin, wait_agents_connected, wait_for, workspace_root};

/// The ```sh block that follows `heading` in `readme`, as lines.
fn sh_block_after<'a>(readme: &'a str, heading: &str) -> Vec<&'a str> {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?} section"));
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].lines().collect()
}

/// Whether `s` has the shape of a UUID (8-4-4-4-12 hex digits).
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first run id in `text`.
fn first_run_id(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|t| is_uuid(t))
        .map(str::to_string)
}

#[test]
fn the_readme_first_command_and_every_tour_line_work_as_written() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();

    // The first command of "Two commands".
    let first = sh_block_after(&readme, "## Two commands");
    let fleet_cmd = first.first().copied().unwrap_or_default();
    let args = fleet_cmd
        .strip_prefix("cargo run --release -p syncfleet-controller -- ")
        .unwrap_or_else(|| panic!("unexpected first command: {fleet_cmd:?}"));
    // `cargo run -p syncfleet-controller` runs the package's default binary.
    let manifest = std::fs::read_to_string(root.join("controller/Cargo.toml")).unwrap();
    let default_run = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("default-run = "))
        .expect("controller/Cargo.toml sets default-run")
        .trim_matches('"')
        .to_string();

    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bin_dir = bin("syncfleet").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = |cmd: &mut Command| {
        cmd.env("HOME", home.path())
            .env("PATH", &path)
            .env_remove("SYNCFLEET_CONFIG")
            .env_remove("SYNCFLEET_CONTEXT")
            .env("NO_COLOR", "1")
            .current_dir(work.path());
    };
    let mut dev_cmd = Command::new(bin(&default_run));
    dev_cmd.args(args.split_whitespace());
    env(&mut dev_cmd);
    let mut dev = Proc::spawn("dev", &mut dev_cmd, work.path().join("dev.log"));

    let cli = |args: &[&str]| {
        let mut cmd = Command::new(bin("syncfleet"));
        cmd.args(args);
        env(&mut cmd);
        cmd.output().unwrap()
    };
    wait_agents_connected(cli, 3);

    let tour = sh_block_after(&readme, "## Five-minute tour");
    assert!(tour.len() >= 10, "the tour is too short: {tour:?}");
    let mut last_id: Option<String> = None;
    let mut ran = 0;
    for line in tour {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let literal = if trimmed.contains("<RUN-ID>") {
            let id = last_id
                .clone()
                .unwrap_or_else(|| panic!("{trimmed:?} needs a run id, and no line printed one"));
            trimmed.replace("<RUN-ID>", &id)
        } else {
            trimmed.to_string()
        };
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &literal]);
        env(&mut cmd);
        let out: Output = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "README tour line failed ({}): {literal}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- dev log\n{}",
            out.status,
            dev.log_text()
        );
        if let Some(id) = first_run_id(&stdout).or_else(|| first_run_id(&stderr)) {
            last_id = Some(id);
        }
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} tour lines ran");

    // "Runs on change": the dev fleet's own directory, from the repository folder.
    let change = sh_block_after(&readme, "## Runs on change");
    let mut watched: Option<String> = None;
    let mut shown = String::new();
    for line in change {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.contains("--watch") {
            watched = Some(watch_for_change_run(trimmed, &env, &root, &dev));
            continue;
        }
        let literal = match (&watched, trimmed.contains("<RUN-ID>")) {
            (Some(id), true) => trimmed.replace("<RUN-ID>", id),
            (None, true) => panic!("{trimmed:?} needs a run id, and no line printed one"),
            (_, false) => trimmed.to_string(),
        };
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &literal]);
        env(&mut cmd);
        cmd.current_dir(&root);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "README \"Runs on change\" line failed ({}): {literal}\n--- stdout\n{stdout}\n--- stderr\n{}\n--- dev log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            dev.log_text()
        );
        shown = stdout;
    }
    assert!(watched.is_some(), "the block watches for the change run");
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} in the last line's output:\n{shown}"))
            .to_string()
    };
    assert_eq!(field("origin:"), "change");
    assert_eq!(field("changes:"), "1 coalesced from people");

    // Ctrl-C stops the fleet.
    dev.signal("INT");
    let status = wait_for("dev to stop", Duration::from_secs(30), || {
        dev.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{}", dev.log_text());
}

/// Runs the README's `runs list --watch` line until it prints a run of the change-triggered
/// schedule, then ends it (the reader's Ctrl-C); returns that run's short id.
fn watch_for_change_run(
    line: &str,
    env: &dyn Fn(&mut Command),
    root: &std::path::Path,
    dev: &Proc,
) -> String {
    use std::io::BufRead;
    let mut cmd = Command::new("bash");
    // `exec`: the watch itself is the child, so killing the child ends it.
    cmd.args(["-c", &format!("exec {line}")]);
    env(&mut cmd);
    cmd.current_dir(root).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let id = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("change/people-on-change") => {
                // `[HH:MM:SS] ID AGENT STATE ORIGIN/SCHEDULE ...`
                break l.split_whitespace().nth(1).unwrap_or_default().to_string();
            }
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{line:?} printed no run of people-on-change within 60 s; it printed:\n{}\n--- dev log\n{}",
                    seen.join("\n"),
                    dev.log_text()
                );
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        id.len() >= 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a run id: {id:?}"
    );
    id
}
