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
        "config file {} not found; start a dev fleet with 'syncfleet-controller dev' (it writes this file) or pass --config PATH",
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
/// else `current_context`): what every CLI command does first.
pub fn load_context(
    path: Option<&Path>,
    name: Option<&str>,
) -> Result<ResolvedContext, ConfigError> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_config_path().ok_or(ConfigError::NoConfigPath)?,
    };
    ConfigFile::load(&path)?.resolve(name)
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
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut doc: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} (refusing to overwrite it; fix or remove the file)",
                one_line(&e.to_string())
            ),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };

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
    let text = toml::to_string(&doc).map_err(|e| ConfigError::Write {
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
                 (it writes this file) or pass --config PATH",
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

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(
            strip_os_error("No route to host (os error 113)"),
            "No route to host"
        );
        assert_eq!(strip_os_error("plain"), "plain");
    }
}
