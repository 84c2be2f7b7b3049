//! Journal writes that survive a journal that cannot be written (a full disk, a read-only
//! volume, a locked file).
//!
//! The executor cannot take back what the engine already did, so a write the journal refuses
//! is kept in memory, in order, and retried until the journal accepts it: sequence numbers are
//! issued when an event reaches the journal, so they stay gapless and in the order the events
//! happened, and each event keeps the time it happened. While anything is held,
//! [`JournalWriter::problem`] says why, so the agent refuses new runs and reports itself
//! unhealthy; the first successful retry clears it.
//!
//! The backlog is bounded: at most [`MAX_HELD_INFORMATIONAL`] progress and waiting events are
//! held (the oldest are dropped first: each is superseded by the next one of its step). Every
//! other write (a step's start, result and run number, a run's end) is held whatever the
//! count: there are a few per step, and no new run starts while the backlog is not empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncfleet_proto::sync::lock;

use syncfleet_proto::v1::agent_event::Kind;
use tokio::sync::Notify;

use crate::journal::{Journal, JournalError};

/// Progress and waiting events held at most while the journal cannot be written.
pub const MAX_HELD_INFORMATIONAL: usize = 1_000;

/// How often a held backlog is offered to the journal again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// One write to the journal.
#[derive(Debug, Clone)]
pub enum JournalOp {
    /// An event for the outbox, with the time it happened.
    Event {
        run_id: String,
        kind: Box<Kind>,
        at: prost_types::Timestamp,
    },
    /// A run ended: its RunFinished event was written before.
    FinishRun(String),
    /// The engine run number of an executing step.
    StepRun {
        run_id: String,
        index: u32,
        ma: String,
        run_number: u64,
    },
}

impl JournalOp {
    /// Superseded by a later event of the same step: may be dropped when the backlog is full.
    fn informational(&self) -> bool {
        match self {
            JournalOp::Event { kind, .. } => {
                matches!(**kind, Kind::StepProgress(_) | Kind::StepWaiting(_))
            }
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Backlog {
    ops: VecDeque<JournalOp>,
    /// The journal's last refusal, while `ops` is not empty.
    error: Option<String>,
    /// Informational events dropped to keep the backlog bounded, since it last emptied.
    dropped: u64,
    /// A retry task is running.
    retrying: bool,
    /// A flush is writing the front op without holding the lock: later writes queue behind.
    flushing: bool,
}

/// Writes to the journal in order, holding what it refuses (see the module documentation).
#[derive(Debug)]
pub struct JournalWriter {
    journal: Arc<Journal>,
    outbox: Arc<Notify>,
    backlog: Mutex<Backlog>,
    /// [`JournalWriter::problem`]'s answer, kept apart so that asking never waits for a write.
    problem: Mutex<Option<String>>,
    retry: Duration,
}

impl JournalWriter {
    pub fn new(journal: Arc<Journal>, outbox: Arc<Notify>) -> Arc<Self> {
        Self::with_retry(journal, outbox, RETRY_INTERVAL)
    }

    /// A writer that retries a held backlog every `retry`.
    pub fn with_retry(journal: Arc<Journal>, outbox: Arc<Notify>, retry: Duration) -> Arc<Self> {
        Arc::new(Self {
            journal,
            outbox,
            backlog: Mutex::new(Backlog::default()),
            problem: Mutex::new(None),
            retry,
        })
    }

    fn apply(&self, op: &JournalOp) -> Result<(), JournalError> {
        match op {
            JournalOp::Event { run_id, kind, at } => self
                .journal
                .append_at(run_id, (**kind).clone(), *at)
                .map(|_| ()),
            JournalOp::FinishRun(run_id) => self.journal.finish_run(run_id),
            JournalOp::StepRun {
                run_id,
                index,
                ma,
                run_number,
            } => self
                .journal
                .record_step_run(run_id, *index, ma, *run_number),
        }
    }

    /// Write `op` after everything held; hold it when the journal refuses it.
    pub fn write(self: &Arc<Self>, op: JournalOp) {
        let mut b = lock(&self.backlog);
        if b.ops.is_empty() && !b.flushing {
            match self.apply(&op) {
                Ok(()) => {
                    drop(b);
                    if matches!(op, JournalOp::Event { .. }) {
                        self.outbox.notify_one();
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the agent journal cannot be written; holding run events in memory and retrying; new runs are refused until it can");
                    b.error = Some(e.to_string());
                }
            }
        }
        if op.informational()
            && b.ops.iter().filter(|o| o.informational()).count() >= MAX_HELD_INFORMATIONAL
            && let Some(oldest) = b.ops.iter().position(JournalOp::informational)
        {
            b.ops.remove(oldest);
            b.dropped = b.dropped.saturating_add(1);
        }
        b.ops.push_back(op);
        if !b.retrying
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            b.retrying = true;
            let this = Arc::clone(self);
            handle.spawn(async move { this.retry_until_written().await });
        }
        self.publish(&b);
    }

    fn publish(&self, b: &Backlog) {
        let text = b.error.as_ref().map(|error| {
            format!(
                "the agent journal cannot be written ({error}); {} run event(s) held in memory and retried every {}; new runs are refused until it can be written",
                b.ops.len(),
                humantime::format_duration(self.retry)
            )
        });
        *lock(&self.problem) = text;
    }

    async fn retry_until_written(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.retry).await;
            let this = Arc::clone(&self);
            // SQLite blocks (a locked file waits for its busy timeout): off the async workers.
            match tokio::task::spawn_blocking(move || this.flush()).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "journal retry failed");
                }
            }
        }
    }

    /// Write what is held, in order, until the journal refuses; true when nothing is left.
    /// The lock is not held while writing, so emitters never wait for a slow journal; they
    /// queue behind (`flushing`).
    pub fn flush(&self) -> bool {
        let mut wrote = false;
        let empty = loop {
            let op = {
                let mut b = lock(&self.backlog);
                let Some(op) = b.ops.front().cloned() else {
                    break true;
                };
                b.flushing = true;
                op
            };
            let result = self.apply(&op);
            let mut b = lock(&self.backlog);
            b.flushing = false;
            match result {
                Ok(()) => {
                    b.ops.pop_front();
                    wrote = true;
                }
                Err(e) => {
                    b.error = Some(e.to_string());
                    self.publish(&b);
                    break false;
                }
            }
        };
        if empty {
            let mut b = lock(&self.backlog);
            // A write may have slipped in after the last pop; it is written by the next round.
            if b.ops.is_empty() {
                if b.error.take().is_some() {
                    tracing::info!(
                        dropped_progress_events = b.dropped,
                        "the agent journal is writable again; held run events written"
                    );
                }
                b.dropped = 0;
                b.retrying = false;
                self.publish(&b);
            } else {
                drop(b);
                return self.flush();
            }
        }
        if wrote {
            self.outbox.notify_one();
        }
        empty
    }

    /// Why the journal cannot be written now, or `None` when nothing is held.
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// Writes held in memory now.
    pub fn held(&self) -> usize {
        lock(&self.backlog).ops.len()
    }
}
