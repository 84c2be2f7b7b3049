//! The web console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver + fantoccini) against a real `syncfleet dev` fleet, over the console's HTTPS
//! with the controller's certificate pinned by its public key.
//!
//! One scenario, as an operator meets it: sign in with the dev banner's one-time link, see
//! every agent, start a run from the CLI and watch its steps change in the open page (pushed
//! over the page's event stream, no reload), open its detail, see the timeline draw it,
//! approve a run a guard rail held and see it continue, see two runs' overlap drawn; then a viewer's session shows no
//! action buttons, and POSTs forged from its page (with its CSRF token, and without one) are
//! refused with 403 and audited as denied, and signing out ends the session. On the way an
//! operator pauses a schedule with a note (and first meets the controller's refusal of an
//! over-long one), cancels a run, drains and resumes a server (and sees a drain made with the
//! CLI arrive in the open page), opens and dismisses a confirmation with the keyboard, and the
//! page is checked at a 400 px wide window.
//! Screenshots (fleet, timeline, a run's detail, a held run, the fleet at 400 px) go to
//! `target/console-screenshots/`.
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

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use browser::{Browser, Key, spki_pin};
use common::{Proc, bin, free_port, path_str, stderr, stdout, wait_agents_connected, wait_for};
use serde_json::{Value, json};

const AGENTS: [&str; 3] = ["sync-01", "sync-02", "sync-03"];

/// A `syncfleet dev` fleet in a temporary folder, its CLI config and its console sign-in link.
struct DevFleet {
    /// Declared first so it is dropped (killed) before its folder is deleted.
    _dev: Proc,
    dir: tempfile::TempDir,
    cli_config: PathBuf,
    login_url: String,
}

/// The trace UI the dev fleet's console links runs to.
const TRACE_URL: &str = "http://127.0.0.1:16686/trace/{trace_id}";

impl DevFleet {
    fn start() -> DevFleet {
        let dir = tempfile::tempdir().unwrap();
        let cli_config = dir.path().join("cli.toml");
        let banner = dir.path().join("banner.txt");
        let mut cmd = common::dev_command("syncfleet");
        cmd.args(["--agents", "3", "--time-scale", "0.05"])
            .args(["--console-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--console-trace-url", TRACE_URL])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--cli-config")
            .arg(&cli_config);
        let dev = Proc::spawn_with_stdout(
            "dev",
            &mut cmd,
            dir.path().join("dev.log"),
            std::fs::File::create(&banner).unwrap(),
        );
        let login_url = wait_for(
            "the dev banner's console sign-in link",
            Duration::from_secs(90),
            || {
                let text = std::fs::read_to_string(&banner).ok()?;
                let line = text.lines().find(|l| l.starts_with("console: "))?;
                let url = line
                    .trim_start_matches("console: ")
                    .split_whitespace()
                    .next()?;
                url.contains("/login?token=").then(|| url.to_string())
            },
        );
        DevFleet {
            _dev: dev,
            dir,
            cli_config,
            login_url,
        }
    }

