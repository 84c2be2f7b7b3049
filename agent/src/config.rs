//! Agent configuration, and the layered loading both daemons use: a TOML file, overridden by
//! `SYNCFLEET_*` environment variables, overridden by command-line flags ([`Layers`]).
//!
//! # Environment variables
//!
//! Every key has a variable: the daemon's prefix, then the key in upper case with nested keys
//! joined by `__` (two underscores, since keys contain single ones). The agent's prefix is
//! `SYNCFLEET_AGENT_` (`name` → `SYNCFLEET_AGENT_NAME`, `executor.watchdog` →
//! `SYNCFLEET_AGENT_EXECUTOR__WATCHDOG`, `labels.site` → `SYNCFLEET_AGENT_LABELS__SITE`); the
//! controller's is `SYNCFLEET_` (`agent_lost_after` → `SYNCFLEET_AGENT_LOST_AFTER`, `tls.cert` →
//! `SYNCFLEET_TLS__CERT`). Values are read as text and converted to the key's type; a list is
//! written `[a, b]`.
//!
//! A `SYNCFLEET_*` variable that is none of the daemon's settings is refused like a misspelt key
//! (naming the closest valid variable), unless another syncfleet program reads it: the CLI's
//! and the flags' variables ([`NON_SETTING_VARIABLES`]) and the other daemon's settings, so one
//! environment can hold both daemons' settings.
//!
//! Every problem is reported as a [`ConfigError`] naming the key (or variable) and how to fix it,
//! before any connection is made; the binary exits with code 64 (EX_USAGE / EX_CONFIG style) on
//! it.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::error::{Actual, Kind};
use figment::providers::Serialized;
use figment::value::Value;

use serde::{Deserialize, Serialize};

use crate::engine::sim::SimConfig;
use crate::executor::ExecutorOptions;

/// Exit code for invalid configuration (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Configuration problems. Messages name the file and key and say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid config file {path}: {message}\nfix the key named above; '--dump-config' prints every key with its current value"
    )]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: String,
    },
    /// A key set by an environment variable or a flag that does not fit (wrong type, unknown
    /// key); `origin` names the variable or flag.
    #[error("invalid setting `{key}` from {origin}: {problem}\n{fix}")]
    Layer {
        key: String,
        origin: String,
        problem: String,
        fix: String,
    },
    #[error(
        "unknown environment variable {name}: no setting of {program} has this name; the closest valid one is {closest}\n{program} reads its settings from {prefix}<KEY>, nested keys joined by `__` (e.g. {example}); rename or unset the variable"
    )]
    UnknownVariable {
        name: String,
        closest: String,
        program: &'static str,
        prefix: &'static str,
        example: &'static str,
    },
}

/// Parse a TOML config file into `T` (which should use `deny_unknown_fields`, so a misspelt key
/// is named in the error with the list of valid ones).
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Layers: file < environment < flags

/// The prefix every syncfleet variable starts with.
pub const ENV_PREFIX: &str = "SYNCFLEET_";
/// Prefix of the agent's settings: `SYNCFLEET_AGENT_<KEY>`.
pub const AGENT_ENV_PREFIX: &str = "SYNCFLEET_AGENT_";
/// Joins nested keys in variable names: `tls.cert` → `TLS__CERT`.
pub const ENV_NESTING: &str = "__";

/// `SYNCFLEET_*` variables that are not daemon settings, read by the `syncfleet` CLI
/// (`SYNCFLEET_CONFIG`, `SYNCFLEET_CONTEXT`), by the daemons' own flags (log filter and format,
/// config file locations) and by `syncfleet-agent enroll` (the token). Never refused, never read
/// as settings.
pub const NON_SETTING_VARIABLES: &[&str] = &[
    "SYNCFLEET_CONFIG",
    "SYNCFLEET_CONTEXT",
    "SYNCFLEET_LOG",
    "SYNCFLEET_LOG_FORMAT",
    "SYNCFLEET_CONTROLLER_CONFIG",
    "SYNCFLEET_AGENT_CONFIG",
    "SYNCFLEET_ENROLL_TOKEN",
];

