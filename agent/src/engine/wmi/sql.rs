//! [`SqlProfiles`]: the engine's run profiles read from its SQL Server database over TDS
//! (`tiberius`), as the agent's own Windows identity (integrated authentication), with
//! read-only `SELECT`s only (`docs/engine.md`, "Run profile discovery"). Windows-only.
//!
//! Where the database is: the engine's registry values `Server`, `SQLInstance` and `DBName`
//! under `HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters` (`localhost` and
//! `FIMSynchronizationService` when absent), overridden by [`WmiConfig::database_server`] and
//! [`WmiConfig::database_name`].

use std::collections::HashMap;
use std::time::Duration;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel, SqlBrowser};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

use super::api::normalize_guid;
use super::config::WmiConfig;
use super::discovery::{
    DEFAULT_DATABASE, DatabaseLocation, DiscoveryError, EngineProfiles, ProfileSource,
    StoredProfile, parse_server,
};
use crate::engine::BoxFuture;

/// Every run profile with its MA. `CONVERT`/`CAST` make the answer independent of the
/// columns' exact types (`uniqueidentifier` or text; `ntext`, `nvarchar(max)` or `xml`).
const PROFILES_QUERY: &str = "SELECT CONVERT(nvarchar(64), ma.ma_id) AS ma_id, ma.ma_name, \
     rp.run_profile_name, CAST(rp.configuration_xml AS nvarchar(max)) AS configuration_xml \
     FROM dbo.mms_run_profile AS rp \
     INNER JOIN dbo.mms_management_agent AS ma ON ma.ma_id = rp.ma_id \
     ORDER BY ma.ma_name, rp.run_profile_name";

/// Partition GUID → name of every MA's partitions.
const PARTITIONS_QUERY: &str = "SELECT CONVERT(nvarchar(64), partition_id) AS partition_id, \
     partition_name FROM dbo.mms_partition";

/// SQL Server error numbers that mean "you may not", not "cannot reach": login failed (18456),
/// permission denied on an object (229, 230), the login cannot use the database (916), cannot
/// open the database requested by the login (4060).
const DENIED_CODES: [u32; 5] = [18456, 229, 230, 916, 4060];

/// The engine's registry `Parameters` values (`None` when absent or empty).
fn registry_values(service: &str) -> Result<HashMap<&'static str, Option<String>>, String> {
    let path = format!(r"SYSTEM\CurrentControlSet\Services\{service}\Parameters");
    let key = windows_registry::LOCAL_MACHINE
        .open(&path)
        .map_err(|e| format!(r"cannot open HKLM\{path}: {e}"))?;
    Ok(["Server", "SQLInstance", "DBName"]
        .into_iter()
        .map(|name| {
            let v = key
                .get_string(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty());
            (name, v)
        })
        .collect())
}

/// Where the database is: configuration overrides first, then the registry, then defaults.
fn locate(cfg: &WmiConfig) -> Result<DatabaseLocation, DiscoveryError> {
    let registry = if cfg.database_server.is_some() && cfg.database_name.is_some() {
        Ok(HashMap::new())
    } else {
        registry_values(&cfg.service_name)
    };
    let value = |name: &str| {
        registry
            .as_ref()
            .ok()
            .and_then(|r| r.get(name).cloned().flatten())
    };
    let database = cfg
        .database_name
        .clone()
        .or_else(|| value("DBName"))
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let server = match (&cfg.database_server, &registry) {
        (Some(s), _) => s.clone(),
        (None, Err(e)) => {
            return Err(DiscoveryError::Location(format!(
                "{e}; set database_server (and database_name) in the engine configuration"
            )));
        }
        (None, Ok(_)) => match (value("Server"), value("SQLInstance")) {
            (Some(s), Some(i)) => format!("{s}\\{i}"),
            (Some(s), None) => s,
            (None, Some(i)) => format!("localhost\\{i}"),
            (None, None) => "localhost".to_owned(),
        },
    };
    parse_server(&server, database).map_err(DiscoveryError::Location)
}

fn classify(what: &str, loc: &DatabaseLocation, e: tiberius::error::Error) -> DiscoveryError {
    let text = format!("{what} on {loc}: {e}");
    match e.code() {
        Some(code) if DENIED_CODES.contains(&code) => DiscoveryError::Denied(text),
        _ => DiscoveryError::Unreachable(text),
    }
}

