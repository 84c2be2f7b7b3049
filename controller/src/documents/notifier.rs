//! Validation of `kind: Notifier` documents beyond parsing: what they send, to whom and
//! through which transport. Unknown fields and values are already refused, with a did-you-mean,
//! by the loader; this checks the rules between fields and the forms of URLs and addresses.

use std::collections::BTreeSet;
use std::time::Duration;

use super::model::{NotifierDoc, SmtpTls};
use crate::limits::{self, MAX_SELECTOR_TERMS, MAX_TARGET_AGENTS, echo};

/// Longest webhook URL accepted (receivers' URLs carry a token, but none is near this).
pub const MAX_URL_LEN: usize = 2048;
/// Most recipients of one e-mail notifier.
pub const MAX_RECIPIENTS: usize = 50;
/// Most schedules one notifier may name.
pub const MAX_NOTIFIER_SCHEDULES: usize = 1000;
/// Longest delivery timeout a notifier may set.
pub const MAX_NOTIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// Every problem of one notifier, reported through `bad` as `FIELD: what is wrong; fix`.
///
/// Rules: `on` lists at least one kind, each once; exactly one of `webhook` and `email`; a
/// webhook URL is absolute `https://` or `http://` with a host; an e-mail has a server host
/// name, a valid `from` and 1 to [`MAX_RECIPIENTS`] valid `to` addresses, `username` and
/// `password_env` together (never a password itself), credentials only over TLS; timeouts
/// between 1s and [`MAX_NOTIFY_TIMEOUT`]; targets and schedule names as for schedules.
pub fn check_notifier(n: &NotifierDoc, bad: &mut impl FnMut(String)) {
    if n.description.chars().count() > super::MAX_DESCRIPTION_LEN {
        bad(format!(
            "description: too long; shorten it to at most {} characters",
            super::MAX_DESCRIPTION_LEN
        ));
    }
    if n.on.is_empty() {
        bad("on: empty; list what to send, e.g. on: [held, failed, agent_lost, engine_unhealthy, schedule_saturated]".to_string());
    }
    let mut seen = BTreeSet::new();
    for (i, k) in n.on.iter().enumerate() {
        if !seen.insert(*k) {
            bad(format!(
                "on[{i}]: {} is listed twice; remove one",
                k.as_str()
            ));
        }
    }
    if let Some(t) = &n.targets {
        if t.agents.len() > MAX_TARGET_AGENTS {
            bad(format!(
                "targets.agents: more than {MAX_TARGET_AGENTS} agents; use a label selector instead"
            ));
        }
        for (i, a) in t.agents.iter().enumerate().take(MAX_TARGET_AGENTS) {
            if let Err(e) = limits::check_ident(&format!("targets.agents[{i}]"), a) {
                bad(format!("{e}; agent names have at most 63 characters"));
            }
        }
        match t.selector_pairs() {
            Err(e) => bad(format!(
                "targets.selector: {e}; write key=value pairs separated by commas, e.g. \"env=prod,role=primary\""
            )),
            Ok(p) if p.len() > MAX_SELECTOR_TERMS => bad(format!(
                "targets.selector: more than {MAX_SELECTOR_TERMS} terms; select on fewer labels"
            )),
            Ok(_) => {}
        }
        if t.agents.is_empty() && t.selector.as_deref().is_none_or(|s| s.trim().is_empty()) {
            bad("targets: no agents and no selector; leave targets out to hear about every agent, or give targets: {selector: \"env=prod\"}".to_string());
        }
    }
    if n.schedules.len() > MAX_NOTIFIER_SCHEDULES {
        bad(format!(
            "schedules: more than {MAX_NOTIFIER_SCHEDULES}; leave the list out to hear about every schedule"
        ));
    }
    for (i, s) in n.schedules.iter().enumerate().take(MAX_NOTIFIER_SCHEDULES) {
        if !super::valid_name(s) {
            bad(format!(
                "schedules[{i}]: {} is not a schedule name; use the name of a Schedule document",
                echo(s)
            ));
        }
    }
    match (&n.webhook, &n.email) {
        (None, None) => bad(
            "webhook, email: neither is given; add webhook: {url: \"https://...\"} or email: {server: ..., from: ..., to: [...]}"
                .to_string(),
        ),
        (Some(_), Some(_)) => bad(
            "webhook, email: both are given; a notifier has one transport, write two notifiers"
                .to_string(),
        ),
        _ => {}
    }
    if let Some(w) = &n.webhook {
        check_url(&w.url, bad);
        check_timeout("webhook.timeout", w.timeout, bad);
        check_file("webhook.ca_file", w.ca_file.as_deref(), bad);
    }
    if let Some(e) = &n.email {
        if e.server.trim().is_empty() || e.server.contains(['/', ' ', ':']) {
            bad(format!(
                "email.server: {} is not a host name; give the SMTP server's name, e.g. smtp.example.com (the port goes in email.port)",
                echo(&e.server)
            ));
        }
        if e.from.parse::<lettre::message::Mailbox>().is_err() {
            bad(format!(
                "email.from: {} is not an e-mail address; write e.g. syncfleet@example.com or \"syncfleet <syncfleet@example.com>\"",
                echo(&e.from)
            ));
        }
        if e.to.is_empty() {
            bad("email.to: empty; list at least one recipient".to_string());
        }
        if e.to.len() > MAX_RECIPIENTS {
            bad(format!(
                "email.to: more than {MAX_RECIPIENTS} recipients; send to a distribution list"
            ));
        }
        for (i, to) in e.to.iter().enumerate().take(MAX_RECIPIENTS) {
            if to.parse::<lettre::message::Mailbox>().is_err() {
                bad(format!(
                    "email.to[{i}]: {} is not an e-mail address; write e.g. ops@example.com",
                    echo(to)
                ));
            }
        }
        match (&e.username, &e.password_env) {
            (Some(_), None) => bad(
                "email.password_env: missing; name the controller's environment variable that holds the SMTP password (the password is never written in fleet files)"
                    .to_string(),
            ),
            (None, Some(_)) => {
                bad("email.username: missing; give the SMTP user that password_env belongs to".to_string());
            }
            _ => {}
        }
        if let Some(v) = &e.password_env
            && (v.is_empty()
                || v.len() > 128
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || v.starts_with(|c: char| c.is_ascii_digit()))
        {
            bad(format!(
                "email.password_env: {} is not an environment variable name; use letters, digits and '_', e.g. SYNCFLEET_SMTP_PASSWORD",
                echo(v)
            ));
        }
        if e.tls == SmtpTls::None && e.username.is_some() {
            bad("email.tls: none with a username would send the password in clear; use tls: starttls or tls: tls, or a relay without authentication".to_string());
        }
        check_timeout("email.timeout", e.timeout, bad);
        check_file("email.ca_file", e.ca_file.as_deref(), bad);
    }
}

