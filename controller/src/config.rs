//! Controller configuration: TOML file < `SYNCFLEET_*` environment < flags, read by the layering
//! both daemons share ([`Layers`], from [`syncfleet_proto::config_layers`]) with
//! [`CONTROLLER_ENV`]: every key `k` is
//! `SYNCFLEET_K` (`agent_lost_after` → `SYNCFLEET_AGENT_LOST_AFTER`), nested keys joined by `__`
//! (`tls.cert` → `SYNCFLEET_TLS__CERT`). [`ControllerConfig::validate`] names the key and the
//! fix for every problem; the binary exits with code 64 on it before binding any port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
// The controller's variables are `SYNCFLEET_<KEY>` (`CONTROLLER_ENV`); the agent's
// (`SYNCFLEET_AGENT_<KEY>` of an agent key) are left alone, so one environment can hold both
// daemons' settings.
pub use syncfleet_proto::config_layers::{
    CONTROLLER_ENV, ConfigError, EXIT_CONFIG, EnvScheme, Layers, load_toml, process_env,
};
use syncfleet_proto::names::valid_name;

/// TLS files of the controller. Defaults live under `<data_dir>/pki/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// CA certificate every client certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// The controller's server certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// How long the store keeps what grows without bound (`retention.*`); `0s` keeps a kind
/// forever. The leader deletes older rows in batches (`crate::retention`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Ended runs (not held ones) with their steps, by creation time. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub runs: Duration,
    /// The agents' events as stored on arrival, by event time. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub events: Duration,
    /// Audit entries. Default 400 days.
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
    /// How often the leader prunes (the first pass is about a second after it becomes
    /// leader). Default 1 hour.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most rows deleted in one transaction. Default 500.
    pub batch: usize,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            runs: Duration::from_secs(90 * DAY),
            events: Duration::from_secs(30 * DAY),
            audit: Duration::from_secs(400 * DAY),
            interval: Duration::from_secs(3600),
            batch: 500,
        }
    }
}

/// What `/metrics` exposes (`metrics.*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Add the `agent` label to the fleet-wide run and step families
    /// (`syncfleet_runs_total`, `syncfleet_step_duration_seconds`,
    /// `syncfleet_step_objects_total`) and the run profile to
    /// `syncfleet_last_success_timestamp_seconds`. Default false: those families grow with
    /// distinct sequences, MAs and run profiles, not with agents, and each agent has a bounded
    /// number of series (`crate::metrics`). On, each agent costs about 17 more series per MA ×
    /// run profile it runs, 9 per MA and 7 per sequence: ~170 more per agent with 4 MAs of 2
    /// run profiles and one sequence, ~1.7 M series at 10,000 agents.
    pub per_agent_detail: bool,
}

/// The web console (`console.*`): its own HTTPS listener with the controller's certificate
/// (`crate::console`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve the console. Default true.
    pub enabled: bool,
    /// HTTPS listen address. Default `0.0.0.0:7444`.
    pub listen: SocketAddr,
    /// The base URL browsers use (`https://HOST:PORT`), printed in sign-in links and the
    /// console's own origin for the CSRF check. Unset: `https://` + the first of
    /// `server_names` (else `localhost`) + the port bound for `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long a browser session lasts after sign-in. Default 1 hour (1m..24h).
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Link of a run's trace in a trace UI: a URL containing `{trace_id}`, e.g.
    /// `http://jaeger:16686/trace/{trace_id}`. Unset: trace ids are shown without a link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
    /// Most live-update streams (`/api/events`) open at once; more are answered 503.
    pub max_event_streams: u32,
    /// Most console connections open at once; further ones are closed at once.
    pub max_connections: u32,
    /// When `listen` is taken, bind an ephemeral port instead of failing (`dev`, whose default
    /// port may be used by another dev fleet). Not a configuration key.
    #[serde(skip)]
    pub ephemeral_if_taken: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 7444)),
            url: None,
            session_lifetime: Duration::from_secs(3600),
            trace_url: None,
            max_event_streams: 64,
            max_connections: 256,
            ephemeral_if_taken: false,
        }
    }
}

