//! The daemon refuses bad configuration with exit code 64 and a message naming the key, before
//! binding any port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::net::TcpListener;
use std::process::Command;

use syncfleet_tests::daemon_config::{
    assert_dump_holds, dump_with_env as dump, without_syncfleet_env,
};

fn controller() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncfleet-controller"))
}

#[test]
fn misspelt_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "grpc_listn = \"127.0.0.1:1\"\n").unwrap();
    let out = controller()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grpc_listn") && err.contains("grpc_listen"),
        "{err}"
    );
}

#[test]
fn bad_value_from_environment_exits_64_before_binding() {
    // Hold a port: if the controller tried to bind before validating, it would say so.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = controller()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("SYNCFLEET_GRPC_LISTEN", format!("127.0.0.1:{port}"))
        .env("SYNCFLEET_PENDING_DEADLINE", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pending-deadline") || err.contains("PENDING_DEADLINE"),
        "{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
}

#[test]
fn cross_field_rule_names_the_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "heartbeat_interval = \"30s\"\nagent_lost_after = \"40s\"\n",
    )
    .unwrap();
    let out = controller()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`agent_lost_after`"), "{err}");
}

#[test]
fn dump_config_prints_the_effective_settings() {
    let out = controller()
        .args(["serve", "--dump-config", "--grpc-listen", "127.0.0.1:9999"])
        .env("SYNCFLEET_FLEET", "prod-eu")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("grpc_listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("fleet = \"prod-eu\""), "{text}");
    assert!(text.contains("pending_deadline = \"15m\""), "{text}");
}

#[test]
fn serve_without_pki_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller()
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syncfleet-controller init"), "{err}");
}

/// `--dump-config` of `serve` with the given environment (and nothing inherited that starts
/// with `SYNCFLEET_`).
fn dump_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    dump(controller(), "serve", args, env)
}

#[test]
fn every_key_is_settable_from_the_environment() {
    let out = dump_with_env(
        &[],
        &[
            ("SYNCFLEET_AGENT_LOST_AFTER", "30s"),
            ("SYNCFLEET_HEARTBEAT_INTERVAL", "5s"),
            ("SYNCFLEET_TLS__CERT", "/etc/syncfleet/controller.pem"),
            ("SYNCFLEET_SERVER_NAMES", "[ctl.example.com, 10.0.0.5]"),
            ("SYNCFLEET_FLEET", "prod"),
        ],
    );
    assert_dump_holds(
        &out,
        &[
            "agent_lost_after = \"30s\"",
            "heartbeat_interval = \"5s\"",
            "cert = \"/etc/syncfleet/controller.pem\"",
            "\"ctl.example.com\"",
            "\"10.0.0.5\"",
            "fleet = \"prod\"",
        ],
    );
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "fleet = \"from-file\"\npending_deadline = \"20m\"\nagent_lost_after = \"5m\"\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let env = [
        ("SYNCFLEET_FLEET", "from-env"),
        ("SYNCFLEET_PENDING_DEADLINE", "30m"),
    ];
    let out = dump_with_env(&["--config", cfg_arg], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet = \"from-env\""), "{text}");
    assert!(text.contains("pending_deadline = \"30m\""), "{text}");
    assert!(text.contains("agent_lost_after = \"5m\""), "{text}");
    let out = dump_with_env(
        &[
            "--config",
            cfg_arg,
            "--fleet",
            "from-flag",
            "--set",
            "pending_deadline=40m",
            "--set",
            "tls.key=/k.pem",
        ],
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet = \"from-flag\""), "{text}");
    assert!(text.contains("pending_deadline = \"40m\""), "{text}");
    assert!(text.contains("key = \"/k.pem\""), "{text}");
}

#[test]
fn an_unknown_syncfleet_variable_is_refused_naming_the_closest_one() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = without_syncfleet_env(controller())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
        .env("SYNCFLEET_AGENT_LOST_AFTR", "30s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SYNCFLEET_AGENT_LOST_AFTR") && err.contains("SYNCFLEET_AGENT_LOST_AFTER"),
        "{err}"
    );
    assert!(!err.contains("cannot listen"), "{err}");
    // A misspelt nested key is named with the valid one of its table.
    let out = dump_with_env(&[], &[("SYNCFLEET_TLS__CRT", "/x.pem")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SYNCFLEET_TLS__CRT") && err.contains("SYNCFLEET_TLS__CERT"),
        "{err}"
    );
    // So is a bad value, with the variable it came from.
    let out = dump_with_env(&[], &[("SYNCFLEET_GRPC_LISTEN", "nowhere")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SYNCFLEET_GRPC_LISTEN") && err.contains("grpc_listen"),
        "{err}"
    );
}

#[test]
fn variables_of_the_cli_and_the_agent_are_not_refused() {
    let out = dump_with_env(
        &[],
        &[
            ("SYNCFLEET_CONFIG", "/home/op/.config/syncfleet/config.toml"),
            ("SYNCFLEET_CONTEXT", "prod"),
            ("SYNCFLEET_ADDR", "https://ctl.example.com:7443"),
            ("SYNCFLEET_CACERT", "/home/op/ca.pem"),
            ("SYNCFLEET_CERT", "/home/op/op.pem"),
            ("SYNCFLEET_KEY", "/home/op/op.key"),
            ("SYNCFLEET_LOG", "debug"),
            ("SYNCFLEET_LOG_FORMAT", "json"),
            ("SYNCFLEET_AGENT_NAME", "sync-01"),
            ("SYNCFLEET_AGENT_EXECUTOR__WATCHDOG", "2h"),
            ("SYNCFLEET_ENROLL_TOKEN", "a.b"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unknown_otlp_protocol_is_refused_before_binding() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    for (protocol, named) in [("http/xml", "http/xml"), ("http/json", "http/json")] {
        let out = controller()
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--grpc-listen", &format!("127.0.0.1:{port}")])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{protocol}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL")
                && err.contains(named)
                && err.contains("http/protobuf"),
            "{err}"
        );
        assert!(!err.contains("cannot listen"), "{err}");
    }
}
