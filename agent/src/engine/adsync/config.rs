//! Settings of the `adsync` driver.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default PowerShell executable: Windows PowerShell 5.1, where the ADSync module is installed.
pub const DEFAULT_POWERSHELL: &str = "powershell.exe";

/// Smallest accepted [`AdsyncConfig::max_line_bytes`].
pub const MIN_LINE_BYTES: usize = 64 * 1024;

/// Settings of the `adsync` driver (`[engine]` with `kind = "adsync"`). Durations use humantime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdsyncConfig {
    /// The PowerShell executable. Default `powershell.exe` (found on `PATH`).
    pub powershell: PathBuf,
    /// Arguments replacing the default ones (`-NoProfile -NonInteractive -ExecutionPolicy Bypass
    /// -EncodedCommand <the host script>`). When set, the host script is **not** passed: the
    /// program must speak the host protocol itself (a wrapper, or a stand-in in tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_args: Option<Vec<String>>,
    /// Longest wait for the host to start and load the ADSync module. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// Longest wait for any cmdlet except `Invoke-ADSyncRunProfile` (which takes as long as the
    /// run). A call that takes longer ends its PowerShell process. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Longest accepted answer line (bytes). Default 32 MiB.
    pub max_line_bytes: usize,
    /// Most runs at once, each in its own PowerShell process. Default 4.
    pub max_concurrent_runs: usize,
    /// PowerShell processes kept loaded for the next run. Default 1.
    pub idle_run_processes: usize,
    /// While a run executes, how often its run number is looked up. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// At start, longest wait for a sync cycle of the built-in scheduler to finish before its
    /// cycle is switched off. Default 2 h.
    #[serde(with = "humantime_serde")]
    pub scheduler_wait: Duration,
}

impl Default for AdsyncConfig {
    fn default() -> Self {
        AdsyncConfig {
            powershell: PathBuf::from(DEFAULT_POWERSHELL),
            host_args: None,
            start_timeout: Duration::from_secs(120),
            call_timeout: Duration::from_secs(120),
            max_line_bytes: 32 * 1024 * 1024,
            max_concurrent_runs: 4,
            idle_run_processes: 1,
            poll_interval: Duration::from_secs(5),
            scheduler_wait: Duration::from_secs(2 * 3600),
        }
    }
}

impl AdsyncConfig {
    /// Check the settings; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.powershell.as_os_str().is_empty() {
            return Err("engine.powershell is empty: use e.g. \"powershell.exe\"".into());
        }
        for (key, d) in [
            ("start_timeout", self.start_timeout),
            ("call_timeout", self.call_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err(format!(
                    "engine.{key} = {d:?} is too short: use at least 10ms (e.g. \"2m\")"
                ));
            }
        }
        if self.max_line_bytes < MIN_LINE_BYTES {
            return Err(format!(
                "engine.max_line_bytes = {} is too small: use at least {MIN_LINE_BYTES}",
                self.max_line_bytes
            ));
        }
        if self.max_concurrent_runs == 0 {
            return Err("engine.max_concurrent_runs = 0 would never run: use at least 1".into());
        }
        Ok(())
    }

    /// The arguments PowerShell is started with.
    pub fn args(&self, script: &str) -> Vec<String> {
        match &self.host_args {
            Some(a) => a.clone(),
            None => vec![
                "-NoProfile".into(),
                "-NonInteractive".into(),
                "-ExecutionPolicy".into(),
                "Bypass".into(),
                "-EncodedCommand".into(),
                encode_command(script),
            ],
        }
    }
}

/// `-EncodedCommand` takes Base64 of the script's UTF-16LE bytes: no quoting problem on any
/// command line.
pub fn encode_command(script: &str) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