/// Variables of earlier versions and their names now, for the hint when one is refused.
pub const RENAMED_VARIABLES: &[(&str, &str)] = &[
    ("SYNCFLEET_CONTROLLER", "SYNCFLEET_AGENT_CONTROLLER"),
    ("SYNCFLEET_SIM_SERVER", "SYNCFLEET_AGENT_ENGINE__SERVER"),
    (
        "SYNCFLEET_SIM_TIME_SCALE",
        "SYNCFLEET_AGENT_ENGINE__TIME_SCALE",
    ),
];

/// Top-level keys of the controller's configuration. The agent leaves `SYNCFLEET_<KEY>` of
/// these to the controller (one environment may hold both daemons' settings). The controller's
/// tests check this list against its configuration struct.
pub const CONTROLLER_KEYS: &[&str] = &[
    "data_dir",
    "fleet",
    "grpc_listen",
    "http_listen",
    "server_names",
    "tls",
    "heartbeat_interval",
    "agent_lost_after",
    "pending_deadline",
    "agent_cert_lifetime",
    "tls_handshake_timeout",
    "unauthenticated_idle_timeout",
    "max_connections",
    "max_connections_per_address",
];

/// How one daemon names its settings in the environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvScheme {
    /// The daemon, for messages.
    pub program: &'static str,
    /// Prefix of its settings.
    pub prefix: &'static str,
    /// An example variable of a nested key, for messages.
    pub example: &'static str,
    /// Whether a `SYNCFLEET_*` variable that is none of this daemon's settings is a setting of
    /// another syncfleet program (then it is left alone rather than refused).
    pub foreign: fn(&str) -> bool,
    /// The other program's top-level variables, among the candidates of the "closest valid
    /// one" hint.
    pub foreign_variables: fn() -> Vec<String>,
}

/// The agent's scheme: `SYNCFLEET_AGENT_<KEY>`; the controller's settings are left alone.
pub const AGENT_ENV: EnvScheme = EnvScheme {
    program: "syncfleet-agent",
    prefix: AGENT_ENV_PREFIX,
    example: "SYNCFLEET_AGENT_EXECUTOR__WATCHDOG",
    foreign: is_controller_variable,
    foreign_variables: controller_variables,
};

/// `SYNCFLEET_<KEY>` of every top-level controller key.
pub fn controller_variables() -> Vec<String> {
    CONTROLLER_KEYS
        .iter()
        .map(|k| variable_of_key(ENV_PREFIX, k))
        .collect()
}

/// `SYNCFLEET_AGENT_<KEY>` of every top-level agent key.
pub fn agent_variables() -> Vec<String> {
    top_level_keys::<AgentConfig>()
        .iter()
        .map(|k| variable_of_key(AGENT_ENV_PREFIX, k))
        .collect()
}

/// Whether `name` is `SYNCFLEET_<KEY>[__…]` for a top-level key of the controller.
pub fn is_controller_variable(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .and_then(key_of_variable)
        .is_some_and(|key| CONTROLLER_KEYS.contains(&top_of(&key)))
}

/// Whether `name` is `SYNCFLEET_AGENT_<KEY>[__…]` for a top-level key of the agent.
pub fn is_agent_variable(name: &str) -> bool {
    let fields = top_level_keys::<AgentConfig>();
    name.strip_prefix(AGENT_ENV_PREFIX)
        .and_then(key_of_variable)
        .is_some_and(|key| fields.contains(&top_of(&key)))
}

/// This process's environment for [`Layers::env`]. Unlike `std::env::vars`, never panics on a
/// variable that is not UTF-8 (anyone's, not only syncfleet's): its text is taken lossily.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// `TLS__CERT` → `tls.cert`; None for an empty name or an empty segment.
fn key_of_variable(rest: &str) -> Option<String> {
    let parts: Vec<String> = rest
        .split(ENV_NESTING)
        .map(str::to_ascii_lowercase)
        .collect();
    if parts.iter().any(String::is_empty) {
        return None;
    }
    Some(parts.join("."))
}

