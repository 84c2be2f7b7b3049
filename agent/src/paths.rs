//! Where the agent keeps its configuration and data when nothing says otherwise, per OS.
//!
//! - **Windows**: `%ProgramData%\syncfleet\agent\` holds the configuration `agent.toml` and is
//!   the data folder (journal `agent.db`, `ca.pem`, `agent.pem`, `agent.key`, `enrolled.toml`).
//!   A service's working directory is `System32`, so a relative default would scatter the
//!   agent's files there; `%ProgramData%` is the machine-wide data folder services use.
//! - **Other systems**: the data folder is `syncfleet-agent-data` relative to the working
//!   directory and there is no default configuration file (`--config` or
//!   `SYNCFLEET_AGENT_CONFIG` names one).
//!
//! The functions that build the Windows paths take the `ProgramData` value as an argument, so
//! the rules are tested on every OS.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// `ProgramData` when the variable is not set (it always is on a real Windows installation;
/// this is the value Windows gives it on a default install).
pub const FALLBACK_PROGRAM_DATA: &str = r"C:\ProgramData";

/// The configuration file's name inside the agent's folder on Windows.
pub const CONFIG_FILE: &str = "agent.toml";

/// The agent's folder on Windows: `<ProgramData>\syncfleet\agent`, from the value of the
/// `ProgramData` environment variable, or [`FALLBACK_PROGRAM_DATA`] when it is unset or empty.
/// Composed with `\` whatever the OS running this code.
pub fn windows_agent_dir(program_data: Option<&OsStr>) -> PathBuf {
    let base = program_data
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| FALLBACK_PROGRAM_DATA.to_string());
    let base = base.trim_end_matches(['\\', '/']);
    PathBuf::from(format!(r"{base}\syncfleet\agent"))
}

/// The default configuration file on Windows: `<ProgramData>\syncfleet\agent\agent.toml`.
pub fn windows_config_file(program_data: Option<&OsStr>) -> PathBuf {
    let dir = windows_agent_dir(program_data);
    PathBuf::from(format!(r"{}\{CONFIG_FILE}", dir.display()))
}

/// The default `data_dir` on this OS (see the module docs).
pub fn default_data_dir() -> PathBuf {
    if cfg!(windows) {
        windows_agent_dir(std::env::var_os("ProgramData").as_deref())
    } else {
        PathBuf::from("syncfleet-agent-data")
    }
}

/// The default configuration file on this OS, whether it exists or not: `Some` on Windows
/// only.
pub fn default_config_file() -> Option<PathBuf> {
    cfg!(windows).then(|| windows_config_file(std::env::var_os("ProgramData").as_deref()))
}

/// The configuration file `run` and `enroll` read: the one named by `--config` (or
/// `SYNCFLEET_AGENT_CONFIG`), else `default` when that file exists. A missing default file is
/// not an error: the agent can run from variables, flags and `enrolled.toml` alone. A named
/// file that is missing is reported by the loader, as before.
pub fn config_file(
    explicit: Option<&Path>,
    default: Option<PathBuf>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => default.filter(|p| exists(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_folder_is_under_program_data() {
        assert_eq!(
            windows_agent_dir(Some(OsStr::new(r"D:\Data"))),
            PathBuf::from(r"D:\Data\syncfleet\agent")
        );
        // A trailing separator does not double.
        assert_eq!(
            windows_agent_dir(Some(OsStr::new(r"D:\Data\"))),
            PathBuf::from(r"D:\Data\syncfleet\agent")
        );
        assert_eq!(
            windows_config_file(Some(OsStr::new(r"C:\ProgramData"))),
            PathBuf::from(r"C:\ProgramData\syncfleet\agent\agent.toml")
        );
    }

    #[test]
    fn an_unset_or_empty_program_data_falls_back_to_the_default_install_value() {
        for v in [None, Some(OsStr::new("")), Some(OsStr::new("  "))] {
            assert_eq!(
                windows_agent_dir(v),
                PathBuf::from(r"C:\ProgramData\syncfleet\agent"),
                "{v:?}"
            );
        }
    }

    #[test]
    fn defaults_per_os() {
        let data = default_data_dir();
        if cfg!(windows) {
            assert!(data.ends_with(r"syncfleet\agent"), "{}", data.display());
            assert!(default_config_file().is_some());
        } else {
            // Unchanged on other systems.
            assert_eq!(data, PathBuf::from("syncfleet-agent-data"));
            assert_eq!(default_config_file(), None);
        }
    }

    #[test]
    fn an_explicit_config_wins_and_the_default_is_used_only_when_it_exists() {
        let default = PathBuf::from(r"C:\ProgramData\syncfleet\agent\agent.toml");
        let explicit = Path::new("other.toml");
        assert_eq!(
            config_file(Some(explicit), Some(default.clone()), |_| true),
            Some(explicit.to_path_buf())
        );
        assert_eq!(
            config_file(None, Some(default.clone()), |_| true),
            Some(default.clone())
        );
        assert_eq!(config_file(None, Some(default), |_| false), None);
        assert_eq!(config_file(None, None, |_| true), None);
    }

    /// The sample configuration shipped for Windows (`deploy/windows/agent.sample.toml`).
    const SAMPLE: &str = include_str!("../../deploy/windows/agent.sample.toml");

    #[test]
    fn the_windows_sample_configuration_selects_the_wmi_engine_and_knows_every_key_it_shows() {
        use crate::config::{AgentConfig, EngineConfig};
        let as_shipped: AgentConfig = toml::from_str(SAMPLE).unwrap();
        assert!(matches!(as_shipped.engine, EngineConfig::MimWmi(_)));
        // Every setting shown commented out ("#key = ...") is a real key: the configuration
        // refuses unknown keys, so parsing the sample with them all switched on proves it.
        let all_on: String = SAMPLE
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg: AgentConfig = toml::from_str(&all_on).unwrap_or_else(|e| panic!("{e}\n{all_on}"));
        assert_eq!(cfg.name, "sync-01");
        assert_eq!(
            cfg.data_dir,
            PathBuf::from(r"C:\ProgramData\syncfleet\agent")
        );
        match &cfg.engine {
            EngineConfig::MimWmi(w) => {
                assert_eq!(w.service_name, "FIMSynchronizationService");
                assert_eq!(w.profiles.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.executor.retry.attempts, 5);
    }
}
