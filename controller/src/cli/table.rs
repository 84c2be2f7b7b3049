//! Shared human rendering: the [`Table`] type, times, durations, time zones and pause states.
//! Pure functions (the current time is a parameter) so they are testable; each command's own
//! tables and blocks live in its file (`agents.rs`, `runs.rs`, ...) and build on these.
//!
//! Times are shown in the operator's local time zone (`YYYY-MM-DD HH:MM:SS`); `-o json` carries
//! the exact UTC instants. Schedule times are shown in the schedule's own zone
//! ([`zoned_rfc3339`]).

use chrono::{DateTime, Local, SecondsFormat, Utc};
use chrono_tz::Tz;
use prost_types::Timestamp;
use syncfleet_proto::v1::Pause;

/// How list tables are printed: `-o wide` shows the columns a table marks as wide
/// ([`Table::wide`]), `--no-headers` leaves out the header row (for `awk`, `cut`, `while read`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Show the wide-only columns too.
    pub wide: bool,
    /// Leave out the header row.
    pub no_headers: bool,
}

thread_local! {
    /// The view tables rendered on this thread use; [`View::default`] outside [`with_view`].
    static VIEW: std::cell::Cell<View> = const {
        std::cell::Cell::new(View {
            wide: false,
            no_headers: false,
        })
    };
}

/// Runs `f` (which renders tables) with `view` as the view of every [`Table::render`] inside
/// it. `Session::print_list` renders every list through it, so a list command gets `-o wide`
/// and `--no-headers` by building its table with [`Table::new`] (and [`Table::wide`] for the
/// extra columns) and printing it with `print_list`. Key-value blocks and tables nested in
/// `show` output are rendered outside it and keep their layout.
pub fn with_view<T>(view: View, f: impl FnOnce() -> T) -> T {
    let previous = VIEW.with(|v| v.replace(view));
    let result = f();
    VIEW.with(|v| v.set(previous));
    result
}

/// A table with a header row; columns are separated by two spaces and padded to the widest
/// cell. The last column is not padded, so lines carry no trailing spaces. Columns added with
/// [`Table::wide`] are shown only with `-o wide`.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Index of the first wide-only column (`headers.len()` when there is none).
    wide_from: Option<usize>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
            wide_from: None,
        }
    }

    /// Appends columns shown only with `-o wide` (as kubectl does: details that make lines too
    /// long for every day). Rows give their cells after the normal ones.
    pub fn wide(mut self, headers: &[&str]) -> Self {
        self.wide_from.get_or_insert(self.headers.len());
        self.headers
            .extend(headers.iter().map(|h| (*h).to_string()));
        self
    }

    /// Appends a row; missing cells are empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one `\n`-terminated line per row, header first (unless the
    /// current [`View`] says `no_headers`), wide columns only in a wide view.
    pub fn render(&self) -> String {
        self.render_view("", VIEW.with(std::cell::Cell::get))
    }

    /// Like [`render`](Self::render) with `indent` before every line.
    pub fn render_indented(&self, indent: &str) -> String {
        self.render_view(indent, VIEW.with(std::cell::Cell::get))
    }

    /// The table as `view` shows it, with `indent` before every line.
    pub fn render_view(&self, indent: &str, view: View) -> String {
        let n = match self.wide_from {
            Some(w) if !view.wide => w,
            _ => self.headers.len(),
        };
        let mut widths: Vec<usize> = self.headers[..n]
            .iter()
            .map(|h| {
                if view.no_headers {
                    0
                } else {
                    h.chars().count()
                }
            })
            .collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let header = (!view.no_headers).then_some(&self.headers);
        let mut out = String::new();
        for row in header.into_iter().chain(self.rows.iter()) {
            let mut line = String::from(indent);
            for (i, width) in widths.iter().enumerate() {
                let c = cell(row, i);
                if i + 1 == n {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = width - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Cell `i` of `row`, empty when the row is short.
fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

pub use crate::views::instant;

/// Local wall-clock time, `-` when unset.
pub fn local_time(t: Option<&Timestamp>) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            d.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// Compact duration: `850ms`, `45s`, `3m07s`, `2h05m`, `3d04h`.
pub fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `+11s`, `-850ms`: a signed compact duration of milliseconds.
pub fn signed_duration(ms: i64) -> String {
    if ms < 0 {
        format!(
            "-{}",
            duration(chrono::TimeDelta::milliseconds(ms.saturating_neg()))
        )
    } else {
        duration(chrono::TimeDelta::milliseconds(ms))
    }
}

/// `12s ago`, `-` when unset.
pub fn age(t: Option<&Timestamp>, now: DateTime<Utc>) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            let ago = now - d;
            if ago < chrono::TimeDelta::seconds(1) {
                "just now".to_string()
            } else {
                format!("{} ago", duration(ago))
            }
        },
    )
}

/// Time between `start` and `end` (or `now` while unfinished); `-` before it started.
pub fn elapsed(start: Option<&Timestamp>, end: Option<&Timestamp>, now: DateTime<Utc>) -> String {
    match (instant(start), instant(end)) {
        (Some(s), Some(e)) => duration(e - s),
        (Some(s), None) => duration(now - s),
        _ => "-".to_string(),
    }
}

/// First block of a run id (32 random bits of a v4 UUID, or of a schedule's derived v5 id):
/// tells runs apart in progress lines and is accepted back as a unique prefix.
pub fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

pub fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A pause or drain state in one line: `paused since 2025-06-01 10:00:00 by alice: "patching"`
/// (`word` is `paused` or `draining`), or `off` when not paused.
pub fn pause_brief(p: Option<&Pause>, word: &str, off: &str) -> String {
    let Some(p) = p.filter(|p| p.paused) else {
        return off.to_string();
    };
    let mut s = word.to_string();
    if instant(p.at.as_ref()).is_some() {
        s.push_str(&format!(" since {}", local_time(p.at.as_ref())));
    }
    if !p.by.is_empty() {
        s.push_str(&format!(" by {}", p.by));
    }
    if !p.note.is_empty() {
        s.push_str(&format!(": {:?}", p.note));
    }
    s
}

/// The IANA zone `name`, `None` when unknown. Empty means UTC.
pub fn zone(name: &str) -> Option<Tz> {
    if name.is_empty() {
        return Some(Tz::UTC);
    }
    name.parse::<Tz>().ok()
}

/// RFC 3339 with the zone's offset, to the second (`2025-06-01T10:05:30+02:00`); `-` when
/// unset.
pub fn zoned_rfc3339(t: Option<&Timestamp>, tz: Tz) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| {
            d.with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, false)
        },
    )
}

