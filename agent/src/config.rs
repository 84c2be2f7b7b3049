//! Agent configuration: the settings of `syncfleet-agent run` and `enroll`, read from a TOML
//! file < `SYNCFLEET_AGENT_*` environment < flags by the layering both daemons share
//! ([`syncfleet_proto::config_layers`], scheme `AGENT_ENV`): every key `k` is
//! `SYNCFLEET_AGENT_K` (`name` → `SYNCFLEET_AGENT_NAME`), nested keys joined by `__`
//! (`executor.watchdog` → `SYNCFLEET_AGENT_EXECUTOR__WATCHDOG`, `labels.site` →
//! `SYNCFLEET_AGENT_LABELS__SITE`). [`AgentConfig::validate`] names the key and the fix for every
//! problem; the binary exits with code 64 on it before any connection is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use syncfleet_proto::config_layers::ConfigError;
use syncfleet_proto::names::valid_name;

use crate::engine::sim::SimConfig;
use crate::executor::ExecutorOptions;

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
        /// Clear the simulated run history older than this ([`crate::housekeeping`]).
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        clear_runs_older_than: Option<Duration>,
        /// How often to clear it (default 1 h).
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        clear_runs_every: Option<Duration>,
    },
    /// The real engine through WMI (Windows only); the section's other keys are the driver's
    /// settings (poll intervals, run profile declarations).
    MimWmi(crate::engine::wmi::WmiConfig),
    /// Entra Connect Sync / Azure AD Connect through the ADSync PowerShell module; the section's
    /// other keys are the driver's settings (PowerShell path, timeouts).
    Adsync(crate::engine::adsync::AdsyncConfig),
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::Sim {
            server: 0,
            time_scale: None,
            sim: None,
            sim_file: None,
            clear_runs_older_than: None,
            clear_runs_every: None,
        }
    }
}

/// How often run history is cleared when `engine.clear_runs_every` is not set.
pub const DEFAULT_CLEAR_RUNS_EVERY: Duration = Duration::from_secs(3600);

impl EngineConfig {
    /// `engine.clear_runs_older_than` (`None`: off, the default) and how often to clear
    /// (`engine.clear_runs_every`), for [`crate::housekeeping`].
    pub fn clear_runs(&self) -> (Option<Duration>, Duration) {
        let (older, every) = match self {
            EngineConfig::Sim {
                clear_runs_older_than,
                clear_runs_every,
                ..
            } => (*clear_runs_older_than, *clear_runs_every),
            EngineConfig::MimWmi(w) => (w.clear_runs_older_than, w.clear_runs_every),
            EngineConfig::Adsync(_) => (None, None),
        };
        (
            older.filter(|d| !d.is_zero()),
            every.unwrap_or(DEFAULT_CLEAR_RUNS_EVERY),
        )
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
    /// Several controllers sharing one store (`https://host:port` each), instead of
    /// `controller`: the agent connects to the leader, following a follower's pointer to it,
    /// else trying them in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
    /// Folder for the journal (`agent.db`) and, by default, the TLS files. Default
    /// `%ProgramData%\syncfleet\agent` on Windows, `syncfleet-agent-data` (relative to the
    /// working directory) elsewhere ([`crate::paths`]).
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
    /// How long the session must have been down before the agent fires the controller's
    /// schedules itself (agent autonomy); `0s` turns autonomy off. Default: twice the
    /// session's heartbeat (keep-alive) timeout, 40 s.
    #[serde(with = "humantime_serde")]
    pub autonomy_after: Duration,
    /// Credentials the change sources of schedules (`trigger.on_change`) name
    /// (`[credentials.NAME]`). Schedules carry only the name: secrets stay on the agent, read
    /// from their files when a poller starts, never logged and never sent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, Credential>,
}

/// One `[credentials.NAME]` section: what a change source uses to authenticate. Which keys
/// count depends on the source: LDAP binds with `username` (a DN) + `password_file`, or with
/// `client_cert` + `client_key` (SASL EXTERNAL); SQL uses `username` + `password_file`; HTTP
/// sends `token_file` as a bearer token, else `username` + `password_file` as basic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Credential {
    /// Bind DN, SQL user or HTTP basic user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (trailing line breaks are ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding an HTTP bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) for LDAP SASL EXTERNAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted for LDAPS, StartTLS and HTTPS besides the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            controller: String::new(),
            controllers: Vec::new(),
            data_dir: crate::paths::default_data_dir(),
            labels: BTreeMap::new(),
            tls: TlsFiles::default(),
            engine: EngineConfig::default(),
            reconnect_max_backoff: Duration::from_secs(30),
            executor: ExecutorOptions::default(),
            autonomy_after: crate::identity::channel::KEEP_ALIVE_TIMEOUT * 2,
            credentials: BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// The controllers to try, in order: `controllers`, or the single `controller`.
    pub fn controller_urls(&self) -> Vec<String> {
        if self.controllers.is_empty() {
            vec![self.controller.clone()]
        } else {
            self.controllers.clone()
        }
    }

