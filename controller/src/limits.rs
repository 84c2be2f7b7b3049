//! Limits on what clients may send, and how client input is quoted back in errors.
//!
//! Every handler checks its free text ([`check_text`]), its identifiers ([`check_ident`]) and
//! its counts ([`check_count`]) here, so one call, one CLI command and one fleet file meet the
//! same limits and get the same messages. Errors name the field, the value's size and the
//! limit. Values are quoted back only through [`echo`] / [`clip`], which cut them to
//! [`ECHO_CHARS`] characters: an error never carries attacker-sized input (a gRPC error travels
//! in an HTTP/2 header, and a message of a megabyte would reach the client only as a header
//! size error).

use std::fmt::Write as _;

// The counts are far above what a real fleet uses (an engine has a few dozen management agents,
// a full cycle a few dozen steps, a schedule a handful of cron lines) and low enough that one
// request cannot make the controller store, plan or send work by the megabyte.

/// Longest free-text field (notes, reasons, descriptions of pauses and drains), in bytes.
pub const MAX_TEXT: usize = 1024;
/// Longest identifier a call may name (agent, schedule, sequence, run id, kind), in bytes.
/// Stored names are shorter (63 characters); this only bounds what is looked up and echoed.
pub const MAX_IDENT: usize = 253;
/// Longest management agent or run profile name, in characters.
pub const MAX_ENGINE_NAME: usize = 256;
/// Longest cron expression or time zone name, in characters.
pub const MAX_EXPRESSION: usize = 256;
/// Most steps in one run: an ad-hoc `StartRun`, or all stages of a sequence together.
pub const MAX_STEPS_PER_RUN: usize = 256;
/// Most stages in one sequence.
pub const MAX_STAGES: usize = 64;
/// Most steps in one stage (an MA appears at most once per stage).
pub const MAX_STEPS_PER_STAGE: usize = 64;
/// Most cron expressions in one schedule's `trigger.cron`.
pub const MAX_CRON_ENTRIES: usize = 64;
/// Most blackout windows in one schedule.
pub const MAX_BLACKOUTS: usize = 64;
/// Most agents named in one schedule's `targets.agents`.
pub const MAX_TARGET_AGENTS: usize = 1000;
/// Most `key=value` terms in one label selector.
pub const MAX_SELECTOR_TERMS: usize = 16;
/// Most documents in one apply.
pub const MAX_DOCUMENTS: usize = 1000;
/// Longest document source (`path#N`) shown as it is; longer ones are cut.
pub const MAX_SOURCE: usize = 4096;
/// Largest error message built from a list of problems, in bytes. A gRPC error travels in an
/// HTTP/2 header (percent-encoded, so up to three times longer) and clients refuse header lists
/// over 16 KiB; longer lists end with a count of what was left out.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Most problems returned as warnings in one response.
pub const MAX_WARNINGS: usize = 500;
/// Characters of a client value quoted back in an error.
pub use syncfleet_proto::echo::ECHO_CHARS;

/// A client value over a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} is {len} bytes; the limit is {limit} bytes, shorten it")]
    TooLong {
        field: String,
        len: usize,
        limit: usize,
    },
    /// `value` is already cut by [`echo`] and shows the size.
    #[error("{field} {value} is too long; the limit is {limit} {unit}")]
    IdentTooLong {
        field: String,
        value: String,
        limit: usize,
        unit: &'static str,
    },
    #[error("{field}: {count} {what}; at most {limit} {what} per {per}")]
    TooMany {
        field: String,
        count: usize,
        what: &'static str,
        limit: usize,
        per: &'static str,
    },
}

