//! Settings of the `mim-wmi` driver, and the run profiles declared in them (overrides of the
//! profiles discovered from the engine's database, or the profiles themselves when discovery is
//! off or unavailable).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::DEFAULT_SERVICE;
use crate::engine::{EngineError, RunProfileInfo, RunStepInfo};

/// The five standard single-step run profiles (name, steps as `type[/subtype]`, see
/// [`parse_step_spec`]) assumed for an MA that has no [`ProfileDecl`].
pub const STANDARD_PROFILES: [(&str, &str); 5] = [
    ("Full Import", "full-import/to-cs"),
    ("Delta Import", "delta-import/to-cs"),
    ("Full Sync", "apply-rules/reevaluate-flow-connectors"),
    ("Delta Sync", "apply-rules/apply-pending"),
    ("Export", "export"),
];

/// `step-type/@type` values the engine knows (`docs/engine.md`, "Run profiles and step types").
pub const STEP_TYPES: [&str; 5] = [
    "full-import",
    "delta-import",
    "apply-rules",
    "export",
    "full-import-reevaluate-rules",
];

/// Smallest accepted [`WmiConfig::poll_interval`] / [`WmiConfig::completing_poll`].
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// A run profile of one MA, declared in the agent configuration: it overrides the discovered
/// profile of the same MA and name (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDecl {
    /// MA name as in the engine.
    pub ma: String,
    /// Run profile display name passed to `Execute`.
    pub name: String,
    /// Steps in order, each `type[/subtype][@partition]` ([`parse_step_spec`]), e.g.
    /// `delta-import/to-cs`, `apply-rules/apply-pending`, `export@DC=contoso,DC=com`.
    pub step_types: Vec<String>,
}

/// Settings of the `mim-wmi` driver. Durations use humantime (`"2s"`, `"5m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WmiConfig {
    /// How often `RunStatus()`/`RunNumber()`/`RunDetails()` are polled while `Execute` blocks
    /// (1–5 s is reasonable). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often `RunStatus()` is polled after `Execute` returned `completing-*` (AutoSync
    /// `CompletingRefUpdatesSleepInterval`). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub completing_poll: Duration,
    /// Longest wait for a `completing-*` result to settle; afterwards the raw `completing-*`
    /// string is reported. Default 2 h.
    #[serde(with = "humantime_serde")]
    pub completing_timeout: Duration,
    /// Pause after a run before `execute` returns, so its history is complete (AutoSync
    /// `PostRunInterval`). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub post_run_delay: Duration,
    /// Longest wait for any WMI call except `Execute` and `Stop`; a call that takes longer
    /// makes the operation fail with [`EngineError::Unavailable`] and health unhealthy (a frozen
    /// engine). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub blocking_timeout: Duration,
    /// Longest wait for `Stop()`, which blocks until the run has stopped and may take long. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Windows service of the engine, probed by health checks. Default
    /// `FIMSynchronizationService`.
    pub service_name: String,
    /// Declared run profiles. With discovery they override the engine's profile of the same
    /// MA and name and add profiles the engine does not list; without discovery (off or
    /// unavailable) they are the MA's profiles, and an MA with none gets
    /// [`STANDARD_PROFILES`].
    pub profiles: Vec<ProfileDecl>,
    /// Read the engine's run profiles and their steps from its SQL database (read-only, as
    /// the agent's own Windows account, bounded by [`WmiConfig::blocking_timeout`]). When the
    /// database cannot be read (unreachable, not permitted), the driver logs why and falls
    /// back to the declarations and [`STANDARD_PROFILES`]. Default `true`.
    pub discover: bool,
    /// SQL Server of the engine's database, `host`, `host\instance` or `host,port`. Default:
    /// the engine's registry values `Server` and `SQLInstance` under
    /// `HKLM\SYSTEM\CurrentControlSet\Services\<service_name>\Parameters` (`localhost`
    /// when absent). Set it only when that lookup fails.
    pub database_server: Option<String>,
    /// Name of the engine's database. Default: the registry value `DBName` (see
    /// [`WmiConfig::database_server`]), else `FIMSynchronizationService`.
    pub database_name: Option<String>,
    /// Clear the engine's run history older than this with `MIIS_Server.ClearRuns`, once the
    /// controller has stored the runs' details (`crate::housekeeping`). Unset (default): never.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub clear_runs_older_than: Option<Duration>,
    /// How often to clear (default 1 h).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub clear_runs_every: Option<Duration>,
}

