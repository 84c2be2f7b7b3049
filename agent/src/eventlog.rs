//! What the agent writes to the Windows Event Log: a `tracing` layer that turns the agent's
//! warnings and errors, and its information lines that carry an [`EventId`], into Event Log
//! entries (type, event id, text), handed to a [`Sink`]. The sink that calls the Event Log API
//! is in `eventlog_win` (Windows only); the choice of what is written, and how, is plain logic
//! tested on every platform.
//!
//! - Level `ERROR` → error entry, `WARN` → warning entry, `INFO` with an `event_id` field →
//!   information entry; everything else is not written (the Event Log is for operators'
//!   monitoring, not a debug log).
//! - The event id is the line's `event_id` field, or [`EventId::Other`] when it has none.
//! - The text is the message followed by the line's other fields as `key=value`, one per line.
//! - Only the agent's own lines (targets `syncfleet_agent` and `syncfleet_proto`): libraries'
//!   warnings stay in the text log.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::event_ids::{EventId, FIELD};

/// The type of an Event Log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Error,
    Warning,
    Information,
}

/// One Event Log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryType,
    pub id: u32,
    pub text: String,
}

/// Where entries go.
pub trait Sink: Send + Sync + 'static {
    fn write(&self, entry: &Entry);
}

/// The layer (see the module documentation).
#[derive(Debug)]
pub struct EventLogLayer<S> {
    sink: S,
}

impl<S: Sink> EventLogLayer<S> {
    pub fn new(sink: S) -> Self {
        Self { sink }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    event_id: Option<u64>,
    rest: String,
}

impl Fields {
    fn other(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        let _ = write!(self.rest, "\n{name}={value}");
    }
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == FIELD {
            self.event_id = Some(value);
        } else {
            self.other(field.name(), format_args!("{value}"));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == FIELD {
            self.event_id = u64::try_from(value).ok();
        } else {
            self.other(field.name(), format_args!("{value}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.other(field.name(), format_args!("{value}"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.other(field.name(), format_args!("{value:?}"));
        }
    }
}

/// Whether a line of `target` at `level`, with or without an id, is written.
fn kind_of(level: tracing::Level, has_id: bool) -> Option<EntryType> {
    match level {
        tracing::Level::ERROR => Some(EntryType::Error),
        tracing::Level::WARN => Some(EntryType::Warning),
        tracing::Level::INFO if has_id => Some(EntryType::Information),
        _ => None,
    }
}

fn ours(target: &str) -> bool {
    ["syncfleet_agent", "syncfleet_proto"]
        .iter()
        .any(|t| target == *t || target.starts_with(&format!("{t}::")))
}

impl<S: Sink, R: tracing::Subscriber> tracing_subscriber::Layer<R> for EventLogLayer<S> {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, R>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::INFO || !ours(meta.target()) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(kind) = kind_of(*meta.level(), fields.event_id.is_some()) else {
            return;
        };
        let id = fields
            .event_id
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(EventId::Other.code());
        self.sink.write(&Entry {
            kind,
            id,
            text: format!("{}{}", fields.message, fields.rest),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<Entry>>>);

    impl Sink for Recorded {
        fn write(&self, entry: &Entry) {
            self.0.lock().unwrap().push(entry.clone());
        }
    }

    #[test]
    fn warnings_errors_and_identified_information_are_written_with_their_ids() {
        let recorded = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(EventLogLayer::new(recorded.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("session open");
            tracing::debug!(event_id = EventId::RunFailed.code(), "not at debug level");
            tracing::info!(
                event_id = EventId::AgentStarted.code(),
                name = "sync-01",
                "agent starting"
            );
            tracing::warn!(
                event_id = EventId::RunHeld.code(),
                run_id = "r-1",
                ma = "AD",
                "guard rail holds the run"
            );
            tracing::warn!(error = %"connection refused", "session ended; reconnecting");
            tracing::error!(
                event_id = EventId::EngineUnhealthy.code(),
                detail = "frozen",
                "sync engine unhealthy"
            );
            tracing::warn!(target: "h2::proto", "a library's warning");
        });
        let entries = recorded.0.lock().unwrap().clone();
        assert_eq!(
            entries,
            [
                Entry {
                    kind: EntryType::Information,
                    id: 1000,
                    text: "agent starting\nname=sync-01".into(),
                },
                Entry {
                    kind: EntryType::Warning,
                    id: 2001,
                    text: "guard rail holds the run\nrun_id=r-1\nma=AD".into(),
                },
                Entry {
                    kind: EntryType::Warning,
                    id: 9000,
                    text: "session ended; reconnecting\nerror=connection refused".into(),
                },
                Entry {
                    kind: EntryType::Error,
                    id: 3000,
                    text: "sync engine unhealthy\ndetail=frozen".into(),
                },
            ]
        );
    }
}
