//! Running a daemon binary (`syncfleet-agent`, `syncfleet-controller`) to check how it reads its
//! configuration: with an environment holding no `SYNCFLEET_*` variable but the ones a test
//! sets, so that the machine running the tests cannot change the outcome.

use std::process::{Command, Output};

/// `cmd` without any `SYNCFLEET_*` variable inherited from the test's environment.
pub fn without_syncfleet_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("SYNCFLEET_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd` (a daemon binary) as `<subcommand> --dump-config <args>` with only `env` as its
/// `SYNCFLEET_*` variables, and returns its output.
pub fn dump_with_env(
    cmd: Command,
    subcommand: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = without_syncfleet_env(cmd);
    cmd.args([subcommand, "--dump-config"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Asserts that the daemon succeeded and that its dumped configuration holds every line of
/// `wants`.
pub fn assert_dump_holds(out: &Output, wants: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in wants {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}
