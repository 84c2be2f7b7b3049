//! `syncfleet version`: this CLI's version and the controller's (`GetVersion`, any operator).
//!
//! ```text
//! client: 0.1.0
//! server: 0.1.0 (https://127.0.0.1:7443)
//! ```
//!
//! The client line is printed first, so it is there even when the controller cannot be reached
//! or configured; the error follows on stderr and the exit code is 1. `-o json`:
//! `{"client": {"version"}, "server": {"version", "controller"}}`, with `"server": null` (and
//! the error on stderr) when it could not be asked.

use serde_json::{Value, json};
use syncfleet_proto::v1::GetVersionRequest;

use super::output::out;
use super::{Cli, CliError, EXIT_OK, OutputFormat, Printer, connect, resolve};

/// This CLI's version (its package version).
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `-o json` of `version`.
pub fn version_json(server: Option<(&str, &str)>) -> Value {
    json!({
        "client": { "version": CLIENT_VERSION },
        "server": server.map(|(version, controller)| json!({
            "version": version,
            "controller": controller,
        })),
    })
}

/// Runs `version`.
pub async fn version(cli: &Cli, printer: &Printer) -> Result<u8, CliError> {
    if printer.format == OutputFormat::Table {
        out(&format!("client: {CLIENT_VERSION}\n"))?;
    }
    let asked = async {
        let rc = resolve(cli)?;
        let mut client = connect::connect(&rc).await?;
        let resp = client
            .get_version(GetVersionRequest {})
            .await
            .map_err(|status| {
                let mut line = connect::describe_status(&status, &rc.context.controller);
                if let Some(id) = super::access::request_id(&status) {
                    line.push_str(&format!(" (request {id})"));
                }
                CliError::Rpc { line }
            })?
            .into_inner();
        Ok::<_, CliError>((resp.version, rc.context.controller))
    }
    .await;
    match (&asked, printer.format) {
        (Ok((v, url)), OutputFormat::Table) => out(&format!("server: {v} ({url})\n"))?,
        (Ok((v, url)), _) => printer.data(&version_json(Some((v, url))))?,
        (Err(_), OutputFormat::Table) => {}
        (Err(_), _) => printer.data(&version_json(None))?,
    }
    asked.map(|_| EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_client_and_server_or_null() {
        let j = version_json(Some(("9.9.9", "https://h:1")));
        assert_eq!(j["client"]["version"], json!(CLIENT_VERSION));
        assert_eq!(j["server"]["version"], json!("9.9.9"));
        assert_eq!(j["server"]["controller"], json!("https://h:1"));
        assert_eq!(version_json(None)["server"], Value::Null);
    }
}
