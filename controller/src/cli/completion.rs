//! Documentation generated from the CLI's own clap definition, so it never drifts from the real
//! flags: shell completion scripts (`completion`) and man pages (`docs man`).
//!
//! ```text
//! syncfleet completion bash|zsh|fish|powershell   the script on stdout
//! syncfleet docs man DIR                           one page per command and subcommand
//! ```
//!
//! Install a completion script the shell's usual way, e.g.
//! `syncfleet completion bash > /etc/bash_completion.d/syncfleet`,
//! `syncfleet completion zsh > "${fpath[1]}/_syncfleet"`,
//! `syncfleet completion fish > ~/.config/fish/completions/syncfleet.fish`, or in PowerShell
//! `syncfleet completion powershell | Out-String | Invoke-Expression` in `$PROFILE`.
//! `docs man DIR` writes `syncfleet.1`, `syncfleet-runs.1`, `syncfleet-runs-list.1`, ... into
//! DIR (created when missing) and prints their paths; `man -l DIR/syncfleet-runs-list.1` or
//! `MANPATH` with a `man1` folder shows them.

use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Subcommand, ValueEnum};

use super::output::out;
use super::{Cli, CliError, EXIT_OK};

/// Shells `completion` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

impl CompletionShell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
            CompletionShell::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

/// `docs ...`
#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Write man pages (roff), one per command and subcommand, into DIR and print their paths
    Man {
        /// Folder to write into (created when missing); existing pages are replaced
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The completion script for `shell`, as text.
pub fn completion_script(shell: CompletionShell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, "syncfleet", &mut buf);
    buf
}

/// Runs `completion SHELL`: the script on stdout.
pub fn completion(shell: CompletionShell) -> Result<u8, CliError> {
    let script = completion_script(shell);
    out(&String::from_utf8_lossy(&script))?;
    Ok(EXIT_OK)
}

/// Writes one man page per visible command and subcommand of the CLI into `dir`; returns the
/// files written, the top-level page first.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, written)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Built once so that subcommands carry their full names (`syncfleet-runs-list`); the
    // `help` subcommand is left out, as every page already documents `--help`.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    walk(&cmd, dir, &mut written)?;
    Ok(written)
}

/// Runs `docs man DIR`: the pages' paths on stdout, a summary on stderr.
pub fn docs(cmd: &DocsCommand) -> Result<u8, CliError> {
    let DocsCommand::Man { dir } = cmd;
    let written = write_man_pages(dir).map_err(|e| {
        CliError::Failed(format!(
            "cannot write man pages to {}: {}; choose a folder you can write to",
            dir.display(),
            crate::contexts::io_message(&e)
        ))
    })?;
    let mut list = String::new();
    for p in &written {
        list.push_str(&format!("{}\n", p.display()));
    }
    out(&list)?;
    eprintln!(
        "wrote {} man pages to {}; read one with 'man -l {}'",
        written.len(),
        dir.display(),
        dir.join("syncfleet.1").display()
    );
    Ok(EXIT_OK)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in CompletionShell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).unwrap();
            assert!(script.contains("syncfleet"), "{shell:?}");
            assert!(script.contains("operators"), "{shell:?}: {script}");
        }
    }

    #[test]
    fn one_man_page_per_command_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "syncfleet.1",
            "syncfleet-runs-list.1",
            "syncfleet-operators-revoke.1",
            "syncfleet-config-use-context.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("-help")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("syncfleet-runs-list.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    }
}