impl Default for WmiConfig {
    fn default() -> Self {
        WmiConfig {
            poll_interval: Duration::from_secs(2),
            completing_poll: Duration::from_secs(5),
            completing_timeout: Duration::from_secs(2 * 3600),
            post_run_delay: Duration::from_secs(2),
            blocking_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(600),
            service_name: DEFAULT_SERVICE.to_owned(),
            profiles: Vec::new(),
            discover: true,
            database_server: None,
            clear_runs_older_than: None,
            clear_runs_every: None,
            database_name: None,
        }
    }
}

impl WmiConfig {
    /// Check the settings; errors name the key.
    pub fn validate(&self) -> Result<(), EngineError> {
        let cfg = |m: String| Err(EngineError::Config(m));
        for (key, d) in [
            ("poll_interval", self.poll_interval),
            ("completing_poll", self.completing_poll),
        ] {
            if d < MIN_POLL {
                return cfg(format!("{key} = {d:?} is shorter than {MIN_POLL:?}"));
            }
        }
        for (key, d) in [
            ("completing_timeout", self.completing_timeout),
            ("blocking_timeout", self.blocking_timeout),
            ("stop_timeout", self.stop_timeout),
        ] {
            if d.is_zero() {
                return cfg(format!("{key} must be longer than 0"));
            }
        }
        if self.service_name.trim().is_empty() {
            return cfg("service_name is empty".to_owned());
        }
        for (key, v) in [
            ("database_server", &self.database_server),
            ("database_name", &self.database_name),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return cfg(format!(
                    "{key} is empty; leave it out to use the engine's registry settings"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for p in &self.profiles {
            if p.ma.trim().is_empty() || p.name.trim().is_empty() {
                return cfg(format!(
                    "profiles: entry with ma {:?} and name {:?}: both must be set",
                    p.ma, p.name
                ));
            }
            if !seen.insert((p.ma.as_str(), p.name.as_str())) {
                return cfg(format!(
                    "profiles: {:?} of MA {:?} is declared twice",
                    p.name, p.ma
                ));
            }
            if p.step_types.is_empty() {
                return cfg(format!(
                    "profiles: {:?} of MA {:?} has no step_types",
                    p.name, p.ma
                ));
            }
            for s in &p.step_types {
                parse_step_spec(s).map_err(|e| {
                    EngineError::Config(format!("profiles: {:?} of MA {:?}: {e}", p.name, p.ma))
                })?;
            }
        }
        Ok(())
    }

    /// The declared run profiles of an MA (possibly none).
    pub fn declared_for(&self, ma: &str) -> Result<Vec<RunProfileInfo>, EngineError> {
        self.profiles
            .iter()
            .filter(|p| p.ma == ma)
            .map(|p| {
                Ok(RunProfileInfo {
                    name: p.name.clone(),
                    steps: p
                        .step_types
                        .iter()
                        .map(|s| parse_step_spec(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(EngineError::Config)?,
                })
            })
            .collect()
    }

    /// [`STANDARD_PROFILES`] as run profiles.
    pub fn standard_profiles() -> Vec<RunProfileInfo> {
        STANDARD_PROFILES
            .iter()
            .filter_map(|(name, step)| {
                Some(RunProfileInfo {
                    name: (*name).to_owned(),
                    steps: vec![parse_step_spec(step).ok()?],
                })
            })
            .collect()
    }

    /// The run profiles of an MA without discovery: its declarations, or
    /// [`STANDARD_PROFILES`] when it has none.
    pub fn profiles_for(&self, ma: &str) -> Result<Vec<RunProfileInfo>, EngineError> {
        let declared = self.declared_for(ma)?;
        Ok(if declared.is_empty() {
            Self::standard_profiles()
        } else {
            declared
        })
    }
}

/// Parse a step declaration `type[/subtype][@partition]`: `type` is one of [`STEP_TYPES`],
/// `subtype` is free text (several sub-types as the engine joins them, e.g.
/// `to-file, resume-from-file`), `partition` is everything after the first `@`.
pub fn parse_step_spec(spec: &str) -> Result<RunStepInfo, String> {
    let (head, partition) = match spec.split_once('@') {
        Some((h, p)) => (h, p.trim()),
        None => (spec, ""),
    };
    let (step_type, subtype) = match head.split_once('/') {
        Some((t, s)) => (t.trim(), s.trim()),
        None => (head.trim(), ""),
    };
    if !STEP_TYPES.contains(&step_type) {
        return Err(format!(
            "step {spec:?}: type {step_type:?} is not one of {}",
            STEP_TYPES.join(", ")
        ));
    }
    Ok(RunStepInfo {
        step_type: step_type.to_owned(),
        subtype: subtype.to_owned(),
        partition: partition.to_owned(),
    })
}

#[cfg(test)]
mod tests;
