//! `sql` source: a query returning one value (the watermark); a change is the value moving.
//! PostgreSQL through tokio-postgres; SQL Server through tiberius on Windows agents (elsewhere
//! its poll reports that it needs one).

use std::time::Duration;

use syncfleet_proto::schedule_model::{SqlDriver, SqlSourceDoc};

use super::credentials::Secrets;
use super::{PollOutcome, SourceError, watermark_outcome};
use crate::journal::ChangeState;

/// Bound on connecting and on the query.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct SqlSource {
    doc: SqlSourceDoc,
    secrets: Secrets,
}

impl SqlSource {
    pub fn new(doc: SqlSourceDoc, secrets: Secrets) -> Self {
        Self { doc, secrets }
    }

    pub async fn poll(&mut self, prior: Option<&ChangeState>) -> Result<PollOutcome, SourceError> {
        let value = match self.doc.driver {
            SqlDriver::Postgres => self.postgres().await?,
            SqlDriver::SqlServer => self.sql_server().await?,
        };
        Ok(watermark_outcome(prior, value))
    }

    #[cfg(windows)]
    async fn sql_server(&self) -> Result<String, SourceError> {
        super::sql_server::watermark(
            &self.doc.connection,
            &self.doc.query,
            &self.secrets,
            TIMEOUT,
        )
        .await
    }

    /// SQL Server is reached with tiberius, which this agent builds on Windows only (where a
    /// source without a credential logs in as the agent's Windows account).
    #[cfg(not(windows))]
    async fn sql_server(&self) -> Result<String, SourceError> {
        Err(SourceError::Sql(
            "SQL Server change sources run on Windows agents only; target this schedule at a Windows agent, or use a postgres or http source".to_string(),
        ))
    }

    /// Run the query with the simple query protocol, which returns every value as text (text,
    /// numbers and timestamps alike), and take the first column of the first row.
    async fn postgres(&self) -> Result<String, SourceError> {
        let err = |what: &str, e: &dyn std::fmt::Display| SourceError::Sql(format!("{what}: {e}"));
        // tokio-postgres displays a server error as "db error"; the server's message says what.
        let pg_err = |what: &str, e: &tokio_postgres::Error| match e.as_db_error() {
            Some(db) => SourceError::Sql(format!("{what}: {}: {}", db.severity(), db.message())),
            None => SourceError::Sql(format!("{what}: {e}")),
        };
        let mut config: tokio_postgres::Config = self
            .doc
            .connection
            .parse()
            .map_err(|e| err("connection string", &e))?;
        if let Some(u) = &self.secrets.username {
            config.user(u);
        }
        if let Some(p) = &self.secrets.password {
            config.password(p);
        }
        config.connect_timeout(TIMEOUT);
        let (client, connection) =
            tokio::time::timeout(TIMEOUT, config.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| SourceError::Sql(format!("connect: no answer within {TIMEOUT:?}")))?
                .map_err(|e| pg_err("connect", &e))?;
        let conn_task = tokio::spawn(connection);
        let rows = tokio::time::timeout(TIMEOUT, client.simple_query(&self.doc.query))
            .await
            .map_err(|_| SourceError::Sql(format!("query: no answer within {TIMEOUT:?}")))?
            .map_err(|e| pg_err("query", &e));
        drop(client);
        conn_task.abort();
        let rows = rows?;
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                return Ok(row.get(0).unwrap_or("").to_string());
            }
        }
        Err(SourceError::Sql(
            "query returned no row; it must return one row with one column, e.g. SELECT max(updated_at) FROM person".to_string(),
        ))
    }
}
