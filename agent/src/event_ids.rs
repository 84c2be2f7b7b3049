//! Stable event ids of the agent's notable situations. A log line about one of them carries the
//! id as its `event_id` field (`tracing::warn!(event_id = EventId::RunHeld.code(), ...)`); on
//! Windows the Event Log writer uses it as the event id in the Application log (source
//! `syncfleet-agent`), so monitoring (SCOM, Event Log subscriptions) can match on it. Warnings
//! and errors without an id of their own are written with [`EventId::Other`].
//!
//! The numbers are a public contract: never renumber or reuse one; add new ids instead.

/// How long no controller may be reachable before [`EventId::ControllerUnreachable`] is
/// logged (once per outage; a short controller restart or failover stays quiet).
pub const CONTROLLER_UNREACHABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// The name of the field that carries the id on a log line.
pub const FIELD: &str = "event_id";

/// An event id: its number is what the Event Log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum EventId {
    /// Information: the agent started (as a service or from a console).
    AgentStarted = 1000,
    /// Information: the agent stopped after a stop request or a signal.
    AgentStopped = 1001,
    /// Warning: a run ended failed, completed with errors or with an unknown outcome.
    RunFailed = 2000,
    /// Warning: a guard rail holds a run before a step (it waits for `syncfleet runs approve`).
    RunHeld = 2001,
    /// Error: the sync engine is unhealthy (its probe fails, or a step could not be stopped).
    EngineUnhealthy = 3000,
    /// Error: no controller reachable for [`CONTROLLER_UNREACHABLE_AFTER`] (5 minutes).
    ControllerUnreachable = 4000,
    /// Error: the agent's certificate nears its expiry and its renewal keeps failing, or it
    /// has expired (the agent must then be re-enrolled).
    CertificateNearExpiry = 5000,
    /// Warning or error with no id of its own.
    Other = 9000,
}

impl EventId {
    /// Every id, in number order.
    pub const ALL: [EventId; 8] = [
        EventId::AgentStarted,
        EventId::AgentStopped,
        EventId::RunFailed,
        EventId::RunHeld,
        EventId::EngineUnhealthy,
        EventId::ControllerUnreachable,
        EventId::CertificateNearExpiry,
        EventId::Other,
    ];

    /// The number, as logged in the `event_id` field and written to the Event Log.
    pub const fn code(self) -> u32 {
        self as u16 as u32
    }

    /// The id with this number.
    pub fn from_code(code: u64) -> Option<EventId> {
        Self::ALL
            .into_iter()
            .find(|id| u64::from(id.code()) == code)
    }

    /// One line saying what the id means (the table in the documentation).
    pub const fn meaning(self) -> &'static str {
        match self {
            EventId::AgentStarted => "agent started",
            EventId::AgentStopped => "agent stopped",
            EventId::RunFailed => "run failed, completed with errors or its outcome is unknown",
            EventId::RunHeld => {
                "run held by a guard rail; approve it with 'syncfleet runs approve'"
            }
            EventId::EngineUnhealthy => "sync engine unhealthy",
            EventId::ControllerUnreachable => "no controller reachable for 5 minutes or more",
            EventId::CertificateNearExpiry => {
                "agent certificate near expiry with its renewal failing, or expired"
            }
            EventId::Other => "other warning or error",
        }
    }
}

