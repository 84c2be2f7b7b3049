//! Running the Windows binaries (`syncfleet-agent.exe`, `syncfleet.exe`) under Wine.
//!
//! - [`windows_exe`] builds the Windows binaries with `cargo build --profile agent --target
//!   x86_64-pc-windows-gnu` (once per test process; cargo's own lock serialises test processes,
//!   and an up-to-date build is a no-op), so a test never runs a stale exe. The `agent` profile,
//!   because that is the exe that ships (`scripts/release` runs the same command): CI builds it
//!   once, and the tests exercise that very file.
//!   `scripts/test` builds them before the tests start, so the build time is not spent inside a
//!   test's time limit.
//! - [`WinePrefix`] is a fresh Wine prefix in a temporary folder for one test, run with Debian's
//!   64-bit loader `/usr/lib/wine/wine64` (the `wine` wrapper wants a 32-bit loader that the
//!   `wine64` package does not install), `WINEDEBUG=-all`, and the Mono/Gecko installers switched
//!   off (no display, no network needed). Its wineserver is stopped when it is dropped.
//! - Wine 8 (Debian 12) has no `bcryptprimitives.dll`, from which Rust's standard library imports
//!   `ProcessPrng`, so without help every Rust exe fails to load there (status `c0000135`, exit
//!   code 53, no output). Each prefix gets a stand-in built from `tests/wine/bcryptprimitives.c`
//!   with `x86_64-w64-mingw32-gcc`, on the Windows `PATH` of the prefix only (`WINEPATH`). It is
//!   test support, never part of what ships.
//!
//! A missing Wine, MinGW or Rust Windows target fails the test with the command that installs
//! it: these tests are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Rust target of the Windows binaries.
pub const TARGET: &str = "x86_64-pc-windows-gnu";
/// The cargo profile of the Windows binaries: the size-optimised one they ship with (root
/// `Cargo.toml`).
pub const PROFILE: &str = "agent";

/// Debian's 64-bit Wine loader (package `wine64`).
pub const WINE64: &str = "/usr/lib/wine/wine64";
/// Its wineserver (stops a prefix's processes with `-k`).
pub const WINESERVER64: &str = "/usr/lib/wine/wineserver64";
/// The MinGW-w64 C compiler (package `gcc-mingw-w64-x86-64`).
pub const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// Cargo's `target` folder of the running test (`target/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the test executable: {e}"));
    exe.ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("{} is not inside a cargo target folder", exe.display()))
        .to_path_buf()
}

/// The workspace root (`Cargo.toml` of the workspace).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("the tests crate has no parent folder"))
        .to_path_buf()
}

/// The `cargo build` arguments that build every Windows binary the tests run: the agent, and the
/// `syncfleet` CLI without the controller's `dev` feature (the operator's build for a Windows
/// admin box). `scripts/test` runs the same command.
pub fn build_args() -> Vec<&'static str> {
    vec![
        "build",
        "--locked",
        "--profile",
        PROFILE,
        "--target",
        TARGET,
        "-p",
        "syncfleet-agent",
        "--bin",
        "syncfleet-agent",
        "-p",
        "syncfleet-controller",
        "--no-default-features",
        "--bin",
        "syncfleet",
    ]
}

/// Prefixes of the variables cargo and nextest set for a running test (its package, crate and
/// binaries), none of which configures cargo itself.
const TEST_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
    "NEXTEST",
];

/// Builds the Windows binaries (see [`build_args`]) and returns the folder holding them, with how
/// long the build took in this process. Built once per test process; fails the test with
/// cargo's output and the commands that install the Rust target and MinGW.
fn built() -> &'static (PathBuf, Duration) {
    static BUILT: OnceLock<(PathBuf, Duration)> = OnceLock::new();
    BUILT.get_or_init(|| {
        require_mingw();
        let took = cargo_build(
            &build_args(),
            &format!("the Rust target is installed with `rustup target add {TARGET}` and MinGW with `apt-get install gcc-mingw-w64-x86-64`"),
        );
        (target_dir().join(TARGET).join(PROFILE), took)
    })
}

