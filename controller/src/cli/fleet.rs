//! `fleet pause|resume|status`: the fleet-wide pause (no new runs anywhere; running runs go
//! on) and which agents are draining.
//!
//! Table output puts the fleet's state on stdout and hints on stderr; `-o json`/`-o yaml`
//! print the fleet status object ([`output`] shapes).

use clap::Subcommand;
use syncfleet_proto::v1::{FleetStatus, GetFleetStatusRequest, PauseFleetRequest};

use super::connect::Client;
use super::output::{self, out};
use super::table::{Table, pause_brief};
use super::{CliError, EXIT_OK, OutputFormat, Session, non_blank};

/// `fleet ...`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Start no new runs anywhere (maintenance); running runs go on
    Pause {
        /// Why (required)
        #[arg(long, required = true, value_name = "TEXT", value_parser = non_blank)]
        note: String,
    },
    /// Start runs again after `fleet pause`
    Resume {
        /// Why, for the record
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
    },
    /// Whether the fleet is paused, and which agents are draining
    Status,
}

impl Session<'_> {
    /// Runs one `fleet ...` command.
    pub(super) async fn fleet(
        &self,
        client: &mut Client,
        cmd: &FleetCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            FleetCommand::Pause { note } => self.fleet_pause(client, note, true).await,
            FleetCommand::Resume { note } => self.fleet_pause(client, note, false).await,
            FleetCommand::Status => self.fleet_status(client).await,
        }
    }

    pub(super) async fn fleet_pause(
        &self,
        client: &mut Client,
        note: &str,
        pause: bool,
    ) -> Result<u8, CliError> {
        let req = PauseFleetRequest {
            note: note.to_string(),
        };
        let f = if pause {
            client.pause_fleet(req).await
        } else {
            client.resume_fleet(req).await
        }
        .map_err(|e| self.rpc_err(&e))?
        .into_inner();
        self.print_result(
            &output::fleet_status_json(&f),
            &fleet_status(&f),
            pause.then_some(
                "no new runs start anywhere; running runs go on; resume with 'syncfleet fleet resume'",
            ),
        )
    }

    pub(super) async fn fleet_status(&self, client: &mut Client) -> Result<u8, CliError> {
        let f = client
            .get_fleet_status(GetFleetStatusRequest {})
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&output::fleet_status_json(&f))?,
            OutputFormat::Table => out(&fleet_status(&f))?,
        }
        Ok(EXIT_OK)
    }
}

/// `fleet status` (and the answer of `fleet pause/resume`): two key/value lines.
pub fn fleet_status(f: &FleetStatus) -> String {
    let mut kv = Table::new(&["", ""]);
    kv.row(vec![
        "fleet:".into(),
        pause_brief(f.pause.as_ref(), "PAUSED", "active"),
    ]);
    kv.row(vec![
        "draining:".into(),
        if f.draining.is_empty() {
            "none".to_string()
        } else {
            f.draining.join(", ")
        },
    ]);
    kv.render()
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::cli::runs::tests::held_run;
    use crate::cli::schedules::targets_brief;
    use crate::cli::table::tests::pause;
    use crate::cli::table::{pause_brief, signed_duration, zone, zoned_rfc3339};
    use chrono_tz::Tz;
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::Pause;

    #[test]
    fn fleet_status_and_helpers() {
        let f = FleetStatus {
            pause: Some(pause("datacenter move")),
            draining: vec!["sync01".into(), "sync02".into()],
        };
        let text = fleet_status(&f);
        assert!(text.starts_with("fleet:     PAUSED since "), "{text}");
        assert!(text.contains(" by alice: \"datacenter move\"\n"), "{text}");
        assert!(text.ends_with("draining:  sync01, sync02\n"), "{text}");
        assert_eq!(
            fleet_status(&FleetStatus::default()),
            "fleet:     active\ndraining:  none\n"
        );
        assert_eq!(signed_duration(-850), "-850ms");
        assert_eq!(signed_duration(11_500), "11s");
        assert_eq!(zone("Mars/Base"), None);
        assert_eq!(zone(""), Some(Tz::UTC));
        assert_eq!(
            zoned_rfc3339(Some(&from_millis(1_720_000_000_000)), Tz::Europe__Oslo),
            "2024-07-03T11:46:40+02:00"
        );
        assert_eq!(zoned_rfc3339(None, Tz::UTC), "-");
        assert_eq!(
            pause_brief(Some(&Pause::default()), "paused", "active"),
            "active"
        );
        let t = crate::documents::model::Targets {
            agents: vec!["a".into(), "b".into()],
            selector: Some("env=prod".into()),
        };
        assert_eq!(targets_brief(&t), "agents a, b; selector env=prod");
        let mut hint_run = held_run();
        hint_run.id = "r9".into();
        assert_eq!(
            crate::cli::runs::held_hint(&hint_run),
            "run r9 is held at step 3 AD: Export (700 pending export deletes exceed max_pending_deletes 500); approve with 'syncfleet runs approve r9 --note ...' or reject with 'syncfleet runs reject r9 --note ...'"
        );
    }
}
