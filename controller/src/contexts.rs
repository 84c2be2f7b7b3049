//! The CLI config file: named contexts, like a kubeconfig. Read by the `syncfleet` CLI
//! ([`crate::cli`]) and written by `syncfleet dev` (`crate::dev`), so it stands apart from both.
//!
//! ```toml
//! current_context = "dev"
//! [contexts.dev]
//! controller = "https://127.0.0.1:7443"   # controller gRPC URL (https only)
//! ca_cert = "/abs/path/ca.pem"            # PEM of the controller's CA
//! client_cert = "/abs/path/operator.pem"  # operator client certificate (PEM)
//! client_key = "/abs/path/operator.key"   # its private key (PEM)
//! # tls_server_name = "syncfleet-controller"   # optional; default = host of `controller`
//! ```
//!
//! Contracts:
//! - **Location**: `--config PATH`, else `$SYNCFLEET_CONFIG`, else
//!   `<config dir>/syncfleet/config.toml` (`~/.config/syncfleet/config.toml` on Linux), see
//!   [`default_config_path`].
//! - **Context choice**: `--context NAME` (or `$SYNCFLEET_CONTEXT`), else `current_context`.
//! - **Without a config file**: `SYNCFLEET_ADDR`, `SYNCFLEET_CACERT`, `SYNCFLEET_CERT` and
//!   `SYNCFLEET_KEY` together take the place of a context; flags (`--controller`, `--cacert`,
//!   `--cert`, `--key`) beat them, and they beat the context ([`resolve_connection`]).
//! - **Paths**: relative certificate paths are resolved against the folder of the config file
//!   (so a dev fleet's folder can be moved as a whole); a leading `~/` means the home directory.
//! - **Errors** name the file, the context, what is wrong and how to fix it, because the operator
//!   reading them usually did not write the file (`syncfleet-controller dev` did).
//! - **Writes** ([`upsert_context`]) keep other contexts and unknown keys, go through a temporary
//!   file and a rename so a crash never leaves half a file, and make the file private (0600 on
//!   unix) because it points at a private key.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the config file (overridden by `--config`).
pub const CONFIG_ENV: &str = "SYNCFLEET_CONFIG";
/// Environment variable naming the context to use (overridden by `--context`).
pub const CONTEXT_ENV: &str = "SYNCFLEET_CONTEXT";
/// Controller URL(s) without a config file (comma-separated for several controllers).
pub const ADDR_ENV: &str = "SYNCFLEET_ADDR";
/// PEM file of the fleet CA without a config file.
pub const CACERT_ENV: &str = "SYNCFLEET_CACERT";
/// PEM file of the operator certificate without a config file.
pub const CERT_ENV: &str = "SYNCFLEET_CERT";
/// PEM file of the operator key without a config file.
pub const KEY_ENV: &str = "SYNCFLEET_KEY";
/// The four connection variables, in the order error messages list them.
pub const CONNECTION_ENVS: [&str; 4] = [ADDR_ENV, CACERT_ENV, CERT_ENV, KEY_ENV];
/// The name a connection from the environment or the flags goes by in messages.
pub const ENV_CONTEXT: &str = "(environment)";

/// How to reach one controller: its URL and the mTLS material of one operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Context {
    /// Controller gRPC URL; must be `https://HOST:PORT` (the CLI always uses mTLS).
    #[serde(default)]
    pub controller: String,
    /// Several controllers sharing one store, instead of `controller`: the CLI uses the first
    /// that answers (every controller serves the operator API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
    /// PEM file of the CA that signed the controller's server certificate.
    pub ca_cert: PathBuf,
    /// PEM file of the operator's client certificate.
    pub client_cert: PathBuf,
    /// PEM file of the client certificate's private key.
    pub client_key: PathBuf,
    /// Name to verify in the server certificate when it differs from the URL's host (e.g. the
    /// controller is reached through an IP address or a tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