impl ConsoleSettings {
    /// Check the console's keys; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_lifetime < Duration::from_secs(60)
            || self.session_lifetime > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::Invalid {
                key: "console.session_lifetime",
                problem: format!(
                    "{} is outside 1m..24h",
                    humantime::format_duration(self.session_lifetime)
                ),
                fix: "use e.g. \"1h\" (the default); a console session is a bearer credential, keep it short".into(),
            });
        }
        if let Some(url) = &self.url {
            check_console_url(url).map_err(|problem| ConfigError::Invalid {
                key: "console.url",
                problem,
                fix: "set the base URL browsers use, e.g. https://controller.example.com:7444 (no path); its host must be one of the certificate's names".into(),
            })?;
        }
        if let Some(t) = &self.trace_url {
            let scheme_ok = t.starts_with("http://") || t.starts_with("https://");
            if !scheme_ok || !t.contains("{trace_id}") {
                return Err(ConfigError::Invalid {
                    key: "console.trace_url",
                    problem: format!("{t:?} is not an http(s) URL containing {{trace_id}}"),
                    fix: "use e.g. http://jaeger:16686/trace/{trace_id}, or leave it unset".into(),
                });
            }
        }
        for (key, value, default) in [
            ("console.max_event_streams", self.max_event_streams, 64),
            ("console.max_connections", self.max_connections, 256),
        ] {
            if !(1..=100_000).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("{value} is outside 1..=100000"),
                    fix: format!("use e.g. {default} (the default)"),
                });
            }
        }
        Ok(())
    }
}

/// Why `url` cannot be the console's base URL: it must be `https://HOST[:PORT]` with nothing
/// after it but an optional `/`.
pub fn check_console_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!("{url:?} does not start with https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{url:?} has a path, query or user part"));
    }
    Ok(())
}

/// Where the controller keeps its state: the `store` setting, parsed
/// ([`ControllerConfig::store_location`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite database file (the default: `<data_dir>/controller.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL), which several controllers
    /// can share.
    Postgres(String),
}

/// The forms `store` accepts, for error messages.
const STORE_FORMS: &str = "use sqlite:PATH (e.g. sqlite:/var/lib/syncfleet/controller.db) or a PostgreSQL URL postgres://USER:PASSWORD@HOST:5432/DATABASE (postgresql:// also works); leave it unset for <data_dir>/controller.db";

