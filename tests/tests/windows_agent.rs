//! The Windows binaries, run under Wine: `syncfleet-agent.exe` (its version, run-history files
//! as the engine writes them, and enrollment plus a run against a Linux controller over loopback
//! mTLS) and `syncfleet.exe` (the operator CLI on a Windows admin box) against a Linux
//! controller. The exes are the shipped build (`agent` profile) for `x86_64-pc-windows-gnu`
//! (`syncfleet_tests::wine`); each test has its own fresh Wine prefix.
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
use std::time::Instant;

use common::{Fleet, bin, run_followed, stderr, stdout};
use syncfleet_tests::wine::{WinePrefix, build_time, windows_exe, windows_path};

const DELTA: &str =
    "HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml";
const EXPORT: &str =
    "HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml";

/// A run-history sample of the agent's tests (`agent/tests/data/run-history`).
fn sample(name: &str) -> std::path::PathBuf {
    common::workspace_root()
        .join("agent/tests/data/run-history")
        .join(name)
}

/// `text` as the engine's `RunDetails()` output saved on Windows: UTF-16LE with a byte order
/// mark and CRLF line ends.
fn utf16_windows_file(text: &str) -> Vec<u8> {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut bytes = vec![0xFF, 0xFE];
    for u in crlf.encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    bytes
}

/// Fails with the exe's output unless it succeeded.
fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status,
        stderr(out),
        stdout(out)
    );
}

/// Runs `exe` once in `prefix` and reports how long the prefix's first start took.
fn first_start(prefix: &WinePrefix, exe: &Path) -> Output {
    let start = Instant::now();
    let out = prefix.output(exe, &["--version"]);
    eprintln!(
        "Windows build check: {:?}; first start of the Wine prefix with {}: {:?}",
        build_time(),
        exe.display(),
        start.elapsed()
    );
    out
}