/// Runs `cargo ARGS` in the workspace with the running test's target folder, and returns how long
/// it took; fails the test with cargo's output and `hint` (what to install). An up-to-date build
/// is a no-op, and cargo's own lock serialises test processes.
pub fn cargo_build(args: &[&str], hint: &str) -> Duration {
    let target = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let start = Instant::now();
    let mut cmd = Command::new(&cargo);
    // The variables cargo and nextest set for this test's own crate are not the build's:
    // build scripts watch some of them (ring's `CARGO_MANIFEST_DIR`), and passing them on
    // would make every build here and in `scripts/test` redo the other's work.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if TEST_ONLY_VARS.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = cmd
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo ({cargo:?}): {e}"));
    assert!(
        out.status.success(),
        "`cargo {}` failed; {hint}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Path of the Windows build of workspace binary `name` (`syncfleet-agent`, `syncfleet`), built
/// first if it is missing or out of date.
pub fn windows_exe(name: &str) -> PathBuf {
    let path = built().0.join(format!("{name}.exe"));
    assert!(
        path.exists(),
        "{} is missing after the build; is `{name}` one of the binaries of `cargo {}`?",
        path.display(),
        build_args().join(" ")
    );
    path
}

/// How long the Windows build took in this test process (near zero when it was up to date).
pub fn build_time() -> Duration {
    built().1
}

fn require_mingw() {
    let found = Command::new(MINGW_GCC)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{MINGW_GCC} is not installed: the Windows build and the Wine tests need MinGW-w64; install it with `apt-get install gcc-mingw-w64-x86-64` (scripts/test does this)"
    );
}

fn require_wine() {
    assert!(
        Path::new(WINE64).exists() && Path::new(WINESERVER64).exists(),
        "Wine is not installed ({WINE64} is missing): the Windows binaries are tested under Wine; install it with `apt-get install wine64` (scripts/test does this)"
    );
}

/// `Z:\...`: the Windows path of an absolute Unix path in a Wine prefix (drive `Z:` is `/`).
pub fn windows_path(unix: &Path) -> String {
    format!("Z:{}", unix.display()).replace('/', "\\")
}

/// A fresh Wine prefix in a temporary folder, for one test (see the module documentation).
#[derive(Debug)]
pub struct WinePrefix {
    dir: tempfile::TempDir,
}

impl WinePrefix {
    /// An empty prefix, with the `ProcessPrng` stand-in built into it. Wine initialises the
    /// prefix on its first command (a few seconds).
    pub fn new() -> WinePrefix {
        require_wine();
        require_mingw();
        let dir = tempfile::Builder::new()
            .prefix("sf-wine")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"));
        let dlls = dir.path().join("dlls");
        std::fs::create_dir(&dlls)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dlls.display()));
        let source = workspace_root().join("tests/wine/bcryptprimitives.c");
        let out = Command::new(MINGW_GCC)
            .args(["-shared", "-O2", "-o"])
            .arg(dlls.join("bcryptprimitives.dll"))
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {MINGW_GCC}: {e}"));
        assert!(
            out.status.success(),
            "building the ProcessPrng stand-in from {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        WinePrefix { dir }
    }

    /// The prefix folder (`WINEPREFIX`).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("prefix")
    }

    /// A command running Windows program `exe` in this prefix; add its arguments.
    pub fn command(&self, exe: &Path) -> Command {
        let mut cmd = Command::new(WINE64);
        cmd.arg(exe)
            .env("WINEPREFIX", self.path())
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko installer prompts when the prefix is created.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("WINEPATH", windows_path(&self.dir.path().join("dlls")))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        cmd
    }

    /// Restarts the prefix's wineserver as persistent (until the prefix is dropped, or 5
    /// minutes after its last program if the test dies without dropping it). Wine's
    /// service manager (`services.exe`) starts the automatic services each time it starts,
    /// and it starts again with the wineserver, which otherwise exits 3 s after the prefix's
    /// last program: with a persistent one it boots once, like a Windows machine that is not
    /// restarted during the test.
    pub fn keep_running(&self) {
        let wineserver = |arg: &str| {
            Command::new(WINESERVER64)
                .arg(arg)
                .env("WINEPREFIX", self.path())
                .status()
                .unwrap_or_else(|e| panic!("cannot run {WINESERVER64}: {e}"))
        };
        // A running wineserver does not take the option: stop it first.
        wineserver("-k");
        let status = wineserver("-p300");
        assert!(
            status.success(),
            "{WINESERVER64} -p300 failed ({status}) for {}",
            self.path().display()
        );
        // The prefix's system processes (services.exe, winedevice.exe) start with the first
        // program and now outlive it: start them without the test's output pipes, which they
        // would otherwise hold open (and a reader of that output would wait forever).
        let status = self
            .command(Path::new("wineboot.exe"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {WINE64}: {e}"));
        assert!(status.success(), "wineboot.exe failed ({status})");
    }

    /// A copy of Windows program `exe` next to the `ProcessPrng` stand-in, for a program that
    /// Wine's service manager starts: it gets the system's environment, without `WINEPATH`,
    /// and finds the stand-in only in its own folder.
    pub fn beside_stand_in(&self, exe: &Path) -> PathBuf {
        let name = exe
            .file_name()
            .unwrap_or_else(|| panic!("{} names no file", exe.display()));
        let copy = self.dir.path().join("dlls").join(name);
        std::fs::copy(exe, &copy)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", exe.display(), copy.display()));
        copy
    }

    /// Runs `exe` with `args` in this prefix and returns its output.
    pub fn output(&self, exe: &Path, args: &[&str]) -> Output {
        self.command(exe)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {WINE64}: {e}"))
    }
}

impl Default for WinePrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WinePrefix {
    /// Stops every process of the prefix (its wineserver and what runs under it).
    fn drop(&mut self) {
        let _ = Command::new(WINESERVER64)
            .arg("-k")
            .env("WINEPREFIX", self.path())
            .output();
    }
}