/// `tls.cert` → `<prefix>TLS__CERT`.
fn variable_of_key(prefix: &str, key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    format!("{prefix}{}", parts.join(ENV_NESTING))
}

fn top_of(key: &str) -> &str {
    key.split('.').next().unwrap_or(key)
}

fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The top-level keys `T` accepts: the list serde gives when refusing an unknown one.
pub fn top_level_keys<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let probe = figment::util::nest("syncfleet-probe", Value::from(String::new()));
    match Figment::from(Serialized::defaults(probe)).extract::<T>() {
        Err(e) => match e.kind {
            Kind::UnknownField(_, expected) => expected,
            _ => &[],
        },
        Ok(_) => &[],
    }
}

/// The candidate closest to `wanted` (by edit distance).
fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .min_by_key(|c| strsim::levenshtein(wanted, c))
}

/// One key set by an environment variable or a flag.
#[derive(Debug, Clone)]
struct Override {
    key: String,
    raw: String,
    /// The variable or flag, for messages.
    origin: String,
    /// Set by an environment variable (`origin` is its name) rather than a flag.
    from_env: bool,
    /// Whether the text is parsed (numbers, booleans) rather than kept as a string: tried when
    /// the key's type refuses a string (keys inside the tagged `engine` table).
    typed: bool,
}

impl Override {
    fn value(&self) -> Value {
        let t = self.raw.trim();
        let structured = t.starts_with('[') || t.starts_with('{');
        if self.typed || structured {
            match self.raw.parse::<Value>() {
                Ok(v) => v,
                Err(never) => match never {},
            }
        } else {
            Value::from(self.raw.clone())
        }
    }
}

/// A configuration `T` read from its layers, in rising precedence: `T`'s defaults, the TOML
/// file, `SYNCFLEET_*` variables, flags. Every error names the key and where its value came from
/// (the file, the variable, the flag).
#[derive(Debug)]
pub struct Layers<T> {
    base: Vec<(String, String)>,
    file: Option<(PathBuf, toml::Table)>,
    overrides: Vec<Override>,
    scheme: Option<EnvScheme>,
    _config: PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> Default for Layers<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: serde::de::DeserializeOwned> Layers<T> {
    pub fn new() -> Self {
        Self {
            base: Vec::new(),
            file: None,
            overrides: Vec::new(),
            scheme: None,
            _config: PhantomData,
        }
    }

    /// A value below the file (a tagged table's default tag, so that a variable can set one key
    /// of the table alone).
    pub fn base(mut self, key: &str, value: &str) -> Self {
        self.base.push((key.to_string(), value.to_string()));
        self
    }

    /// The TOML file, when one is given.
    pub fn file(mut self, path: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(path) = path {
            let table: toml::Table = load_toml(path)?;
            self.file = Some((path.to_path_buf(), table));
        }
        Ok(self)
    }

    /// The daemon's `SYNCFLEET_*` variables among `vars` (usually [`process_env`]). Refuses
    /// a `SYNCFLEET_*` variable that is neither one of its settings, nor in
    /// [`NON_SETTING_VARIABLES`], nor another program's setting.
    pub fn env(
        mut self,
        scheme: &EnvScheme,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        self.scheme = Some(*scheme);
        let fields = top_level_keys::<T>();
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            if NON_SETTING_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let own = name
                .strip_prefix(scheme.prefix)
                .and_then(key_of_variable)
                .filter(|key| fields.contains(&top_of(key)));
            if let Some(key) = own {
                self.overrides.push(Override {
                    key,
                    raw,
                    origin: name,
                    from_env: true,
                    typed: false,
                });
                continue;
            }
            if (scheme.foreign)(&name) {
                continue;
            }
            let candidates: Vec<String> = fields
                .iter()
                .map(|f| variable_of_key(scheme.prefix, f))
                .chain((scheme.foreign_variables)())
                .chain(NON_SETTING_VARIABLES.iter().map(|v| v.to_string()))
                .collect();
            let renamed = RENAMED_VARIABLES
                .iter()
                .find(|(old, _)| *old == name)
                .map(|(_, new)| *new);
            let closest = renamed
                .or_else(|| closest(&name, candidates.iter().map(String::as_str)))
                .unwrap_or(scheme.prefix)
                .to_string();
            return Err(ConfigError::UnknownVariable {
                name,
                closest,
                program: scheme.program,
                prefix: scheme.prefix,
                example: scheme.example,
            });
        }
        Ok(self)
    }