#[test]
fn windows_agent_prints_its_version() {
    let exe = windows_exe("syncfleet-agent");
    let prefix = WinePrefix::new();
    let out = first_start(&prefix, &exe);
    assert_ok("syncfleet-agent.exe --version", &out);
    assert_eq!(
        stdout(&out),
        format!("syncfleet-agent {}", env!("CARGO_PKG_VERSION"))
    );
    // The same as the Linux build says.
    let linux = Command::new(bin("syncfleet-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), stdout(&linux));
}

#[test]
fn windows_agent_reads_utf16_run_history_files_like_the_linux_agent() {
    let exe = windows_exe("syncfleet-agent");
    let prefix = WinePrefix::new();
    assert_ok("first start", &first_start(&prefix, &exe));
    let dir = tempfile::tempdir().unwrap();
    for name in [DELTA, EXPORT] {
        let text = std::fs::read_to_string(sample(name)).unwrap();
        let utf16 = dir.path().join(name);
        std::fs::write(&utf16, utf16_windows_file(&text)).unwrap();

        let start = Instant::now();
        let out = prefix.output(
            &exe,
            &["run-details", utf16.to_str().unwrap(), "-o", "json"],
        );
        eprintln!("run-details {name} under Wine: {:?}", start.elapsed());
        assert_ok(&format!("syncfleet-agent.exe run-details {name}"), &out);
        let windows: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stdout(&out)));

        // The same run as the Linux agent reads from the UTF-8 original.
        let linux = Command::new(bin("syncfleet-agent"))
            .arg("run-details")
            .arg(sample(name))
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert_ok("syncfleet-agent run-details", &linux);
        let linux: serde_json::Value = serde_json::from_slice(&linux.stdout).unwrap();
        assert_eq!(windows, linux, "{name}");
    }

    // Spot checks of what both read, so that two equally wrong readings cannot pass.
    let delta = dir.path().join(DELTA);
    let out = prefix.output(
        &exe,
        &["run-details", delta.to_str().unwrap(), "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ma"], "MOSSAD-company");
    assert_eq!(v["run_number"], 1879);
    assert_eq!(v["result"], "stopped-connectivity");
    assert_eq!(v["steps"][0]["counters"]["stage-update"], 27);
    assert_eq!(v["steps"][1]["connection_result"], "failed-search");

    // A truncated file is one line of error and exit code 1, as on Linux.
    let bad = dir.path().join("truncated.xml");
    std::fs::write(
        &bad,
        utf16_windows_file("<run-history><run-details><ma-name>x</ma-na"),
    )
    .unwrap();
    let out = prefix.output(&exe, &["run-details", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}

#[test]
fn windows_agent_enrolls_with_a_linux_controller_and_its_run_reaches_runs_show() {
    let exe = windows_exe("syncfleet-agent");
    let prefix = WinePrefix::new();
    assert_ok("first start", &first_start(&prefix, &exe));
    let mut fleet = Fleet::init(&[]);
    fleet.start_controller();

    // A one-time token from the CLI, redeemed by the Windows agent over loopback TLS.
    let token = fleet.cli_json(&[
        "tokens",
        "create",
        "--agent",
        "win-01",
        "--labels",
        "os=windows",
        "-o",
        "json",
    ]);
    let data_dir = fleet.agent_dir("win-01");
    let controller = format!("https://127.0.0.1:{}", fleet.grpc_port);
    let start = Instant::now();
    let out = prefix.output(
        &exe,
        &[
            "enroll",
            "--controller",
            &controller,
            "--token",
            token["token"].as_str().unwrap(),
            "--ca-pin",
            token["ca_pin"].as_str().unwrap(),
            "--name",
            "win-01",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    eprintln!("enroll under Wine: {:?}", start.elapsed());
    assert_ok("syncfleet-agent.exe enroll", &out);
    for file in ["ca.pem", "agent.pem", "agent.key"] {
        assert!(data_dir.join(file).exists(), "enroll wrote no {file}");
    }
    // The key is restricted to SYSTEM, Administrators and the account the agent runs as, and
    // the message says so (an error setting the DACL fails the enrollment). Wine 8 accepts the
    // DACL but keeps none (it maps it to Unix mode bits and reports a DACL made from them), so
    // the DACL itself is checked by the unit tests of its composition, not here.
    let report = stdout(&out);
    let key_line = report
        .lines()
        .find(|l| l.contains("agent.key"))
        .unwrap_or_else(|| panic!("no line about agent.key: {report}"));
    eprintln!("enroll under Wine: {key_line}");
    assert!(
        key_line.contains("(private key, readable only by SYSTEM, Administrators and ")
            && !key_line.contains("owner only"),
        "{key_line}"
    );

    // The Windows agent on its simulated engine, with the enrolled identity (mTLS).
    let start = Instant::now();
    fleet.start_agent_program(prefix.command(&exe), "win-01", 0, 0.01);
    fleet.wait_connected(&["win-01"]);
    eprintln!("Windows agent connected after {:?}", start.elapsed());
    let agent = fleet.cli_json(&["agents", "show", "win-01", "-o", "json"]);
    assert_eq!(agent["labels"]["os"], "windows", "{agent:#}");

    let start = Instant::now();
    let followed = run_followed(
        |a| fleet.cli(a),
        "win-01",
        &["AD:Delta Import", "AD:Delta Sync"],
    );
    eprintln!("run on the Windows agent: {:?}", start.elapsed());
    let id = followed["id"].as_str().unwrap().to_string();
    let run = fleet.run_json(&id).unwrap();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["agent"], "win-01");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{run:#}");
    assert_eq!(steps[0]["profile"], "Delta Import");
    for c in [
        "stage-add",
        "stage-update",
        "stage-delete",
        "stage-no-change",
    ] {
        assert!(
            steps[0]["counters"][c].is_u64(),
            "missing {c}: {:#}",
            steps[0]
        );
    }
    assert!(
        steps[1]["counters"]["connector-flow"].is_u64(),
        "{:#}",
        steps[1]
    );
    // The Windows agent journaled the run before executing it, and finished it.
    assert_eq!(fleet.journal_run("win-01", &id), Some(true));
}

#[test]
fn windows_cli_drives_a_linux_controller() {
    let cli = windows_exe("syncfleet");
    let prefix = WinePrefix::new();
    let out = first_start(&prefix, &cli);
    assert_ok("syncfleet.exe --version", &out);
    let linux = Command::new(bin("syncfleet"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), stdout(&linux));
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));

    let fleet = Fleet::started(&["sync-01"], 0.01);
    let windows_cli = |args: &[&str]| {
        prefix
            .command(&cli)
            .arg("--config")
            .arg(&fleet.cli_config)
            .args(args)
            .output()
            .unwrap()
    };
    // Reads over mTLS with the operator's certificate, as the Linux CLI reads them.
    let start = Instant::now();
    let out = windows_cli(&["agents", "list", "-o", "json"]);
    eprintln!(
        "syncfleet.exe agents list under Wine: {:?}",
        start.elapsed()
    );
    assert_ok("syncfleet.exe agents list", &out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "sync-01", "{listed:#}");
    assert_eq!(listed[0]["state"], "connected", "{listed:#}");

    // A run started from the Windows CLI, followed to its end, shows the same in both CLIs.
    let followed = run_followed(windows_cli, "sync-01", &["AD:Delta Import"]);
    let id = followed["id"].as_str().unwrap().to_string();
    let out = windows_cli(&["runs", "show", &id, "-o", "json"]);
    assert_ok("syncfleet.exe runs show", &out);
    let windows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(windows["state"], "succeeded", "{windows:#}");
    assert_eq!(Some(windows), fleet.run_json(&id));
}

/// On Windows the agent's configuration and data live under `%ProgramData%\syncfleet\agent\`:
/// without `--config`, `run` reads `agent.toml` there, and `data_dir` defaults to that folder
/// (a service's working directory is System32, so a relative default would put the journal
/// and key there).
#[test]
fn windows_agent_finds_its_configuration_and_data_under_program_data() {
    let exe = windows_exe("syncfleet-agent");
    let prefix = WinePrefix::new();
    assert_ok("first start", &first_start(&prefix, &exe));

    // No configuration file: flags only, the data folder is the default one.
    let out = prefix.output(
        &exe,
        &[
            "run",
            "--name",
            "win-flags",
            "--controller",
            "https://127.0.0.1:1",
            "--dump-config",
        ],
    );
    assert_ok("syncfleet-agent.exe run --dump-config", &out);
    let dump = stdout(&out);
    assert!(dump.contains("name = \"win-flags\""), "{dump}");
    assert!(
        dump.contains(r"data_dir = 'C:\ProgramData\syncfleet\agent'"),
        "{dump}"
    );

    // The default configuration file is read without --config.
    let folder = prefix.path().join("drive_c/ProgramData/syncfleet/agent");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("agent.toml"),
        "name = \"win-cfg\"\ncontroller = \"https://127.0.0.1:2\"\n[labels]\nsite = \"hq\"\n",
    )
    .unwrap();
    let out = prefix.output(&exe, &["run", "--dump-config"]);
    assert_ok("syncfleet-agent.exe run --dump-config", &out);
    let dump = stdout(&out);
    assert!(dump.contains("name = \"win-cfg\""), "{dump}");
    assert!(dump.contains("site = \"hq\""), "{dump}");
    assert!(
        dump.contains(r"data_dir = 'C:\ProgramData\syncfleet\agent'"),
        "{dump}"
    );
    // --config still wins.
    let other = tempfile::tempdir().unwrap();
    let other_cfg = other.path().join("other.toml");
    std::fs::write(
        &other_cfg,
        "name = \"win-other\"\ncontroller = \"https://127.0.0.1:3\"\n",
    )
    .unwrap();
    let out = prefix.output(
        &exe,
        &[
            "run",
            "--config",
            &syncfleet_tests::wine::windows_path(&other_cfg),
            "--dump-config",
        ],
    );
    assert_ok("syncfleet-agent.exe run --config --dump-config", &out);
    let dump = stdout(&out);
    assert!(dump.contains("name = \"win-other\""), "{dump}");
    assert!(!dump.contains("site = \"hq\""), "{dump}");
}

/// `syncfleet-agent.exe service status` in `prefix`, and its exit code.
fn service_status(prefix: &WinePrefix, exe: &Path) -> (Option<i32>, String) {
    let out = prefix.output(exe, &["service", "status"]);
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn the_windows_service_installs_starts_stops_and_uninstalls_under_wine() {
    let prefix = WinePrefix::new();
    let exe = prefix.beside_stand_in(&windows_exe("syncfleet-agent"));
    assert_ok("first start", &first_start(&prefix, &exe));
    prefix.keep_running();
    let mut fleet = Fleet::init(&["win-svc"]);
    fleet.start_controller();

    // The service starts in System32 (drive C:), so every path in its configuration is a
    // Windows path.
    let config = fleet.dir.path().join("agent-service.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"win-svc\"\ncontroller = \"https://127.0.0.1:{}\"\ndata_dir = '{}'\n[labels]\nos = \"windows\"\n[engine]\nkind = \"sim\"\nserver = 0\ntime_scale = 0.01\n",
            fleet.grpc_port,
            windows_path(&fleet.agent_dir("win-svc"))
        ),
    )
    .unwrap();
    let config = windows_path(&config);

    let (code, text) = service_status(&prefix, &exe);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("not installed"), "{text}");

    let out = prefix.output(&exe, &["service", "install", "--config", &config]);
    assert_ok("service install", &out);
    let installed = stdout(&out);
    assert!(
        installed.contains("installed service syncfleet-agent"),
        "{installed}"
    );
    // Wine 8's service manager has no delayed automatic start (ChangeServiceConfig2 answers
    // ERROR_INVALID_LEVEL): the service is installed with a plain automatic start, and the
    // install says so.
    assert!(
        installed.contains("does not implement the delayed automatic start (ERROR_INVALID_LEVEL)"),
        "{installed}"
    );
    let (code, text) = service_status(&prefix, &exe);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "state:      stopped\n",
        "start type: automatic\n",
        "account:    NT SERVICE\\syncfleet-agent",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.contains(&format!(
            "syncfleet-agent.exe service run --config {config}"
        )),
        "{text}"
    );

    // Started by Wine's service manager, the agent connects to the controller.
    let start = Instant::now();
    let out = prefix.output(&exe, &["service", "start"]);
    assert_ok("service start", &out);
    eprintln!("service start under Wine: {:?}", start.elapsed());
    let running = common::poll(std::time::Duration::from_secs(30), || {
        let (_, text) = service_status(&prefix, &exe);
        text.contains("state:      running").then_some(text)
    });
    assert!(running.is_some(), "{}", service_status(&prefix, &exe).1);
    fleet.wait_connected(&["win-svc"]);
    let agent = fleet.cli_json(&["agents", "show", "win-svc", "-o", "json"]);
    assert_eq!(agent["labels"]["os"], "windows", "{agent:#}");

    // A stop is the agent's graceful shutdown: it leaves the controller and reports STOPPED
    // with exit code 0.
    let out = prefix.output(&exe, &["service", "stop"]);
    assert_ok("service stop", &out);
    let stopped = common::poll(std::time::Duration::from_secs(60), || {
        let (_, text) = service_status(&prefix, &exe);
        text.contains("state:      stopped").then_some(text)
    });
    let stopped = stopped.unwrap_or_else(|| panic!("{}", service_status(&prefix, &exe).1));
    assert!(!stopped.contains("exit code"), "{stopped}");
    common::wait_for(
        "the controller to see the agent gone",
        std::time::Duration::from_secs(60),
        || {
            let states = fleet.agent_states()?;
            (states.get("win-svc").map(String::as_str) != Some("connected")).then_some(())
        },
    );

    // Installing again updates the installed service.
    let out = prefix.output(&exe, &["service", "install", "--config", &config]);
    assert_ok("service install (again)", &out);
    assert!(
        stdout(&out).contains("updated service syncfleet-agent"),
        "{}",
        stdout(&out)
    );

    let out = prefix.output(&exe, &["service", "uninstall", "--config", &config]);
    assert_ok("service uninstall", &out);
    assert!(
        stdout(&out).contains("removed service syncfleet-agent"),
        "{}",
        stdout(&out)
    );
    let (code, text) = service_status(&prefix, &exe);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("not installed"), "{text}");
}
