//! Configuration of a simulated server: the `[engine.sim]` table of the agent configuration, or a
//! server file loaded with [`SimConfig::from_toml_file`] (example:
//! `agent/tests/data/sim/server.toml`).

use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{EngineError, FREEZE, SECS_PER_OBJECT, STANDARD_PROFILES, STEP_BASE_SECS};

/// One simulated sync server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seeds every random draw (counter splits, GUIDs, run numbers, errors, failure draws).
    pub seed: u64,
    /// Duration multiplier: 1.0 = realistic, ~0.05 for dev (a delta import takes 1–3 s), ~0.01
    /// or less in tests. Also scales [`UnmanagedRun::at_secs`]. Must be > 0.
    pub time_scale: f64,
    /// Reported as [`super::EngineInfo::version`].
    pub version: String,
    /// `security-id` written into run history: the account that "invoked" the runs.
    /// Unmanaged runs are written with the same domain and the account `mim-admin`.
    pub security_id: String,
    /// Probability (0..=1) that a sync or export step hits a few object errors
    /// (`completed-sync-errors` / `completed-export-errors`). 0 keeps tests deterministic.
    /// See also the per-MA [`SimMaConfig::export_error_rate`].
    pub error_rate: f64,
    /// Runs kept per MA in the run history (oldest dropped first, like `ClearRuns`).
    pub history_limit: usize,
    /// Fixed cost of a step in seconds at `time_scale` 1.0 (connection, watermark, commit).
    pub step_base_secs: f64,
    /// Cost per processed object in seconds at `time_scale` 1.0.
    pub secs_per_object: f64,
    pub mas: Vec<SimMaConfig>,
    /// Failures injected by script, consulted in order before the per-MA failure rates
    /// ([`SimMaConfig::failure_rate`]). More can be added at runtime with
    /// [`super::SimEngine::inject_failure`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<ScriptedFailure>,
    /// Runs the engine starts by itself, as if someone clicked Run in Sync Service Manager
    /// (see [`super::SimEngine::start_unmanaged`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmanaged: Vec<UnmanagedRun>,
    /// A JSON file where the engine keeps each MA's run history and next run number across
    /// restarts of the process that hosts it, as the real engine keeps them in its database:
    /// `MIIS_RunHistory` outlives an agent restart. Unset: in memory only. Connector spaces
    /// are not kept; a run in progress when the process ended stays `in-progress` in the
    /// history (its service ended with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::example(0)
    }
}

/// One simulated management agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMaConfig {
    pub name: String,
    /// `MIIS_ManagementAgent.Type`: `AD`, `MSSQL` (an HR database), `FIM` (the MIM Service MA),
    /// `Extensible2` (ECMA2 connectors, e.g. a cloud directory such as Entra ID), ...
    pub ma_type: String,
    /// Connector-space size at start.
    #[serde(default = "default_connectors")]
    pub connectors: u64,
    /// Changes per simulated hour in the connected source.
    #[serde(default = "default_change_rate")]
    pub change_rate_per_hour: f64,
    /// Partition of every run step (AD: the domain DN; others: `default`).
    #[serde(default = "default_partition")]
    pub partition: String,
    /// Whether other MAs' syncs create pending exports here (false for import-only sources such
    /// as an HR database).
    #[serde(default = "default_true")]
    pub receives_exports: bool,
    /// Fraction (0..=1) of exported objects the connected system rejects: they are counted in
    /// `export-failure`, listed as `<export-error>` entries, stay pending and make the step
    /// `completed-export-errors`. Default 0.
    #[serde(default)]
    pub export_error_rate: f64,
    /// Probability (0..=1) that an execution on this MA fails with one of `failure_results`
    /// (one seeded draw per execution that passes the engine's start checks). Default 0.
    #[serde(default)]
    pub failure_rate: f64,
    /// Results a rate-drawn failure picks from (uniformly). Any engine result string, or
    /// [`FREEZE`]. Default `["stopped-deadlocked"]`.
    #[serde(default = "default_failure_results")]
    pub failure_results: Vec<String>,
    /// One-off changes in the connected source at given simulated times (seconds after engine
    /// start, scaled by `time_scale`), e.g. an OU deleted by mistake: `{at_secs = 60, delete =
    /// 800}`. Applied in time order; the next import sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_events: Vec<SourceEvent>,
}