/// Everything that can go wrong reading or writing the config file. Each message says which
/// file, which context, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `--config`, `$SYNCFLEET_CONFIG` nor a per-user config folder is available.
    #[error(
        "cannot tell where the config file is (no per-user config folder); pass --config PATH or set {CONFIG_ENV}"
    )]
    NoConfigPath,
    /// The config file does not exist.
    #[error(
        "config file {} not found; start a dev fleet with 'syncfleet-controller dev' (it writes this file), pass --config PATH, or set SYNCFLEET_ADDR, SYNCFLEET_CACERT, SYNCFLEET_CERT and SYNCFLEET_KEY",
        path.display()
    )]
    NotFound { path: PathBuf },
    /// The config file exists but cannot be read.
    #[error("cannot read config file {}: {}", path.display(), io_message(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has the wrong shape at the top level.
    #[error("config file {} is not valid: {message}; fix it or pass another --config", path.display())]
    Parse { path: PathBuf, message: String },
    /// The file has no contexts at all.
    #[error(
        "config file {} has no contexts; add a [contexts.NAME] table or start a dev fleet with 'syncfleet-controller dev'",
        path.display()
    )]
    NoContexts { path: PathBuf },
    /// No `--context` and no `current_context`.
    #[error(
        "no context selected in {} (contexts: {}); pass --context NAME or set current_context = \"NAME\" in the file",
        path.display(), available.join(", ")
    )]
    NoCurrentContext {
        path: PathBuf,
        available: Vec<String>,
    },
    /// The named context does not exist.
    #[error(
        "no context \"{name}\" in {} (contexts: {}); pass --context {} or add [contexts.{name}]",
        path.display(), available.join(", "), suggestion(available)
    )]
    UnknownContext {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    /// A context exists but one of its settings is missing or wrong.
    #[error("context \"{name}\" in {} is invalid: {problem}", path.display())]
    InvalidContext {
        path: PathBuf,
        name: String,
        problem: String,
    },
    /// Some of the connection variables are set, not all (and the flags do not complete
    /// them).
    #[error(
        "{} set but {} not; set all four ({}) to connect without a config file, or unset {} to use the context of the config file",
        .set.join(", "),
        .missing.join(", "),
        CONNECTION_ENVS.join(", "),
        if .set.len() == 1 { "it" } else { "them" }
    )]
    PartialEnv {
        set: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
    /// `current-context` asked of a file that names none.
    #[error(
        "no current context in {} (contexts: {}); choose one with 'syncfleet config use-context NAME'",
        path.display(), if .available.is_empty() { "none".to_string() } else { .available.join(", ") }
    )]
    NoCurrent {
        path: PathBuf,
        available: Vec<String>,
    },
    /// Writing the file (or creating its folder) failed.
    #[error("cannot write config file {}: {}", path.display(), io_message(source))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn suggestion(available: &[String]) -> &str {
    available.first().map(String::as_str).unwrap_or("NAME")
}

/// The config file location when `--config` is not given: `$SYNCFLEET_CONFIG` when set and not
/// empty, else `<config dir>/syncfleet/config.toml` (`dirs::config_dir()`, i.e.
/// `~/.config/syncfleet/config.toml` on Linux). `None` only when there is no per-user config
/// folder at all.
pub fn default_config_path() -> Option<PathBuf> {
    config_path_from(std::env::var_os(CONFIG_ENV), dirs::config_dir())
}

/// Pure core of [`default_config_path`], separate so it is testable without touching the
/// process environment.
fn config_path_from(
    env: Option<std::ffi::OsString>,
    config_dir: Option<PathBuf>,
) -> Option<PathBuf> {
    match env {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => config_dir.map(|d| d.join("syncfleet").join("config.toml")),
    }
}

/// A loaded config file. Contexts stay as raw TOML until one is resolved, so one broken context
/// does not stop the operator from using another.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file this was read from; relative certificate paths are resolved against its folder.
    pub path: PathBuf,
    /// `current_context` from the file.
    pub current_context: Option<String>,
    contexts: BTreeMap<String, toml::Value>,
}

/// Top-level shape of the file as far as the CLI cares; other keys are ignored on read and kept
/// on write.
#[derive(Deserialize)]
struct FileModel {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, toml::Value>,
}

/// A context chosen for this invocation, with absolute certificate paths.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedContext {
    /// Context name.
    pub name: String,
    /// Config file it came from (for error messages).
    pub config_path: PathBuf,
    /// The settings, certificate paths made absolute.
    pub context: Context,
}

impl Context {
    /// The controllers to try, in order: `controllers`, or the single `controller`.
    pub fn urls(&self) -> Vec<String> {
        if self.controllers.is_empty() {
            vec![self.controller.clone()]
        } else {
            self.controllers.clone()
        }
    }
}

