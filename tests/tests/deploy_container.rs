//! The controller image of `deploy/container/Containerfile`: a static musl controller built
//! without default features, run as uid/gid 65532 with `/data` as its data folder.
//!
//! Containers cannot always run where the tests run (CI's sandbox: `podman build` works, but
//! `podman run` fails because crun can set neither the rlimits nor cgroups there). So the test
//! builds the binary the Containerfile builds (its cargo arguments, with the other static
//! binaries of `scripts/release`, so the binary tested is the binary released) and runs it the way the image does: alone in an otherwise empty root
//! (`chroot`), as uid/gid 65532. Whether `podman run` works here is probed and printed, so the
//! log says which path ran and why. In the empty root: `init` initialises the data folder,
//! `healthcheck` fails while nothing serves, `serve` answers `/readyz`, `healthcheck` then
//! succeeds, and the host's `syncfleet agents list` answers through the gRPC port with the
//! credential `init` wrote.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected values"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use syncfleet_tests::wine::{cargo_build, target_dir};

const MUSL: &str = "x86_64-unknown-linux-musl";
/// The image's runtime user and group (`USER` of the Containerfile).
const UID: &str = "65532";

/// The cargo arguments of `scripts/release`'s static Linux build: the Containerfile's, plus the
/// CLI and the Linux agent built with it (so their dependencies are compiled once).
fn build_args() -> Vec<&'static str> {
    vec![
        "build",
        "--locked",
        "--release",
        "--target",
        MUSL,
        "-p",
        "syncfleet-controller",
        "--no-default-features",
        "--bin",
        "syncfleet-controller",
        "--bin",
        "syncfleet",
        "-p",
        "syncfleet-agent",
        "--bin",
        "syncfleet-agent",
    ]
}

/// Whether the ELF file at `path` asks for a program interpreter (a dynamic loader): a
/// `PT_INTERP` program header. A static executable has none.
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(
        &elf[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let p = phoff + i * phentsize;
        u32::from_le_bytes(elf[p..p + 4].try_into().unwrap()) == 3
    })
}

