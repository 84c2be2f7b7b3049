//! The watcher: one poller task per (schedule, source) of the stored schedule set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use syncfleet_proto::schedule_model::{ChangeSourceDoc, ScheduleDoc};
use syncfleet_proto::v1;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::status::{SourceStatus, backoff};
use super::{PollOutcome, SourceError, credentials, definition_digest, target_of};
use crate::config::Credential;
use crate::journal::{ChangeState, Journal};

/// A connected source of one kind.
enum Source {
    Ldap(super::ldap::LdapSource),
    Sql(super::sql::SqlSource),
    Http(super::http::HttpSource),
}

impl Source {
    fn new(doc: &ChangeSourceDoc, secrets: credentials::Secrets) -> Result<Self, SourceError> {
        if let Some(l) = &doc.ldap {
            Ok(Source::Ldap(super::ldap::LdapSource::new(
                l.clone(),
                secrets,
            )))
        } else if let Some(s) = &doc.sql {
            Ok(Source::Sql(super::sql::SqlSource::new(s.clone(), secrets)))
        } else if let Some(h) = &doc.http {
            Ok(Source::Http(super::http::HttpSource::new(
                h.clone(),
                secrets,
            )?))
        } else {
            Err(SourceError::Definition(format!(
                "source {:?} has none of ldap, sql and http",
                doc.name
            )))
        }
    }

    async fn poll(&mut self, prior: Option<&ChangeState>) -> Result<PollOutcome, SourceError> {
        match self {
            Source::Ldap(s) => s.poll(prior).await,
            Source::Sql(s) => s.poll(prior).await,
            Source::Http(s) => s.poll(prior).await,
        }
    }
}

fn credential_of(doc: &ChangeSourceDoc) -> Option<&str> {
    doc.ldap
        .as_ref()
        .and_then(|l| l.credential.as_deref())
        .or_else(|| doc.sql.as_ref().and_then(|s| s.credential.as_deref()))
        .or_else(|| doc.http.as_ref().and_then(|h| h.credential.as_deref()))
}