fn default_connectors() -> u64 {
    1_000
}
fn default_change_rate() -> f64 {
    60.0
}
fn default_partition() -> String {
    "default".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_failure_results() -> Vec<String> {
    vec!["stopped-deadlocked".to_owned()]
}
fn default_times() -> u32 {
    1
}

impl SimMaConfig {
    pub fn new(
        name: &str,
        ma_type: &str,
        connectors: u64,
        change_rate_per_hour: f64,
        partition: &str,
    ) -> Self {
        SimMaConfig {
            name: name.to_owned(),
            ma_type: ma_type.to_owned(),
            connectors,
            change_rate_per_hour,
            partition: partition.to_owned(),
            receives_exports: true,
            export_error_rate: 0.0,
            failure_rate: 0.0,
            failure_results: default_failure_results(),
            source_events: Vec::new(),
        }
    }

    fn import_only(mut self) -> Self {
        self.receives_exports = false;
        self
    }
}

/// A failure the engine injects into matching executions (`[[script]]` in a server file).
///
/// An execution *matches* when it passes the engine's start checks (MA idle, no concurrent
/// synchronization) on `ma` and, when `profile` is set, runs that profile. Entries are consulted
/// in order; the first one that applies fails the execution (later entries do not see it), and
/// only if none applies are the MA's failure rates drawn. An entry ignores the first `after`
/// matching executions it sees, then fails the next `times` ones, then is spent.
///
/// What `result` does:
/// - [`FREEZE`]: the engine freezes as a MIM Service MA import during a synchronization
///   makes it freeze (see [`super::SimEngine::restart`]).
/// - `no-start-*`, `access-denied`, `call-failure`, `connection-failure`,
///   `missing-partition-for-run-step`: the run does not start — no run number, no history, no
///   state change.
/// - `success`, `completed-*`: the first step does all its work and reports `result`; a
///   `completed-*-errors` result adds object errors of the step's kind (flow errors on a sync,
///   `<export-error>`s on an export, staging errors on an import); `completed-discovery-errors`
///   on an import writes `<ma-object-error>` discovery errors and skips obsoletion.
/// - `stopped-*` and any other string: the first step stops part-way (a seeded fraction of its
///   work is processed and committed) and reports `result`; later steps do not run.
///   `stopped-connectivity` also records a dropped connection in `ma-connection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFailure {
    /// MA name.
    pub ma: String,
    /// Run profile name; `None` matches every profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The engine result string to produce, or [`FREEZE`].
    pub result: String,
    /// How many matching executions fail (default 1).
    #[serde(default = "default_times")]
    pub times: u32,
    /// How many matching executions to let through first (default 0).
    #[serde(default)]
    pub after: u32,
}

impl ScriptedFailure {
    /// Fail the next execution of any profile on `ma` with `result`.
    pub fn new(ma: &str, result: &str) -> ScriptedFailure {
        ScriptedFailure {
            ma: ma.to_owned(),
            profile: None,
            result: result.to_owned(),
            times: 1,
            after: 0,
        }
    }

    /// Only executions of `profile`.
    pub fn with_profile(mut self, profile: &str) -> ScriptedFailure {
        self.profile = Some(profile.to_owned());
        self
    }

    /// Fail `times` matching executions.
    pub fn with_times(mut self, times: u32) -> ScriptedFailure {
        self.times = times;
        self
    }

    /// Let the first `after` matching executions through.
    pub fn with_after(mut self, after: u32) -> ScriptedFailure {
        self.after = after;
        self
    }
}

/// A run the engine starts by itself at a given simulated time (`[[unmanaged]]`), as if an
/// administrator clicked Run in Sync Service Manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEvent {
    /// Simulated seconds after engine start.
    pub at_secs: f64,
    #[serde(default)]
    pub add: u64,
    #[serde(default)]
    pub update: u64,
    #[serde(default)]
    pub delete: u64,
}