/// Test support: a subscriber layer that records every event with its level, message and
/// `event_id`.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// One recorded event.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) level: tracing::Level,
        pub(crate) message: String,
        pub(crate) event_id: Option<u64>,
    }

    #[derive(Clone, Default)]
    pub(crate) struct Events(Arc<Mutex<Vec<Seen>>>);

    impl Events {
        pub(crate) fn all(&self) -> Vec<Seen> {
            self.0.lock().unwrap().clone()
        }

        /// The events carrying `id`.
        pub(crate) fn with_id(&self, id: super::EventId) -> Vec<Seen> {
            self.all()
                .into_iter()
                .filter(|s| s.event_id == Some(u64::from(id.code())))
                .collect()
        }
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        event_id: Option<u64>,
    }

    impl Visit for Fields {
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == super::FIELD {
                self.event_id = Some(value);
            }
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            if field.name() == super::FIELD {
                self.event_id = u64::try_from(value).ok();
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    struct Recorder(Events);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0.0.lock().unwrap().push(Seen {
                level: *event.metadata().level(),
                message: fields.message,
                event_id: fields.event_id,
            });
        }
    }

    /// Records the events of this thread until the guard is dropped (use a current-thread
    /// runtime so that spawned tasks are recorded too).
    pub(crate) fn start() -> (Events, tracing::subscriber::DefaultGuard) {
        let events = Events::default();
        let subscriber = tracing_subscriber::registry().with(Recorder(events.clone()));
        let guard = tracing::subscriber::set_default(subscriber);
        (events, guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published table. Changing a number here breaks every monitoring rule written
    /// against it: add ids, never renumber.
    #[test]
    fn ids_are_unique_and_stable() {
        let table: Vec<(u32, &str)> = EventId::ALL
            .iter()
            .map(|id| (id.code(), id.meaning()))
            .collect();
        assert_eq!(
            table,
            [
                (1000, "agent started"),
                (1001, "agent stopped"),
                (
                    2000,
                    "run failed, completed with errors or its outcome is unknown"
                ),
                (
                    2001,
                    "run held by a guard rail; approve it with 'syncfleet runs approve'"
                ),
                (3000, "sync engine unhealthy"),
                (4000, "no controller reachable for 5 minutes or more"),
                (
                    5000,
                    "agent certificate near expiry with its renewal failing, or expired"
                ),
                (9000, "other warning or error"),
            ]
        );
        let codes: Vec<u32> = EventId::ALL.iter().map(|id| id.code()).collect();
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "ids are unique and in number order: {codes:?}"
        );
        for id in EventId::ALL {
            assert_eq!(EventId::from_code(u64::from(id.code())), Some(id));
        }
        assert_eq!(EventId::from_code(1), None);
        assert_eq!(CONTROLLER_UNREACHABLE_AFTER.as_secs(), 300);
    }

    /// An enrolled agent that runs until its shutdown token is cancelled logs its start and
    /// its stop with their ids.
    #[tokio::test]
    async fn the_agent_logs_its_start_and_stop_with_their_ids() {
        use crate::identity::files::{self, NewKey};
        let (events, _guard) = capture::start();
        let ca = files::tests::test_ca("ca");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = crate::AgentConfig {
            name: "sync-01".into(),
            controller: format!("https://127.0.0.1:{port}"),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let key = NewKey::generate("sync-01").unwrap();
        let cert = files::tests::sign_agent(
            &ca,
            &key.csr_pem,
            "sync-01",
            time::OffsetDateTime::now_utc(),
            3600,
        );
        files::install_pair(&cfg.cert_path(), &cfg.key_path(), &cert, &key.key_pem()).unwrap();
        std::fs::write(cfg.ca_cert_path(), &ca.pem).unwrap();
        let engine = std::sync::Arc::new(crate::engine::sim::SimEngine::new(
            crate::engine::sim::SimConfig::example(1),
        ));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let agent = tokio::spawn(crate::run_with_engine(cfg, engine, shutdown.clone()));
        for _ in 0..1000 {
            if !events.with_id(EventId::AgentStarted).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(events.with_id(EventId::AgentStarted).len(), 1);
        assert!(events.with_id(EventId::AgentStopped).is_empty());
        shutdown.cancel();
        agent.await.unwrap().unwrap();
        let stopped = events.with_id(EventId::AgentStopped);
        assert_eq!(stopped.len(), 1, "{:?}", events.all());
        assert_eq!(stopped[0].level, tracing::Level::INFO);
    }
}