impl ConfigFile {
    /// Reads and parses `path`. A missing file is [`ConfigError::NotFound`] with a hint on how
    /// to get one.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let model: FileModel = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            current_context: model.current_context.filter(|c| !c.is_empty()),
            contexts: model.contexts,
        })
    }

    /// Context names, sorted.
    pub fn context_names(&self) -> Vec<String> {
        self.contexts.keys().cloned().collect()
    }

    /// Picks `name`, else `current_context`, validates it and makes its paths absolute.
    pub fn resolve(&self, name: Option<&str>) -> Result<ResolvedContext, ConfigError> {
        let available = self.context_names();
        if available.is_empty() {
            return Err(ConfigError::NoContexts {
                path: self.path.clone(),
            });
        }
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match &self.current_context {
                Some(c) => c.clone(),
                None if available.len() == 1 => {
                    // Exactly one context: there is nothing to choose, so use it rather than
                    // making the operator spell it out.
                    available[0].clone()
                }
                None => {
                    return Err(ConfigError::NoCurrentContext {
                        path: self.path.clone(),
                        available,
                    });
                }
            },
        };
        let Some(raw) = self.contexts.get(&name) else {
            return Err(ConfigError::UnknownContext {
                path: self.path.clone(),
                name,
                available,
            });
        };
        let invalid = |problem: String| ConfigError::InvalidContext {
            path: self.path.clone(),
            name: name.clone(),
            problem,
        };
        let mut ctx: Context = raw.clone().try_into().map_err(|e: toml::de::Error| {
            invalid(format!(
                "{}; a context needs controller, ca_cert, client_cert and client_key",
                one_line(e.message())
            ))
        })?;
        if ctx.controllers.is_empty() {
            validate_controller_url(&ctx.controller).map_err(invalid)?;
        } else {
            if !ctx.controller.is_empty() && ctx.controllers != [ctx.controller.clone()] {
                return Err(invalid(format!(
                    "both controller (\"{}\") and controllers ({:?}) are set; keep only one: controllers lists every controller, controller names a single one",
                    ctx.controller, ctx.controllers
                )));
            }
            for url in &ctx.controllers {
                validate_controller_url(url).map_err(invalid)?;
            }
            ctx.controller = ctx.controllers[0].clone();
        }
        if let Some(sni) = &ctx.tls_server_name
            && sni.trim().is_empty()
        {
            ctx.tls_server_name = None;
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        for (field, p) in [
            ("ca_cert", &mut ctx.ca_cert),
            ("client_cert", &mut ctx.client_cert),
            ("client_key", &mut ctx.client_key),
        ] {
            if p.as_os_str().is_empty() {
                return Err(invalid(format!(
                    "{field} is empty; set it to a PEM file path"
                )));
            }
            *p = absolutize(base, p);
        }
        Ok(ResolvedContext {
            name,
            config_path: self.path.clone(),
            context: ctx,
        })
    }
}

/// Loads the config file (`path`, else [`default_config_path`]) and resolves a context (`name`,
/// else `current_context`).
pub fn load_context(
    path: Option<&Path>,
    name: Option<&str>,
) -> Result<ResolvedContext, ConfigError> {
    ConfigFile::load(&config_path(path)?)?.resolve(name)
}

/// The config file to use: `path` (`--config`, which clap fills from `$SYNCFLEET_CONFIG`), else
/// [`default_config_path`].
pub fn config_path(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => default_config_path().ok_or(ConfigError::NoConfigPath),
    }
}