/// Wall-clock time in the zone (`2025-06-01 10:05:30`); `-` when unset.
pub fn zoned_time(t: Option<&Timestamp>, tz: Tz) -> String {
    instant(t).map_or_else(
        || "-".to_string(),
        |d| d.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The zone to show a schedule's times in, and its label: the schedule's zone, or UTC with a
/// note when the controller named a zone this CLI does not know.
pub fn display_zone(name: &str) -> (Tz, String) {
    match zone(name) {
        Some(tz) => (
            tz,
            if name.is_empty() {
                "UTC".into()
            } else {
                name.to_string()
            },
        ),
        None => (Tz::UTC, format!("UTC; unknown zone {name:?}")),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
pub(super) mod tests {
    use super::*;
    use syncfleet_proto::time::from_millis;
    use syncfleet_proto::v1::Pause;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "STATE", "X"]);
        t.row(vec!["sync01".into(), "connected".into(), String::new()]);
        t.row(vec!["a".into(), "lost".into(), "1".into()]);
        assert_eq!(
            t.render(),
            "NAME    STATE      X\nsync01  connected\na       lost       1\n"
        );
    }

    #[test]
    fn wide_columns_and_headers_follow_the_view() {
        let mut t = Table::new(&["NAME", "STATE"]).wide(&["PEER"]);
        t.row(vec!["sync01".into(), "connected".into(), "10.0.0.1".into()]);
        assert_eq!(t.render(), "NAME    STATE\nsync01  connected\n");
        let wide = View {
            wide: true,
            no_headers: false,
        };
        assert_eq!(
            with_view(wide, || t.render()),
            "NAME    STATE      PEER\nsync01  connected  10.0.0.1\n"
        );
        let bare = View {
            wide: true,
            no_headers: true,
        };
        // Without headers the columns are as wide as their cells only.
        assert_eq!(
            with_view(bare, || t.render()),
            "sync01  connected  10.0.0.1\n"
        );
        // Outside `with_view` the default view is back.
        assert_eq!(t.render(), "NAME    STATE\nsync01  connected\n");
    }

    #[test]
    fn durations_are_compact() {
        let d = chrono::TimeDelta::milliseconds;
        assert_eq!(duration(d(850)), "850ms");
        assert_eq!(duration(d(45_000)), "45s");
        assert_eq!(duration(d(187_000)), "3m07s");
        assert_eq!(duration(d(7_500_000)), "2h05m");
        assert_eq!(duration(d(-5)), "0ms");
    }

    /// A pause set by alice, for the tests of every command that shows one.
    pub(in crate::cli) fn pause(note: &str) -> Pause {
        Pause {
            paused: true,
            note: note.into(),
            by: "alice".into(),
            at: Some(from_millis(1_705_309_200_000)),
        }
    }
}
