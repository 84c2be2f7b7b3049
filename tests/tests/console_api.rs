//! The web console's HTTP API through the real binaries over real HTTPS, trusting the fleet CA
//! (no certificate check is switched off): one-time sign-in links from `syncfleet ui`, the
//! session cookie's attributes, sessions required on `/api/*`, CSRF and Origin refusals audited,
//! a viewer refused and audited exactly as over gRPC, an admin approving a held run, live run
//! updates over server-sent events, a revoked operator's session ending, security headers.
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

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{Fleet, Proc, bin, free_port, stderr, stdout};
use serde_json::{Value, json};

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// An HTTPS client that trusts only the fleet CA of `ca_pem`.
fn client(ca_pem: &Path) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A browser of the console: the HTTPS client and, once signed in, its session cookie.
struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: String,
}

/// One answer: status, headers, body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

impl Browser {
    fn new(fleet: &Fleet) -> Browser {
        Browser::of(
            &fleet.pki().join("ca.pem"),
            &format!("https://127.0.0.1:{}", fleet.console_port),
        )
    }

    /// A browser of the console at `base` that trusts the CA of `ca_pem`.
    fn of(ca_pem: &Path, base: &str) -> Browser {
        Browser {
            rt: tokio::runtime::Runtime::new().unwrap(),
            http: client(ca_pem),
            base: base.to_string(),
            cookie: None,
            csrf: String::new(),
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        self.rt.block_on(async {
            let resp = req.send().await.unwrap();
            Answer {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: resp.text().await.unwrap(),
            }
        })
    }

    fn get(&self, path_or_url: &str) -> Answer {
        let url = if path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        self.send(self.http.get(url))
    }

    /// A POST as the console's page sends it: JSON, the session's CSRF token, its own origin.
    fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .header("origin", &self.base)
                .header("x-csrf-token", &self.csrf)
                .body(body.to_string()),
        )
    }

    /// Open a sign-in link: keep the session cookie and the CSRF token.
    fn sign_in(&mut self, url: &str) -> Answer {
        let a = self.get(url);
        assert_eq!(a.status, 200, "{}", a.body);
        let set = a.header("set-cookie");
        let pair = set.split(';').next().unwrap().trim().to_string();
        assert!(pair.starts_with("syncfleet_session="), "{set}");
        self.cookie = Some(pair);
        let s = self.get("/api/session");
        assert_eq!(s.status, 200, "{}", s.body);
        self.csrf = s.json()["csrf_token"].as_str().unwrap().to_string();
        a
    }
}

/// The events of an open `/api/events` response.
struct EventStream {
    response: reqwest::Response,
    buffered: String,
}