/// Connection settings given outside the config file: by flags (`--controller`, `--cacert`,
/// `--cert`, `--key`) or by the `SYNCFLEET_ADDR`/`_CACERT`/`_CERT`/`_KEY` variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// Controller URLs, the first that answers is used.
    pub controllers: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Connection {
    /// The connection variables of this process (empty values count as unset).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// [`Connection::from_env`] with `get` reading the variables, so it is testable without
    /// touching the process environment.
    pub fn from_vars(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        let path = |k: &str| get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        Self {
            controllers: get(ADDR_ENV)
                .map(|v| {
                    v.to_string_lossy()
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            ca_cert: path(CACERT_ENV),
            client_cert: path(CERT_ENV),
            client_key: path(KEY_ENV),
        }
    }

    /// Which of the four settings are given, in [`CONNECTION_ENVS`] order.
    fn given(&self) -> [bool; 4] {
        [
            !self.controllers.is_empty(),
            self.ca_cert.is_some(),
            self.client_cert.is_some(),
            self.client_key.is_some(),
        ]
    }

    /// `self`, with every setting `over` gives replacing this one's.
    fn overridden_by(&self, over: &Connection) -> Connection {
        Connection {
            controllers: if over.controllers.is_empty() {
                self.controllers.clone()
            } else {
                over.controllers.clone()
            },
            ca_cert: over.ca_cert.clone().or_else(|| self.ca_cert.clone()),
            client_cert: over
                .client_cert
                .clone()
                .or_else(|| self.client_cert.clone()),
            client_key: over.client_key.clone().or_else(|| self.client_key.clone()),
        }
    }
}

/// Resolves how to reach the controller, with the precedence flags > environment > context:
///
/// - When any of the four connection variables is set, all four must be (a flag may stand in
///   for a missing one), else [`ConfigError::PartialEnv`] names what is missing. They are used
///   without reading the config file.
/// - When no variable is set and the flags give all four settings, the config file is not read
///   either.
/// - Otherwise the context (`context`, else `current_context`) of the config file (`config`)
///   is used, each setting a flag gives replacing the context's.
///
/// Relative certificate paths from flags or variables are taken from the current folder.
pub fn resolve_connection(
    config: Option<&Path>,
    context: Option<&str>,
    flags: &Connection,
    env: &Connection,
) -> Result<ResolvedContext, ConfigError> {
    let env_given = env.given();
    let merged = env.overridden_by(flags);
    let origin = PathBuf::from(format!(
        "the {} variables and flags",
        CONNECTION_ENVS.join("/")
    ));
    let invalid = |path: &Path, name: &str, problem: String| ConfigError::InvalidContext {
        path: path.to_path_buf(),
        name: name.to_string(),
        problem,
    };
    let check_urls = |urls: &[String], path: &Path, name: &str| {
        urls.iter()
            .try_for_each(|u| validate_controller_url(u).map_err(|p| invalid(path, name, p)))
    };
    if env_given.contains(&true) || !merged.given().contains(&false) {
        let merged_given = merged.given();
        if merged_given.contains(&false) {
            let pick = |want: bool, given: [bool; 4]| {
                CONNECTION_ENVS
                    .iter()
                    .zip(given)
                    .filter(|(_, g)| *g == want)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
            };
            return Err(ConfigError::PartialEnv {
                set: pick(true, env_given),
                missing: pick(false, merged_given),
            });
        }
        check_urls(&merged.controllers, &origin, ENV_CONTEXT)?;
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let abs = |p: Option<PathBuf>| absolutize(&base, &p.unwrap_or_default());
        return Ok(ResolvedContext {
            name: ENV_CONTEXT.to_string(),
            config_path: origin,
            context: Context {
                controller: merged.controllers[0].clone(),
                // One URL is a single controller, as a context file would say it.
                controllers: if merged.controllers.len() > 1 {
                    merged.controllers.clone()
                } else {
                    Vec::new()
                },
                ca_cert: abs(merged.ca_cert),
                client_cert: abs(merged.client_cert),
                client_key: abs(merged.client_key),
                tls_server_name: None,
            },
        });
    }
    let mut rc = load_context(config, context)?;
    if !flags.controllers.is_empty() {
        let name = format!("{} (--controller)", rc.name);
        check_urls(&flags.controllers, &rc.config_path, &name)?;
        rc.context.controller = flags.controllers[0].clone();
        rc.context.controllers = flags.controllers.clone();
    }
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for (flag, field) in [
        (&flags.ca_cert, &mut rc.context.ca_cert),
        (&flags.client_cert, &mut rc.context.client_cert),
        (&flags.client_key, &mut rc.context.client_key),
    ] {
        if let Some(p) = flag {
            *field = absolutize(&base, p);
        }
    }
    Ok(rc)
}

/// One context of the config file as `config get-contexts` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSummary {
    pub name: String,
    /// It is the file's `current_context`.
    pub current: bool,
    /// Its settings, paths made absolute; `None` when the context is invalid.
    pub context: Option<Context>,
    /// Why the context cannot be used, when it cannot.
    pub problem: Option<String>,
}

impl ConfigFile {
    /// Every context, sorted by name, each resolved on its own so one broken context does not
    /// hide the others.
    pub fn summaries(&self) -> Vec<ContextSummary> {
        self.context_names()
            .into_iter()
            .map(|name| {
                let current = self.current_context.as_deref() == Some(name.as_str());
                match self.resolve(Some(&name)) {
                    Ok(rc) => ContextSummary {
                        name,
                        current,
                        context: Some(rc.context),
                        problem: None,
                    },
                    Err(e) => ContextSummary {
                        name,
                        current,
                        context: None,
                        problem: Some(e.to_string()),
                    },
                }
            })
            .collect()
    }

    /// The file's `current_context`, or [`ConfigError::NoCurrent`] naming the contexts to
    /// choose from.
    pub fn current(&self) -> Result<&str, ConfigError> {
        self.current_context
            .as_deref()
            .ok_or_else(|| ConfigError::NoCurrent {
                path: self.path.clone(),
                available: self.context_names(),
            })
    }
}

/// Makes `name` the `current_context` of the config file at `path`, which must hold a context
/// of that name ([`ConfigError::UnknownContext`] lists the ones it has). Everything else in the
/// file is kept; it is written like [`upsert_context`] writes.
pub fn use_context(path: &Path, name: &str) -> Result<(), ConfigError> {
    let file = ConfigFile::load(path)?;
    let available = file.context_names();
    if available.is_empty() {
        return Err(ConfigError::NoContexts {
            path: path.to_path_buf(),
        });
    }
    if !available.iter().any(|n| n == name) {
        return Err(ConfigError::UnknownContext {
            path: path.to_path_buf(),
            name: name.to_string(),
            available,
        });
    }
    let mut doc = read_doc(path)?;
    doc.insert(
        "current_context".to_string(),
        toml::Value::String(name.to_string()),
    );
    write_doc(path, &doc)
}

/// Checks that `url` is an `https://HOST[:PORT]` URL; the error text says how to fix it.
pub(crate) fn validate_controller_url(url: &str) -> Result<(), String> {
    let fix = "set controller = \"https://HOST:PORT\"";
    if url.trim().is_empty() {
        return Err(format!("controller is empty; {fix}"));
    }
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("controller \"{url}\" is not a URL ({e}); {fix}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(format!(
                "controller \"{url}\" uses {other}://, but syncfleet only talks mTLS; {fix}"
            ));
        }
        None => {
            return Err(format!(
                "controller \"{url}\" has no https:// scheme; {fix}"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("controller \"{url}\" has no host; {fix}"));
    }
    Ok(())
}