/// A run the engine starts by itself at a given simulated time, as if an
/// administrator clicked Run in Sync Service Manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmanagedRun {
    pub ma: String,
    pub profile: String,
    /// Simulated seconds after engine creation; the tokio delay is `at_secs × time_scale`.
    pub at_secs: f64,
}

impl UnmanagedRun {
    pub fn new(ma: &str, profile: &str, at_secs: f64) -> UnmanagedRun {
        UnmanagedRun {
            ma: ma.to_owned(),
            profile: profile.to_owned(),
            at_secs,
        }
    }
}

impl SimConfig {
    /// A realistic server of a demo fleet. Index 0: `AD` (25,000 connectors), `HR` (MSSQL,
    /// 12,000), `MIM Service` (FIM, 30,000). Index 1 adds `Entra ID` (Extensible2) with other
    /// sizes, so it has every MA kind. Higher indexes vary sizes and seed (odd ones have
    /// Entra ID). No failures are injected and no unmanaged runs are scheduled.
    pub fn example(server_index: usize) -> SimConfig {
        let i = u64::try_from(server_index).unwrap_or(u64::MAX);
        let mas = match server_index {
            0 => vec![
                SimMaConfig::new("AD", "AD", 25_000, 300.0, "DC=contoso,DC=com"),
                SimMaConfig::new("HR", "MSSQL", 12_000, 60.0, "default").import_only(),
                SimMaConfig::new("MIM Service", "FIM", 30_000, 120.0, "default"),
            ],
            1 => vec![
                SimMaConfig::new("AD", "AD", 48_000, 480.0, "DC=eu,DC=contoso,DC=com"),
                SimMaConfig::new("HR", "MSSQL", 21_000, 90.0, "default").import_only(),
                SimMaConfig::new("MIM Service", "FIM", 52_000, 150.0, "default"),
                SimMaConfig::new("Entra ID", "Extensible2", 50_000, 240.0, "default"),
            ],
            _ => {
                let ad = 8_000 + i.wrapping_mul(13_337) % 60_000;
                let hr = 3_000 + i.wrapping_mul(7_919) % 25_000;
                let mut mas = vec![
                    SimMaConfig::new(
                        "AD",
                        "AD",
                        ad,
                        100.0 + (i % 7) as f64 * 60.0,
                        &format!("DC=site{i},DC=contoso,DC=com"),
                    ),
                    SimMaConfig::new("HR", "MSSQL", hr, 30.0 + (i % 5) as f64 * 15.0, "default")
                        .import_only(),
                    SimMaConfig::new("MIM Service", "FIM", ad + hr / 2, 120.0, "default"),
                ];
                if server_index % 2 == 1 {
                    mas.push(SimMaConfig::new(
                        "Entra ID",
                        "Extensible2",
                        ad + ad / 10,
                        200.0,
                        "default",
                    ));
                }
                mas
            }
        };
        SimConfig {
            seed: 0x5F1E_E700_0000_0000 ^ i.wrapping_mul(0x9E37_79B9),
            time_scale: 1.0,
            version: "MIM 2016 4.6.607.0".to_owned(),
            security_id: "CONTOSO\\svc-syncfleet".to_owned(),
            error_rate: 0.0,
            history_limit: 1_000,
            step_base_secs: STEP_BASE_SECS,
            secs_per_object: SECS_PER_OBJECT,
            mas,
            script: Vec::new(),
            unmanaged: Vec::new(),
            state_file: None,
        }
    }