fn check_url(url: &str, bad: &mut impl FnMut(String)) {
    if url.len() > MAX_URL_LEN {
        bad(format!(
            "webhook.url: longer than {MAX_URL_LEN} characters; use the receiver's URL"
        ));
        return;
    }
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {}
        Ok(u) => bad(format!(
            "webhook.url: {} has scheme {:?} or no host; use an https:// (or http://) URL with a host",
            echo(url),
            u.scheme()
        )),
        Err(e) => bad(format!(
            "webhook.url: {} is not a URL ({e}); write e.g. https://hooks.example.com/services/T000/B000/XXXX",
            echo(url)
        )),
    }
}

fn check_timeout(field: &str, t: Option<Duration>, bad: &mut impl FnMut(String)) {
    if let Some(t) = t
        && (t < Duration::from_secs(1) || t > MAX_NOTIFY_TIMEOUT)
    {
        bad(format!(
            "{field}: {} is out of range; use 1s to {}",
            humantime::format_duration(t),
            humantime::format_duration(MAX_NOTIFY_TIMEOUT)
        ));
    }
}

fn check_file(field: &str, path: Option<&str>, bad: &mut impl FnMut(String)) {
    if let Some(p) = path
        && (p.trim().is_empty() || p.len() > 4096)
    {
        bad(format!(
            "{field}: not a file path; give the PEM file of the receiver's CA on the controller host, or leave it out for the system's roots"
        ));
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use crate::documents::{FleetFileErrors, parse_str, validate};
    use std::collections::BTreeSet;

    fn problems(yaml: &str) -> Vec<String> {
        let e: FleetFileErrors = match parse_str("n.yaml", yaml) {
            Err(e) => e,
            Ok(docs) => match validate(&docs, &BTreeSet::new()) {
                Ok(()) => return Vec::new(),
                Err(e) => e,
            },
        };
        e.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_webhook_and_an_email_notifier_load_and_validate() {
        let ok = "kind: Notifier\nname: teams\non: [held, failed]\nresolved: true\nwebhook: {url: \"https://example.com/hook\", timeout: 5s}\n---\nkind: Notifier\nname: mail\non: [held, agent_lost, engine_unhealthy, schedule_saturated]\ntargets: {selector: env=prod}\nschedules: [delta]\nemail: {server: smtp.example.com, tls: starttls, from: syncfleet@example.com, to: [ops@example.com], username: syncfleet, password_env: SMTP_PASSWORD}\n";
        assert_eq!(problems(ok), Vec::<String>::new());
        let docs = parse_str("n.yaml", ok).unwrap();
        let back =
            crate::documents::to_yaml(&docs.iter().map(|d| d.doc.clone()).collect::<Vec<_>>());
        let again = parse_str("n.yaml", &back).unwrap();
        assert_eq!(
            docs.iter().map(|d| &d.doc).collect::<Vec<_>>(),
            again.iter().map(|d| &d.doc).collect::<Vec<_>>()
        );
        let json = crate::documents::canonical_json(&docs[1].doc);
        assert_eq!(
            crate::documents::from_json("Notifier", &json).unwrap(),
            docs[1].doc
        );
    }

    #[test]
    fn the_shipped_example_notifiers_are_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/notifications/notifiers.yaml");
        let docs = crate::documents::load_paths(&[path]).unwrap();
        assert_eq!(docs.len(), 2);
        validate(&docs, &BTreeSet::new()).unwrap();
    }

    #[test]
    fn misspelt_fields_and_values_get_a_did_you_mean() {
        let p =
            problems("kind: Notifier\nname: t\non: [held]\nwebhok: {url: \"https://e.com/\"}\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("unknown field \"webhok\" (did you mean webhook?)"),
            "{p:?}"
        );
        let p =
            problems("kind: Notifier\nname: t\non: [hled]\nwebhook: {url: \"https://e.com/\"}\n");
        assert!(p[0].contains("on[0]: unknown value \"hled\""), "{p:?}");
        assert!(
            p[0].contains("use held, failed, agent_lost, engine_unhealthy or schedule_saturated"),
            "{p:?}"
        );
        let p = problems("kind: Notifer\nname: t\n");
        assert!(p[0].contains("did you mean Notifier?"), "{p:?}");
    }

    #[test]
    fn rules_between_fields_are_explained() {
        let p = problems("kind: Notifier\nname: t\non: []\n");
        assert_eq!(
            p,
            vec![
                "n.yaml document 1 (Notifier t): on: empty; list what to send, e.g. on: [held, failed, agent_lost, engine_unhealthy, schedule_saturated]".to_string(),
                "n.yaml document 1 (Notifier t): webhook, email: neither is given; add webhook: {url: \"https://...\"} or email: {server: ..., from: ..., to: [...]}".to_string(),
            ]
        );
        let p = problems(
            "kind: Notifier\nname: t\non: [held, held]\nwebhook: {url: \"ftp://e.com/\", timeout: 10m}\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("on[1]: held is listed twice"), "{p:?}");
        assert!(
            p[1].contains("webhook.url: \"ftp://e.com/\" has scheme"),
            "{p:?}"
        );
        assert!(
            p[2].contains("webhook.timeout: 10m is out of range; use 1s to 5m"),
            "{p:?}"
        );
        let p = problems(
            "kind: Notifier\nname: t\non: [failed]\nemail: {server: \"smtp:25\", tls: none, from: nobody, to: [], username: u}\n",
        );
        let joined = p.join("\n");
        for want in [
            "email.server: \"smtp:25\" is not a host name",
            "email.from: \"nobody\" is not an e-mail address",
            "email.to: empty",
            "email.password_env: missing",
            "email.tls: none with a username would send the password in clear",
        ] {
            assert!(joined.contains(want), "{want} in {joined}");
        }
    }
}