/// One (schedule, source): polls, stores and reports. [`Watcher`] runs it in a task; tests
/// drive it one poll at a time with [`poll_once`](Self::poll_once).
pub struct Poller {
    journal: Arc<Journal>,
    outbox: Arc<Notify>,
    credentials: BTreeMap<String, Credential>,
    schedule: String,
    doc: ChangeSourceDoc,
    digest: String,
    status: SourceStatus,
    source: Option<Source>,
    prior: Option<ChangeState>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("schedule", &self.schedule)
            .field("source", &self.doc.name)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller resuming from the state the journal holds for this definition (none: the
    /// first poll is a baseline).
    pub fn new(
        journal: Arc<Journal>,
        outbox: Arc<Notify>,
        credentials: BTreeMap<String, Credential>,
        schedule: &str,
        doc: ChangeSourceDoc,
    ) -> Result<Self, SourceError> {
        let digest = definition_digest(&doc);
        let prior = journal.change_state(schedule, &doc.name, &digest)?;
        let status = SourceStatus::new(schedule, &doc.name, doc.kind(), &target_of(&doc));
        if let Some(p) = &prior {
            status.set_cursor(&p.cursor);
        }
        Ok(Self {
            journal,
            outbox,
            credentials,
            schedule: schedule.to_string(),
            doc,
            digest,
            status,
            source: None,
            prior,
        })
    }

    /// The status the heartbeat reports.
    pub fn status(&self) -> SourceStatus {
        self.status.clone()
    }

    /// One poll: on success the new state is stored with its `ChangeDetected` event (when it
    /// saw changes) in one transaction and the session is woken; the event is returned. The
    /// status records the outcome either way.
    pub async fn poll_once(&mut self) -> Result<Option<v1::AgentEvent>, SourceError> {
        let r = self.poll_inner().await;
        match &r {
            Ok(_) => {
                let cursor = self
                    .prior
                    .as_ref()
                    .map(|p| p.cursor.clone())
                    .unwrap_or_default();
                let changes = match &r {
                    Ok(Some(v1::AgentEvent {
                        kind: Some(v1::agent_event::Kind::ChangeDetected(d)),
                        ..
                    })) => d.changes,
                    _ => 0,
                };
                self.status.polled(&cursor, changes);
            }
            Err(e) => {
                self.status.failed(&e.to_string());
            }
        }
        r
    }

    async fn poll_inner(&mut self) -> Result<Option<v1::AgentEvent>, SourceError> {
        let source = match &mut self.source {
            Some(s) => s,
            None => {
                let secrets = credentials::resolve(&self.credentials, credential_of(&self.doc))?;
                self.source.insert(Source::new(&self.doc, secrets)?)
            }
        };
        let outcome = source.poll(self.prior.as_ref()).await?;
        if !outcome.dirty {
            return Ok(None);
        }
        let detected = (outcome.changes > 0).then(|| v1::ChangeDetected {
            schedule: self.schedule.clone(),
            source: self.doc.name.clone(),
            changes: outcome.changes,
            cursor: outcome.state.cursor.clone(),
            examples: outcome.examples.clone(),
        });
        let event = self.journal.store_change(
            &self.schedule,
            &self.doc.name,
            &self.digest,
            &outcome.state,
            detected,
        )?;
        self.prior = Some(outcome.state);
        if event.is_some() {
            self.outbox.notify_one();
        }
        Ok(event)
    }

    /// Poll until cancelled: every poll interval while polls work, with backoff while they
    /// fail.
    pub async fn run(mut self, cancel: CancellationToken) {
        let poll = self.doc.poll();
        loop {
            // A cancelled poller stops mid-poll too: its journal write is synchronous, so it
            // happens whole or not at all, and a replaced definition's poller cannot store
            // its state after the new one has started.
            let polled = tokio::select! {
                r = self.poll_once() => r,
                () = cancel.cancelled() => return,
            };
            let wait = match polled {
                Ok(_) => poll,
                Err(e) => {
                    let n = self.status.snapshot().consecutive_errors;
                    if n == 1 {
                        tracing::warn!(schedule = %self.schedule, source = %self.doc.name, error = %e, "change source poll failed; retrying with backoff");
                    } else {
                        tracing::debug!(schedule = %self.schedule, source = %self.doc.name, error = %e, failures = n, "change source poll failed again");
                    }
                    // A failed connection is rebuilt (and the credential files read again).
                    self.source = None;
                    backoff(poll, n)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

struct Running {
    digest: String,
    status: SourceStatus,
    cancel: CancellationToken,
}

/// Runs the pollers of the stored schedule set.
pub struct Watcher {
    journal: Arc<Journal>,
    outbox: Arc<Notify>,
    credentials: BTreeMap<String, Credential>,
    running: Mutex<BTreeMap<(String, String), Running>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    pub fn new(
        journal: Arc<Journal>,
        outbox: Arc<Notify>,
        credentials: BTreeMap<String, Credential>,
    ) -> Arc<Self> {
        Arc::new(Self {
            journal,
            outbox,
            credentials,
            running: Mutex::new(BTreeMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Running>> {
        // A poisoned lock means a panic mid-update of the map; the map is usable.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bring the pollers in line with `set`: start new sources, restart those whose definition
    /// changed, stop (and forget the state of) those that are gone. Must run in a tokio
    /// runtime.
    pub fn apply(&self, set: &v1::ScheduleSet) {
        let mut wanted: HashMap<(String, String), ChangeSourceDoc> = HashMap::new();
        for s in &set.schedules {
            let doc: ScheduleDoc = match serde_json::from_str(&s.schedule_json) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "schedule from the controller unreadable; its change sources are not watched");
                    continue;
                }
            };
            if let Some(oc) = &doc.trigger.on_change {
                for src in &oc.sources {
                    wanted.insert((doc.name.clone(), src.name.clone()), src.clone());
                }
            }
        }
        let mut running = self.running();
        let gone: Vec<(String, String)> = running
            .iter()
            .filter(|(k, r)| {
                wanted
                    .get(*k)
                    .is_none_or(|d| definition_digest(d) != r.digest)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                r.cancel.cancel();
            }
            if !wanted.contains_key(&key)
                && let Err(e) = self.journal.forget_change_state(&key.0, &key.1)
            {
                tracing::warn!(schedule = %key.0, source = %key.1, error = %e, "cannot forget a removed change source's state");
            }
        }
        for (key, doc) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let digest = definition_digest(&doc);
            match Poller::new(
                Arc::clone(&self.journal),
                Arc::clone(&self.outbox),
                self.credentials.clone(),
                &key.0,
                doc,
            ) {
                Ok(poller) => {
                    let cancel = CancellationToken::new();
                    let status = poller.status();
                    tokio::spawn(poller.run(cancel.clone()));
                    running.insert(
                        key,
                        Running {
                            digest,
                            status,
                            cancel,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(schedule = %key.0, source = %key.1, error = %e, "cannot start a change source");
                }
            }
        }
    }

    /// Follow the stored schedule set until shutdown, then stop every poller.
    pub async fn run(
        self: Arc<Self>,
        mut sets: tokio::sync::watch::Receiver<v1::ScheduleSet>,
        shutdown: CancellationToken,
    ) {
        loop {
            let set = sets.borrow_and_update().clone();
            self.apply(&set);
            tokio::select! {
                r = sets.changed() => if r.is_err() { break },
                () = shutdown.cancelled() => break,
            }
        }
        for (_, r) in std::mem::take(&mut *self.running()) {
            r.cancel.cancel();
        }
    }

    /// Every poller's status, for the heartbeat.
    pub fn statuses(&self) -> Vec<v1::ChangeSourceStatus> {
        self.running()
            .values()
            .map(|r| r.status.snapshot())
            .collect()
    }
}
