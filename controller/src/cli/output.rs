//! Machine-readable output: the writers that put data on stdout ([`out`], [`out_json`],
//! [`out_yaml`]; `-o yaml` prints the same shapes as YAML), and the JSON shapes of `-o json`
//! (`crate::views::json`, shared with the web console).

use std::io::Write as _;

use serde_json::Value;

use super::CliError;
pub use crate::views::json::*;

/// Writes `text` to stdout. A closed pipe (`syncfleet runs list | head -1`) is not an error.
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Stdout(e)),
    }
}

/// Writes one pretty JSON document and a newline to stdout.
pub fn out_json(v: &Value) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| CliError::Stdout(std::io::Error::other(e)))?;
    out(&format!("{text}\n"))
}

/// Writes `v` as YAML to stdout.
pub fn out_yaml(v: &Value) -> Result<(), CliError> {
    let text =
        serde_norway::to_string(v).map_err(|e| CliError::Stdout(std::io::Error::other(e)))?;
    out(&text)
}
