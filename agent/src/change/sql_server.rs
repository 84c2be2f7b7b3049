//! SQL Server watermark queries through tiberius (Windows agents). Without a credential the
//! agent logs in as its own Windows account (integrated authentication); with one, as the SQL
//! login `username` with the password from `password_file`. Encryption and certificate trust
//! follow the ADO.NET connection string (`Encrypt=`, `TrustServerCertificate=`).

use std::time::Duration;

use tiberius::{AuthMethod, Client, Config, SqlBrowser};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

use super::SourceError;
use super::credentials::Secrets;

fn err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Sql(format!("{what}: {e}"))
}

/// The first column of the first row of `query`, as text.
pub async fn watermark(
    connection: &str,
    query: &str,
    secrets: &Secrets,
    timeout: Duration,
) -> Result<String, SourceError> {
    let mut config =
        Config::from_ado_string(connection).map_err(|e| err("connection string", e))?;
    config.application_name("syncfleet-agent");
    config.authentication(match &secrets.username {
        Some(user) => AuthMethod::sql_server(user, secrets.password.as_deref().unwrap_or("")),
        None => AuthMethod::Integrated,
    });
    config.handshake_timeout(Some(timeout));
    config.command_timeout(Some(timeout));
    let tcp = tokio::time::timeout(timeout, TcpStream::connect_named(&config))
        .await
        .map_err(|_| SourceError::Sql(format!("connect: no answer within {timeout:?}")))?
        .map_err(|e| err("connect", e))?;
    // Best effort: one small query per poll.
    let _ = tcp.set_nodelay(true);
    let mut client = Client::connect(config, tcp.compat_write())
        .await
        .map_err(|e| err("log in", e))?;
    let row = client
        .simple_query(query)
        .await
        .map_err(|e| err("query", e))?
        .into_row()
        .await
        .map_err(|e| err("query", e))?
        .ok_or_else(|| {
            SourceError::Sql(
                "query returned no row; it must return one row with one column, e.g. SELECT max(updated_at) FROM person".to_string(),
            )
        })?;
    text(&row)
}

/// A value of the types a watermark has, as text; NULL is empty.
fn text(row: &tiberius::Row) -> Result<String, SourceError> {
    macro_rules! as_text {
        ($($t:ty),*) => {
            $(if let Ok(v) = row.try_get::<$t, _>(0) {
                return Ok(v.map(|v| v.to_string()).unwrap_or_default());
            })*
        };
    }
    as_text!(
        &str,
        i64,
        i32,
        i16,
        u8,
        f64,
        f32,
        tiberius::numeric::Numeric,
        chrono::NaiveDateTime,
        chrono::DateTime<chrono::Utc>,
        chrono::NaiveDate,
        tiberius::Uuid
    );
    Err(SourceError::Sql(
        "the query's value has a type the agent does not read; CAST it to varchar, a number or datetime2".to_string(),
    ))
}
