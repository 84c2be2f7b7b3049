//! Client values quoted back in error messages, cut to [`ECHO_CHARS`] characters so an error
//! never carries attacker-sized input.

use std::fmt::Write as _;

/// Characters of a client value quoted back in an error.
pub const ECHO_CHARS: usize = 64;

/// A client value quoted for an error: `"sync-01"`, or for long values the first
/// [`ECHO_CHARS`] characters and the size, `"xxxx…"… (100000 bytes)`. Control characters are
/// escaped as in Rust's `{:?}`.
pub fn echo(value: &str) -> String {
    cut(value, true)
}

/// Like [`echo`] without the quotes, for places (file names, sources) shown as they are.
pub fn clip(value: &str) -> String {
    cut(value, false)
}

fn cut(value: &str, quoted: bool) -> String {
    let mut chars = value.char_indices();
    let end = chars.nth(ECHO_CHARS).map(|(i, _)| i);
    let head = &value[..end.unwrap_or(value.len())];
    let mut out = if quoted {
        format!("{head:?}")
    } else {
        head.to_string()
    };
    if end.is_some() {
        // Writing to a String cannot fail.
        let _ = write!(out, "… ({} bytes)", value.len());
    }
    out
}
