//! Checks of a schedule's `trigger.on_change` (see [`OnChangeDoc`]): what the agents will poll
//! must be complete and plausible before any agent is told about it, because a source an agent
//! cannot use is only noticed there, as an error in `schedules show`.

use std::collections::BTreeSet;
use std::time::Duration;

use syncfleet_proto::echo::echo;
use syncfleet_proto::names::valid_name;
use syncfleet_proto::schedule_model::{ChangeSourceDoc, OnChangeDoc};

/// Most sources one schedule may watch.
pub const MAX_SOURCES: usize = 16;
/// Shortest poll interval: a directory or database asked more often is being hammered.
pub const MIN_POLL: Duration = Duration::from_secs(1);
/// Longest poll interval, quiet period and minimum interval.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Longest URL, base DN, filter, connection string or query, in characters.
pub const MAX_FIELD: usize = 4096;

/// Reports every problem of `c` through `bad`, each starting with its field path.
pub fn check(c: &OnChangeDoc, bad: &mut impl FnMut(String)) {
    if c.sources.is_empty() {
        bad(
            "trigger.on_change.sources: empty; name at least one source (ldap, sql or http)".into(),
        );
    }
    if c.sources.len() > MAX_SOURCES {
        bad(format!(
            "trigger.on_change.sources: {} sources; at most {MAX_SOURCES} per schedule; split the schedule",
            c.sources.len()
        ));
        return;
    }
    for (field, d) in [
        ("trigger.on_change.quiet_for", c.quiet_for),
        ("trigger.on_change.min_interval", c.min_interval),
    ] {
        if let Some(d) = d
            && d > MAX_DELAY
        {
            bad(format!(
                "{field}: {} is more than 24h; use at most 24h",
                humantime::format_duration(d)
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (i, s) in c.sources.iter().enumerate() {
        let at = format!("trigger.on_change.sources[{i}]");
        if !valid_name(&s.name) {
            bad(format!(
                "{at}.name: {} is not a valid name; use 1-63 letters, digits, '.', '_' or '-'",
                echo(&s.name)
            ));
        } else if !names.insert(s.name.as_str()) {
            bad(format!(
                "{at}.name: {} is used twice in this schedule; give each source its own name",
                echo(&s.name)
            ));
        }
        check_source(&at, s, bad);
    }
}

fn check_source(at: &str, s: &ChangeSourceDoc, bad: &mut impl FnMut(String)) {
    let kinds = [s.ldap.is_some(), s.sql.is_some(), s.http.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds != 1 {
        bad(format!(
            "{at}: give exactly one of ldap, sql and http (found {kinds})"
        ));
        return;
    }
    if let Some(p) = s.poll
        && !(MIN_POLL..=MAX_DELAY).contains(&p)
    {
        bad(format!(
            "{at}.poll: {} is outside 1s..24h; poll at most once a second and at least once a day",
            humantime::format_duration(p)
        ));
    }
    let mut text = |field: &str, value: &str, required: bool| {
        if required && value.trim().is_empty() {
            bad(format!("{at}.{field}: empty; it is required"));
        } else if value.chars().count() > MAX_FIELD {
            bad(format!(
                "{at}.{field}: {} characters; at most {MAX_FIELD}",
                value.chars().count()
            ));
        }
    };
    if let Some(l) = &s.ldap {
        text("ldap.url", &l.url, true);
        text("ldap.base", &l.base, true);
        if let Some(f) = &l.filter {
            text("ldap.filter", f, true);
        }
        for (field, v) in l
            .object_classes
            .iter()
            .map(|v| ("ldap.object_classes", v))
            .chain(
                l.ignore_attributes
                    .iter()
                    .map(|v| ("ldap.ignore_attributes", v)),
            )
            .chain(
                l.watch_attributes
                    .iter()
                    .map(|v| ("ldap.watch_attributes", v)),
            )
        {
            if !is_attribute_name(v) {
                bad(format!(
                    "{at}.{field}: {} is not an LDAP attribute or class name (letters, digits, '-', ';')",
                    echo(v)
                ));
            }
        }
        let lower = l.url.trim().to_ascii_lowercase();
        if lower.starts_with("ldaps://") {
            if l.start_tls == Some(true) {
                bad(format!(
                    "{at}.ldap.start_tls: the URL is ldaps:// (TLS from the start); StartTLS applies to ldap:// only"
                ));
            }
        } else if !lower.starts_with("ldap://") {
            bad(format!(
                "{at}.ldap.url: {} is not an LDAP URL; write ldaps://host:636 or ldap://host:389",
                echo(&l.url)
            ));
        }
        if let Some(f) = &l.filter {
            let t = f.trim();
            if !(t.starts_with('(') && t.ends_with(')')) {
                bad(format!(
                    "{at}.ldap.filter: {} is not an LDAP filter; write it in parentheses, e.g. (department=HR)",
                    echo(f)
                ));
            }
        }
        check_credential(at, "ldap", l.credential.as_deref(), bad);
    }
    if let Some(q) = &s.sql {
        let mut text = |field: &str, value: &str| {
            if value.trim().is_empty() {
                bad(format!("{at}.{field}: empty; it is required"));
            } else if value.chars().count() > MAX_FIELD {
                bad(format!(
                    "{at}.{field}: {} characters; at most {MAX_FIELD}",
                    value.chars().count()
                ));
            }
        };
        text("sql.connection", &q.connection);
        text("sql.query", &q.query);
        if contains_password(&q.connection) {
            bad(format!(
                "{at}.sql.connection: contains a password; fleet files are readable by every operator. \
                 Put it in the agent's configuration ([credentials.NAME] password_file) and name it with sql.credential"
            ));
        }
        check_credential(at, "sql", q.credential.as_deref(), bad);
    }
    if let Some(h) = &s.http {
        let lower = h.url.trim().to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            bad(format!(
                "{at}.http.url: {} is not an http(s) URL",
                echo(&h.url)
            ));
        } else if h.url.chars().count() > MAX_FIELD {
            bad(format!("{at}.http.url: longer than {MAX_FIELD} characters"));
        }
        if !(h.pointer.is_empty() || h.pointer.starts_with('/')) {
            bad(format!(
                "{at}.http.pointer: {} is not a JSON pointer; start it with '/', e.g. /lastModified",
                echo(&h.pointer)
            ));
        }
        check_credential(at, "http", h.credential.as_deref(), bad);
    }
}

fn check_credential(at: &str, kind: &str, name: Option<&str>, bad: &mut impl FnMut(String)) {
    if let Some(n) = name
        && !valid_name(n)
    {
        bad(format!(
            "{at}.{kind}.credential: {} is not a valid credential name; use the name of a [credentials.NAME] section of the agent's configuration",
            echo(n)
        ));
    }
}

/// LDAP attribute descriptions and class names: a letter, then letters, digits, `-` (options
/// after `;`). OIDs are allowed too.
fn is_attribute_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ';' | '.'))
}

/// Whether a connection string carries a secret: `password=`/`pwd=` keys (key-value and ADO.NET
/// forms) or `user:password@` in a URL.
fn contains_password(conn: &str) -> bool {
    let lower = conn.to_ascii_lowercase();
    let has_key = lower.split([';', ' ']).any(|part| {
        let key = part.split('=').next().unwrap_or("").trim();
        part.contains('=') && matches!(key, "password" | "pwd")
    });
    let url_secret = lower
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    has_key || url_secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncfleet_proto::schedule_model::{HttpSourceDoc, LdapSourceDoc, SqlDriver, SqlSourceDoc};

    fn problems(c: &OnChangeDoc) -> Vec<String> {
        let mut out = Vec::new();
        check(c, &mut |m| out.push(m));
        out
    }

    fn ldap(url: &str) -> ChangeSourceDoc {
        ChangeSourceDoc {
            name: "people".into(),
            poll: None,
            ldap: Some(LdapSourceDoc {
                url: url.into(),
                start_tls: None,
                base: "ou=People,dc=example,dc=org".into(),
                scope: Default::default(),
                object_classes: vec!["inetOrgPerson".into()],
                filter: None,
                ignore_attributes: vec![],
                watch_attributes: vec![],
                change_stamp: Default::default(),
                credential: Some("corp-ldap".into()),
            }),
            sql: None,
            http: None,
        }
    }

    fn on(sources: Vec<ChangeSourceDoc>) -> OnChangeDoc {
        OnChangeDoc {
            sources,
            quiet_for: None,
            min_interval: None,
        }
    }

    #[test]
    fn a_complete_source_passes_and_defaults_are_10s_and_1m() {
        let c = on(vec![ldap("ldaps://dc01:636")]);
        assert_eq!(problems(&c), Vec::<String>::new());
        assert_eq!(c.quiet_for(), Duration::from_secs(10));
        assert_eq!(c.min_interval(), Duration::from_secs(60));
        assert_eq!(c.sources[0].poll(), Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut dup = ldap("ldap://dc01");
        if let Some(l) = dup.ldap.as_mut() {
            l.filter = Some("department=HR".into());
            l.object_classes = vec!["user)(x".into()];
        }
        let both = ChangeSourceDoc {
            name: "b".into(),
            sql: Some(SqlSourceDoc {
                driver: SqlDriver::Postgres,
                connection: "postgres://hr:secret@db01/hr".into(),
                query: "SELECT max(updated_at) FROM person".into(),
                credential: None,
            }),
            http: Some(HttpSourceDoc {
                url: "https://api".into(),
                pointer: "/x".into(),
                credential: None,
            }),
            ..ldap("ftp://x")
        };
        let mut c = on(vec![ldap("ldaps://dc01"), dup, both]);
        c.quiet_for = Some(Duration::from_secs(2 * 86_400));
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|m| m.starts_with("trigger.on_change.quiet_for: 2days")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("trigger.on_change.sources[1].name: \"people\" is used twice")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with(
                "trigger.on_change.sources[1].ldap.filter: \"department=HR\" is not an LDAP filter"
            )),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("trigger.on_change.sources[1].ldap.object_classes: \"user)(x\"")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m == "trigger.on_change.sources[2]: give exactly one of ldap, sql and http (found 3)"), "{p:?}");
    }

    #[test]
    fn a_password_in_a_connection_string_is_refused() {
        for conn in [
            "postgres://hr:secret@db01/hr",
            "host=db01 user=hr password=secret dbname=hr",
            "Server=tcp:db01,1433;Database=HR;User Id=hr;Password=secret",
            "Server=db01;PWD=secret",
        ] {
            assert!(contains_password(conn), "{conn}");
        }
        for conn in [
            "postgres://hr@db01/hr",
            "host=db01 user=hr dbname=hr",
            "Server=tcp:db01,1433;Database=HR;Integrated Security=SSPI",
        ] {
            assert!(!contains_password(conn), "{conn}");
        }
    }

    #[test]
    fn an_empty_source_list_and_a_too_fast_poll_are_refused() {
        assert_eq!(
            problems(&on(vec![])),
            vec!["trigger.on_change.sources: empty; name at least one source (ldap, sql or http)"]
        );
        let mut s = ldap("ldaps://dc01");
        s.poll = Some(Duration::from_millis(200));
        let p = problems(&on(vec![s]));
        assert!(
            p[0].starts_with("trigger.on_change.sources[0].poll: 200ms is outside 1s..24h"),
            "{p:?}"
        );
    }
}