/// `~/x` → home/x; relative → `base`/x; absolute unchanged.
fn absolutize(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Adds or replaces context `name` in the config file at `path`, creating the file and its
/// parent folders when needed. Other contexts, other top-level keys and unknown keys inside the
/// replaced context are kept (comments are not: the file is re-serialized). With `make_current`
/// the file's `current_context` becomes `name`. The file is written to a temporary file in the
/// same folder and renamed over the old one, and is private to its owner (0600 on unix).
pub fn upsert_context(
    path: &Path,
    name: &str,
    ctx: &Context,
    make_current: bool,
) -> Result<(), ConfigError> {
    let mut doc = read_doc(path)?;

    let new_ctx = match toml::Value::try_from(ctx) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) => toml::Table::new(),
        Err(e) => {
            return Err(ConfigError::InvalidContext {
                path: path.to_path_buf(),
                name: name.to_string(),
                problem: e.to_string(),
            });
        }
    };
    let contexts = doc
        .entry("contexts")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(contexts) = contexts else {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: "`contexts` is not a table (refusing to overwrite it; fix or remove the file)"
                .to_string(),
        });
    };
    let entry = contexts
        .entry(name.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(existing) => {
            // Known fields are replaced (an absent tls_server_name removes the old one); keys the
            // CLI does not know about stay.
            existing.remove("tls_server_name");
            existing.extend(new_ctx);
        }
        other => *other = toml::Value::Table(new_ctx),
    }
    if make_current {
        doc.insert(
            "current_context".to_string(),
            toml::Value::String(name.to_string()),
        );
    }
    write_doc(path, &doc)
}