    /// Parse a server description in TOML (the fields of [`SimConfig`]; absent top-level fields
    /// take [`SimConfig::example`]`(0)`'s values) and [`SimConfig::validate`] it. Errors name the
    /// offending key (`mas[1].export_error_rate`) and, for syntax and type errors, its line.
    pub fn from_toml_str(text: &str) -> Result<SimConfig, EngineError> {
        let cfg: SimConfig =
            toml::from_str(text).map_err(|e| EngineError::Config(describe_toml_error(text, &e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load a server file ([`SimConfig::from_toml_str`]); errors name the file and the key.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<SimConfig, EngineError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            EngineError::Config(format!(
                "sim server file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        SimConfig::from_toml_str(&text).map_err(|e| match e {
            EngineError::Config(m) => EngineError::Config(format!(
                "sim server file {}: {}",
                path.display(),
                m.strip_prefix("sim ").unwrap_or(&m)
            )),
            other => other,
        })
    }

    /// Check values a config file may get wrong; messages name the key (`sim <key>: problem`).
    /// [`super::SimEngine::new`] clamps instead of failing; [`super::SimEngine::try_new`] and
    /// [`SimConfig::from_toml_file`] call this.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad =
            |key: &str, problem: String| Err(EngineError::Config(format!("sim {key}: {problem}")));
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(
                "time_scale",
                format!("must be > 0, got {}", self.time_scale),
            );
        }
        if !is_rate(self.error_rate) {
            return bad(
                "error_rate",
                format!("must be within 0..=1, got {}", self.error_rate),
            );
        }
        if self.history_limit == 0 {
            return bad("history_limit", "must be at least 1".to_owned());
        }
        for (key, v) in [
            ("step_base_secs", self.step_base_secs),
            ("secs_per_object", self.secs_per_object),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be >= 0, got {v}"));
            }
        }
        for (n, ma) in self.mas.iter().enumerate() {
            let key = |field: &str| format!("mas[{n}].{field}");
            if ma.name.trim().is_empty() {
                return bad(&key("name"), "must not be empty".to_owned());
            }
            if self.mas[..n].iter().any(|o| o.name == ma.name) {
                return bad(&key("name"), format!("MA name {:?} appears twice", ma.name));
            }
            let mut last = 0.0f64;
            for (i, ev) in ma.source_events.iter().enumerate() {
                if !(ev.at_secs.is_finite() && ev.at_secs >= last) {
                    return bad(
                        &key(&format!("source_events[{i}].at_secs")),
                        format!(
                            "must be >= 0 and not earlier than the event before ({last}), got {}",
                            ev.at_secs
                        ),
                    );
                }
                last = ev.at_secs;
            }
            if !(ma.change_rate_per_hour.is_finite() && ma.change_rate_per_hour >= 0.0) {
                return bad(
                    &key("change_rate_per_hour"),
                    format!(
                        "must be >= 0, got {} (MA {:?})",
                        ma.change_rate_per_hour, ma.name
                    ),
                );
            }
            for (field, v) in [
                ("export_error_rate", ma.export_error_rate),
                ("failure_rate", ma.failure_rate),
            ] {
                if !is_rate(v) {
                    return bad(
                        &key(field),
                        format!("must be within 0..=1, got {v} (MA {:?})", ma.name),
                    );
                }
            }
            if ma.failure_rate > 0.0 && ma.failure_results.is_empty() {
                return bad(
                    &key("failure_results"),
                    format!(
                        "must list at least one result when failure_rate > 0 (MA {:?})",
                        ma.name
                    ),
                );
            }
            if let Some(j) = ma.failure_results.iter().position(|r| r.trim().is_empty()) {
                return bad(
                    &format!("mas[{n}].failure_results[{j}]"),
                    "must not be empty".to_owned(),
                );
            }
        }
        for (n, s) in self.script.iter().enumerate() {
            let key = |field: &str| format!("script[{n}].{field}");
            self.check_target(&key("ma"), &s.ma, &key("profile"), s.profile.as_deref())
                .or_else(|m| bad(&m.0, m.1))?;
            if s.result.trim().is_empty() {
                return bad(
                    &key("result"),
                    format!("must be an engine result string or {FREEZE:?}"),
                );
            }
            if s.times == 0 {
                return bad(&key("times"), "must be at least 1".to_owned());
            }
        }
        for (n, u) in self.unmanaged.iter().enumerate() {
            let key = |field: &str| format!("unmanaged[{n}].{field}");
            self.check_target(&key("ma"), &u.ma, &key("profile"), Some(&u.profile))
                .or_else(|m| bad(&m.0, m.1))?;
            if !(u.at_secs.is_finite() && u.at_secs >= 0.0) {
                return bad(&key("at_secs"), format!("must be >= 0, got {}", u.at_secs));
            }
        }
        Ok(())
    }