    /// A value from a flag (`origin` is the flag as typed, e.g. `--data-dir`).
    pub fn flag(mut self, key: &str, raw: impl ToString, origin: &str) -> Self {
        self.overrides.push(Override {
            key: key.to_string(),
            raw: raw.to_string(),
            origin: origin.to_string(),
            from_env: false,
            typed: false,
        });
        self
    }

    /// `--set KEY=VALUE` pairs.
    pub fn sets(mut self, pairs: &[(String, String)]) -> Self {
        for (key, raw) in pairs {
            self = self.flag(key, raw, &format!("--set {key}"));
        }
        self
    }

    fn figment(&self) -> Figment {
        let mut f = Figment::new();
        for (k, v) in &self.base {
            f = f.merge(Serialized::defaults(figment::util::nest(
                k,
                Value::from(v.clone()),
            )));
        }
        if let Some((_, table)) = &self.file {
            f = f.merge(Serialized::defaults(table));
        }
        for o in &self.overrides {
            f = f.merge(Serialized::defaults(figment::util::nest(&o.key, o.value())));
        }
        f
    }

    /// The configuration, or the first problem found.
    pub fn extract(mut self) -> Result<T, ConfigError> {
        loop {
            let err = match self.figment().extract_lossy::<T>() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // A string where the type wants a number or a boolean, inside a table that serde
            // buffers (the tagged `engine`): parse the overriding texts there and try again.
            if matches!(err.kind, Kind::InvalidType(Actual::Str(_), _)) {
                let path = err.path.join(".");
                let mut changed = false;
                for o in &mut self.overrides {
                    let under =
                        path.is_empty() || o.key == path || o.key.starts_with(&format!("{path}."));
                    if under && !o.typed {
                        o.typed = true;
                        changed = true;
                    }
                }
                if changed {
                    continue;
                }
            }
            return Err(self.describe(err));
        }
    }

    /// Where the value of `key` came from: the last override that set it (or a table holding
    /// it), else the file.
    fn origin_of(&self, key: &str) -> Option<&Override> {
        self.overrides.iter().rev().find(|o| {
            o.key == key
                || key.starts_with(&format!("{}.", o.key))
                || o.key.starts_with(&format!("{key}."))
        })
    }

    fn describe(&self, err: figment::Error) -> ConfigError {
        let path = err.path.join(".");
        let file_error = |message: String| match &self.file {
            Some((p, _)) => ConfigError::Parse {
                path: p.clone(),
                message,
            },
            None => ConfigError::Layer {
                key: path.clone(),
                origin: "the defaults".into(),
                problem: message,
                fix: "report this as a bug".into(),
            },
        };
        match &err.kind {
            Kind::UnknownField(field, expected) => {
                // The error's path ends with the unknown field itself.
                let mut parent_path = err.path.clone();
                if parent_path.last() == Some(field) {
                    parent_path.pop();
                }
                let path = parent_path.join(".");
                let key = join_key(&path, field);
                let near = closest(field, expected.iter().copied()).unwrap_or_default();
                match self.origin_of(&key) {
                    Some(o) if o.from_env => {
                        let scheme = self.scheme.unwrap_or(AGENT_ENV);
                        ConfigError::UnknownVariable {
                            name: o.origin.clone(),
                            closest: variable_of_key(scheme.prefix, &join_key(&path, near)),
                            program: scheme.program,
                            prefix: scheme.prefix,
                            example: scheme.example,
                        }
                    }
                    Some(o) => ConfigError::Layer {
                        key,
                        origin: o.origin.clone(),
                        problem: "there is no such key".into(),
                        fix: format!(
                            "did you mean `{}`? valid keys here: {}",
                            join_key(&path, near),
                            expected.join(", ")
                        ),
                    },
                    None => file_error(format!(
                        "unknown key `{key}`; did you mean `{}`? valid keys here: {}",
                        join_key(&path, near),
                        expected.join(", ")
                    )),
                }
            }
            kind => {
                let problem = kind.to_string();
                match self.origin_of(&path) {
                    Some(o) => ConfigError::Layer {
                        key: path.clone(),
                        origin: format!("{}={:?}", o.origin, o.raw),
                        problem,
                        fix: format!(
                            "fix the value of {}; '--dump-config' prints every key with its current value",
                            o.origin
                        ),
                    },
                    None => file_error(if path.is_empty() {
                        problem
                    } else {
                        format!("key `{path}`: {problem}")
                    }),
                }
            }
        }
    }
}