/// The config file at `path` as a TOML table (empty when it does not exist); a file that is
/// not valid TOML is refused rather than overwritten.
fn read_doc(path: &Path) -> Result<toml::Table, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} (refusing to overwrite it; fix or remove the file)",
                one_line(&e.to_string())
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `doc` to `path` through a temporary file in the same folder and a rename, private to
/// its owner (0600 on unix).
fn write_doc(path: &Path, doc: &toml::Table) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = toml::to_string(doc).map_err(|e| ConfigError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    // tempfile creates the file 0600 on unix; set it explicitly anyway so the contract does not
    // depend on that crate's default.
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    tmp.write_all(text.as_bytes()).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// An I/O error's text without the trailing "(os error N)".
pub fn io_message(e: &std::io::Error) -> String {
    strip_os_error(&e.to_string())
}

/// `s` without a trailing " (os error N)", which only repeats the message as a number.
pub(crate) fn strip_os_error(s: &str) -> String {
    match s.find(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s.to_string(),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    const TWO: &str = r#"
current_context = "dev"
[contexts.dev]
controller = "https://127.0.0.1:7443"
ca_cert = "/abs/ca.pem"
client_cert = "certs/operator.pem"
client_key = "./certs/operator.key"

[contexts.prod]
controller = "https://fleet.example.com:7443"
ca_cert = "/p/ca.pem"
client_cert = "/p/op.pem"
client_key = "/p/op.key"
tls_server_name = "syncfleet-controller"
"#;

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("/home/x/.config/syncfleet/config.toml"), text).unwrap()
    }

    #[test]
    fn default_path_prefers_env_then_config_dir() {
        assert_eq!(
            config_path_from(Some("/e/c.toml".into()), Some("/home/x/.config".into())),
            Some(PathBuf::from("/e/c.toml"))
        );
        assert_eq!(
            config_path_from(Some("".into()), Some("/home/x/.config".into())),
            Some(PathBuf::from("/home/x/.config/syncfleet/config.toml"))
        );
        assert_eq!(config_path_from(None, None), None);
    }

    #[test]
    fn resolves_current_context_by_default() {
        let r = file(TWO).resolve(None).unwrap();
        assert_eq!(r.name, "dev");
        assert_eq!(r.context.controller, "https://127.0.0.1:7443");
        assert_eq!(r.context.tls_server_name, None);
    }

    #[test]
    fn explicit_context_wins() {
        let r = file(TWO).resolve(Some("prod")).unwrap();
        assert_eq!(r.name, "prod");
        assert_eq!(
            r.context.tls_server_name.as_deref(),
            Some("syncfleet-controller")
        );
        assert_eq!(r.context.client_key, PathBuf::from("/p/op.key"));
    }

    #[test]
    fn relative_paths_resolve_against_config_folder() {
        let r = file(TWO).resolve(Some("dev")).unwrap();
        assert_eq!(r.context.ca_cert, PathBuf::from("/abs/ca.pem"));
        assert_eq!(
            r.context.client_cert,
            PathBuf::from("/home/x/.config/syncfleet/certs/operator.pem")
        );
        assert_eq!(
            r.context.client_key,
            PathBuf::from("/home/x/.config/syncfleet/./certs/operator.key")
        );
    }

    #[test]
    fn missing_context_error_names_file_contexts_and_fix() {
        let f = file(&TWO.replace("[contexts.prod]", "[contexts.staging]"));
        let err = f.resolve(Some("prod")).unwrap_err().to_string();
        assert_eq!(
            err,
            "no context \"prod\" in /home/x/.config/syncfleet/config.toml (contexts: dev, staging); \
             pass --context dev or add [contexts.prod]"
        );
    }

    #[test]
    fn current_context_pointing_nowhere_is_reported() {
        let f = file(&TWO.replace("current_context = \"dev\"", "current_context = \"gone\""));
        let err = f.resolve(None).unwrap_err().to_string();
        assert!(err.starts_with("no context \"gone\" in /home/x/"), "{err}");
    }

    #[test]
    fn no_current_context_with_several_contexts_asks_for_one() {
        let f = file(&TWO.replace("current_context = \"dev\"", ""));
        let err = f.resolve(None).unwrap_err().to_string();
        assert!(err.contains("pass --context NAME"), "{err}");
        assert!(err.contains("(contexts: dev, prod)"), "{err}");
    }

    #[test]
    fn single_context_is_used_without_current_context() {
        let text = TWO.replace("current_context = \"dev\"", "");
        let text = &text[..text.find("[contexts.prod]").unwrap()];
        assert_eq!(file(text).resolve(None).unwrap().name, "dev");
    }

    #[test]
    fn several_controllers_are_kept_in_order_and_both_keys_are_refused() {
        let list = TWO.replace(
            "controller = \"https://127.0.0.1:7443\"",
            "controllers = [\"https://a:7443\", \"https://b:7443\"]",
        );
        let r = file(&list).resolve(None).unwrap();
        assert_eq!(r.context.urls(), ["https://a:7443", "https://b:7443"]);
        assert_eq!(r.context.controller, "https://a:7443");
        let both = TWO.replace(
            "controller = \"https://127.0.0.1:7443\"",
            "controller = \"https://127.0.0.1:7443\"\ncontrollers = [\"https://a:7443\"]",
        );
        let err = file(&both).resolve(None).unwrap_err().to_string();
        assert!(
            err.contains("both controller (\"https://127.0.0.1:7443\") and controllers"),
            "{err}"
        );
        let bad = TWO.replace(
            "controller = \"https://127.0.0.1:7443\"",
            "controllers = [\"https://a:7443\", \"http://b:7443\"]",
        );
        let err = file(&bad).resolve(None).unwrap_err().to_string();
        assert!(err.contains("http://b:7443"), "{err}");
    }

    #[test]
    fn http_controller_is_rejected_with_a_fix() {
        let f = file(&TWO.replace("https://127.0.0.1:7443", "http://127.0.0.1:7443"));
        let err = f.resolve(None).unwrap_err().to_string();
        assert!(err.starts_with("context \"dev\" in /home/x/"), "{err}");
        assert!(
            err.contains("set controller = \"https://HOST:PORT\""),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_reported_per_context() {
        let f = file(&TWO.replace("ca_cert = \"/abs/ca.pem\"", ""));
        let err = f.resolve(Some("dev")).unwrap_err().to_string();
        assert!(err.contains("context \"dev\""), "{err}");
        assert!(err.contains("ca_cert"), "{err}");
        // The other context still works.
        assert!(f.resolve(Some("prod")).is_ok());
    }

    #[test]
    fn missing_file_error_has_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.toml");
        let err = ConfigFile::load(&p).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config file {} not found; start a dev fleet with 'syncfleet-controller dev' \
                 (it writes this file), pass --config PATH, or set SYNCFLEET_ADDR, \
                 SYNCFLEET_CACERT, SYNCFLEET_CERT and SYNCFLEET_KEY",
                p.display()
            )
        );
    }

    fn ctx(url: &str) -> Context {
        Context {
            controller: url.to_string(),
            controllers: Vec::new(),
            ca_cert: "/d/ca.pem".into(),
            client_cert: "/d/op.pem".into(),
            client_key: "/d/op.key".into(),
            tls_server_name: None,
        }
    }

    #[test]
    fn upsert_creates_file_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/config.toml");
        upsert_context(&p, "dev", &ctx("https://127.0.0.1:7443"), true).unwrap();
        let r = ConfigFile::load(&p).unwrap().resolve(None).unwrap();
        assert_eq!(r.name, "dev");
        assert_eq!(r.context, ctx("https://127.0.0.1:7443"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn upsert_keeps_other_contexts_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        let original =
            format!("{TWO}\n[contexts.prod.extra]\nnote = \"keep me\"\n\n[plugins]\nfoo = 1\n");
        let original = original.replace(
            "current_context = \"dev\"",
            "current_context = \"dev\"\nowner = \"ops\"",
        );
        std::fs::write(&p, original).unwrap();

        let mut new_prod = ctx("https://new.example.com:7443");
        new_prod.tls_server_name = None;
        upsert_context(&p, "prod", &new_prod, false).unwrap();

        let text = std::fs::read_to_string(&p).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["owner"].as_str(), Some("ops"));
        assert_eq!(doc["plugins"]["foo"].as_integer(), Some(1));
        assert_eq!(doc["current_context"].as_str(), Some("dev"));
        assert_eq!(
            doc["contexts"]["prod"]["extra"]["note"].as_str(),
            Some("keep me")
        );
        // tls_server_name was dropped because the new context has none.
        assert!(doc["contexts"]["prod"].get("tls_server_name").is_none());

        let f = ConfigFile::load(&p).unwrap();
        assert_eq!(f.resolve(Some("prod")).unwrap().context, new_prod);
        // dev untouched.
        let dev = f.resolve(Some("dev")).unwrap();
        assert_eq!(dev.context.controller, "https://127.0.0.1:7443");
        assert_eq!(
            dev.context.client_cert,
            dir.path().join("certs/operator.pem")
        );

        upsert_context(&p, "prod", &new_prod, true).unwrap();
        assert_eq!(
            ConfigFile::load(&p).unwrap().resolve(None).unwrap().name,
            "prod"
        );
    }

    #[test]
    fn upsert_refuses_to_clobber_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "this is = = not toml").unwrap();
        let err = upsert_context(&p, "dev", &ctx("https://h:1"), true).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "this is = = not toml");
    }

    fn env(vars: &[(&str, &str)]) -> Connection {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Connection::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
    }

    #[test]
    fn a_partial_environment_names_what_is_missing() {
        let e = env(&[(ADDR_ENV, "https://h:7443"), (CERT_ENV, "/c.pem")]);
        let err = resolve_connection(
            Some(Path::new("/none.toml")),
            None,
            &Connection::default(),
            &e,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "SYNCFLEET_ADDR, SYNCFLEET_CERT set but SYNCFLEET_CACERT, SYNCFLEET_KEY not; set all four (SYNCFLEET_ADDR, SYNCFLEET_CACERT, SYNCFLEET_CERT, SYNCFLEET_KEY) to connect without a config file, or unset them to use the context of the config file"
        );
        // A flag completes the set.
        let flags = Connection {
            ca_cert: Some("/ca.pem".into()),
            client_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let rc = resolve_connection(Some(Path::new("/none.toml")), None, &flags, &e).unwrap();
        assert_eq!(rc.name, ENV_CONTEXT);
        assert_eq!(rc.context.controller, "https://h:7443");
        assert_eq!(rc.context.ca_cert, PathBuf::from("/ca.pem"));
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, TWO).unwrap();
        let none = Connection::default();
        // No variables: the context, with single settings replaced by flags.
        let flags = Connection {
            client_cert: Some("/flag.pem".into()),
            ..Default::default()
        };
        let rc = resolve_connection(Some(&p), None, &flags, &none).unwrap();
        assert_eq!(rc.name, "dev");
        assert_eq!(rc.context.client_cert, PathBuf::from("/flag.pem"));
        assert_eq!(rc.context.ca_cert, PathBuf::from("/abs/ca.pem"));
        // All four variables: the config file is not read (it may not exist).
        let e = env(&[
            (ADDR_ENV, "https://a:1, https://b:2"),
            (CACERT_ENV, "/e/ca.pem"),
            (CERT_ENV, "/e/op.pem"),
            (KEY_ENV, "/e/op.key"),
        ]);
        let rc = resolve_connection(Some(&dir.path().join("none.toml")), None, &flags, &e).unwrap();
        assert_eq!(rc.context.urls(), ["https://a:1", "https://b:2"]);
        assert_eq!(rc.context.ca_cert, PathBuf::from("/e/ca.pem"));
        assert_eq!(rc.context.client_cert, PathBuf::from("/flag.pem"));
        // A bad URL in the variable is named.
        let bad = env(&[
            (ADDR_ENV, "http://a:1"),
            (CACERT_ENV, "/e/ca.pem"),
            (CERT_ENV, "/e/op.pem"),
            (KEY_ENV, "/e/op.key"),
        ]);
        let err = resolve_connection(Some(&p), None, &none, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http://a:1") && err.contains("SYNCFLEET_ADDR"),
            "{err}"
        );
    }

    #[test]
    fn use_context_switches_and_names_the_contexts_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, format!("{TWO}\n[plugins]\nfoo = 1\n")).unwrap();
        use_context(&p, "prod").unwrap();
        let f = ConfigFile::load(&p).unwrap();
        assert_eq!(f.current().unwrap(), "prod");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("foo = 1"), "{text}");
        let err = use_context(&p, "staging").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "no context \"staging\" in {} (contexts: dev, prod); pass --context dev or add [contexts.staging]",
                p.display()
            )
        );
        let summaries = f.summaries();
        assert_eq!(summaries.len(), 2);
        assert!(summaries[1].current && !summaries[0].current);
        let broken = file(&TWO.replace("ca_cert = \"/abs/ca.pem\"", ""));
        let s = broken.summaries();
        assert!(s[0].context.is_none() && s[0].problem.is_some());
        assert!(s[1].context.is_some());
        let none = file(&TWO.replace("current_context = \"dev\"", ""));
        assert!(
            none.current()
                .unwrap_err()
                .to_string()
                .contains("use-context NAME")
        );
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(
            strip_os_error("No route to host (os error 113)"),
            "No route to host"
        );
        assert_eq!(strip_os_error("plain"), "plain");
    }
}
