//! Notifications end to end: a real controller and a simulated agent, a webhook receiver
//! (axum, in this process) and an SMTP sink (Python's `aiosmtpd`, a real SMTP server in a
//! child process). A held run posts one webhook and sends one e-mail naming the approve
//! command; later evaluations and a controller restart send nothing more; approving clears
//! it (a "resolved" post); a new problem (a failed run) notifies again; a failing receiver is
//! retried and its failures show in `syncfleet notifiers show` and `/metrics`. The
//! Alertmanager example (`deploy/prometheus/alertmanager.yml`) is checked with `amtool`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the test polls real child processes from its own thread"
)]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fleet, Proc, free_port, http_get, py_venv_with, stderr, wait_for, workspace_root};

/// What the webhook receiver got: (path, JSON body).
type Posts = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Serve `POST /hook` (200) and `POST /flaky` (500 for the first `flaky_failures` posts, then
/// 200) on `port`, recording every body.
fn webhook_receiver(rt: &tokio::runtime::Runtime, port: u16, flaky_failures: usize) -> Posts {
    use axum::http::StatusCode;
    let posts: Posts = Arc::default();
    let (p1, p2) = (Arc::clone(&posts), Arc::clone(&posts));
    let flaky_seen = Arc::new(Mutex::new(0usize));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                p1.lock().unwrap().push(("/hook".into(), v));
                StatusCode::OK
            }),
        )
        .route(
            "/flaky",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let mut n = flaky_seen.lock().unwrap();
                *n += 1;
                if *n <= flaky_failures {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "receiver down for the test",
                    );
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                p2.lock().unwrap().push(("/flaky".into(), v));
                (StatusCode::OK, "")
            }),
        );
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    wait_for("the webhook receiver", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    posts
}

