//! What the binaries (`syncfleet-agent`, `syncfleet-controller`, `syncfleet`) do around their
//! `main` the same way: the `--set KEY=VALUE` flag, `--dump-config`, the exit code of a
//! configuration error and the tokio runtime. Errors are printed to stderr as `error: ...`, and
//! each function hands back the exit code to end with, so a `main` stays a chain of early
//! returns.

use std::fmt::Display;
use std::process::ExitCode;

use crate::config_layers::EXIT_CONFIG;

/// Parses one `--set KEY=VALUE`: the key (trimmed, non-empty) is a dotted configuration key, the
/// value is kept as written. `example` shows a valid pair of the daemon in the error message.
pub fn parse_set(s: &str, example: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "{s:?} must look like KEY=VALUE with a dotted key, e.g. {example}"
        )),
    }
}

/// Prints a configuration problem and returns exit code 64 ([`EXIT_CONFIG`]).
pub fn config_error(e: &impl Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `--dump-config`: prints the effective configuration as TOML on stdout; exit 0, or 1 when it
/// cannot be rendered.
pub fn dump_config(cfg: &impl serde::Serialize) -> ExitCode {
    match toml::to_string_pretty(cfg) {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Most threads of a server's blocking pool (tokio's default is 512). A server's blocking work
/// is short calls into its store, which has a few connections anyway: a burst of them (10,000
/// agents reconnecting at once) queues for a thread instead of starting hundreds, each with its
/// stack and, with glibc, a malloc arena of its own.
pub const MAX_BLOCKING_THREADS: usize = 32;

/// The tokio runtime a binary runs on: multi-threaded for long-running servers (with at most
/// [`MAX_BLOCKING_THREADS`] blocking threads), current-thread otherwise. When it cannot be built,
/// prints why and returns exit code 1.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.max_blocking_threads(MAX_BLOCKING_THREADS);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_the_value_as_written_and_names_the_example() {
        assert_eq!(
            parse_set(" a.b =x=y ", "k=v"),
            Ok(("a.b".to_string(), "x=y ".to_string()))
        );
        let err = parse_set("=1", "executor.watchdog=2h").unwrap_err();
        assert!(err.contains("e.g. executor.watchdog=2h"), "{err}");
        assert!(parse_set("novalue", "k=v").is_err());
    }
}
