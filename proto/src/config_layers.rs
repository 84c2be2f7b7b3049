//! Layered configuration of both daemons: a TOML file, overridden by `SYNCFLEET_*` environment
//! variables, overridden by command-line flags ([`Layers`]).
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
//! environment can hold both daemons' settings. Each daemon's top-level keys are listed here
//! ([`AGENT_KEYS`], [`CONTROLLER_KEYS`]) so that neither daemon needs the other's code to know
//! them; each daemon's tests check its list against its configuration struct.
//!
//! Every problem is reported as a [`ConfigError`] naming the key (or variable) and how to fix it,
//! before any connection is made; the binaries exit with code 64 (EX_USAGE / EX_CONFIG style) on
//! it.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::error::{Actual, Kind};
use figment::providers::Serialized;
use figment::value::Value;

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
/// (`SYNCFLEET_CONFIG`, `SYNCFLEET_CONTEXT`, and `SYNCFLEET_ADDR`, `SYNCFLEET_CACERT`,
/// `SYNCFLEET_CERT`, `SYNCFLEET_KEY` to connect without a config file), by the daemons' own
/// flags (log filter and format, config file locations) and by `syncfleet-agent enroll` (the
/// token). Never refused, never read as settings.
pub const NON_SETTING_VARIABLES: &[&str] = &[
    "SYNCFLEET_CONFIG",
    "SYNCFLEET_CONTEXT",
    "SYNCFLEET_ADDR",
    "SYNCFLEET_CACERT",
    "SYNCFLEET_CERT",
    "SYNCFLEET_KEY",
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
    "store",
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
    "lease_ttl",
    "advertise_url",
    "retention",
    "console",
    "metrics",
];

/// Top-level keys of the agent's configuration. The controller leaves `SYNCFLEET_AGENT_<KEY>` of
/// these to the agent (one environment may hold both daemons' settings). The agent's tests check
/// this list against its configuration struct.
pub const AGENT_KEYS: &[&str] = &[
    "name",
    "controller",
    "controllers",
    "data_dir",
    "labels",
    "tls",
    "engine",
    "reconnect_max_backoff",
    "autonomy_after",
    "executor",
    "credentials",
];

/// How one daemon names its settings in the environment, and which settings of the other daemon
/// it leaves alone.
#[derive(Debug, Clone, Copy)]
pub struct EnvScheme {
    /// The daemon, for messages.
    pub program: &'static str,
    /// Prefix of its settings.
    pub prefix: &'static str,
    /// An example variable of a nested key, for messages.
    pub example: &'static str,
    /// Prefix of the other daemon's settings.
    pub foreign_prefix: &'static str,
    /// Top-level keys of the other daemon: a `SYNCFLEET_*` variable that is none of this
    /// daemon's settings but `<foreign_prefix><KEY>[__…]` of one of these is left alone rather
    /// than refused, and these variables are among the candidates of the "closest valid one"
    /// hint.
    pub foreign_keys: &'static [&'static str],
}

impl EnvScheme {
    /// Whether `name` is `<foreign_prefix><KEY>[__…]` for a top-level key of the other daemon.
    pub fn is_foreign(&self, name: &str) -> bool {
        name.strip_prefix(self.foreign_prefix)
            .and_then(key_of_variable)
            .is_some_and(|key| self.foreign_keys.contains(&top_of(&key)))
    }

    /// `<foreign_prefix><KEY>` of every top-level key of the other daemon.
    pub fn foreign_variables(&self) -> Vec<String> {
        self.foreign_keys
            .iter()
            .map(|k| variable_of_key(self.foreign_prefix, k))
            .collect()
    }
}

/// The agent's scheme: `SYNCFLEET_AGENT_<KEY>`; the controller's settings are left alone.
pub const AGENT_ENV: EnvScheme = EnvScheme {
    program: "syncfleet-agent",
    prefix: AGENT_ENV_PREFIX,
    example: "SYNCFLEET_AGENT_EXECUTOR__WATCHDOG",
    foreign_prefix: ENV_PREFIX,
    foreign_keys: CONTROLLER_KEYS,
};

/// The controller's scheme: `SYNCFLEET_<KEY>`; the agent's settings are left alone.
pub const CONTROLLER_ENV: EnvScheme = EnvScheme {
    program: "syncfleet-controller",
    prefix: ENV_PREFIX,
    example: "SYNCFLEET_TLS__CERT",
    foreign_prefix: AGENT_ENV_PREFIX,
    foreign_keys: AGENT_KEYS,
};

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
            if scheme.is_foreign(&name) {
                continue;
            }
            let candidates: Vec<String> = fields
                .iter()
                .map(|f| variable_of_key(scheme.prefix, f))
                .chain(scheme.foreign_variables())
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