impl EventStream {
    /// The next event (keep-alive comments skipped): its name and its data as JSON. Fails the
    /// test when none comes within a minute or the stream ends.
    async fn next(&mut self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Complete events end with a blank line.
            while let Some(end) = self.buffered.find("\n\n") {
                let event: String = self.buffered.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !name.is_empty() {
                    return (name, serde_json::from_str(&data).unwrap());
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event arrives within a minute")
                .unwrap()
                .expect("the event stream stays open");
            self.buffered.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// `syncfleet ui -o json` with the CLI config `cfg`: the link and its expiry.
fn ui_link(cfg: &Path) -> (String, String) {
    let out = as_operator(cfg, &["ui", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["url"].as_str().unwrap().to_string(),
        v["expires_at"].as_str().unwrap().to_string(),
    )
}

fn as_operator(cfg: &Path, args: &[&str]) -> Output {
    Command::new(bin("syncfleet"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

/// A new operator with `role`, and the CLI config that uses its credential.
fn operator(fleet: &Fleet, name: &str, role: &str) -> std::path::PathBuf {
    let cfg = fleet.dir.path().join(name).join("config.toml");
    let out = fleet.cli(&[
        "operators",
        "create",
        name,
        "--role",
        role,
        "--out",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    cfg
}

fn audit(fleet: &Fleet) -> Vec<Value> {
    fleet
        .cli_json(&["audit", "list", "--limit", "1000", "-o", "json"])
        .as_array()
        .unwrap()
        .clone()
}

/// The audit entry with `request_id`.
fn audit_entry(fleet: &Fleet, request_id: &str) -> Value {
    common::wait_for(
        &format!("the audit entry of request {request_id}"),
        Duration::from_secs(10),
        || {
            audit(fleet)
                .into_iter()
                .find(|e| e["request_id"] == request_id)
        },
    )
}

/// Set the expiry of the store record `key` to the past, as time passing would.
fn expire(fleet: &Fleet, key: &str) {
    let db = rusqlite::Connection::open(fleet.data_dir().join("controller.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let raw: Vec<u8> = db
        .query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap();
    let mut v: Value = serde_json::from_slice(&raw).unwrap();
    v["expires_ms"] = json!(1);
    db.execute(
        "UPDATE state SET value = ?1 WHERE key = ?2",
        rusqlite::params![serde_json::to_vec(&v).unwrap(), key],
    )
    .unwrap();
}

fn token_of(url: &str) -> String {
    url.rsplit_once("token=").unwrap().1.to_string()
}

#[test]
fn a_sign_in_link_works_once_and_opens_a_strict_short_session() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let mut browser = Browser::new(&fleet);

    // `syncfleet ui`: the link on the first line, its expiry on the second; -o json has both.
    let out = fleet.cli(&["ui"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{}/login?token=", browser.base)),
        "{text}"
    );
    assert!(lines[1].starts_with("valid once, until "), "{text}");
    let (url, expires_at) = ui_link(&fleet.cli_config);
    assert!(
        url.starts_with(&format!("{}/login?token=", browser.base)),
        "{url}"
    );
    // --open with no opener on the PATH: a warning, and the link all the same.
    let out = Command::new(bin("syncfleet"))
        .arg("--config")
        .arg(&fleet.cli_config)
        .args(["ui", "--open"])
        .env("PATH", fleet.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("/login?token="), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("warning: cannot start xdg-open to open the browser"),
        "{}",
        stderr(&out)
    );
    // The help says what the browser must trust.
    let help = stdout(&fleet.cli(&["ui", "--help"]));
    assert!(
        help.contains("fleet CA") && help.contains("ca.pem"),
        "{help}"
    );
    let expires = chrono::DateTime::parse_from_rfc3339(&expires_at).unwrap();
    let left = expires.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::Duration::minutes(4) && left <= chrono::Duration::minutes(5),
        "{expires_at}"
    );

    // Without a session every API answers 401 with the JSON error body.
    for path in [
        "/api/session",
        "/api/fleet",
        "/api/agents/sync-01",
        "/api/runs",
        "/api/runs/x",
        "/api/timeline",
        "/api/schedules",
        "/api/schedules/x",
        "/api/events",
    ] {
        let a = browser.get(path);
        assert_eq!(a.status, 401, "{path}: {}", a.body);
        assert_eq!(a.json()["code"], "unauthenticated", "{path}");
        assert!(
            a.json()["error"].as_str().unwrap().contains("syncfleet ui"),
            "{path}: {}",
            a.body
        );
        assert_eq!(a.header("cache-control"), "no-store", "{path}");
    }

    // The link opens a session: an HttpOnly, Secure, SameSite=Strict cookie for an hour, and a
    // page that navigates to the console without a redirect.
    let signed_in = browser.sign_in(&url);
    assert_eq!(
        signed_in.header("set-cookie").split_once(';').unwrap().1,
        " HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=3600"
    );
    assert!(
        signed_in
            .body
            .contains("<meta http-equiv=\"refresh\" content=\"0; url=/\">"),
        "{}",
        signed_in.body
    );
    assert!(
        signed_in.body.contains("<a href=\"/\">"),
        "{}",
        signed_in.body
    );
    assert_eq!(signed_in.header("cache-control"), "no-store");
    assert_eq!(signed_in.header("referrer-policy"), "no-referrer");

    // A second use of the same link is refused, saying why and how to get a new one.
    let again = Browser::new(&fleet).get(&url);
    assert_eq!(again.status, 401, "{}", again.body);
    assert!(again.body.contains("used already"), "{}", again.body);
    assert!(again.body.contains("syncfleet ui"), "{}", again.body);

    // An expired link is refused too.
    let (late, _) = ui_link(&fleet.cli_config);
    expire(
        &fleet,
        &format!(
            "console-login/{}",
            syncfleet_proto::digest::sha256_hex(token_of(&late).as_bytes())
        ),
    );
    let expired = Browser::new(&fleet).get(&late);
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(expired.body.contains("expired"), "{}", expired.body);

    // The session: who, the role's actions, the CSRF token, its end.
    let s = browser.get("/api/session").json();
    assert_eq!(s["operator"], "admin", "{s:#}");
    assert_eq!(s["role"], "admin");
    assert_eq!(s["fleet"], "e2e");
    assert_eq!(
        s["actions"],
        json!({"approve": true, "reject": true, "cancel": true, "pause_schedule": true, "drain_agent": true, "start_run": true})
    );
    assert_eq!(s["csrf_token"].as_str().unwrap().len(), 43);
    let ends = chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap()).unwrap();
    let left = ends.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::Duration::minutes(59) && left <= chrono::Duration::minutes(60),
        "{s:#}"
    );

    // The reads answer the CLI's JSON shapes.
    let run = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import", "--follow"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let f = browser.get("/api/fleet");
    assert_eq!(f.status, 200, "{}", f.body);
    let f = f.json();
    let agent = &f["agents"][0];
    assert_eq!(agent["name"], "sync-01", "{f:#}");
    assert_eq!(agent["state"], "connected");
    assert_eq!(agent["running"], json!([]));
    assert_eq!(agent["last_run"]["steps"][0]["profile"], "Delta Import");
    assert_eq!(f["status"]["pause"]["paused"], false);
    // Pending exports per MA come from the agent's heartbeats: the same readings as the
    // `syncfleet_pending_exports` series of /metrics.
    common::wait_for(
        "pending exports of sync-01 on /api/fleet equal to /metrics",
        Duration::from_secs(90),
        || {
            let f = browser.get("/api/fleet").json();
            let ad = f["agents"][0]["pending_exports"]["AD"].clone();
            let (_, metrics) = common::http_get(fleet.http_port, "/metrics")?;
            let sample = |kind: &str| {
                let prefix = format!(
                    "syncfleet_pending_exports{{agent=\"sync-01\",ma=\"AD\",kind=\"{kind}\"}} "
                );
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix.as_str()))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            ["add", "update", "delete"]
                .iter()
                .all(|k| ad[*k].as_f64().is_some() && ad[*k].as_f64() == sample(k))
                .then_some(())
        },
    );
    let cli_agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    let a = browser.get("/api/agents/sync-01").json();
    assert_eq!(a["name"], cli_agent["name"]);
    assert_eq!(a["management_agents"], cli_agent["management_agents"]);
    let runs = browser
        .get("/api/runs?since=1h&agent=sync-01&limit=5")
        .json();
    let id = runs["runs"][0]["id"].as_str().unwrap().to_string();
    let cli_run = fleet.cli_json(&["runs", "show", &id, "-o", "json"]);
    let mut detail = browser.get(&format!("/api/runs/{id}")).json();
    assert_eq!(detail["held"], Value::Null);
    detail.as_object_mut().unwrap().remove("held");
    assert_eq!(detail, cli_run);
    let t = browser.get("/api/timeline?since=6h");
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.json()["servers"][0]["agent"], "sync-01", "{}", t.body);
    assert_eq!(
        t.json()["servers"][0]["runs"][0]["steps"][0]["kind"],
        "import"
    );
    let bad = browser.get("/api/timeline?since=5h");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["code"], "invalid_argument");
    assert_eq!(
        browser.get("/api/schedules").json(),
        json!({"schedules": []})
    );
    let missing = browser.get("/api/agents/nobody");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.json()["code"], "not_found");

    // Security headers on pages, assets and the API.
    for path in ["/", "/api/session", "/no-such-page"] {
        let a = browser.get(path);
        assert_eq!(a.header("content-security-policy"), CSP, "{path}");
        assert_eq!(a.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(a.header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(
            a.header("strict-transport-security"),
            "max-age=31536000",
            "{path}"
        );
    }
    let index = browser.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(browser.get("/no-such-page").status, 404);

    // Signing out ends the session on the server, not only in the browser.
    let cookie = browser.cookie.clone();
    let out = browser.post("/logout", &json!({}));
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").ends_with("Max-Age=0"));
    assert_eq!(browser.get("/api/session").status, 401);
    browser.cookie = cookie;
    assert_eq!(browser.get("/api/session").status, 401);

    // An expired session is refused (and deleted).
    let mut other = Browser::new(&fleet);
    other.sign_in(&ui_link(&fleet.cli_config).0);
    let value = other.cookie.clone().unwrap();
    let value = value.split_once('=').unwrap().1;
    expire(
        &fleet,
        &format!(
            "console-session/{}",
            syncfleet_proto::digest::sha256_hex(value.as_bytes())
        ),
    );
    let a = other.get("/api/fleet");
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("expired"), "{}", a.body);
}

#[test]
fn refused_actions_are_403_and_audited_like_the_grpc_api() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let mut admin = Browser::new(&fleet);
    admin.sign_in(&ui_link(&fleet.cli_config).0);
    let drain = "/api/agents/sync-01/drain";
    let url = format!("{}{drain}", admin.base);

    // No CSRF token, a wrong one, another site's origin, a form body: 403, audited as denied
    // under the RPC the request would have called, with the problem named.
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (
            admin
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body("{}"),
            "no X-CSRF-Token header",
        ),
        (
            admin
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-csrf-token", "forged")
                .body("{}"),
            "does not match this session's token",
        ),
        (
            admin
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-csrf-token", &admin.csrf)
                .header("origin", "https://evil.example")
                .body("{}"),
            "comes from another site (Origin https://evil.example",
        ),
        (
            admin
                .http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-csrf-token", &admin.csrf)
                .body("note=x"),
            "must be JSON",
        ),
    ];
    for (req, problem) in cases {
        let a = admin.send(req);
        assert_eq!(a.status, 403, "{problem}: {}", a.body);
        let body = a.json();
        assert_eq!(body["code"], "permission_denied");
        assert!(body["error"].as_str().unwrap().contains(problem), "{body}");
        let e = audit_entry(&fleet, body["request_id"].as_str().unwrap());
        assert_eq!(e["who"], "operator/admin", "{e}");
        assert_eq!(e["action"], "DrainAgent");
        assert_eq!(e["target"], "agent/sync-01");
        assert_eq!(e["result"], "denied");
        assert!(e["detail"].as_str().unwrap().contains(problem), "{e}");
        assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
    }
    // Without any session: 401, audited as anonymous.
    let a = Browser::new(&fleet).post(drain, &json!({"note": "x"}));
    assert_eq!(a.status, 401, "{}", a.body);
    let e = audit_entry(&fleet, a.json()["request_id"].as_str().unwrap());
    assert_eq!(
        (e["who"].as_str(), e["result"].as_str()),
        (Some("anonymous"), Some("denied"))
    );
    // Nothing was drained by any of them.
    assert_eq!(
        fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"])["drain"]["draining"],
        false
    );

    // The page's own request goes through, audited `ok` with the note, like the CLI's.
    let a = admin.post(drain, &json!({"note": "patching"}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["drain"]["draining"], true);
    assert_eq!(a.json()["drain"]["by"], "operator/admin");
    let ok = audit(&fleet)
        .into_iter()
        .find(|e| e["action"] == "DrainAgent" && e["result"] == "ok")
        .unwrap();
    assert_eq!(ok["who"], "operator/admin");
    assert_eq!(ok["detail"], "patching");
    let a = admin.post("/api/agents/sync-01/resume", &json!({}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["drain"]["draining"], false);
    // A body over 64 KiB is refused before it is read whole.
    let big = json!({"note": "x".repeat(70 * 1024)});
    assert_eq!(admin.post(drain, &big).status, 413);
    // A body that is not the action's: 400 naming the shape.
    let a = admin.post(drain, &json!({"reason": 1}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("{\\\"note\\\": \\\"why\\\"}"), "{}", a.body);

    // A viewer's session: no actions, and the server refuses them exactly as over gRPC.
    let vic = operator(&fleet, "vic", "viewer");
    let mut viewer = Browser::new(&fleet);
    viewer.sign_in(&ui_link(&vic).0);
    let s = viewer.get("/api/session").json();
    assert_eq!(s["role"], "viewer");
    assert_eq!(
        s["actions"],
        json!({"approve": false, "reject": false, "cancel": false, "pause_schedule": false, "drain_agent": false, "start_run": false})
    );
    assert_eq!(viewer.get("/api/fleet").status, 200);
    let a = viewer.post(drain, &json!({"note": "forged"}));
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["code"], "permission_denied");
    let console_entry = audit_entry(&fleet, a.json()["request_id"].as_str().unwrap());
    let out = as_operator(&vic, &["agents", "drain", "sync-01", "--note", "forged"]);
    assert!(!out.status.success());
    let grpc_entry = audit(&fleet)
        .into_iter()
        .find(|e| {
            e["who"] == "operator/vic"
                && e["action"] == "DrainAgent"
                && e["request_id"] != console_entry["request_id"]
        })
        .unwrap();
    for field in ["who", "action", "target", "result", "detail"] {
        assert_eq!(console_entry[field], grpc_entry[field], "{field}");
    }
    assert_eq!(console_entry["result"], "denied");
    assert!(
        console_entry["detail"]
            .as_str()
            .unwrap()
            .contains("has role viewer; DrainAgent needs the 'operate' permission"),
        "{console_entry}"
    );
    assert!(
        stderr(&out).contains(console_entry["detail"].as_str().unwrap()),
        "{}",
        stderr(&out)
    );

    // A revoked operator's session stops working at once.
    let eve = operator(&fleet, "eve", "operator");
    let mut browser = Browser::new(&fleet);
    browser.sign_in(&ui_link(&eve).0);
    assert_eq!(browser.get("/api/fleet").status, 200);
    let out = fleet.cli(&["operators", "revoke", "eve", "--note", "left the team"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for path in ["/api/session", "/api/fleet", "/api/runs"] {
        let a = browser.get(path);
        assert_eq!(a.status, 401, "{path}: {}", a.body);
        assert!(a.body.contains("revoked"), "{path}: {}", a.body);
    }
    let a = browser.post(drain, &json!({"note": "still here?"}));
    assert_eq!(a.status, 401, "{}", a.body);
}

#[test]
fn an_admin_approves_a_held_run_and_live_updates_arrive_as_events() {
    let fleet = Fleet::with_a_guarded_sequence(&["--set", "console.max_event_streams=1"]);
    let mut admin = Browser::new(&fleet);
    admin.sign_in(&ui_link(&fleet.cli_config).0);

    // The live stream is open before the run starts; the run's updates arrive on it.
    let events = admin.rt.block_on(async {
        let resp = admin
            .http
            .get(format!("{}/api/events", admin.base))
            .header("cookie", admin.cookie.clone().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        resp
    });
    // console.max_event_streams = 1: a second stream is refused while the first is open.
    let second = admin.get("/api/events");
    assert_eq!(second.status, 503, "{}", second.body);
    assert!(
        second.body.contains("console.max_event_streams"),
        "{}",
        second.body
    );
    let out = fleet.cli(&["run", "sync-01", "--sequence", "hr-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let mut stream = EventStream {
        response: events,
        buffered: String::new(),
    };
    let mut states: Vec<String> = Vec::new();
    while !states.iter().any(|s| s == "held") {
        let (kind, data) = admin.rt.block_on(stream.next());
        if kind == "run" && data["id"] == id.as_str() {
            states.push(data["state"].as_str().unwrap().to_string());
        }
    }
    assert!(states.len() >= 2, "{states:?}");
    assert_eq!(states.last().unwrap(), "held", "{states:?}");

    // What tripped, in the run's detail.
    let detail = admin.get(&format!("/api/runs/{id}")).json();
    assert_eq!(detail["state"], "held", "{detail:#}");
    assert_eq!(detail["held"]["step"], 1);
    assert_eq!(detail["held"]["profile"], "Delta Sync");
    assert_eq!(
        detail["held"]["reason"],
        "300 staged adds on HR (NumImportAdd) exceed max_staged_adds 5% of 2000 connectors = 100"
    );
    assert_eq!(detail["held"]["guard"]["max_staged_adds"], "5%");
    assert_eq!(detail["held"]["pending_before"]["import_add"], 300);
    let held = admin.get("/api/runs?state=held").json();
    assert_eq!(held["runs"][0]["id"], id.as_str(), "{held:#}");

    // An agent's change (drained with the CLI) arrives as an `agent` event.
    let out = fleet.cli(&["agents", "drain", "sync-01", "--note", "patching"]);
    assert!(out.status.success(), "{}", stderr(&out));
    loop {
        let (kind, data) = admin.rt.block_on(stream.next());
        if kind == "agent" && data["name"] == "sync-01" && data["drain"]["draining"] == true {
            assert_eq!(data["drain"]["note"], "patching");
            break;
        }
    }
    let out = fleet.cli(&["agents", "resume", "sync-01"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Approved from the console: it continues and succeeds, audited `ok` as the admin.
    let a = admin.post(
        &format!("/api/runs/{id}/approve"),
        &json!({"note": "HR onboarding batch"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let cont = a.json();
    assert_eq!(cont["continuation_of"], id.as_str(), "{cont:#}");
    let cont_id = cont["id"].as_str().unwrap().to_string();
    let run = fleet.wait_run_state(
        &cont_id,
        &["succeeded", "failed", "held"],
        Duration::from_secs(60),
    );
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let e = audit(&fleet)
        .into_iter()
        .find(|e| e["action"] == "ApproveRun")
        .unwrap();
    assert_eq!(e["who"], "operator/admin", "{e}");
    assert_eq!(e["result"], "ok");
    assert_eq!(e["target"], format!("run/{id}"));
    assert_eq!(e["detail"], "HR onboarding batch");
    assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
    // A second approval is refused as over gRPC: 409 with the controller's message.
    let again = admin.post(&format!("/api/runs/{id}/approve"), &json!({}));
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.json()["error"].as_str().unwrap().contains(&cont_id),
        "{}",
        again.body
    );
}

#[test]
fn a_held_run_rejected_from_the_console_is_recorded_audited_and_final() {
    let fleet = Fleet::with_a_guarded_sequence(&[]);
    let out = fleet.cli(&["run", "sync-01", "--sequence", "hr-cycle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let run = fleet.wait_run_state(
        &id,
        &["held", "succeeded", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(run["state"], "held", "{run:#}");
    let reject = format!("/api/runs/{id}/reject");
    let note = json!({"note": "HR feed doubled the joiners"});

    let mut admin = Browser::new(&fleet);
    admin.sign_in(&ui_link(&fleet.cli_config).0);
    assert_eq!(admin.get("/api/session").json()["actions"]["reject"], true);
    assert_eq!(
        admin.get(&format!("/api/runs/{id}")).json()["held"]["decision"],
        Value::Null
    );

    // Without the session's CSRF token: 403, audited as a denied RejectRun, nothing decided.
    let a = admin.send(
        admin
            .http
            .post(format!("{}{reject}", admin.base))
            .header("content-type", "application/json")
            .body(note.to_string()),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    let e = audit_entry(&fleet, a.json()["request_id"].as_str().unwrap());
    assert_eq!(
        (&e["action"], &e["result"]),
        (&json!("RejectRun"), &json!("denied")),
        "{e}"
    );
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("no X-CSRF-Token header"),
        "{e}"
    );

    // A viewer's session: no reject action, and a forged POST is refused and audited.
    let vic = operator(&fleet, "vic", "viewer");
    let mut viewer = Browser::new(&fleet);
    viewer.sign_in(&ui_link(&vic).0);
    assert_eq!(
        viewer.get("/api/session").json()["actions"]["reject"],
        false
    );
    let a = viewer.post(&reject, &note);
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["code"], "permission_denied");
    let e = audit_entry(&fleet, a.json()["request_id"].as_str().unwrap());
    assert_eq!(e["who"], "operator/vic");
    assert_eq!(
        (&e["action"], &e["result"]),
        (&json!("RejectRun"), &json!("denied")),
        "{e}"
    );
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("has role viewer; RejectRun needs the 'operate' permission"),
        "{e}"
    );

    // A rejection says why: an empty note is refused naming --note.
    let a = admin.post(&reject, &json!({"note": ""}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.json()["error"].as_str().unwrap().contains("--note"),
        "{}",
        a.body
    );
    assert_eq!(fleet.run_json(&id).unwrap()["rejected_by"], "");

    // Rejected: still held, the decision recorded and shown with what tripped.
    let a = admin.post(&reject, &note);
    assert_eq!(a.status, 200, "{}", a.body);
    let run = a.json();
    assert_eq!(run["id"], id.as_str(), "{run:#}");
    assert_eq!(run["state"], "held");
    assert_eq!(run["rejected_by"], "operator/admin");
    assert_eq!(run["reject_note"], "HR feed doubled the joiners");
    assert_eq!(run["held"]["decision"]["kind"], "rejected", "{run:#}");
    assert_eq!(run["held"]["decision"]["by"], "operator/admin");
    assert_eq!(
        run["held"]["decision"]["note"],
        "HR feed doubled the joiners"
    );
    assert_eq!(run["held"]["decision"]["at"], run["rejected_at"]);
    let e = audit(&fleet)
        .into_iter()
        .find(|e| e["action"] == "RejectRun" && e["result"] == "ok")
        .unwrap();
    assert_eq!(e["who"], "operator/admin");
    assert_eq!(e["target"], format!("run/{id}"));
    assert_eq!(e["detail"], "HR feed doubled the joiners");

    // Final: an approval is refused as over gRPC, 409 naming the rejection.
    let a = admin.post(
        &format!("/api/runs/{id}/approve"),
        &json!({"note": "fine after all"}),
    );
    assert_eq!(a.status, 409, "{}", a.body);
    let err = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains(&format!(
            "run {id} was already rejected by operator/admin at "
        )) && err.contains("HR feed doubled the joiners"),
        "{err}"
    );
    let runs = fleet.cli_json(&["runs", "list", "-o", "json"]);
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
}

/// `dev`'s banner carries a sign-in link for its admin, valid for an hour, that works once.
#[test]
fn the_dev_banner_prints_a_working_sign_in_link() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let console_port = free_port();
    let mut cmd = common::dev_command("syncfleet");
    cmd.args(["--agents", "1", "--time-scale", "0.01"])
        .args(["--console-listen", &format!("127.0.0.1:{console_port}")])
        .arg("--data-dir")
        .arg(&data)
        .arg("--cli-config")
        .arg(dir.path().join("cli.toml"));
    let banner = dir.path().join("dev.stdout");
    let _dev = Proc::spawn_with_stdout(
        "dev",
        &mut cmd,
        dir.path().join("dev.log"),
        std::fs::File::create(&banner).unwrap(),
    );
    let line = common::wait_for("the dev banner", Duration::from_secs(60), || {
        std::fs::read_to_string(&banner)
            .ok()?
            .lines()
            .find(|l| l.starts_with("console: "))
            .map(str::to_string)
    });
    let base = format!("https://127.0.0.1:{console_port}");
    assert!(
        line.starts_with(&format!("console: {base}/login?token=")),
        "{line}"
    );
    assert!(
        line.ends_with("(sign-in link valid 1 h, one-time; or run `syncfleet ui` for a new link)"),
        "{line}"
    );
    let url = line.split_whitespace().nth(1).unwrap();
    let mut browser = Browser::of(&data.join("pki").join("ca.pem"), &base);
    browser.sign_in(url);
    let s = browser.get("/api/session").json();
    assert_eq!(
        (s["operator"].as_str(), s["role"].as_str()),
        (Some("dev-admin"), Some("admin"))
    );
    assert_eq!(s["fleet"], "dev");
    assert_eq!(
        Browser::of(&data.join("pki").join("ca.pem"), &base)
            .get(url)
            .status,
        401
    );
}

/// With `console.enabled = false` nothing listens on the console's port and `syncfleet ui`
/// says the console is off and which setting turns it on.
#[test]
fn a_disabled_console_mints_no_links() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller_with(&["--set", "console.enabled=false"]);
    let out = fleet.cli(&["ui"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out)
            .contains("the web console is disabled on this controller (console.enabled = false)"),
        "{}",
        stderr(&out)
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", fleet.console_port)).is_err());
}
