//! The CLI's everyday habits through the real `syncfleet` binary: completion scripts, man
//! pages, contexts, a connection from environment variables alone, `version` against a running
//! controller (and a stopped one), `-o wide`/`--no-headers`, and operator certificates listed
//! and revoked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Fleet, bin, path_str, stderr, stdout};

/// Runs `syncfleet args` with a home folder holding no config file, `envs` set, and none of the
/// CLI's own variables inherited from the test's environment.
fn cli_in(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("syncfleet"));
    cmd.args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null());
    for var in [
        "SYNCFLEET_CONFIG",
        "SYNCFLEET_CONTEXT",
        "SYNCFLEET_ADDR",
        "SYNCFLEET_CACERT",
        "SYNCFLEET_CERT",
        "SYNCFLEET_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    cmd.output().unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", stdout(out)))
}

#[test]
fn completion_scripts_for_every_shell_and_one_man_page_per_command() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = cli_in(home.path(), &[], &["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(
            script.contains("syncfleet") && script.contains("operators"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let file = home.path().join("syncfleet.bash");
            std::fs::write(&file, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
            assert!(
                check.status.success(),
                "bash -n refuses the script: {}",
                stderr(&check)
            );
            // The script completes subcommands and the values of -o.
            assert!(script.contains("use-context") && script.contains("wide"));
        }
    }
    let out = cli_in(home.path(), &[], &["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let man = home.path().join("man").join("man1");
    let out = cli_in(home.path(), &[], &["docs", "man", &path_str(&man)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "every page written is listed, and only those"
    );
    for page in [
        "syncfleet.1",
        "syncfleet-agents-list.1",
        "syncfleet-runs-show.1",
        "syncfleet-operators-revoke.1",
        "syncfleet-config-get-contexts.1",
        "syncfleet-completion.1",
        "syncfleet-version.1",
    ] {
        let text = std::fs::read_to_string(man.join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}; written: {listed:?}"));
        assert!(text.contains(".TH"), "{page} is no man page: {text}");
    }
    let revoke = std::fs::read_to_string(man.join("syncfleet-operators-revoke.1")).unwrap();
    assert!(revoke.contains("note"), "{revoke}");
    assert!(
        listed.len() >= 30,
        "one page per command and subcommand: {}",
        listed.len()
    );
}

#[test]
fn contexts_are_listed_switched_and_named_when_missing() {
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("cli.toml");
    std::fs::write(
        &cfg,
        "current_context = \"dev\"\nowner = \"ops\"\n\
         [contexts.dev]\ncontroller = \"https://127.0.0.1:7443\"\nca_cert = \"dev/ca.pem\"\nclient_cert = \"dev/op.pem\"\nclient_key = \"dev/op.key\"\n\
         [contexts.prod]\ncontrollers = [\"https://ctl-1:7443\", \"https://ctl-2:7443\"]\nca_cert = \"/p/ca.pem\"\nclient_cert = \"/p/op.pem\"\nclient_key = \"/p/op.key\"\n\
         [contexts.broken]\ncontroller = \"http://x:1\"\nca_cert = \"/b/ca.pem\"\nclient_cert = \"/b/op.pem\"\nclient_key = \"/b/op.key\"\n",
    )
    .unwrap();
    let c = path_str(&cfg);
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", c.as_str()];
        all.extend_from_slice(args);
        cli_in(home.path(), &[], &all)
    };

    let out = cli(&["config", "get-contexts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("CURRENT  NAME"), "{text}");
    assert!(!lines[0].contains("CA-CERT"), "{text}");
    assert!(
        lines[1].contains("broken") && lines[1].contains("invalid: "),
        "{text}"
    );
    assert!(
        lines[2].starts_with('*') && lines[2].contains("https://127.0.0.1:7443"),
        "{text}"
    );
    assert!(
        lines[3].contains("https://ctl-1:7443,https://ctl-2:7443"),
        "{text}"
    );
    // -o wide adds the credential paths (relative ones made absolute), --no-headers drops the
    // header row.
    let wide = stdout(&cli(&[
        "config",
        "get-contexts",
        "-o",
        "wide",
        "--no-headers",
    ]));
    let wide: Vec<&str> = wide.lines().collect();
    assert_eq!(wide.len(), 3, "{wide:?}");
    assert!(
        wide[1].contains(&path_str(&home.path().join("dev/op.key"))),
        "{wide:?}"
    );
    let j = json_of(&cli(&["config", "get-contexts", "-o", "json"]));
    let names: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "dev", "prod"]);
    assert_eq!(j[1]["current"], true);
    assert_eq!(j[2]["controllers"][1], "https://ctl-2:7443");
    assert!(
        j[0]["problem"].as_str().unwrap().contains("http://x:1"),
        "{j}"
    );

    assert_eq!(stdout(&cli(&["config", "current-context"])), "dev");
    let out = cli(&["config", "use-context", "prod"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("switched to context \"prod\""));
    assert_eq!(stdout(&cli(&["config", "current-context"])), "prod");
    let j = json_of(&cli(&["config", "current-context", "-o", "json"]));
    assert_eq!(j["current_context"], "prod");
    let kept = std::fs::read_to_string(&cfg).unwrap();
    assert!(kept.contains("owner = \"ops\""), "{kept}");

    let out = cli(&["config", "use-context", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no context \"staging\"") && err.contains("(contexts: broken, dev, prod)"),
        "{err}"
    );
    assert_eq!(stdout(&cli(&["config", "current-context"])), "prod");

    // A file without current_context says how to choose one.
    std::fs::write(&cfg, kept.replace("current_context = \"prod\"", "")).unwrap();
    let out = cli(&["config", "current-context"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("syncfleet config use-context NAME"),
        "{}",
        stderr(&out)
    );
    // Without any config file: the error says how to do without one.
    let out = cli_in(home.path(), &[], &["config", "get-contexts"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn environment_variables_alone_connect_and_version_names_both_sides() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let home = tempfile::tempdir().unwrap();
    let pki = fleet.pki();
    let addr = format!("https://127.0.0.1:{}", fleet.grpc_port);
    let ca = path_str(&pki.join("ca.pem"));
    let cert = path_str(&pki.join("operators/admin.pem"));
    let key = path_str(&pki.join("operators/admin.key"));
    let env = [
        ("SYNCFLEET_ADDR", addr.as_str()),
        ("SYNCFLEET_CACERT", ca.as_str()),
        ("SYNCFLEET_CERT", cert.as_str()),
        ("SYNCFLEET_KEY", key.as_str()),
    ];

    // No config file anywhere: the four variables are enough.
    let j = json_of(&cli_in(home.path(), &env, &["version", "-o", "json"]));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(j["client"]["version"], version);
    assert_eq!(j["server"]["version"], version);
    assert_eq!(j["server"]["controller"], addr.as_str());
    let out = cli_in(home.path(), &env, &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("client: {version}\nserver: {version} ({addr})\n")
    );
    let out = cli_in(home.path(), &env, &["fleet", "status", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A partial set names what is missing.
    let out = cli_in(home.path(), &env[..2], &["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("SYNCFLEET_ADDR, SYNCFLEET_CACERT set but SYNCFLEET_CERT, SYNCFLEET_KEY not"),
        "{err}"
    );
    // ... which flags may complete.
    let out = cli_in(
        home.path(),
        &env[..2],
        &[
            "--cert", &cert, "--key", &key, "audit", "list", "-o", "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Flags beat the variables: another --controller is the one tried.
    let dead = format!("https://127.0.0.1:{}", common::free_port());
    let out = cli_in(
        home.path(),
        &env,
        &["--controller", &dead, "agents", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));

    // The variables beat the context of a config file.
    let out = cli_in(
        home.path(),
        &[
            ("SYNCFLEET_ADDR", dead.as_str()),
            ("SYNCFLEET_CACERT", ca.as_str()),
            ("SYNCFLEET_CERT", cert.as_str()),
            ("SYNCFLEET_KEY", key.as_str()),
            ("SYNCFLEET_CONFIG", &path_str(&fleet.cli_config)),
        ],
        &["agents", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));

    // A stopped controller: the client version still comes, then the error, exit 1.
    fleet.controller_mut().kill9();
    let out = fleet.cli(&["version"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("client: {version}\n")
    );
    assert!(
        stderr(&out).starts_with("error: cannot reach controller"),
        "{}",
        stderr(&out)
    );
    let out = fleet.cli(&["version", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["client"]["version"], version);
    assert!(j["server"].is_null(), "{j}");
}

#[test]
fn a_revoked_operator_is_refused_on_every_call_and_audited() {
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();
    let creds = |name: &str| fleet.dir.path().join(name).join("config.toml");
    let create = |name: &str, role: &str, cfg: &Path| {
        let out = fleet.cli(&[
            "operators",
            "create",
            name,
            "--role",
            role,
            "--out",
            &path_str(cfg),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let as_op = |cfg: &Path, args: &[&str]| {
        Command::new(bin("syncfleet"))
            .arg("--config")
            .arg(cfg)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let bob = creds("bob");
    create("bob", "admin", &bob);
    let vic = creds("vic");
    create("vic", "viewer", &vic);

    // Every certificate issued is listed: init's admin (recorded at start) and the new ones.
    let list = fleet.cli_json(&["operators", "list", "-o", "json"]);
    let certs = list.as_array().unwrap();
    assert_eq!(certs.len(), 3, "{list:#}");
    let by_name = |n: &str| certs.iter().find(|c| c["name"] == n).unwrap().clone();
    let admin = by_name("admin");
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["issued_by"], "pki-folder");
    assert_eq!(admin["state"], "valid");
    let b = by_name("bob");
    assert_eq!(
        (&b["role"], &b["issued_by"], &b["state"]),
        (
            &serde_json::json!("admin"),
            &serde_json::json!("operator/admin"),
            &serde_json::json!("valid")
        )
    );
    assert_eq!(b["fingerprint"].as_str().unwrap().len(), 64);
    assert!(!b["serial"].as_str().unwrap().is_empty());
    assert!(b["not_after"].is_string() && b["issued_at"].is_string());
    assert_eq!(by_name("vic")["role"], "viewer");
    // The table: wide adds the fingerprint, --no-headers one line per certificate.
    let plain = stdout(&fleet.cli(&["operators", "list"]));
    assert!(
        plain.starts_with("NAME") && !plain.contains("FINGERPRINT"),
        "{plain}"
    );
    let wide = stdout(&fleet.cli(&["operators", "list", "-o", "wide"]));
    assert!(
        wide.contains("FINGERPRINT") && wide.contains(b["fingerprint"].as_str().unwrap()),
        "{wide}"
    );
    let bare = stdout(&fleet.cli(&["operators", "list", "--no-headers"]));
    assert_eq!(bare.lines().count(), 3, "{bare}");
    assert!(bare.lines().all(|l| !l.starts_with("NAME")), "{bare}");

    assert!(as_op(&bob, &["agents", "list"]).status.success());
    // A viewer may list but not revoke.
    assert!(as_op(&vic, &["operators", "list"]).status.success());
    let out = as_op(&vic, &["operators", "revoke", "bob", "--note", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("'admin' permission"),
        "{}",
        stderr(&out)
    );
    // Unknown names are refused, naming the operators there are.
    let out = fleet.cli(&["operators", "revoke", "bobby", "--note", "typo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("(operators: admin, bob, vic)"),
        "{}",
        stderr(&out)
    );
    // A note is required.
    assert_eq!(
        fleet.cli(&["operators", "revoke", "bob"]).status.code(),
        Some(2)
    );

    let out = fleet.cli(&["operators", "revoke", "bob", "--note", "left the team"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("revoked operator bob: 1 certificate(s) refused from now on"),
        "{}",
        stdout(&out)
    );

    // Refused on every call, reads included, with a message saying why.
    for args in [
        &["agents", "list"][..],
        &["version"][..],
        &["operators", "list"][..],
        &["audit", "list"][..],
    ] {
        let out = as_op(&bob, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("operator bob was revoked") && err.contains("left the team"),
            "{args:?}: {err}"
        );
    }
    let audit = fleet.cli_json(&["audit", "list", "-o", "json", "--who", "operator/bob"]);
    let denied = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "denied")
        .count();
    assert!(denied >= 4, "{audit:#}");
    let audit = fleet.cli_json(&["audit", "list", "-o", "json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "RevokeOperator"
                && e["result"] == "ok"
                && e["target"] == "operator/bob"
                && e["detail"] == "left the team"),
        "{audit:#}"
    );
    let list = fleet.cli_json(&["operators", "list", "-o", "json"]);
    let b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bob")
        .unwrap();
    assert_eq!(b["state"], "revoked");
    assert_eq!(b["revoked_by"], "operator/admin");
    assert_eq!(b["revoke_note"], "left the team");

    // The only other admin is revoked: the caller's own admin credential is not revoked.
    let out = fleet.cli(&["operators", "revoke", "admin", "--note", "oops"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("it is your own credential"),
        "{}",
        stderr(&out)
    );
    assert!(fleet.cli(&["agents", "list"]).status.success());

    // A credential issued to bob after the revocation works.
    let bob2 = creds("bob-again");
    create("bob", "viewer", &bob2);
    let out = as_op(&bob2, &["agents", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // With another valid admin, the caller may revoke themselves.
    let carol = creds("carol");
    create("carol", "admin", &carol);
    let out = fleet.cli(&["operators", "revoke", "admin", "--note", "handing over"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fleet.cli(&["agents", "list"]).status.code(), Some(1));
    assert!(as_op(&carol, &["agents", "list"]).status.success());
}

#[test]
fn wide_lists_add_columns_and_no_headers_leaves_rows_only() {
    let fleet = Fleet::started(&["sync-01"], 0.01);
    let plain = stdout(&fleet.cli(&["agents", "list"]));
    let wide = stdout(&fleet.cli(&["agents", "list", "-o", "wide"]));
    assert!(!plain.contains("HOSTNAME"), "{plain}");
    let header = wide.lines().next().unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns[0], "NAME", "{wide}");
    assert_eq!(
        columns[columns.len() - 3..],
        ["HOSTNAME", "VERSION", "IN-FLIGHT"],
        "{wide}"
    );
    let agent = fleet.cli_json(&["agents", "show", "sync-01", "-o", "json"]);
    let version = agent["agent_version"].as_str().unwrap();
    assert!(!version.is_empty());
    assert!(wide.lines().nth(1).unwrap().contains(version), "{wide}");
    let bare = stdout(&fleet.cli(&["agents", "list", "--no-headers"]));
    assert_eq!(bare.lines().count(), 1, "{bare}");
    assert!(bare.starts_with("sync-01 "), "{bare}");

    let out = fleet.cli(&["run", "sync-01", "--step", "AD:Delta Import", "--follow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = stdout(&fleet.cli(&["runs", "list", "-o", "wide"]));
    let mut lines = runs.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[header.len() - 4..],
        ["SCHEDULE", "REQUESTED-BY", "STARTED", "FINISHED"],
        "{runs}"
    );
    assert!(lines.next().unwrap().contains("operator/admin"), "{runs}");
    let bare = stdout(&fleet.cli(&["runs", "list", "--no-headers"]));
    assert_eq!(bare.lines().count(), 1, "{bare}");
    assert!(!bare.contains("AGENT"), "{bare}");
}

#[test]
fn the_operator_of_a_dev_fleet_is_listed_and_the_version_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cli_config = dir.path().join("cli.toml");
    let mut cmd = common::dev_command("syncfleet-controller");
    cmd.args(["--agents", "1"])
        .arg("--cli-config")
        .arg(&cli_config);
    let _dev = common::Proc::spawn("dev", &mut cmd, dir.path().join("dev.log"));
    let config = path_str(&cli_config);
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        cli_in(dir.path(), &[], &all)
    };
    common::wait_agents_connected(cli, 1);
    assert_eq!(stdout(&cli(&["config", "current-context"])), "dev");
    let list = json_of(&cli(&["operators", "list", "-o", "json"]));
    let certs = list.as_array().unwrap();
    assert_eq!(certs.len(), 1, "{list:#}");
    assert_eq!(certs[0]["name"], "dev-admin");
    assert_eq!(certs[0]["role"], "admin");
    assert_eq!(certs[0]["state"], "valid");
    let j = json_of(&cli(&["version", "-o", "json"]));
    assert_eq!(j["server"]["version"], env!("CARGO_PKG_VERSION"));
}
