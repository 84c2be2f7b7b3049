//! `notifiers list|show NAME`: the notifiers applied from fleet files (`kind: Notifier`) and how
//! their deliveries went: messages sent and resolved, failed attempts, the last error, the
//! problems each is notifying about now.
//!
//! Table output on stdout; `-o json`/`-o yaml` print the objects of [`notifier_json`].

use clap::Subcommand;
use serde_json::{Value, json};
use syncfleet_proto::v1::{GetNotifierRequest, ListNotifiersRequest, NotifierStatus};

use super::connect::Client;
use super::output::{out, timestamp_json};
use super::table::{Table, local_time, or_dash};
use super::{CliError, EXIT_OK, OutputFormat, Session};

/// `notifiers ...`
#[derive(Debug, Subcommand)]
pub enum NotifiersCommand {
    /// Every notifier with its delivery counts and last error
    List,
    /// One notifier: counts, last delivery, last error, and its open problems
    Show {
        /// The notifier's name
        name: String,
    },
}

impl Session<'_> {
    /// Runs one `notifiers ...` command.
    pub(super) async fn notifiers(
        &self,
        client: &mut Client,
        cmd: &NotifiersCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            NotifiersCommand::List => {
                let r = client
                    .list_notifiers(ListNotifiersRequest {})
                    .await
                    .map_err(|e| self.rpc_err(&e))?
                    .into_inner();
                match self.format {
                    OutputFormat::Json | OutputFormat::Yaml => self.data(&Value::Array(
                        r.notifiers.iter().map(notifier_json).collect(),
                    ))?,
                    OutputFormat::Table => out(&notifiers_table(&r.notifiers))?,
                }
            }
            NotifiersCommand::Show { name } => {
                let n = client
                    .get_notifier(GetNotifierRequest { name: name.clone() })
                    .await
                    .map_err(|e| self.rpc_err(&e))?
                    .into_inner();
                match self.format {
                    OutputFormat::Json | OutputFormat::Yaml => self.data(&notifier_json(&n))?,
                    OutputFormat::Table => out(&notifier_details(&n))?,
                }
            }
        }
        Ok(EXIT_OK)
    }
}

/// The JSON of one notifier (`notifiers list -o json` lists them, without `problems`).
pub fn notifier_json(n: &NotifierStatus) -> Value {
    json!({
        "name": n.name,
        "transport": n.transport,
        "destination": n.destination,
        "on": n.on,
        "sent": n.sent,
        "resolved": n.resolved,
        "failed": n.failed,
        "given_up": n.given_up,
        "last_delivery": timestamp_json(n.last_delivery.as_ref()),
        "last_error": n.last_error,
        "last_error_at": timestamp_json(n.last_error_at.as_ref()),
        "open_problems": n.open_problems,
        "undelivered": n.undelivered,
        "since": timestamp_json(n.since.as_ref()),
        "problems": n.problems.iter().map(|p| json!({
            "key": p.key,
            "title": p.title,
            "since": timestamp_json(p.since.as_ref()),
            "delivered": p.delivered,
            "attempts": p.attempts,
            "last_error": p.last_error,
            "next_attempt": timestamp_json(p.next_attempt.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// `notifiers list`: one line per notifier.
pub fn notifiers_table(ns: &[NotifierStatus]) -> String {
    if ns.is_empty() {
        return "no notifiers; apply a fleet file with kind: Notifier (see deploy/notifications/notifiers.yaml)\n".to_string();
    }
    let mut t = Table::new(&[
        "NAME",
        "TRANSPORT",
        "ON",
        "SENT",
        "RESOLVED",
        "FAILED",
        "OPEN",
        "LAST DELIVERY",
        "LAST ERROR",
    ]);
    for n in ns {
        t.row(vec![
            n.name.clone(),
            n.transport.clone(),
            n.on.join(","),
            n.sent.to_string(),
            n.resolved.to_string(),
            n.failed.to_string(),
            n.open_problems.to_string(),
            local_time(n.last_delivery.as_ref()),
            or_dash(&n.last_error).chars().take(60).collect(),
        ]);
    }
    t.render()
}

/// `notifiers show NAME`.
pub fn notifier_details(n: &NotifierStatus) -> String {
    let mut kv = Table::new(&["", ""]);
    for (k, v) in [
        ("name:", n.name.clone()),
        ("transport:", format!("{} {}", n.transport, n.destination)),
        ("on:", n.on.join(", ")),
        (
            "delivered:",
            format!(
                "{} sent, {} resolved; {} failed attempts, {} given up",
                n.sent, n.resolved, n.failed, n.given_up
            ),
        ),
        ("last delivery:", local_time(n.last_delivery.as_ref())),
        (
            "last error:",
            if n.last_error.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{} ({})",
                    n.last_error,
                    local_time(n.last_error_at.as_ref())
                )
            },
        ),
        (
            "open problems:",
            format!("{} ({} not delivered yet)", n.open_problems, n.undelivered),
        ),
    ] {
        kv.row(vec![k.to_string(), v]);
    }
    let mut s: String = kv
        .render()
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    if !n.problems.is_empty() {
        let mut t = Table::new(&["PROBLEM", "SINCE", "DELIVERED", "ATTEMPTS", "LAST ERROR"]);
        for p in &n.problems {
            t.row(vec![
                p.key.clone(),
                local_time(p.since.as_ref()),
                if p.delivered { "yes" } else { "no" }.to_string(),
                p.attempts.to_string(),
                or_dash(&p.last_error).chars().take(60).collect(),
            ]);
        }
        s.push('\n');
        s.push_str(&t.render());
    }
    s
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use syncfleet_proto::v1::NotifierProblem;

    fn sample() -> NotifierStatus {
        NotifierStatus {
            name: "ops-teams".into(),
            transport: "webhook".into(),
            destination: "https://example.webhook.office.com".into(),
            on: vec!["held".into(), "failed".into()],
            sent: 3,
            resolved: 1,
            failed: 2,
            last_error: "webhook answered HTTP 503: busy".into(),
            open_problems: 1,
            problems: vec![NotifierProblem {
                key: "held/3f2a1b9c".into(),
                title: "[syncfleet] run 3f2a1b9c on sync-01 held".into(),
                delivered: true,
                attempts: 3,
                ..NotifierProblem::default()
            }],
            ..NotifierStatus::default()
        }
    }

    #[test]
    fn list_and_show_name_the_counts_and_the_last_error() {
        let table = notifiers_table(&[sample()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(lines[1].starts_with("ops-teams"), "{table}");
        assert!(lines[1].contains("held,failed"), "{table}");
        assert!(
            lines[1].contains("webhook answered HTTP 503: busy"),
            "{table}"
        );
        let details = notifier_details(&sample());
        for want in [
            "transport:",
            "webhook https://example.webhook.office.com",
            "3 sent, 1 resolved; 2 failed attempts, 0 given up",
            "webhook answered HTTP 503: busy",
            "1 (0 not delivered yet)",
            "held/3f2a1b9c",
        ] {
            assert!(details.contains(want), "{want} in\n{details}");
        }
        assert!(notifiers_table(&[]).starts_with("no notifiers;"));
        let j = notifier_json(&sample());
        assert_eq!(j["problems"][0]["attempts"], 3);
        assert_eq!(j["last_delivery"], serde_json::Value::Null);
    }
}