/// Settings of `syncfleet-controller serve` (and the controller half of `dev`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Folder for the store (`controller.db`) and the PKI (`pki/`).
    pub data_dir: PathBuf,
    /// Where runs, schedules and the audit log are kept: `sqlite:PATH`, or a `postgres://` /
    /// `postgresql://` URL. Unset: `<data_dir>/controller.db`. With PostgreSQL the data
    /// directory still holds the PKI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Fleet name; part of every identity (`spiffe://<fleet>/agent/<name>`).
    pub fleet: String,
    /// gRPC (TLS) listen address for agents and operators.
    pub grpc_listen: SocketAddr,
    /// Plain HTTP listen address for `/healthz` and `/readyz`.
    pub http_listen: SocketAddr,
    /// Names and addresses put in the controller's server certificate by `init`.
    pub server_names: Vec<String>,
    pub tls: TlsFiles,
    /// How often agents send heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A disconnected agent becomes `lost` after this long without reconnecting.
    #[serde(with = "humantime_serde")]
    pub agent_lost_after: Duration,
    /// A run whose agent is not connected stays `pending` this long, then fails.
    #[serde(with = "humantime_serde")]
    pub pending_deadline: Duration,
    /// Lifetime of agent certificates issued at enrollment and renewal (agents renew at about
    /// 70 % of it).
    #[serde(with = "humantime_serde")]
    pub agent_cert_lifetime: Duration,
    /// A client must complete its TLS handshake within this long, or it is disconnected.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A connection without a client certificate (health checks, enrollment) is closed after
    /// this long without a request in progress.
    #[serde(with = "humantime_serde")]
    pub unauthenticated_idle_timeout: Duration,
    /// Most gRPC connections open at once; further ones are closed at once.
    pub max_connections: u32,
    /// Most gRPC connections open at once from one IP address.
    pub max_connections_per_address: u32,
    /// Controllers sharing a PostgreSQL store: how long the leader lease lasts without renewal
    /// (renewed every third of it). A follower takes over this long after the leader is gone.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The URL agents use to reach this controller (`https://HOST:PORT`), stored in the leader
    /// lease so that followers can send agents to the leader. Unset: `https://` + the first of
    /// `server_names` + the port of `grpc_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// Store retention: `retention.runs`, `retention.events`, `retention.audit`,
    /// `retention.interval`, `retention.batch`.
    pub retention: RetentionSettings,
    /// The web console: `console.enabled`, `console.listen`, `console.url`,
    /// `console.session_lifetime`, `console.trace_url`, `console.max_event_streams`,
    /// `console.max_connections`.
    pub console: ConsoleSettings,
    /// What `/metrics` exposes: `metrics.per_agent_detail`.
    pub metrics: MetricsSettings,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("syncfleet-data"),
            store: None,
            fleet: "syncfleet".into(),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls: TlsFiles::default(),
            heartbeat_interval: Duration::from_secs(10),
            agent_lost_after: Duration::from_secs(120),
            pending_deadline: Duration::from_secs(15 * 60),
            agent_cert_lifetime: Duration::from_secs(24 * 3600),
            tls_handshake_timeout: Duration::from_secs(10),
            unauthenticated_idle_timeout: Duration::from_secs(10),
            max_connections: 1000,
            max_connections_per_address: 100,
            lease_ttl: Duration::from_secs(10),
            advertise_url: None,
            retention: RetentionSettings::default(),
            console: ConsoleSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl ControllerConfig {
    /// Check cross-field rules; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.fleet) {
            return Err(ConfigError::Invalid {
                key: "fleet",
                problem: format!("{:?} is not a valid fleet name", self.fleet),
                fix: "use 1-63 characters from a-z, A-Z, 0-9, '.', '_', '-'".into(),
            });
        }
        if self.heartbeat_interval < Duration::from_secs(1)
            || self.heartbeat_interval > Duration::from_secs(300)
        {
            return Err(ConfigError::Invalid {
                key: "heartbeat_interval",
                problem: format!("{:?} is outside 1s..5m", self.heartbeat_interval),
                fix: "use e.g. \"10s\"".into(),
            });
        }
        if self.agent_lost_after < self.heartbeat_interval * 2 {
            return Err(ConfigError::Invalid {
                key: "agent_lost_after",
                problem: format!(
                    "{:?} is shorter than two heartbeat intervals ({:?})",
                    self.agent_lost_after,
                    self.heartbeat_interval * 2
                ),
                fix: "raise agent_lost_after or lower heartbeat_interval".into(),
            });
        }
        if self.pending_deadline < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "pending_deadline",
                problem: format!("{:?} is too short", self.pending_deadline),
                fix: "use at least 1s, e.g. \"15m\"".into(),
            });
        }
        if self.agent_cert_lifetime < Duration::from_secs(5) {
            return Err(ConfigError::Invalid {
                key: "agent_cert_lifetime",
                problem: format!("{:?} is too short", self.agent_cert_lifetime),
                fix: "use at least 5s (default 24h)".into(),
            });
        }
        for (key, value) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            (
                "unauthenticated_idle_timeout",
                self.unauthenticated_idle_timeout,
            ),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(3600) {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("{value:?} is outside 1s..1h"),
                    fix: "use e.g. \"10s\"".into(),
                });
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                problem: "0 would refuse every connection".into(),
                fix: "use at least 1 (default 1000)".into(),
            });
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            return Err(ConfigError::Invalid {
                key: "max_connections_per_address",
                problem: format!(
                    "{} is not within 1..=max_connections ({})",
                    self.max_connections_per_address, self.max_connections
                ),
                fix: "use at least 1 and at most max_connections (default 100)".into(),
            });
        }
        self.store_location()?;
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(600) {
            return Err(ConfigError::Invalid {
                key: "lease_ttl",
                problem: format!("{:?} is outside 1s..10m", self.lease_ttl),
                fix: "use e.g. \"10s\" (the default)".into(),
            });
        }
        if let Some(url) = &self.advertise_url
            && (!url.starts_with("https://") || url.len() <= "https://".len())
        {
            return Err(ConfigError::Invalid {
                key: "advertise_url",
                problem: format!("{url:?} is not an https URL"),
                fix: "set the address agents use to reach this controller, e.g. https://controller-2.example.com:7443".into(),
            });
        }
        for (key, value) in [
            ("retention.runs", self.retention.runs),
            ("retention.events", self.retention.events),
            ("retention.audit", self.retention.audit),
        ] {
            if !value.is_zero() && value < Duration::from_secs(60) {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!("{value:?} is shorter than 1m"),
                    fix: "use a duration of at least 1m (e.g. \"90d\"), or \"0s\" to keep forever"
                        .into(),
                });
            }
        }
        if self.retention.interval < Duration::from_secs(1)
            || self.retention.interval > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(ConfigError::Invalid {
                key: "retention.interval",
                problem: format!("{:?} is outside 1s..7d", self.retention.interval),
                fix: "use e.g. \"1h\" (the default)".into(),
            });
        }
        if !(1..=10_000).contains(&self.retention.batch) {
            return Err(ConfigError::Invalid {
                key: "retention.batch",
                problem: format!("{} is outside 1..=10000", self.retention.batch),
                fix: "use e.g. 500 (the default): rows deleted per transaction".into(),
            });
        }
        if self.console.enabled {
            self.console.validate()?;
            for (other, addr) in [
                ("grpc_listen", self.grpc_listen),
                ("http_listen", self.http_listen),
            ] {
                if self.console.listen.port() != 0 && self.console.listen.port() == addr.port() {
                    return Err(ConfigError::Invalid {
                        key: "console.listen",
                        problem: format!(
                            "{} uses the port of {other} ({addr})",
                            self.console.listen
                        ),
                        fix: "give the console its own port (default 7444), or set console.enabled = false".into(),
                    });
                }
            }
        }
        if self.grpc_listen == self.http_listen && self.grpc_listen.port() != 0 {
            return Err(ConfigError::Invalid {
                key: "http_listen",
                problem: format!("same address as grpc_listen ({})", self.grpc_listen),
                fix: "give the HTTP endpoint its own port".into(),
            });
        }
        Ok(())
    }

    /// The URL agents use to reach this controller: `advertise_url`, or `https://` + the first
    /// of `server_names` (else `localhost`) + the port of `grpc_listen`.
    pub fn advertise_url(&self) -> String {
        match &self.advertise_url {
            Some(url) => url.clone(),
            None => {
                let host = self
                    .server_names
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost");
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                format!("https://{host}:{}", self.grpc_listen.port())
            }
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    /// The default SQLite store file, `<data_dir>/controller.db`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("controller.db")
    }

    /// The `store` setting, checked: a PostgreSQL URL must parse (its password is never
    /// repeated in the error).
    pub fn store_location(&self) -> Result<StoreLocation, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            key: "store",
            problem,
            fix: STORE_FORMS.into(),
        };
        let Some(value) = self.store.as_deref().map(str::trim) else {
            return Ok(StoreLocation::Sqlite(self.store_path()));
        };
        if let Some(path) = value.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(invalid("\"sqlite:\" names no file".into()));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            value.parse::<tokio_postgres::Config>().map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                invalid(format!(
                    "{} is not a valid PostgreSQL URL: {e}{cause}",
                    crate::store::postgres::redact_url(value)
                ))
            })?;
            return Ok(StoreLocation::Postgres(value.to_string()));
        }
        let shown = if value.contains("://") {
            crate::store::postgres::redact_url(value)
        } else {
            value.to_string()
        };
        Err(invalid(format!(
            "{shown:?} is neither sqlite:PATH nor a postgres:// URL"
        )))
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.tls
            .ca_cert
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("ca.pem"))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("controller.pem"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("controller.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = ControllerConfig::default();
        c.validate().unwrap();
        let back: ControllerConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    /// The agent leaves `SYNCFLEET_<KEY>` of these keys to the controller: the shared list must
    /// follow this struct.
    #[test]
    fn the_agent_knows_every_controller_key() {
        let mut keys =
            syncfleet_proto::config_layers::top_level_keys::<ControllerConfig>().to_vec();
        let mut listed = syncfleet_proto::config_layers::CONTROLLER_KEYS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert!(!keys.is_empty());
        assert_eq!(
            keys, listed,
            "update syncfleet_proto::config_layers::CONTROLLER_KEYS"
        );
    }

    #[test]
    fn store_setting_selects_sqlite_or_postgres() {
        let with = |store: Option<&str>| ControllerConfig {
            data_dir: PathBuf::from("/data"),
            store: store.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            with(None).store_location().unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/data/controller.db"))
        );
        assert_eq!(
            with(Some("sqlite:/srv/c.db")).store_location().unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/srv/c.db"))
        );
        for url in [
            "postgres://sf:pw@db:5432/syncfleet",
            "postgresql://sf@db/syncfleet?connect_timeout=5",
        ] {
            assert_eq!(
                with(Some(url)).store_location().unwrap(),
                StoreLocation::Postgres(url.into())
            );
        }
        for (bad, says) in [
            (
                "mysql://u:hunter2@db/x",
                "neither sqlite:PATH nor a postgres:// URL",
            ),
            ("/srv/c.db", "neither sqlite:PATH"),
            ("sqlite:", "names no file"),
            (
                "postgres://u:hunter2@db:notaport/x",
                "not a valid PostgreSQL URL",
            ),
        ] {
            let err = with(Some(bad)).validate().unwrap_err().to_string();
            assert!(err.contains("`store`"), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(
                err.contains("sqlite:PATH") && err.contains("postgres://USER"),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "the password leaks: {err}");
        }
    }

    #[test]
    fn lease_ttl_and_advertise_url_are_checked_and_defaulted() {
        let c = ControllerConfig {
            grpc_listen: "0.0.0.0:7443".parse().unwrap(),
            server_names: vec!["ctl-1.example.com".into()],
            ..Default::default()
        };
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.advertise_url(), "https://ctl-1.example.com:7443");
        let own = ControllerConfig {
            advertise_url: Some("https://ctl-2.example.com:7443".into()),
            ..c.clone()
        };
        own.validate().unwrap();
        assert_eq!(own.advertise_url(), "https://ctl-2.example.com:7443");
        let err = ControllerConfig {
            advertise_url: Some("ctl-2:7443".into()),
            ..c.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`advertise_url`") && err.contains("not an https URL"),
            "{err}"
        );
        let err = ControllerConfig {
            lease_ttl: Duration::from_millis(200),
            ..c
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("`lease_ttl`"), "{err}");
    }

    #[test]
    fn bad_duration_and_cross_field_rules_name_the_key() {
        let err = toml::from_str::<ControllerConfig>("pending_deadline = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pending_deadline"), "{err}");
        let c = ControllerConfig {
            agent_lost_after: Duration::from_secs(5),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("`agent_lost_after`")
        );
    }

    #[test]
    fn retention_settings_parse_default_and_are_checked() {
        let c: ControllerConfig =
            toml::from_str("[retention]\nruns = \"7d\"\naudit = \"0s\"").unwrap();
        assert_eq!(c.retention.runs, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.retention.events, Duration::from_secs(30 * 24 * 3600));
        assert!(c.retention.audit.is_zero());
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.retention.events = Duration::from_secs(5);
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("`retention.events`") && err.contains("1m"),
            "{err}"
        );
        let mut bad = c;
        bad.retention.batch = 0;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("`retention.batch`"), "{err}");
    }

    #[test]
    fn console_settings_parse_default_and_are_checked() {
        let c: ControllerConfig = toml::from_str(
            "[console]\nlisten = \"127.0.0.1:9444\"\nsession_lifetime = \"30m\"\ntrace_url = \"http://jaeger:16686/trace/{trace_id}\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.console.session_lifetime, Duration::from_secs(1800));
        assert!(c.console.enabled);
        let d = ConsoleSettings::default();
        assert_eq!(d.listen, SocketAddr::from(([0, 0, 0, 0], 7444)));
        assert_eq!(d.session_lifetime, Duration::from_secs(3600));
        assert_eq!((d.max_event_streams, d.max_connections), (64, 256));
        assert!(!d.ephemeral_if_taken && d.url.is_none() && d.trace_url.is_none());

        let err = |f: &dyn Fn(&mut ControllerConfig)| {
            let mut c = ControllerConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        let e = err(&|c| c.console.session_lifetime = Duration::from_secs(5));
        assert!(
            e.contains("`console.session_lifetime`") && e.contains("1m..24h"),
            "{e}"
        );
        let e = err(&|c| c.console.url = Some("http://ctl:7444".into()));
        assert!(e.contains("`console.url`") && e.contains("https://"), "{e}");
        let e = err(&|c| c.console.url = Some("https://ctl:7444/console".into()));
        assert!(e.contains("has a path"), "{e}");
        let e = err(&|c| c.console.trace_url = Some("http://jaeger/trace".into()));
        assert!(
            e.contains("`console.trace_url`") && e.contains("{trace_id}"),
            "{e}"
        );
        let e = err(&|c| c.console.max_event_streams = 0);
        assert!(e.contains("`console.max_event_streams`"), "{e}");
        let e = err(&|c| c.console.listen = c.grpc_listen);
        assert!(
            e.contains("`console.listen`") && e.contains("grpc_listen"),
            "{e}"
        );
        // A disabled console is not checked.
        let mut off = ControllerConfig::default();
        off.console.enabled = false;
        off.console.listen = off.grpc_listen;
        off.validate().unwrap();
        assert_eq!(check_console_url("https://ctl.example:7444/"), Ok(()));
    }

    #[test]
    fn metrics_detail_is_off_by_default_and_layered_like_other_keys() {
        assert!(!ControllerConfig::default().metrics.per_agent_detail);
        let c: ControllerConfig = toml::from_str("[metrics]\nper_agent_detail = true\n").unwrap();
        assert!(c.metrics.per_agent_detail);
        let env = vec![(
            "SYNCFLEET_METRICS__PER_AGENT_DETAIL".to_string(),
            "true".to_string(),
        )];
        let c: ControllerConfig = Layers::new()
            .env(&CONTROLLER_ENV, env.clone())
            .unwrap()
            .extract()
            .unwrap();
        assert!(c.metrics.per_agent_detail);
        let c: ControllerConfig = Layers::new()
            .env(&CONTROLLER_ENV, env)
            .unwrap()
            .sets(&[("metrics.per_agent_detail".into(), "false".into())])
            .extract()
            .unwrap();
        assert!(
            !c.metrics.per_agent_detail,
            "--set wins over the environment"
        );
        let err = toml::from_str::<ControllerConfig>("[metrics]\nper_agent_details = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("per_agent_details"), "{err}");
    }
}