    /// Check the settings; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::Invalid {
                key: "name",
                problem: format!("{:?} is not a valid agent name", self.name),
                fix: "set `name` (or --name / SYNCFLEET_AGENT_NAME) to 1-63 characters from a-z, A-Z, 0-9, '.', '_', '-'".into(),
            });
        }
        let is_https = |url: &str| url.starts_with("https://") && url.len() > "https://".len();
        if self.controllers.is_empty() {
            if !is_https(&self.controller) {
                return Err(ConfigError::Invalid {
                    key: "controller",
                    problem: format!("{:?} is not an https URL", self.controller),
                    fix: "set `controller` (or --controller / SYNCFLEET_AGENT_CONTROLLER) to the controller's gRPC address, e.g. https://controller.example.com:7443, or `controllers` to several".into(),
                });
            }
        } else {
            if !self.controller.is_empty() && self.controllers != [self.controller.clone()] {
                return Err(ConfigError::Invalid {
                    key: "controllers",
                    problem: format!(
                        "both `controller` ({:?}) and `controllers` ({:?}) are set",
                        self.controller, self.controllers
                    ),
                    fix: "set only one of them: `controllers` lists every controller, `controller` names a single one".into(),
                });
            }
            if let Some(bad) = self.controllers.iter().find(|u| !is_https(u)) {
                return Err(ConfigError::Invalid {
                    key: "controllers",
                    problem: format!("{bad:?} is not an https URL"),
                    fix: "list the controllers' gRPC addresses, e.g. [\"https://controller-1.example.com:7443\", \"https://controller-2.example.com:7443\"]".into(),
                });
            }
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
        let (_, every) = self.engine.clear_runs();
        if every < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "engine.clear_runs_every",
                problem: format!("{every:?} would call ClearRuns continuously"),
                fix: "use at least 1s (default 1h)".into(),
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
        if let EngineConfig::Adsync(a) = &self.engine
            && let Err(problem) = a.validate()
        {
            return Err(ConfigError::Invalid {
                key: "engine",
                problem,
                fix: "correct the [engine] setting named above (docs/engine.md, \"Entra Connect Sync (ADSync)\")".into(),
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
    use syncfleet_proto::config_layers::{AGENT_KEYS, load_toml, top_level_keys};

    #[test]
    fn credentials_sections_parse_and_a_misspelt_key_is_refused() {
        let cfg: AgentConfig = toml::from_str(
            r#"
            name = "sync-01"
            [credentials.corp-ldap]
            username = "CN=svc,DC=corp"
            password_file = "/etc/syncfleet/corp-ldap.pw"
            ca_file = "/etc/syncfleet/ca.pem"
            [credentials.graph]
            token_file = "/etc/syncfleet/graph.token"
            "#,
        )
        .unwrap();
        let ldap = &cfg.credentials["corp-ldap"];
        assert_eq!(ldap.username.as_deref(), Some("CN=svc,DC=corp"));
        assert_eq!(
            ldap.password_file.as_deref(),
            Some(std::path::Path::new("/etc/syncfleet/corp-ldap.pw"))
        );
        assert!(cfg.credentials["graph"].token_file.is_some());
        let err = toml::from_str::<AgentConfig>(
            "[credentials.x]\npassword = \"inline secrets are not accepted\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `password`"), "{err}");
    }

    /// The controller leaves `SYNCFLEET_AGENT_<KEY>` of these keys to the agent: the shared list
    /// must follow this struct.
    #[test]
    fn the_shared_list_knows_every_agent_key() {
        let mut keys = top_level_keys::<AgentConfig>().to_vec();
        let mut listed = AGENT_KEYS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert!(!keys.is_empty());
        assert_eq!(
            keys, listed,
            "update syncfleet_proto::config_layers::AGENT_KEYS"
        );
    }

    #[test]
    fn a_controllers_list_replaces_controller_and_both_are_refused() {
        let mut c = AgentConfig {
            name: "sync-01".into(),
            controllers: vec!["https://a:7443".into(), "https://b:7443".into()],
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(c.controller_urls(), ["https://a:7443", "https://b:7443"]);
        c.controller = "https://c:7443".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`controllers`"), "{err}");
        assert!(
            err.contains("both `controller` (\"https://c:7443\") and `controllers`"),
            "{err}"
        );
        c.controller.clear();
        c.controllers.push("http://d:1".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("\"http://d:1\" is not an https URL"), "{err}");
        let single = AgentConfig {
            name: "sync-01".into(),
            controller: "https://a:7443".into(),
            ..Default::default()
        };
        assert_eq!(single.controller_urls(), ["https://a:7443"]);
    }

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
                clear_runs_older_than: None,
                clear_runs_every: None,
            }
        );
        let back: AgentConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