/// Reads the engine's run profiles from its database. Makes no connection until
/// [`ProfileSource::read`]; each read opens one connection, runs two `SELECT`s and closes it.
#[derive(Debug, Clone)]
pub struct SqlProfiles {
    cfg: WmiConfig,
    timeout: Duration,
}

impl SqlProfiles {
    /// Settings from `cfg` (service name, database overrides; its
    /// [`WmiConfig::blocking_timeout`] bounds the TLS handshake and each query).
    pub fn new(cfg: &WmiConfig) -> Self {
        SqlProfiles {
            cfg: cfg.clone(),
            timeout: cfg.blocking_timeout,
        }
    }

    async fn read_database(&self) -> Result<EngineProfiles, DiscoveryError> {
        let loc = locate(&self.cfg)?;
        let mut config = Config::new();
        config.host(&loc.host);
        if let Some(i) = &loc.instance {
            config.instance_name(i);
        }
        if let Some(p) = loc.port {
            config.port(p);
        }
        config.database(&loc.database);
        config.application_name("syncfleet-agent");
        // The agent's own Windows identity (SSPI: Kerberos or NTLM); no password is stored.
        config.authentication(AuthMethod::Integrated);
        // Encrypted like `Encrypt=true;TrustServerCertificate=true`: SQL Server's
        // self-signed certificate is the usual one on a sync server and is not in any store.
        config.encryption(EncryptionLevel::Required);
        config.trust_cert();
        config.handshake_timeout(Some(self.timeout));
        config.command_timeout(Some(self.timeout));

        let tcp = if loc.instance.is_some() && loc.port.is_none() {
            // A named instance: its port from the SQL Server Browser (UDP 1434).
            TcpStream::connect_named(&config)
                .await
                .map_err(|e| classify("cannot connect", &loc, e))?
        } else {
            TcpStream::connect(config.get_addr())
                .await
                .map_err(|e| DiscoveryError::Unreachable(format!("cannot connect to {loc}: {e}")))?
        };
        // Best effort: latency of two small queries does not matter.
        let _ = tcp.set_nodelay(true);
        let mut client = Client::connect(config, tcp.compat_write())
            .await
            .map_err(|e| classify("cannot log in", &loc, e))?;

        let rows = client
            .simple_query(PROFILES_QUERY)
            .await
            .map_err(|e| classify("cannot read run profiles", &loc, e))?
            .into_first_result()
            .await
            .map_err(|e| classify("cannot read run profiles", &loc, e))?;
        let mut profiles = Vec::with_capacity(rows.len());
        for row in &rows {
            let col = |i: usize| -> Result<String, DiscoveryError> {
                row.try_get::<&str, _>(i)
                    .map(|v| v.unwrap_or_default().to_owned())
                    .map_err(|e| {
                        DiscoveryError::Unreachable(format!(
                            "unexpected answer from {loc} (column {i}): {e}"
                        ))
                    })
            };
            profiles.push(StoredProfile {
                ma_id: col(0)?,
                ma_name: col(1)?,
                name: col(2)?,
                configuration_xml: col(3)?,
            });
        }

        // Partition names are a nicety: without them steps keep the GUID.
        let (partitions, partitions_unresolved) = match client.simple_query(PARTITIONS_QUERY).await
        {
            Err(e) => (
                HashMap::new(),
                Some(classify("mms_partition", &loc, e).to_string()),
            ),
            Ok(stream) => match stream.into_first_result().await {
                Err(e) => (
                    HashMap::new(),
                    Some(classify("mms_partition", &loc, e).to_string()),
                ),
                Ok(rows) => (
                    rows.iter()
                        .filter_map(|r| {
                            let id = r.try_get::<&str, _>(0).ok().flatten()?;
                            let name = r.try_get::<&str, _>(1).ok().flatten()?;
                            Some((normalize_guid(id), name.to_owned()))
                        })
                        .collect(),
                    None,
                ),
            },
        };
        // Closing is best effort: the rows are read and the server drops the session anyway.
        let _ = client.close().await;
        Ok(EngineProfiles {
            profiles,
            partitions,
            partitions_unresolved,
        })
    }
}

impl ProfileSource for SqlProfiles {
    fn read(&self) -> BoxFuture<'_, Result<EngineProfiles, DiscoveryError>> {
        Box::pin(self.read_database())
    }

    fn describe(&self) -> String {
        match locate(&self.cfg) {
            Ok(loc) => loc.to_string(),
            Err(e) => e.to_string(),
        }
    }
}
