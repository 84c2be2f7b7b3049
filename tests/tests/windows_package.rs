//! The Windows packages of the agent (`scripts/windows-package`): the zip and the MSI hold the
//! shipped `syncfleet-agent.exe` (the `agent` profile), `agent.sample.toml` and `install.ps1`
//! from `deploy/windows/`, named and versioned after the crate. The zip is read with python3's zipfile, the MSI with
//! msitools (`msiinfo`, `msiextract`), as an administrator's tools would see them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, stdout, workspace_root};
use syncfleet_tests::wine::windows_exe;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Never changes: it is what makes a newer MSI replace an older one.
const UPGRADE_CODE: &str = "{FD797E98-92E0-4A57-A2E8-81DD2C37F46D}";
const SHIPPED: [&str; 3] = ["syncfleet-agent.exe", "agent.sample.toml", "install.ps1"];

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: install it with `apt-get install {package}` (scripts/test does this)"
    );
}

/// What each shipped file must contain: the shipped exe and the files of `deploy/windows/`.
fn sources(exe: &Path) -> BTreeMap<String, Vec<u8>> {
    let deploy = workspace_root().join("deploy/windows");
    SHIPPED
        .iter()
        .map(|name| {
            let path = if *name == "syncfleet-agent.exe" {
                exe.to_path_buf()
            } else {
                deploy.join(name)
            };
            (name.to_string(), std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Runs the packaging script with its output in `target_dir`; returns the zip and the MSI.
fn package(exe: &Path, target_dir: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(workspace_root().join("scripts/windows-package"))
        .arg("--exe")
        .arg(exe)
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/windows-package failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let text = stdout(&out);
    let paths: Vec<&str> = text.lines().collect();
    let base = format!("syncfleet-agent-{VERSION}-windows-x86_64");
    let dir = target_dir.join("windows-package");
    assert_eq!(
        paths,
        [
            dir.join(format!("{base}.zip")).to_str().unwrap(),
            dir.join(format!("{base}.msi")).to_str().unwrap(),
        ],
        "{}",
        stderr(&out)
    );
    (PathBuf::from(paths[0]), PathBuf::from(paths[1]))
}

/// The zip's entries and their contents, read with python3's zipfile.
fn zip_entries(zip: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             print(json.dumps({i.filename: list(z.read(i)) for i in z.infolist()}))",
        ])
        .arg(zip)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn msiinfo(msi: &Path, args: &[&str]) -> String {
    let out = Command::new("msiinfo")
        .args(&args[..1])
        .arg(msi)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "msiinfo {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// The rows of an exported MSI table (after its three header lines), split at tabs.
fn rows(export: &str) -> Vec<Vec<String>> {
    export
        .lines()
        .skip(3)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn windows_package_zip_and_msi_hold_the_exe_sample_config_and_installer() {
    require("wixl", "wixl");
    require("msiinfo", "msitools");
    require("msiextract", "msitools");
    require("python3", "python3");
    let exe = windows_exe("syncfleet-agent");
    let dir = tempfile::tempdir().unwrap();
    let (zip, msi) = package(&exe, dir.path());
    let want = sources(&exe);

    // The zip: exactly the three files, byte for byte.
    let entries = zip_entries(&zip);
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(entries[name] == *bytes, "{name} in the zip differs");
    }

    // The MSI: product version, fixed upgrade code, 64-bit package.
    let summary = msiinfo(&msi, &["suminfo"]);
    assert!(
        summary.contains(&format!("Subject: syncfleet agent {VERSION}")),
        "{summary}"
    );
    assert!(summary.contains("Template: x64;1033"), "{summary}");
    let property: BTreeMap<String, String> = rows(&msiinfo(&msi, &["export", "Property"]))
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone())))
        .collect();
    assert_eq!(property["ProductVersion"], VERSION);
    assert_eq!(property["UpgradeCode"], UPGRADE_CODE);
    assert_eq!(property["Manufacturer"], "syncfleet");

    // Files under %ProgramFiles%\syncfleet\, each its own 64-bit component with a fixed GUID.
    let tables = msiinfo(&msi, &["tables"]);
    for t in [
        "File",
        "Component",
        "Directory",
        "ServiceControl",
        "Upgrade",
    ] {
        assert!(tables.lines().any(|l| l == t), "no {t} table: {tables}");
    }
    let directory = rows(&msiinfo(&msi, &["export", "Directory"]));
    assert!(
        directory.contains(&vec![
            "INSTALLDIR".to_string(),
            "ProgramFiles64Folder".into(),
            "syncfleet".into()
        ]),
        "{directory:?}"
    );
    let files = rows(&msiinfo(&msi, &["export", "File"]));
    let mut names: Vec<&str> = files.iter().map(|r| r[2].as_str()).collect();
    names.sort_unstable();
    let mut shipped = SHIPPED.to_vec();
    shipped.sort_unstable();
    assert_eq!(names, shipped, "{files:?}");
    for r in &files {
        assert_eq!(r[3], want[&r[2]].len().to_string(), "size of {}", r[2]);
    }
    let components = rows(&msiinfo(&msi, &["export", "Component"]));
    assert_eq!(components.len(), 3, "{components:?}");
    for c in &components {
        assert_eq!(c[2], "INSTALLDIR", "{c:?}");
        // msidbComponentAttributes64bit
        assert_eq!(c[3], "256", "{c:?}");
    }
    let guids: Vec<&str> = components.iter().map(|c| c[1].as_str()).collect();
    assert!(
        guids.contains(&"{7E8CEDBC-E5A6-43D9-8C05-C01E10968FA8}"),
        "{guids:?}"
    );

    // The service is created by install.ps1 (`service install`), not by the MSI; the MSI stops
    // it before replacing the exe and removes it on uninstall.
    assert_eq!(
        rows(&msiinfo(&msi, &["export", "ServiceInstall"])),
        Vec::<Vec<String>>::new()
    );
    let control = rows(&msiinfo(&msi, &["export", "ServiceControl"]));
    // 2 (stop on install) + 32 (stop on uninstall) + 128 (delete on uninstall).
    assert_eq!(
        control,
        vec![vec![
            "AgentService".to_string(),
            "syncfleet-agent".into(),
            "162".into(),
            String::new(),
            "1".into(),
            "AgentExe".into()
        ]]
    );
    // A newer MSI replaces this one; an older one is refused.
    let upgrade = msiinfo(&msi, &["export", "Upgrade"]);
    assert!(
        upgrade.contains(&format!("{UPGRADE_CODE}\t\t{VERSION}")),
        "{upgrade}"
    );
    assert!(upgrade.contains("WIX_DOWNGRADE_DETECTED"), "{upgrade}");

    // What the MSI installs is byte for byte what was packaged.
    let extracted = tempfile::tempdir().unwrap();
    let out = Command::new("msiextract")
        .arg("-C")
        .arg(extracted.path())
        .arg(&msi)
        .output()
        .unwrap();
    assert!(out.status.success(), "msiextract: {}", stderr(&out));
    for (name, bytes) in &want {
        let found = walk(extracted.path())
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in the MSI: {}", stdout(&out)));
        assert!(
            found.to_string_lossy().contains("syncfleet"),
            "{}",
            found.display()
        );
        assert!(std::fs::read(&found).unwrap() == *bytes, "{name} differs");
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// `install.ps1` enrolls with flags and a variable the agent really has: a renamed flag would
/// otherwise break the installer only on a customer's server (PowerShell cannot run here).
#[test]
fn install_ps1_enrolls_with_the_agents_own_flags() {
    let script =
        std::fs::read_to_string(workspace_root().join("deploy/windows/install.ps1")).unwrap();
    let call = script
        .lines()
        .find(|l| l.contains("Invoke-Agent @('enroll'"))
        .unwrap_or_else(|| panic!("install.ps1 does not call `syncfleet-agent.exe enroll`"));
    let flags: Vec<&str> = call
        .split('\'')
        .filter(|part| part.starts_with("--"))
        .collect();
    assert_eq!(
        flags,
        ["--config", "--controller", "--ca-pin", "--name"],
        "{call}"
    );
    // The token travels in the variable `enroll --token` reads.
    assert!(
        script.contains("$env:SYNCFLEET_ENROLL_TOKEN = $Token"),
        "install.ps1 no longer passes the token through SYNCFLEET_ENROLL_TOKEN"
    );
    let out = Command::new(common::bin("syncfleet-agent"))
        .args(["enroll", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in flags {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}"))),
            "`syncfleet-agent enroll` has no {flag}:\n{help}"
        );
    }
    assert!(help.contains("SYNCFLEET_ENROLL_TOKEN"), "{help}");
}

/// Every `syncfleet-agent.exe` command line of `install.ps1` (enroll, service install, start,
/// stop, uninstall) names a subcommand and flags the agent has: a renamed flag or subcommand
/// fails here, not on a customer's server.
#[test]
fn install_ps1_calls_only_agent_subcommands_and_flags_that_exist() {
    let script =
        std::fs::read_to_string(workspace_root().join("deploy/windows/install.ps1")).unwrap();
    let calls: Vec<&str> = script
        .lines()
        .filter(|l| l.contains("Invoke-Agent @("))
        .collect();
    assert!(calls.len() >= 4, "install.ps1 calls the agent {calls:?}");
    let mut seen = std::collections::BTreeSet::new();
    for call in calls {
        let words: Vec<&str> = call.split('\'').skip(1).step_by(2).collect();
        let subcommand: Vec<&str> = words
            .iter()
            .copied()
            .take_while(|w| !w.starts_with("--"))
            .collect();
        let flags: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| w.starts_with("--"))
            .collect();
        assert!(!subcommand.is_empty(), "{call}");
        let out = Command::new(common::bin("syncfleet-agent"))
            .args(&subcommand)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`syncfleet-agent {}` does not exist: {}",
            subcommand.join(" "),
            stderr(&out)
        );
        let help = stdout(&out);
        for flag in flags {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}"))),
                "`syncfleet-agent {}` has no {flag}:\n{help}",
                subcommand.join(" ")
            );
        }
        seen.insert(subcommand.join(" "));
    }
    for expected in [
        "enroll",
        "service install",
        "service start",
        "service uninstall",
    ] {
        assert!(
            seen.contains(expected),
            "install.ps1 never calls `{expected}`: {seen:?}"
        );
    }
}