/// Refuse free text longer than [`MAX_TEXT`] bytes. `field` names it as the client wrote it
/// (`note`, `reason`).
/// `value` cut to at most `max` bytes at a character boundary: for text agents report (kept in
/// memory and shown to operators) that has no reason to be long.
pub fn cut_to(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

pub fn check_text(field: &str, value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_TEXT {
        return Err(LimitError::TooLong {
            field: field.to_string(),
            len: value.len(),
            limit: MAX_TEXT,
        });
    }
    Ok(())
}

/// Refuse an identifier longer than [`MAX_IDENT`] bytes; the error quotes it through [`echo`].
pub fn check_ident(field: &str, value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_IDENT {
        return Err(LimitError::IdentTooLong {
            field: field.to_string(),
            value: echo(value),
            limit: MAX_IDENT,
            unit: "bytes",
        });
    }
    Ok(())
}

/// Refuse a management agent or run profile name longer than [`MAX_ENGINE_NAME`] characters
/// (the engine's own limit is far lower; this bounds what is stored and echoed).
pub fn check_engine_name(field: &str, value: &str) -> Result<(), LimitError> {
    if value.chars().count() > MAX_ENGINE_NAME {
        return Err(LimitError::IdentTooLong {
            field: field.to_string(),
            value: echo(value),
            limit: MAX_ENGINE_NAME,
            unit: "characters",
        });
    }
    Ok(())
}

/// Refuse `count` items of `what` when more than `limit` are allowed per `per`:
/// `steps: 300 steps; at most 256 steps per run`.
pub fn check_count(
    field: &str,
    count: usize,
    what: &'static str,
    limit: usize,
    per: &'static str,
) -> Result<(), LimitError> {
    if count > limit {
        return Err(LimitError::TooMany {
            field: field.to_string(),
            count,
            what,
            limit,
            per,
        });
    }
    Ok(())
}

/// Refuse a cron expression or time zone name longer than [`MAX_EXPRESSION`] characters.
pub fn check_expression(field: &str, value: &str) -> Result<(), LimitError> {
    if value.chars().count() > MAX_EXPRESSION {
        return Err(LimitError::IdentTooLong {
            field: field.to_string(),
            value: echo(value),
            limit: MAX_EXPRESSION,
            unit: "characters",
        });
    }
    Ok(())
}

/// `lines` joined by newlines, at most [`MAX_ERROR_MESSAGE`] bytes: the lines that fit, then
/// `… and N more problem(s) not shown` and `hint` (e.g. where to see them all), then `last`
/// (the summary line), which is always kept.
pub fn join_bounded(lines: &[String], hint: &str, last: &str) -> String {
    let reserve = last.len() + hint.len() + 64;
    let mut out = String::new();
    let mut shown = 0;
    for line in lines {
        if out.len() + line.len() + 1 + reserve > MAX_ERROR_MESSAGE {
            break;
        }
        out.push_str(line);
        out.push('\n');
        shown += 1;
    }
    if shown < lines.len() {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "… and {} more problem(s) not shown{hint}",
            lines.len() - shown
        );
    }
    if last.is_empty() {
        out.pop();
    } else {
        out.push_str(last);
    }
    out
}

// Quoting client input for errors is shared with the schedule model in `syncfleet-proto`.
pub use syncfleet_proto::echo::{clip, echo};

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_long_values_and_names_their_size() {
        assert_eq!(echo("sync-01"), "\"sync-01\"");
        let exact = "x".repeat(ECHO_CHARS);
        assert_eq!(echo(&exact), format!("{exact:?}"));
        let huge = "é".repeat(100_000);
        let shown = echo(&huge);
        assert_eq!(
            shown,
            format!("\"{}\"… (200000 bytes)", "é".repeat(ECHO_CHARS))
        );
        assert_eq!(clip("a\nb"), "a\nb");
        assert_eq!(echo("a\nb"), "\"a\\nb\"");
        assert!(clip(&huge).ends_with("… (200000 bytes)"));
    }

    #[test]
    fn long_problem_lists_are_cut_with_a_count() {
        let few: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(join_bounded(&few, "", "2 problems"), "a\nb\n2 problems");
        assert_eq!(join_bounded(&few, "", ""), "a\nb");
        let many: Vec<String> = (0..1000)
            .map(|i| format!("problem {i:04} {}", "x".repeat(80)))
            .collect();
        let text = join_bounded(&many, "; see all with --dry-run", "1000 problems");
        assert!(text.len() <= MAX_ERROR_MESSAGE, "{}", text.len());
        assert!(text.starts_with("problem 0000"));
        let shown = text.lines().filter(|l| l.starts_with("problem ")).count();
        assert!(shown > 10, "{shown}");
        assert!(
            text.ends_with(&format!(
                "… and {} more problem(s) not shown; see all with --dry-run\n1000 problems",
                1000 - shown
            )),
            "{text}"
        );
    }

    #[test]
    fn limits_name_the_field_the_value_and_the_limit() {
        assert!(check_text("note", &"n".repeat(MAX_TEXT)).is_ok());
        assert_eq!(
            check_text("note", &"n".repeat(2000))
                .unwrap_err()
                .to_string(),
            "note is 2000 bytes; the limit is 1024 bytes, shorten it"
        );
        let e = check_ident("agent", &"a".repeat(300))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("agent \"aaaa"), "{e}");
        assert!(
            e.ends_with("… (300 bytes) is too long; the limit is 253 bytes"),
            "{e}"
        );
        assert_eq!(
            check_count("steps", 300, "steps", MAX_STEPS_PER_RUN, "run")
                .unwrap_err()
                .to_string(),
            "steps: 300 steps; at most 256 steps per run"
        );
        assert!(check_count("steps", 256, "steps", MAX_STEPS_PER_RUN, "run").is_ok());
    }

    #[test]
    fn cut_to_keeps_whole_characters() {
        assert_eq!(cut_to("access-denied", 64), "access-denied");
        assert_eq!(cut_to("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it keeps the character out.
        assert_eq!(cut_to("aé", 2), "a");
        assert_eq!(cut_to(&"x".repeat(5000), MAX_TEXT).len(), MAX_TEXT);
    }
}