fn posts_to(posts: &Posts, path: &str) -> Vec<serde_json::Value> {
    posts
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The e-mails the sink stored (Maildir `new/`), as text.
fn mails(maildir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    out.sort();
    out
}

/// Maildir stores a quoted-printable body with soft line breaks; undo those for matching.
fn unfold(mail: &str) -> String {
    mail.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// An SMTP sink storing mails in the Maildir `dir/<name>`; with `tls` (certificate and key
/// files) it offers and requires STARTTLS.
fn start_smtp_sink(dir: &Path, name: &str, port: u16, tls: Option<(&Path, &Path)>) -> Proc {
    let python = py_venv_with(&["aiosmtpd"], ".aiosmtpd-ready");
    let maildir = dir.join(name);
    let mut cmd = Command::new(python);
    cmd.args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"));
    if let Some((cert, key)) = tls {
        cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
    }
    cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
    let proc = Proc::spawn(name, &mut cmd, dir.join(format!("{name}.log")));
    wait_for("the SMTP sink", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    proc
}

/// A CA of the test's own and a certificate for `localhost` signed by it: (CA PEM file,
/// certificate file, key file).
fn test_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "notifications test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("smtp-ca.pem"),
        dir.join("smtp.pem"),
        dir.join("smtp.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_held_run_notifies_once_by_webhook_and_email_until_it_clears_and_failures_are_retried() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hook_port = free_port();
    let posts = webhook_receiver(&rt, hook_port, 2);

    let mut fleet = Fleet::init(&["sync-01"]);
    let smtp_port = free_port();
    let _sink = start_smtp_sink(fleet.dir.path(), "maildir", smtp_port, None);
    let maildir = fleet.dir.path().join("maildir");
    // A second sink that requires STARTTLS, with a certificate from a CA of the test's own.
    let (ca_pem, cert, key) = test_ca(fleet.dir.path());
    let tls_port = free_port();
    let _tls_sink = start_smtp_sink(
        fleet.dir.path(),
        "maildir-tls",
        tls_port,
        Some((&cert, &key)),
    );
    let maildir_tls = fleet.dir.path().join("maildir-tls");
    fleet.start_controller();
    let server = fleet.dir.path().join("server.toml");
    std::fs::write(
        &server,
        "seed = 11\ntime_scale = 0.01\n\
         [[mas]]\nname = \"AD\"\nma_type = \"AD\"\nconnectors = 10000\nchange_rate_per_hour = 0.0\n\
         source_events = [{at_secs = 0.0, delete = 800}]\n\
         [[mas]]\nname = \"MIM Service\"\nma_type = \"FIM\"\nconnectors = 10000\nchange_rate_per_hour = 0.0\n\
         [[script]]\nma = \"MIM Service\"\nprofile = \"Delta Import\"\nresult = \"stopped-connectivity\"\n",
    )
    .unwrap();
    fleet.start_agent_with(
        "sync-01",
        &format!(
            "[engine]\nkind = \"sim\"\nsim_file = {server:?}\n[executor]\nstagger = \"10ms\"\n"
        ),
    );
    fleet.wait_connected(&["sync-01"]);
    let file = fleet.fleet_file(
        "fleet.yaml",
        &format!(
            "kind: Sequence\nname: guarded\nstages:\n  - steps: [{{ma: AD, profile: Delta Import}}]\n  - steps: [{{ma: AD, profile: Delta Sync, guard: {{max_staged_deletes: \"2%\"}}}}]\n\
             ---\nkind: Notifier\nname: ops-webhook\non: [held, failed]\nresolved: true\nwebhook: {{url: \"http://127.0.0.1:{hook_port}/hook\"}}\n\
             ---\nkind: Notifier\nname: ops-mail\non: [held]\nemail: {{server: 127.0.0.1, port: {smtp_port}, tls: none, from: syncfleet@example.com, to: [ops@example.com]}}\n\
             ---\nkind: Notifier\nname: flaky\non: [held]\ntargets: {{selector: \"env=nowhere\"}}\nwebhook: {{url: \"http://127.0.0.1:{hook_port}/flaky\"}}\n\
             ---\nkind: Notifier\nname: flaky-all\non: [held]\nwebhook: {{url: \"http://127.0.0.1:{hook_port}/flaky\"}}\n\
             ---\nkind: Notifier\nname: mail-tls\non: [held]\nemail: {{server: localhost, port: {tls_port}, tls: starttls, ca_file: {ca:?}, from: syncfleet@example.com, to: [ops@example.com]}}\n\
             ---\nkind: Notifier\nname: mail-untrusted\non: [held]\nemail: {{server: localhost, port: {tls_port}, tls: starttls, from: syncfleet@example.com, to: [ops@example.com]}}\n",
            ca = ca_pem.to_str().unwrap(),
        ),
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "apply: {}", stderr(&out));
    let listed = fleet.cli_json(&["notifiers", "list", "-o", "json"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "flaky",
            "flaky-all",
            "mail-tls",
            "mail-untrusted",
            "ops-mail",
            "ops-webhook"
        ]
    );
    // They read back as fleet documents.
    let got = fleet.cli(&["get", "notifiers", "ops-mail", "-o", "yaml"]);
    let got = String::from_utf8_lossy(&got.stdout).to_string();
    assert!(got.starts_with("kind: Notifier\nname: ops-mail\n"), "{got}");
    assert!(got.contains("tls: none"), "{got}");

    // A held run: one webhook post and one e-mail, both naming the approve command.
    let run = fleet.cli_json(&["run", "sync-01", "--sequence", "guarded", "-o", "json"]);
    let id = run["id"].as_str().unwrap().to_string();
    fleet.wait_run_state(&id, &["held"], Duration::from_secs(60));
    let approve = format!("syncfleet runs approve {id} --note");
    let hook = common::poll(Duration::from_secs(60), || {
        let p = posts_to(&posts, "/hook");
        (!p.is_empty()).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "no webhook for the held run; controller log:\n{}",
            fleet.controller.as_ref().unwrap().log_text()
        )
    });
    assert_eq!(hook.len(), 1, "{hook:#?}");
    assert_eq!(hook[0]["syncfleet"]["kind"], "held");
    assert_eq!(hook[0]["syncfleet"]["status"], "firing");
    assert_eq!(hook[0]["syncfleet"]["run_id"], id.as_str());
    assert_eq!(hook[0]["syncfleet"]["agent"], "sync-01");
    let text = hook[0]["text"].as_str().unwrap();
    assert!(text.contains(&approve), "{text}");
    assert!(text.contains("800 staged deletes"), "what tripped: {text}");
    assert!(
        hook[0]["syncfleet"]["approve_command"]
            .as_str()
            .unwrap()
            .starts_with(&approve)
    );
    let mail = wait_for("the held run's e-mail", Duration::from_secs(60), || {
        let m = mails(&maildir);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(mail.len(), 1);
    let body = unfold(&mail[0]);
    assert!(body.contains("To: ops@example.com"), "{body}");
    assert!(
        body.contains(&format!(
            "Subject: [syncfleet] run {} on sync-01 held",
            &id[..8]
        )),
        "{body}"
    );
    assert!(body.contains(&approve), "{body}");

    // Over STARTTLS with the configured CA: delivered. Without it (system roots), the
    // server's certificate is refused and the error is visible.
    let tls_mail = wait_for("the STARTTLS e-mail", Duration::from_secs(60), || {
        let m = mails(&maildir_tls);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(tls_mail.len(), 1);
    assert!(unfold(&tls_mail[0]).contains(&approve));
    let untrusted = wait_for(
        "the untrusted server's error",
        Duration::from_secs(60),
        || {
            let s = fleet.cli_json(&["notifiers", "show", "mail-untrusted", "-o", "json"]);
            (s["failed"].as_u64().unwrap() >= 1).then_some(s)
        },
    );
    assert_eq!(untrusted["sent"], 0, "{untrusted:#}");
    assert!(
        untrusted["last_error"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{untrusted:#}"
    );
    assert_eq!(untrusted["undelivered"], 1, "{untrusted:#}");

    // The failing receiver: two 500s, then delivered on a retry; the failures are visible.
    let flaky = wait_for(
        "the flaky receiver's delivery",
        Duration::from_secs(60),
        || {
            let p = posts_to(&posts, "/flaky");
            (!p.is_empty()).then_some(p)
        },
    );
    assert_eq!(flaky.len(), 1);
    let show = fleet.cli_json(&["notifiers", "show", "flaky-all", "-o", "json"]);
    assert_eq!(show["sent"], 1, "{show:#}");
    assert_eq!(show["failed"], 2, "{show:#}");
    assert!(
        show["last_error"]
            .as_str()
            .unwrap()
            .contains("webhook answered HTTP 500: receiver down for the test"),
        "{show:#}"
    );
    assert_eq!(show["problems"][0]["key"], format!("held/{id}"));
    assert_eq!(show["problems"][0]["attempts"], 3);
    assert_eq!(show["problems"][0]["delivered"], true);
    let table = fleet.cli(&["notifiers", "show", "flaky-all"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("1 sent, 0 resolved; 2 failed attempts, 0 given up"),
        "{table}"
    );
    // The selector of `flaky` matches no agent: nothing sent, nothing tried.
    let none = fleet.cli_json(&["notifiers", "show", "flaky", "-o", "json"]);
    assert_eq!(
        (none["sent"].as_u64(), none["failed"].as_u64()),
        (Some(0), Some(0))
    );

    // Later evaluations (the reconcile runs every 5 s) and a controller restart send nothing
    // more: the deduplication records are in the store.
    fleet.controller_mut().kill9();
    fleet.start_controller();
    fleet.wait_connected(&["sync-01"]);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(posts_to(&posts, "/hook").len(), 1);
    assert_eq!(posts_to(&posts, "/flaky").len(), 1);
    assert_eq!(mails(&maildir).len(), 1);
    assert_eq!(mails(&maildir_tls).len(), 1);

    // Approving clears the problem: ops-webhook asked for a "resolved" message, ops-mail did not.
    let out = fleet.cli(&["runs", "approve", &id, "--note", "expected: leavers"]);
    assert!(out.status.success(), "approve: {}", stderr(&out));
    let resolved = wait_for("the resolved post", Duration::from_secs(60), || {
        let p = posts_to(&posts, "/hook");
        (p.len() >= 2).then_some(p)
    });
    assert_eq!(
        resolved[1]["syncfleet"]["status"], "resolved",
        "{resolved:#?}"
    );
    assert_eq!(resolved[1]["syncfleet"]["key"], format!("held/{id}"));

    // A new problem notifies again: a failed run.
    let failed = fleet.cli_json(&[
        "run",
        "sync-01",
        "--step",
        "MIM Service:Delta Import",
        "-o",
        "json",
    ]);
    let failed_id = failed["id"].as_str().unwrap().to_string();
    fleet.wait_run_state(&failed_id, &["failed"], Duration::from_secs(60));
    let all = wait_for("the failed run's post", Duration::from_secs(60), || {
        let p = posts_to(&posts, "/hook");
        (p.len() >= 3).then_some(p)
    });
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[2]["syncfleet"]["kind"], "failed");
    assert_eq!(all[2]["syncfleet"]["run_id"], failed_id.as_str());
    assert!(
        all[2]["text"]
            .as_str()
            .unwrap()
            .contains("stopped-connectivity"),
        "{:#}",
        all[2]
    );
    assert_eq!(mails(&maildir).len(), 1, "ops-mail sends held runs only");

    // The counts are metrics too. A delivery is counted after the receiver has answered, so
    // the last post can be in the receiver's hands a moment before its count is written.
    let lines = [
        "syncfleet_notifications_total{notifier=\"ops-webhook\",outcome=\"sent\"} 2",
        "syncfleet_notifications_total{notifier=\"ops-webhook\",outcome=\"resolved\"} 1",
        "syncfleet_notifications_total{notifier=\"flaky-all\",outcome=\"failed\"} 2",
        "syncfleet_notifications_total{notifier=\"ops-mail\",outcome=\"sent\"} 1",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(fleet.http_port, "/metrics").unwrap_or_default();
        if lines.iter().all(|l| metrics.contains(l)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lines:#?} in /metrics within 30 s:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn notifiers_show_of_an_unknown_name_says_how_to_list_them() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let out = fleet.cli(&["notifiers", "show", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("no notifier named \"nope\"; see them with 'syncfleet notifiers list'"),
        "{}",
        stderr(&out)
    );
    let none = fleet.cli_json(&["notifiers", "list", "-o", "json"]);
    assert_eq!(none, serde_json::json!([]));
}

fn amtool(args: &[&str]) -> String {
    let out = Command::new("amtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run amtool ({e}): install the Debian package `prometheus-alertmanager` (scripts/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "amtool {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_alertmanager_example_is_valid_and_routes_held_runs_to_chat_and_email() {
    let config = "deploy/prometheus/alertmanager.yml";
    let checked = amtool(&["check-config", config]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let file = format!("--config.file={config}");
    let route = |labels: &[&str]| {
        let mut args = vec!["config", "routes", "test", file.as_str()];
        args.extend_from_slice(labels);
        amtool(&args)
    };
    assert_eq!(
        route(&[
            "alertname=SyncfleetRunHeld",
            "severity=warning",
            "agent=sync-01"
        ]),
        "identity-ops-chat,identity-ops-email"
    );
    assert_eq!(
        route(&[
            "alertname=SyncfleetAgentLost",
            "severity=critical",
            "agent=sync-01"
        ]),
        "identity-ops-oncall,identity-ops-email"
    );
    assert_eq!(
        route(&["alertname=SyncfleetScheduleSaturated", "severity=warning"]),
        "identity-ops-email"
    );
    assert_eq!(
        route(&[
            "alertname=SyncfleetPendingExportDeletesHigh",
            "severity=info"
        ]),
        "blackhole"
    );
}

#[test]
fn a_lost_agent_notifies_once_and_its_return_is_sent_as_resolved() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hook_port = free_port();
    let posts = webhook_receiver(&rt, hook_port, 0);
    let mut fleet = Fleet::init(&["sync-01"]);
    fleet.start_controller_with(&[
        "--set",
        "heartbeat_interval=1s",
        "--set",
        "agent_lost_after=2s",
    ]);
    fleet.start_agent("sync-01", 0, 0.01);
    fleet.wait_connected(&["sync-01"]);
    let file = fleet.fleet_file(
        "notifiers.yaml",
        &format!(
            "kind: Notifier\nname: lost\non: [agent_lost, engine_unhealthy]\nresolved: true\nwebhook: {{url: \"http://127.0.0.1:{hook_port}/hook\"}}\n"
        ),
    );
    let out = fleet.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "apply: {}", stderr(&out));

    fleet.agents.get_mut("sync-01").unwrap().kill9();
    let lost = wait_for("the lost agent's post", Duration::from_secs(60), || {
        let p = posts_to(&posts, "/hook");
        (!p.is_empty()).then_some(p)
    });
    assert_eq!(lost[0]["syncfleet"]["kind"], "agent_lost");
    assert_eq!(lost[0]["syncfleet"]["agent"], "sync-01");
    assert_eq!(lost[0]["syncfleet"]["status"], "firing");
    let shown = fleet.cli_json(&["notifiers", "show", "lost", "-o", "json"]);
    assert_eq!(
        shown["problems"][0]["key"], "agent_lost/sync-01",
        "{shown:#}"
    );

    fleet.start_agent("sync-01", 0, 0.01);
    fleet.wait_connected(&["sync-01"]);
    let back = wait_for("the resolved post", Duration::from_secs(60), || {
        let p = posts_to(&posts, "/hook");
        (p.len() >= 2).then_some(p)
    });
    assert_eq!(back.len(), 2, "{back:#?}");
    assert_eq!(back[1]["syncfleet"]["status"], "resolved");
    assert_eq!(back[1]["syncfleet"]["key"], "agent_lost/sync-01");
    let shown = fleet.cli_json(&["notifiers", "show", "lost", "-o", "json"]);
    assert_eq!(
        (shown["sent"].as_u64(), shown["resolved"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(shown["open_problems"], 0, "{shown:#}");
}