/// Validate a name used for agents (it appears in certificates and metrics labels).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The engine an agent drives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EngineConfig {
    /// The simulated engine. `server` picks one of the built-in example servers
    /// ([`SimConfig::example`]) unless `sim` describes one in full.
    Sim {
        #[serde(default)]
        server: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_scale: Option<f64>,
        /// A server described in full (the same keys as a server file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sim: Option<Box<SimConfig>>,
        /// A server file (TOML) describing the simulated server; wins over `server`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sim_file: Option<PathBuf>,
    },
    /// The real engine through WMI (Windows only); the section's other keys are the driver's
    /// settings (poll intervals, run profile declarations).
    MimWmi(crate::engine::wmi_logic::WmiConfig),
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::Sim {
            server: 0,
            time_scale: None,
            sim: None,
            sim_file: None,
        }
    }
}

/// Client TLS material of the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// CA certificate (PEM) the controller's certificate must chain to. Default
    /// `<data_dir>/ca.pem`.
    pub ca_cert: Option<PathBuf>,
    /// The agent's client certificate (PEM). Default `<data_dir>/agent.pem`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Default `<data_dir>/agent.key`.
    pub key: Option<PathBuf>,
    /// Name to verify in the controller's certificate; default: the host of `controller`.
    pub server_name: Option<String>,
}

/// Everything the agent needs to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Agent (sync server) name; must match the name in the client certificate.
    pub name: String,
    /// Controller gRPC URL, `https://host:port`.
    pub controller: String,
    /// Folder for the journal (`agent.db`) and, by default, the TLS files.
    pub data_dir: PathBuf,
    /// Labels reported to the controller (e.g. `env = "prod"`).
    pub labels: BTreeMap<String, String>,
    pub tls: TlsFiles,
    pub engine: EngineConfig,
    /// Longest wait between reconnection attempts (exponential backoff with jitter up to this).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// Run mode, stagger, watchdog and retry policy.
    pub executor: ExecutorOptions,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            controller: String::new(),
            data_dir: PathBuf::from("syncfleet-agent-data"),
            labels: BTreeMap::new(),
            tls: TlsFiles::default(),
            engine: EngineConfig::default(),
            reconnect_max_backoff: Duration::from_secs(30),
            executor: ExecutorOptions::default(),
        }
    }
}

