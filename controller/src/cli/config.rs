//! The CLI config file's contexts, as kubectl's `config` commands: read and switched locally,
//! without contacting a controller.
//!
//! ```text
//! syncfleet config get-contexts          CURRENT NAME CONTROLLER (-o wide: + CA-CERT CLIENT-CERT CLIENT-KEY TLS-SERVER-NAME)
//! syncfleet config use-context NAME      make NAME the current_context of the file
//! syncfleet config current-context       the current_context's name
//! ```
//!
//! The file is the one every command reads (`--config`, `$SYNCFLEET_CONFIG`, else
//! `~/.config/syncfleet/config.toml`). A context that cannot be used is still listed, with its
//! problem (`-o json`: `problem`). `use-context` keeps everything else in the file and refuses
//! a name the file does not have, naming the contexts it has.

use std::path::Path;

use clap::Subcommand;
use serde_json::{Value, json};

use super::table::{self, Table};
use super::{CliError, EXIT_OK, OutputFormat, Printer};
use crate::contexts::{ConfigFile, ContextSummary, config_path, use_context};

/// `config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts of the config file; * marks the current one
    GetContexts,
    /// Make NAME the current context of the config file
    UseContext {
        /// A context of the config file
        name: String,
    },
    /// Print the name of the current context
    CurrentContext,
}

/// `-o json` of `get-contexts`: one object per context, `controllers` always a list.
pub fn contexts_json(summaries: &[ContextSummary]) -> Value {
    Value::Array(
        summaries
            .iter()
            .map(|s| {
                let c = s.context.as_ref();
                let path = |f: fn(&crate::contexts::Context) -> &Path| {
                    c.map_or(Value::Null, |c| json!(f(c).display().to_string()))
                };
                json!({
                    "name": s.name,
                    "current": s.current,
                    "controllers": c.map(|c| c.urls()).unwrap_or_default(),
                    "ca_cert": path(|c| &c.ca_cert),
                    "client_cert": path(|c| &c.client_cert),
                    "client_key": path(|c| &c.client_key),
                    "tls_server_name": c.and_then(|c| c.tls_server_name.clone()),
                    "problem": s.problem,
                })
            })
            .collect(),
    )
}

/// `CURRENT NAME CONTROLLER`, wide: `CA-CERT CLIENT-CERT CLIENT-KEY TLS-SERVER-NAME`.
pub fn contexts_table(summaries: &[ContextSummary]) -> String {
    let mut t = Table::new(&["CURRENT", "NAME", "CONTROLLER"]).wide(&[
        "CA-CERT",
        "CLIENT-CERT",
        "CLIENT-KEY",
        "TLS-SERVER-NAME",
    ]);
    for s in summaries {
        let current = if s.current { "*" } else { "" }.to_string();
        match &s.context {
            Some(c) => t.row(vec![
                current,
                s.name.clone(),
                c.urls().join(","),
                c.ca_cert.display().to_string(),
                c.client_cert.display().to_string(),
                c.client_key.display().to_string(),
                table::or_dash(c.tls_server_name.as_deref().unwrap_or("")).to_string(),
            ]),
            None => t.row(vec![
                current,
                s.name.clone(),
                format!("invalid: {}", s.problem.as_deref().unwrap_or("")),
            ]),
        }
    }
    t.render()
}

impl Printer {
    /// Runs a `config` command against the config file `config` (`--config`, else the
    /// default).
    pub(super) fn config(
        &self,
        config: Option<&Path>,
        cmd: &ConfigCommand,
    ) -> Result<u8, CliError> {
        let path = config_path(config)?;
        match cmd {
            ConfigCommand::GetContexts => {
                let file = ConfigFile::load(&path)?;
                let summaries = file.summaries();
                self.print_list(
                    &contexts_json(&summaries),
                    summaries.is_empty(),
                    || contexts_table(&summaries),
                    &format!(
                        "no contexts in {}; add a [contexts.NAME] table or start a dev fleet with 'syncfleet dev'",
                        path.display()
                    ),
                )
            }
            ConfigCommand::UseContext { name } => {
                use_context(&path, name)?;
                match self.format {
                    OutputFormat::Json | OutputFormat::Yaml => {
                        self.data(&json!({ "current_context": name }))?;
                    }
                    OutputFormat::Table => {
                        eprintln!("switched to context \"{name}\" in {}", path.display());
                    }
                }
                Ok(EXIT_OK)
            }
            ConfigCommand::CurrentContext => {
                let file = ConfigFile::load(&path)?;
                let name = file.current()?;
                self.print_result(
                    &json!({ "current_context": name }),
                    &format!("{name}\n"),
                    None,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contexts::Context;

    #[test]
    fn table_marks_the_current_context_and_shows_broken_ones() {
        let ok = ContextSummary {
            name: "dev".into(),
            current: true,
            context: Some(Context {
                controller: "https://127.0.0.1:7443".into(),
                controllers: Vec::new(),
                ca_cert: "/d/ca.pem".into(),
                client_cert: "/d/op.pem".into(),
                client_key: "/d/op.key".into(),
                tls_server_name: None,
            }),
            problem: None,
        };
        let broken = ContextSummary {
            name: "old".into(),
            current: false,
            context: None,
            problem: Some("ca_cert is empty".into()),
        };
        let all = [ok, broken];
        assert_eq!(
            contexts_table(&all),
            "CURRENT  NAME  CONTROLLER\n*        dev   https://127.0.0.1:7443\n         old   invalid: ca_cert is empty\n"
        );
        let j = contexts_json(&all);
        assert_eq!(j[0]["controllers"], json!(["https://127.0.0.1:7443"]));
        assert_eq!(j[0]["client_key"], json!("/d/op.key"));
        assert_eq!(j[1]["ca_cert"], Value::Null);
        assert_eq!(j[1]["problem"], json!("ca_cert is empty"));
    }
}