/// Tries `podman run` of a `FROM scratch` image holding `binary`; Err says why it cannot be used.
fn probe_podman(binary: &Path) -> Result<String, String> {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(binary, ctx.path().join("syncfleet-controller")).unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM scratch\nCOPY syncfleet-controller /syncfleet-controller\nUSER 65532:65532\nENTRYPOINT [\"/syncfleet-controller\"]\n",
    )
    .unwrap();
    let tag = format!("localhost/syncfleet-probe-{}", std::process::id());
    let build = Command::new("podman")
        .args(["build", "-q", "-t", &tag])
        .arg(ctx.path())
        .output()
        .map_err(|e| format!("podman is not installed ({e})"))?;
    if !build.status.success() {
        return Err(format!("podman build failed: {}", stderr(&build)));
    }
    let run = Command::new("podman")
        .args(["run", "--rm", "--network", "none", &tag, "--version"])
        .output()
        .map_err(|e| format!("podman run could not start: {e}"))?;
    let _ = Command::new("podman")
        .args(["rmi", "-f", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if run.status.success() {
        Ok(stdout(&run))
    } else {
        Err(format!("podman run failed: {}", stderr(&run)))
    }
}

/// coreutils' `chroot`: on the `PATH`, else in `/usr/sbin` (a root shell's `PATH` may lack the
/// sbin folders, e.g. under `env -i` or in a CI job).
fn chroot_program() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("chroot"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "chroot".into())
}

/// `chroot --userspec=65532:65532 ROOT /syncfleet-controller ARGS`.
fn in_root(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(chroot_program());
    cmd.arg(format!("--userspec={UID}:{UID}"))
        .arg(root)
        .arg("/syncfleet-controller")
        .args(args)
        // Nothing of the test's environment reaches the controller (a PATH would mean nothing
        // inside the empty root).
        .env_clear()
        .stdin(Stdio::null());
    cmd
}

#[test]
fn static_controller_initialises_and_serves_from_an_empty_root_as_uid_65532() {
    assert!(
        Command::new("musl-gcc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "musl-gcc is missing: apt-get install musl-tools (ring and SQLite are compiled with it)"
    );
    let took = cargo_build(
        &build_args(),
        &format!(
            "add the target with `rustup target add {MUSL}` and install musl-gcc with `apt-get install musl-tools`"
        ),
    );
    let binary: PathBuf = target_dir().join(MUSL).join("release/syncfleet-controller");
    let size = std::fs::metadata(&binary).unwrap().len();
    println!(
        "static controller {}: {:.1} MB (release, stripped), cargo took {took:.1?}",
        binary.display(),
        size as f64 / 1e6
    );

    // The Containerfile builds this binary with the same arguments and runs it as this user.
    let containerfile =
        std::fs::read_to_string(workspace_root().join("deploy/container/Containerfile")).unwrap();
    for needed in [
        format!("--release --target {MUSL}"),
        "-p syncfleet-controller --no-default-features --bin syncfleet-controller".to_string(),
        format!("USER {UID}:{UID}"),
        "FROM scratch".to_string(),
        "VOLUME /data".to_string(),
        "CMD [\"/syncfleet-controller\", \"healthcheck\"]".to_string(),
    ] {
        assert!(
            containerfile.contains(&needed),
            "the Containerfile lacks {needed:?}"
        );
    }

    assert!(
        !has_interpreter(&binary),
        "{} asks for a dynamic loader: it is not static",
        binary.display()
    );
    match Command::new("ldd").arg(&binary).output() {
        Ok(o) => println!("ldd: {} {}", stdout(&o), stderr(&o)),
        Err(e) => println!("ldd not available ({e}); the ELF check above found no interpreter"),
    }

    match probe_podman(&binary) {
        Ok(v) => println!(
            "container path: podman run works here ({v}); the test still runs the binary in an empty root below, the same check on every machine"
        ),
        Err(why) => println!(
            "container path: empty root (chroot as uid {UID}) instead of a container, because {}",
            why.trim()
        ),
    }

    // The empty root: the binary and an empty data folder owned by the runtime user, nothing
    // else (no libc, no loader, no /etc, no shell).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::copy(&binary, root.join("syncfleet-controller")).unwrap();
    let st = Command::new("chmod")
        .args(["0755"])
        .arg(&root)
        .arg(root.join("syncfleet-controller"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("chown")
        .arg(format!("{UID}:{UID}"))
        .arg(root.join("data"))
        .status()
        .unwrap();
    assert!(st.success(), "chown failed: the test must run as root");

    let (grpc, http, console) = (free_port(), free_port(), free_port());
    let listen = [
        "--grpc-listen".to_string(),
        format!("127.0.0.1:{grpc}"),
        "--http-listen".to_string(),
        format!("127.0.0.1:{http}"),
        "--set".to_string(),
        format!("console.listen=127.0.0.1:{console}"),
    ];
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();

    let out = in_root(
        &root,
        &[
            "init",
            "--data-dir",
            "/data",
            "--set",
            "server_names=[localhost, 127.0.0.1]",
        ],
    )
    .output()
    .unwrap_or_else(|e| panic!("cannot run chroot (coreutils): {e}"));
    assert!(
        out.status.success(),
        "init in the empty root failed (chroot needs root): {}",
        stderr(&out)
    );
    let pki = root.join("data/pki");
    for f in ["ca.pem", "ca.key", "controller.pem", "operators/admin.pem"] {
        let meta = std::fs::metadata(pki.join(f)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta).to_string(),
            UID,
            "{f} is not owned by the runtime user"
        );
    }

    let mut health: Vec<&str> = vec!["healthcheck", "--data-dir", "/data", "--timeout", "5s"];
    health.extend_from_slice(&listen);
    let out = in_root(&root, &health).output().unwrap();
    assert!(
        !out.status.success(),
        "healthcheck succeeded with nothing serving"
    );
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{http}")),
        "{}",
        stderr(&out)
    );

    let mut serve: Vec<&str> = vec!["serve", "--data-dir", "/data"];
    serve.extend_from_slice(&listen);
    let _controller = Proc::spawn(
        "controller",
        &mut in_root(&root, &serve),
        dir.path().join("controller.log"),
    );
    let (status, body) = wait_for(
        "/readyz of the static controller",
        Duration::from_secs(60),
        || http_get(http, "/readyz").filter(|(s, _)| *s == 200),
    );
    println!("/readyz: {status} {}", body.trim().replace('\n', "; "));
    assert!(body.starts_with("ready"), "{body}");

    let out = in_root(&root, &health).output().unwrap();
    assert!(
        out.status.success(),
        "healthcheck failed against a ready controller: {}",
        stderr(&out)
    );

    assert!(
        root.join("data/controller.db").exists(),
        "the store is not in the data folder"
    );
    let cli_config = dir.path().join("cli.toml");
    std::fs::write(
        &cli_config,
        format!(
            "current_context = \"image\"\n[contexts.image]\ncontroller = \"https://127.0.0.1:{grpc}\"\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
            pki.join("ca.pem"),
            pki.join("operators/admin.pem"),
            pki.join("operators/admin.key"),
        ),
    )
    .unwrap();
    let out = Command::new(bin("syncfleet"))
        .arg("--config")
        .arg(&cli_config)
        .args(["agents", "list", "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "syncfleet agents list against the static controller failed: {}",
        stderr(&out)
    );
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("syncfleet agents list -o json: {agents}");
    assert!(agents.is_array() || agents.is_object(), "{agents}");
}