impl AgentConfig {
    /// Check the settings; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::Invalid {
                key: "name",
                problem: format!("{:?} is not a valid agent name", self.name),
                fix: "set `name` (or --name / SYNCFLEET_AGENT_NAME) to 1-63 characters from a-z, A-Z, 0-9, '.', '_', '-'".into(),
            });
        }
        if !self.controller.starts_with("https://") || self.controller.len() <= "https://".len() {
            return Err(ConfigError::Invalid {
                key: "controller",
                problem: format!("{:?} is not an https URL", self.controller),
                fix: "set `controller` (or --controller / SYNCFLEET_AGENT_CONTROLLER) to the controller's gRPC address, e.g. https://controller.example.com:7443".into(),
            });
        }
        if self.reconnect_max_backoff < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "reconnect_max_backoff",
                problem: format!("{:?} is too short", self.reconnect_max_backoff),
                fix: "use at least 100ms, e.g. \"30s\"".into(),
            });
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 63 || v.len() > 253 {
                return Err(ConfigError::Invalid {
                    key: "labels",
                    problem: format!("label {k:?}={v:?} is empty or too long"),
                    fix: "use keys of 1-63 and values of at most 253 characters".into(),
                });
            }
        }
        if let EngineConfig::Sim {
            time_scale: Some(t),
            ..
        } = &self.engine
            && !(t.is_finite() && *t > 0.0)
        {
            return Err(ConfigError::Invalid {
                key: "engine.time_scale",
                problem: format!("{t} is not a positive number"),
                fix: "use e.g. 1.0 for realistic durations or 0.05 for a fast demo".into(),
            });
        }
        if let Some(r) = self.executor.retry.forbidden_entry() {
            return Err(ConfigError::Invalid {
                key: "executor.retry.results",
                problem: format!("{r:?} must never be retried automatically"),
                fix: "remove it: guard-rail stops need a person, busy and in-progress results are waited for anyway".into(),
            });
        }
        let e = &self.executor;
        if e.watchdog < Duration::from_secs(1) || e.stop_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "executor.watchdog",
                problem: format!("watchdog {:?} / stop_timeout {:?} too short", e.watchdog, e.stop_timeout),
                fix: "use at least 1s for the watchdog (default 4h) and 100ms for stop_timeout (default 60s)".into(),
            });
        }
        if e.busy_poll < Duration::from_millis(10) {
            return Err(ConfigError::Invalid {
                key: "executor.busy_poll",
                problem: format!("{:?} would busy-poll the engine", e.busy_poll),
                fix: "use at least 10ms (default 2s)".into(),
            });
        }
        #[cfg(not(windows))]
        if matches!(self.engine, EngineConfig::MimWmi(_)) {
            return Err(ConfigError::Invalid {
                key: "engine.kind",
                problem: "the mim-wmi driver exists only on Windows".into(),
                fix: "use kind = \"sim\" on this platform".into(),
            });
        }
        Ok(())
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.tls
            .ca_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca.pem"))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent.pem"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("agent.key"))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.data_dir.join("agent.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "name = \"s1\"\ncontroler = \"https://x:1\"\n").unwrap();
        let err = load_toml::<AgentConfig>(&p).unwrap_err().to_string();
        assert!(err.contains("controler"), "{err}");
        assert!(err.contains("controller"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = AgentConfig {
            name: "sync-01".into(),
            controller: "http://x:1".into(),
            ..Default::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`controller`"), "{err}");
        c.controller = "https://x:1".into();
        c.validate().unwrap();
        c.name = "bad name".into();
        assert!(c.validate().unwrap_err().to_string().contains("`name`"));
    }

    #[test]
    fn wmi_engine_section_parses_its_settings() {
        let c: AgentConfig = toml::from_str(
            "name = \"a\"\ncontroller = \"https://h:1\"\n[engine]\nkind = \"mim-wmi\"\npoll_interval = \"3s\"\n",
        )
        .unwrap();
        match &c.engine {
            EngineConfig::MimWmi(w) => assert_eq!(w.poll_interval, Duration::from_secs(3)),
            other => panic!("{other:?}"),
        }
        #[cfg(not(windows))]
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("only on Windows")
        );
        assert!(
            toml::from_str::<AgentConfig>(
                "name = \"a\"\n[engine]\nkind = \"mim-wmi\"\npoll_intervall = \"3s\"\n"
            )
            .is_err()
        );
    }

    #[test]
    fn engine_section_round_trips() {
        let c: AgentConfig = toml::from_str(
            "name = \"a\"\ncontroller = \"https://h:1\"\n[engine]\nkind = \"sim\"\nserver = 2\ntime_scale = 0.5\n",
        )
        .unwrap();
        assert_eq!(
            c.engine,
            EngineConfig::Sim {
                server: 2,
                time_scale: Some(0.5),
                sim: None,
                sim_file: None,
            }
        );
        let back: AgentConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