    fn cli_with(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(&self.cli_config, args)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(out.status.success(), "syncfleet {args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn run_state(&self, id: &str) -> Value {
        self.cli_json(&["runs", "show", id, "-o", "json"])
    }

    fn wait_run(&self, id: &str, states: &[&str]) -> Value {
        wait_for(
            &format!("run {id} to reach {states:?}"),
            Duration::from_secs(90),
            || {
                let r = self.run_state(id);
                states
                    .contains(&r["state"].as_str().unwrap_or_default())
                    .then_some(r)
            },
        )
    }

    /// The console's origin (`https://127.0.0.1:port`), from the sign-in link.
    fn origin(&self) -> String {
        let rest = self.login_url.split("/login").next().unwrap();
        rest.to_string()
    }

    fn pins(&self) -> Vec<String> {
        vec![spki_pin(
            &self
                .dir
                .path()
                .join("data")
                .join("pki")
                .join("controller.pem"),
        )]
    }
}

/// A `fetch` from the page: `[status, body text]`.
fn page_fetch(b: &Browser, method: &str, path: &str, headers: Value, body: &str) -> (u64, String) {
    let v = b.execute_async(
        "const [method, path, headers, body, done] = arguments;
         fetch(path, {method, headers, body: method === 'GET' ? undefined : body, credentials: 'same-origin'})
           .then(async r => done([r.status, await r.text()]))
           .catch(e => done([0, String(e)]));",
        vec![json!(method), json!(path), headers, json!(body)],
    );
    (
        v[0].as_u64().unwrap(),
        v[1].as_str().unwrap_or_default().to_string(),
    )
}

/// The states of the step rows of the run page now, in order.
fn step_states(b: &Browser) -> Vec<String> {
    b.execute(
        "return Array.from(document.querySelectorAll('[data-testid=step-row]')).map(r => r.dataset.state)",
        vec![],
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap_or_default().to_string())
    .collect()
}

#[test]
fn operator_signs_in_watches_a_run_live_approves_and_rejects_held_runs_viewer_cannot_act() {
    let started = Instant::now();
    let fleet = DevFleet::start();
    let cli = |args: &[&str]| fleet.cli(args);
    wait_agents_connected(cli, AGENTS.len());
    let logs = fleet.dir.path();

    // Sign in with the banner's one-time link; the page moves on to the fleet.
    let admin = Browser::start("admin", &fleet.pins(), logs);
    let t = Instant::now();
    admin.goto(&fleet.login_url);
    admin.wait(
        "the sign-in page to lead to the console",
        browser::WAIT,
        |b| (b.count("[data-testid=session-who]") > 0).then_some(()),
    );
    let who = admin.texts("[data-testid=session-who]").join("");
    assert!(who.contains("admin"), "{who}");
    admin.wait_count(
        "every agent on the fleet page",
        "[data-testid=agent-row]",
        AGENTS.len(),
    );
    let sign_in = t.elapsed();
    let shown: Vec<String> = AGENTS
        .iter()
        .filter(|a| admin.count(&format!("[data-testid=agent-row][data-agent=\"{a}\"]")) == 1)
        .map(|a| a.to_string())
        .collect();
    assert_eq!(shown, AGENTS, "{}", admin.page_text());
    let row = admin.texts("[data-agent=\"sync-01\"]").join("");
    for part in ["connected", "healthy", "env=prod"] {
        assert!(
            row.contains(part),
            "{part} missing in the sync-01 row: {row}"
        );
    }
    // The admin may drain: the buttons are there.
    assert_eq!(
        admin.count("[data-testid=drain-agent-button]"),
        AGENTS.len()
    );
    // A second use of the link is refused: it works once.
    let (status, body) = page_fetch(&admin, "GET", &fleet.login_url, json!({}), "");
    assert_eq!(status, 401, "{body}");

    // A run started from the CLI shows up in the open runs page and its steps advance in the
    // open detail page, pushed by the event stream: the page is never reloaded (the marker
    // set on the window survives).
    admin.goto(&format!("{}/#/runs", fleet.origin()));
    admin.wait_text("the runs page", "h1", "Runs");
    admin.execute("window.__notReloaded = true; return null", vec![]);
    let out = fleet.cli(&["run", "sync-02", "--sequence", "delta-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = stdout(&out);
    let t = Instant::now();
    let row_css = format!("[data-testid=run-row][data-run=\"{run_id}\"]");
    admin.wait_count("the new run's row, pushed to the runs page", &row_css, 1);
    let run_row_after = t.elapsed();
    admin.click(&format!("{row_css} a"));
    admin.wait_count("the run's steps", "[data-testid=step-row]", 10);
    let mut seen: Vec<Vec<String>> = Vec::new();
    let done = admin.wait(
        "the run's steps to finish in the page",
        Duration::from_secs(90),
        |b| {
            let states = step_states(b);
            if seen.last() != Some(&states) {
                seen.push(states.clone());
            }
            (!states.is_empty() && states.iter().all(|s| s == "done")).then_some(states)
        },
    );
    let live_updates = t.elapsed();
    assert_eq!(done.len(), 10);
    let distinct_done: std::collections::BTreeSet<usize> = seen
        .iter()
        .map(|s| s.iter().filter(|x| *x == "done").count())
        .collect();
    assert!(
        distinct_done.len() >= 3,
        "the steps did not advance in the open page (seen {seen:?})"
    );
    assert_eq!(
        admin.execute("return window.__notReloaded === true", vec![]),
        json!(true),
        "the page was reloaded"
    );
    // The detail: the engine's result verbatim and the run's counters.
    admin.wait_text("the run's state", "h1", "succeeded");
    let steps_text = admin.texts("[data-testid=step-row]").join("\n");
    assert!(steps_text.contains("success"), "{steps_text}");
    assert!(steps_text.contains("stage-update="), "{steps_text}");
    assert!(
        steps_text.contains("→ "),
        "outbound counters per MA: {steps_text}"
    );
    // The trace id links to the trace UI the console was given.
    let trace_id = fleet.run_state(&run_id)["trace_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        trace_id.len(),
        32,
        "a run started by the CLI has a trace id"
    );
    assert_eq!(
        admin.attr("[data-testid=trace-link]", "href").as_deref(),
        Some(TRACE_URL.replace("{trace_id}", &trace_id).as_str()),
        "the trace link"
    );
    let detail_png = admin.screenshot("run-detail");

    // The timeline draws the run: a bar per step, its synchronizations marked.
    admin.goto(&format!(
        "{}/#/timeline?since=1h&zoom=activity",
        fleet.origin()
    ));
    let bars = format!("[data-testid=timeline-bar][data-run=\"{run_id}\"]");
    admin.wait_count("the run's bars on the timeline", &bars, 10);
    let syncs = admin.count(&format!("{bars}[data-kind=sync]"));
    assert_eq!(syncs, 3, "delta-cycle has three synchronizations");

    // A guard rail holds a run; the page shows what tripped; approving it continues it.
    let file = fleet.dir.path().join("guarded.yaml");
    std::fs::write(
        &file,
        "kind: Sequence\nname: guarded-cycle\nstages:\n  - steps: [{ma: AD, profile: Delta Import}]\n  - steps: [{ma: AD, profile: Delta Sync, guard: {max_staged_updates: 5}}]\n  - steps: [{ma: AD, profile: Export}]\n",
    )
    .unwrap();
    let out = fleet.cli(&["apply", "-f", &path_str(&file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held_run = |agent: &str| {
        let out = fleet.cli(&["run", agent, "--sequence", "guarded-cycle"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let id = stdout(&out);
        let r = fleet.wait_run(&id, &["held", "succeeded", "failed"]);
        assert_eq!(r["state"], "held", "{r:#}");
        id
    };
    let held = held_run("sync-01");
    admin.goto(&format!("{}/#/runs/{held}", fleet.origin()));
    let reason = admin.wait_text(
        "the held reason",
        "[data-testid=held-reason]",
        "exceed max_staged_updates 5",
    );
    assert!(reason.contains("over the limit"), "{reason}");
    let held_png = admin.screenshot("run-held");
    // Keyboard: Enter on the focused button opens the confirmation with the note field
    // focused; Escape backs out and nothing is approved.
    admin.focus("[data-testid=approve-button]");
    admin.press(Key::Enter);
    admin.wait_count("the confirmation dialog", "dialog#confirm[open]", 1);
    assert_eq!(admin.focused_id(), "confirm-note");
    admin.press(Key::Escape);
    admin.wait("the dialog to close", browser::WAIT, |b| {
        (b.count("dialog#confirm[open]") == 0).then_some(())
    });
    assert_eq!(fleet.run_state(&held)["continued_in"], "");
    let t = Instant::now();
    admin.click("[data-testid=approve-button]");
    admin.fill("[data-testid=confirm-note]", "checked the HR feed");
    admin.click("[data-testid=confirm-ok]");
    let continued = admin.wait(
        "the page to move to the continuing run",
        browser::WAIT,
        |b| {
            let url = b.current_url();
            let id = url.rsplit("#/runs/").next()?.to_string();
            (url.contains("#/runs/") && id != held && id.len() > 8).then_some(id)
        },
    );
    admin.wait_text("the continuing run to succeed", "h1", "succeeded");
    let approve_to_done = t.elapsed();
    let r = fleet.run_state(&held);
    assert_eq!(r["continued_in"], continued, "{r:#}");
    let audit = fleet.cli_json(&["audit", "list", "--limit", "1000", "-o", "json"]);
    let entries = audit.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "ApproveRun"
            && e["result"] == "ok"
            && e["who"] == "operator/dev-admin"
            && e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("checked the HR feed")),
        "the approval is audited with its note: {audit:#}"
    );

    // Pausing a schedule from the page, with its note, as the CLI would.
    admin.goto(&format!("{}/#/schedules", fleet.origin()));
    let pause = "[data-schedule=\"delta-every-3m\"] [data-testid=pause-schedule-button]";
    // A refusal shows the controller's own message: a note of 400 three-byte characters fits
    // the field (1024 characters) but not the controller's limit (1024 bytes).
    admin.click(pause);
    admin.fill("[data-testid=confirm-note]", &"€".repeat(400));
    admin.click("[data-testid=confirm-ok]");
    let banner = admin.wait_text(
        "the refusal's banner",
        "[data-testid=error-banner]",
        "note is 1200 bytes; the limit is 1024 bytes, shorten it",
    );
    assert!(banner.contains("400"), "the HTTP status is shown: {banner}");
    let sc = fleet.cli_json(&["schedules", "show", "delta-every-3m", "-o", "json"]);
    assert_eq!(sc["pause"]["paused"], false, "{sc:#}");
    admin.click(pause);
    admin.fill("[data-testid=confirm-note]", "AD maintenance");
    admin.click("[data-testid=confirm-ok]");
    admin.wait_count(
        "the schedule shown paused",
        "[data-schedule=\"delta-every-3m\"][data-paused=true]",
        1,
    );
    let sc = fleet.cli_json(&["schedules", "show", "delta-every-3m", "-o", "json"]);
    assert_eq!(sc["pause"]["paused"], true, "{sc:#}");
    assert_eq!(sc["pause"]["note"], "AD maintenance", "{sc:#}");
    assert_eq!(sc["pause"]["by"], "operator/dev-admin", "{sc:#}");

    // Cancelling a run from its page.
    let out = fleet.cli(&["run", "sync-01", "--sequence", "delta-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doomed = stdout(&out);
    admin.goto(&format!("{}/#/runs/{doomed}", fleet.origin()));
    admin.click("[data-testid=cancel-button]");
    admin.fill("[data-testid=confirm-note]", "wrong server");
    admin.click("[data-testid=confirm-ok]");
    admin.wait_text("the run shown cancelled", "h1", "cancelled");
    assert_eq!(
        fleet.wait_run(&doomed, &["cancelled"])["state"],
        "cancelled"
    );

    // Draining a server from the fleet page, then resuming it.
    admin.goto(&format!("{}/#/fleet", fleet.origin()));
    admin.click("[data-agent=\"sync-02\"] [data-testid=drain-agent-button]");
    admin.fill("[data-testid=confirm-note]", "patching");
    admin.click("[data-testid=confirm-ok]");
    admin.wait_text(
        "sync-02 shown draining with its note",
        "[data-agent=\"sync-02\"]",
        "“patching”",
    );
    let a = fleet.cli_json(&["agents", "show", "sync-02", "-o", "json"]);
    assert_eq!(a["drain"]["draining"], true, "{a:#}");
    assert_eq!(a["drain"]["note"], "patching", "{a:#}");
    admin.click("[data-agent=\"sync-02\"] [data-testid=resume-agent-button]");
    admin.click("[data-testid=confirm-ok]");
    admin.wait_count(
        "sync-02 with a drain button again",
        "[data-agent=\"sync-02\"] [data-testid=drain-agent-button]",
        1,
    );
    let a = fleet.cli_json(&["agents", "show", "sync-02", "-o", "json"]);
    assert_eq!(a["drain"]["draining"], false, "{a:#}");
    // A change made elsewhere (here the CLI) reaches the open page by itself.
    admin.execute("window.__notReloaded = true; return null", vec![]);
    let out = fleet.cli(&["agents", "drain", "sync-03", "--note", "from the CLI"]);
    assert!(out.status.success(), "{}", stderr(&out));
    admin.wait_text(
        "sync-03's drain pushed to the open fleet page",
        "[data-agent=\"sync-03\"]",
        "“from the CLI”",
    );
    let out = fleet.cli(&["agents", "resume", "sync-03"]);
    assert!(out.status.success(), "{}", stderr(&out));
    admin.wait_count(
        "sync-03's resume pushed to the open fleet page",
        "[data-agent=\"sync-03\"] [data-testid=drain-agent-button]",
        1,
    );
    assert_eq!(
        admin.execute("return window.__notReloaded === true", vec![]),
        json!(true),
        "the fleet page was reloaded"
    );

    // Two runs at once on one server (imports may share it; a synchronization runs alone):
    // the timeline draws their overlap and names both runs.
    let mut pair = Vec::new();
    for step in ["AD:Full Import", "HR:Full Import"] {
        let out = fleet.cli(&["run", "sync-02", "--step", step]);
        assert!(out.status.success(), "{}", stderr(&out));
        pair.push(stdout(&out));
    }
    for id in &pair {
        fleet.wait_run(id, &["succeeded"]);
    }

    // The fleet with a run in progress, and the timeline with the runs so far.
    let out = fleet.cli(&["run", "sync-03", "--sequence", "delta-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let busy = stdout(&out);
    admin.goto(&format!("{}/#/fleet", fleet.origin()));
    admin.wait_count(
        "the run in progress on sync-03's row",
        &format!("[data-agent=\"sync-03\"] [data-testid=agent-running-run][data-run=\"{busy}\"]"),
        1,
    );
    let fleet_png = admin.screenshot("fleet");
    fleet.wait_run(&busy, &["succeeded"]);
    admin.goto(&format!(
        "{}/#/timeline?since=1h&zoom=activity",
        fleet.origin()
    ));
    admin.wait_count(
        "the last run's bars on the timeline",
        &format!("[data-testid=timeline-bar][data-run=\"{busy}\"]"),
        10,
    );
    let overlap = admin.wait_text(
        "the overlap of the two imports on sync-02",
        "[data-agent=\"sync-02\"] [data-testid=timeline-overlap-note]",
        "overlap",
    );
    for id in &pair {
        assert!(overlap.contains(&id[..8]), "{overlap}");
    }
    assert!(
        admin.count("[data-agent=\"sync-02\"] [data-testid=timeline-overlap]") >= 1,
        "the overlap is drawn"
    );
    let timeline_png = admin.screenshot("timeline");

    // The console at a narrow window still lists every agent.
    admin.set_size(400, 900);
    admin.goto(&format!("{}/#/fleet", fleet.origin()));
    admin.wait_count(
        "every agent at 400 px",
        "[data-testid=agent-row]",
        AGENTS.len(),
    );
    let narrow_png = admin.screenshot("fleet-narrow");
    drop(admin);

    // A viewer: no action buttons anywhere, and forged POSTs are refused and audited.
    let second_held = held_run("sync-02");
    let vic = fleet.dir.path().join("vic").join("config.toml");
    let out = fleet.cli(&[
        "operators",
        "create",
        "vic",
        "--role",
        "viewer",
        "--out",
        &path_str(&vic),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fleet.cli_with(&vic, &["ui", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let viewer_url = serde_json::from_slice::<Value>(&out.stdout).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = Browser::start("viewer", &fleet.pins(), logs);
    viewer.goto(&viewer_url);
    viewer.wait_count(
        "the fleet page for the viewer",
        "[data-testid=agent-row]",
        AGENTS.len(),
    );
    let who = viewer.texts("[data-testid=session-who]").join("");
    assert!(who.contains("vic") && who.contains("viewer"), "{who}");
    let actions = "[data-testid$=-button]";
    assert_eq!(viewer.count(actions), 0, "{}", viewer.page_text());
    viewer.goto(&format!("{}/#/runs/{second_held}", fleet.origin()));
    viewer.wait_text(
        "the held run for the viewer",
        "[data-testid=held-reason]",
        "exceed",
    );
    assert_eq!(viewer.count(actions), 0, "{}", viewer.page_text());
    viewer.goto(&format!("{}/#/schedules", fleet.origin()));
    viewer.wait_count(
        "the schedules for the viewer",
        "[data-testid=schedule-row]",
        1,
    );
    assert_eq!(viewer.count(actions), 0, "{}", viewer.page_text());

    let (status, body) = page_fetch(&viewer, "GET", "/api/session", json!({}), "");
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    let approve = format!("/api/runs/{second_held}/approve");
    let (status, body) = page_fetch(
        &viewer,
        "POST",
        &approve,
        json!({"Content-Type": "application/json", "X-CSRF-Token": token}),
        "{\"note\":\"forged with the token\"}",
    );
    assert_eq!(status, 403, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "permission_denied", "{body}");
    let (status, body) = page_fetch(
        &viewer,
        "POST",
        &approve,
        json!({"Content-Type": "application/json"}),
        "{\"note\":\"forged without a token\"}",
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(fleet.run_state(&second_held)["state"], "held");
    let audit = fleet.cli_json(&["audit", "list", "--limit", "1000", "-o", "json"]);
    let denied: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "ApproveRun" && e["result"] == "denied" && e["who"] == "operator/vic"
        })
        .collect();
    assert!(
        denied.len() >= 2,
        "both forged POSTs audited as denied: {audit:#}"
    );

    // An operator rejects that held run instead: the dialog will not submit without a note, the
    // decision is shown on the page, recorded on the run and audited; no button is left.
    let out = fleet.cli(&["ui", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let admin_url = serde_json::from_slice::<Value>(&out.stdout).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = Browser::start("admin-again", &fleet.pins(), logs);
    admin.goto(&admin_url);
    admin.wait_count(
        "the fleet page after a second sign-in",
        "[data-testid=agent-row]",
        AGENTS.len(),
    );
    admin.goto(&format!("{}/#/runs/{second_held}", fleet.origin()));
    admin.wait_count("the reject button", "[data-testid=reject-button]", 1);
    admin.click("[data-testid=reject-button]");
    admin.wait_count("the confirmation dialog", "dialog#confirm[open]", 1);
    admin.click("[data-testid=confirm-ok]");
    assert_eq!(
        admin.count("dialog#confirm[open]"),
        1,
        "a rejection without a note is not sent"
    );
    assert_eq!(fleet.run_state(&second_held)["rejected_by"], "");
    admin.fill(
        "[data-testid=confirm-note]",
        "HR feed sent a wrong department",
    );
    admin.click("[data-testid=confirm-ok]");
    let decision = admin.wait_text(
        "the rejection on the held run's page",
        "[data-testid=held-decision]",
        "Rejected by",
    );
    assert!(
        decision.contains("HR feed sent a wrong department"),
        "{decision}"
    );
    assert_eq!(admin.count("[data-testid=reject-button]"), 0);
    assert_eq!(admin.count("[data-testid=approve-button]"), 0);
    let r = fleet.run_state(&second_held);
    assert_eq!(r["state"], "held", "{r:#}");
    assert_eq!(r["rejected_by"], "operator/dev-admin", "{r:#}");
    assert_eq!(r["continued_in"], "", "{r:#}");
    let audit = fleet.cli_json(&["audit", "list", "--limit", "1000", "-o", "json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "RejectRun"
                && e["result"] == "ok"
                && e["who"] == "operator/dev-admin"),
        "the rejection is audited: {audit:#}"
    );
    drop(admin);

    // Signing out ends the session: the page says how to sign in again, the API refuses.
    viewer.click("[data-testid=logout]");
    viewer.wait_text(
        "the signed-out page",
        "[data-testid=signed-out]",
        "syncfleet ui",
    );
    let (status, body) = page_fetch(&viewer, "GET", "/api/fleet", json!({}), "");
    assert_eq!(status, 401, "{body}");

    println!(
        "console browser test: {} agents; sign-in to fleet page {sign_in:?}; run row pushed \
         {run_row_after:?} after start; its 10 steps seen in {} distinct states, all done \
         {live_updates:?} after start; approval to continued run succeeded {approve_to_done:?}; \
         {} denied forged POSTs audited; whole test {:?}; screenshots: {}, {}, {}, {}, {}",
        AGENTS.len(),
        seen.len(),
        denied.len(),
        started.elapsed(),
        fleet_png.display(),
        timeline_png.display(),
        detail_png.display(),
        held_png.display(),
        narrow_png.display(),
    );
}