    /// An MA name and optional profile name that must exist: `Err((key, problem))`.
    fn check_target(
        &self,
        ma_key: &str,
        ma: &str,
        profile_key: &str,
        profile: Option<&str>,
    ) -> Result<(), (String, String)> {
        if !self.mas.iter().any(|m| m.name == ma) {
            let known: Vec<&str> = self.mas.iter().map(|m| m.name.as_str()).collect();
            return Err((
                ma_key.to_owned(),
                format!("no MA named {ma:?} (MAs: {known:?})"),
            ));
        }
        if let Some(p) = profile
            && !STANDARD_PROFILES.iter().any(|(name, _, _)| *name == p)
        {
            let known: Vec<&str> = STANDARD_PROFILES.iter().map(|(n, _, _)| *n).collect();
            return Err((
                profile_key.to_owned(),
                format!("no run profile named {p:?} (profiles: {known:?})"),
            ));
        }
        Ok(())
    }

    /// Clamp out-of-range values and drop duplicate MA names (first one wins).
    pub(super) fn sanitized(mut self) -> SimConfig {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            self.time_scale = 1e-6;
        }
        self.time_scale = self.time_scale.clamp(1e-6, 1e6);
        self.error_rate = clamp_rate(self.error_rate);
        self.history_limit = self.history_limit.max(1);
        if !(self.step_base_secs.is_finite() && self.step_base_secs >= 0.0) {
            self.step_base_secs = STEP_BASE_SECS;
        }
        if !(self.secs_per_object.is_finite() && self.secs_per_object >= 0.0) {
            self.secs_per_object = SECS_PER_OBJECT;
        }
        let mut seen: Vec<String> = Vec::new();
        self.mas.retain(|ma| {
            let fresh = !seen.contains(&ma.name);
            seen.push(ma.name.clone());
            fresh
        });
        for ma in &mut self.mas {
            if !(ma.change_rate_per_hour.is_finite() && ma.change_rate_per_hour >= 0.0) {
                ma.change_rate_per_hour = 0.0;
            }
            ma.export_error_rate = clamp_rate(ma.export_error_rate);
            ma.failure_rate = clamp_rate(ma.failure_rate);
            ma.failure_results.retain(|r| !r.trim().is_empty());
            if ma.failure_results.is_empty() {
                ma.failure_results = default_failure_results();
            }
        }
        for u in &mut self.unmanaged {
            if !(u.at_secs.is_finite() && u.at_secs >= 0.0) {
                u.at_secs = 0.0;
            }
        }
        self
    }
}

fn is_rate(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

fn clamp_rate(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A TOML error as `line N, key `a[1].b`: message`, the key found from the error's span.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return format!("invalid TOML: {message}");
    };
    let line = text
        .get(..span.start)
        .map_or(1, |before| before.matches('\n').count() + 1);
    let key = DeTable::parse(text)
        .ok()
        .and_then(|doc| key_in_table(doc.get_ref(), &span, ""));
    match key {
        Some(key) => format!("line {line}, key `{key}`: {message}"),
        None => format!("line {line}: {message}"),
    }
}

/// The dotted path of the innermost key whose key or value span holds `span`. Tables and
/// arrays of tables only span their header (`[[mas]]`), so every entry is searched.
fn key_in_table(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    table.iter().find_map(|(k, v)| {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if holds(&k.span(), span) {
            Some(path)
        } else {
            key_in_value(v, span, &path)
        }
    })
}

fn key_in_value(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &str) -> Option<String> {
    let inner = match value.get_ref() {
        DeValue::Table(t) => key_in_table(t, span, path),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| key_in_value(item, span, &format!("{path}[{i}]"))),
        _ => None,
    };
    inner.or_else(|| holds(&value.span(), span).then(|| path.to_owned()))
}

fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}
