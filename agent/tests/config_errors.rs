//! The agent refuses bad configuration with exit code 64 and a message naming the key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use std::process::Command;

use syncfleet_tests::daemon_config::{assert_dump_holds, dump_with_env as dump};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncfleet-agent"))
}

#[test]
fn missing_name_exits_64() {
    let out = agent()
        .args(["run", "--controller", "https://127.0.0.1:1"])
        .env_remove("SYNCFLEET_AGENT_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`name`"));
}

#[test]
fn plain_http_controller_is_refused() {
    let out = agent()
        .args(["run", "--name", "s1", "--controller", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`controller`") && err.contains("https://"),
        "{err}"
    );
}

#[test]
fn missing_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args([
            "run",
            "--name",
            "s1",
            "--controller",
            "https://127.0.0.1:1",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn dump_config_shows_engine_and_labels() {
    let out = agent()
        .args([
            "run",
            "--name",
            "s1",
            "--controller",
            "https://c:7443",
            "--label",
            "env=prod",
            "--sim-server",
            "1",
            "--dump-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("env = \"prod\""), "{text}");
    assert!(
        text.contains("kind = \"sim\"") && text.contains("server = 1"),
        "{text}"
    );
}

/// `run --dump-config` with the given environment (and nothing inherited that starts with
/// `SYNCFLEET_`).
fn dump_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    dump(agent(), "run", args, env)
}

#[test]
fn every_key_is_settable_from_the_environment() {
    let out = dump_with_env(
        &[],
        &[
            ("SYNCFLEET_AGENT_NAME", "sync-07"),
            ("SYNCFLEET_AGENT_CONTROLLER", "https://ctl.example.com:7443"),
            ("SYNCFLEET_AGENT_EXECUTOR__WATCHDOG", "2h"),
            ("SYNCFLEET_AGENT_EXECUTOR__RUN_MODE", "exclusive"),
            ("SYNCFLEET_AGENT_ENGINE__SERVER", "2"),
            ("SYNCFLEET_AGENT_ENGINE__TIME_SCALE", "0.5"),
            ("SYNCFLEET_AGENT_LABELS__SITE", "eu-west"),
            ("SYNCFLEET_AGENT_TLS__SERVER_NAME", "ctl.internal"),
            ("SYNCFLEET_AGENT_RECONNECT_MAX_BACKOFF", "1m"),
        ],
    );
    assert_dump_holds(
        &out,
        &[
            "name = \"sync-07\"",
            "controller = \"https://ctl.example.com:7443\"",
            "watchdog = \"2h\"",
            "run_mode = \"exclusive\"",
            "server = 2",
            "time_scale = 0.5",
            "site = \"eu-west\"",
            "server_name = \"ctl.internal\"",
            "reconnect_max_backoff = \"1m\"",
        ],
    );
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        "name = \"file-name\"\ncontroller = \"https://file:1\"\n[executor]\nwatchdog = \"3h\"\nstagger = \"1s\"\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let env = [
        ("SYNCFLEET_AGENT_NAME", "env-name"),
        ("SYNCFLEET_AGENT_EXECUTOR__WATCHDOG", "5h"),
    ];
    let out = dump_with_env(&["--config", cfg_arg], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name = \"env-name\""), "{text}");
    assert!(text.contains("watchdog = \"5h\""), "{text}");
    assert!(text.contains("stagger = \"1s\""), "{text}");
    let out = dump_with_env(
        &[
            "--config",
            cfg_arg,
            "--name",
            "flag-name",
            "--set",
            "executor.watchdog=6h",
        ],
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name = \"flag-name\""), "{text}");
    assert!(text.contains("watchdog = \"6h\""), "{text}");
}

#[test]
fn an_unknown_syncfleet_variable_is_refused_naming_the_closest_one() {
    let base = [
        ("SYNCFLEET_AGENT_NAME", "s1"),
        ("SYNCFLEET_AGENT_CONTROLLER", "https://c:1"),
    ];
    for (var, closest) in [
        (
            "SYNCFLEET_AGENT_EXECUTOR__WATCHDOGG",
            "SYNCFLEET_AGENT_EXECUTOR__WATCHDOG",
        ),
        ("SYNCFLEET_AGNET_NAME", "SYNCFLEET_AGENT_NAME"),
        // Earlier names point to the current ones.
        ("SYNCFLEET_SIM_SERVER", "SYNCFLEET_AGENT_ENGINE__SERVER"),
    ] {
        let mut env = base.to_vec();
        env.push((var, "x"));
        let out = dump_with_env(&[], &env);
        assert_eq!(out.status.code(), Some(64), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(closest), "{err}");
    }
}

#[test]
fn variables_of_the_controller_and_the_cli_are_not_refused() {
    let out = dump_with_env(
        &["--name", "s1", "--controller", "https://c:1"],
        &[
            ("SYNCFLEET_AGENT_LOST_AFTER", "30s"),
            ("SYNCFLEET_GRPC_LISTEN", "0.0.0.0:7443"),
            ("SYNCFLEET_TLS__CERT", "/etc/syncfleet/controller.pem"),
            ("SYNCFLEET_CONFIG", "/x.toml"),
            ("SYNCFLEET_CONTEXT", "prod"),
            ("SYNCFLEET_CONTROLLER_CONFIG", "/c.toml"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
