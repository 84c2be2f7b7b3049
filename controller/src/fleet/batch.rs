//! Creating many runs at once: one fire time of a schedule on every target agent, or one ad-hoc
//! request fanned out to a selection of agents (`StartRuns`). The caller has decided which
//! agents get a run (revocation, pauses, drains, overlap, inventory); here the runs are stored
//! in at most **two** store transactions ([`crate::store::Store::insert_runs`]) and sent to
//! their agents concurrently, so the cost of a fire grows with a transaction plus a channel send
//! per agent, not with one transaction and a round of reads per agent. The first
//! [`HEAD_RUNS`] runs of a large batch are committed and sent before the rest, so the first
//! agents do not wait for the whole batch's commit. A crash between the two commits is a crash
//! in the middle of a fire: the stored runs stay, the schedule's cursor has not moved, so at
//! restart the fire time goes to the catch-up policy, and derived run ids keep any run from
//! being created twice.
//!
//! A run whose agent is connected, whose dispatch time has come and which its agent did not
//! cover on its own is inserted already `dispatched`: in the store `dispatched` means "sent or
//! being sent". The send happens right after the commit; if it is lost (the session closed in
//! between), nothing is wrong: `dispatch_for_agent` resends every `pending` and `dispatched` run
//! when the agent's session opens again, and the agent executes a run id at most once. Runs due
//! later (jitter) stay `pending`; one timer task per batch sends them in due order (the sweeper
//! sends them too, so a controller restart loses nothing).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use syncfleet_proto::time::now;
use syncfleet_proto::v1;
use tokio::sync::mpsc::error::TrySendError;

use super::runs::NewRun;
use super::{Fleet, FleetError, state_of};

/// One run of a batch as it came out: the run as stored now, and whether this batch created it
/// (false: a run with its id existed already, e.g. a duplicate scheduled fire).
pub type Created = (v1::Run, bool);

/// Runs of a large batch committed ahead of the rest (see [`Fleet::create_runs`]).
const HEAD_RUNS: usize = 32;

impl Fleet {
    /// The stored form of a new run (not stored yet): id, state, message, root span.
    /// `dispatch_now` makes it `dispatched` (the caller sends it right after the insert).
    pub(super) fn new_run_record(
        &self,
        new: NewRun,
        dispatch_now: bool,
    ) -> (v1::Run, tracing::Span) {
        let agent = new.agent.clone();
        let connected = self.is_connected(&agent);
        let run = v1::Run {
            // Random (v4), not time-ordered (v7): the first 8 characters, which progress lines
            // show and `runs show` accepts as a prefix, must differ between runs created
            // together. Listings order by `created_at`.
            id: new.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            agent: new.agent,
            state: if dispatch_now {
                v1::RunState::Dispatched as i32
            } else {
                v1::RunState::Pending as i32
            },
            origin: new.origin,
            created_at: Some(now()),
            steps: new.steps,
            message: if connected {
                String::new()
            } else {
                format!(
                    "agent {agent} is not connected; the run waits up to {} for it",
                    humantime::format_duration(self.settings.pending_deadline)
                )
            },
            requested_by: new.requested_by,
            schedule: new.schedule,
            sequence: new.sequence,
            nominal_time: new.nominal_time,
            on_failure: new.on_failure as i32,
            continuation_of: new.continuation_of,
            approved_steps: new.approved_steps,
            skip_steps: new.skip_steps,
            jitter_ms: new.jitter_ms,
            coalesced_changes: new.coalesced_changes,
            change_sources: new.change_sources,
            ..Default::default()
        };
        // The run's root span; its traceparent is stored with the run and sent in StartRun.
        crate::telemetry::open_run_span(run)
    }

    /// Whether a new run may be stored `dispatched` and sent at once: its agent is connected,
    /// its dispatch time has come and its agent did not cover its nominal time on its own.
    /// Pauses and drains are the caller's check (it refused or skipped blocked agents).
    fn sendable_now(&self, run: &v1::Run, now_ms: i64) -> bool {
        Self::dispatch_at_ms(run) <= now_ms
            && !self.covered_by_agent(run)
            && self.is_connected(&run.agent)
    }

    /// Store `news` (in one transaction, or two for a large batch), publish the new runs and send the due ones to their
    /// connected agents concurrently; runs due later are sent by one timer task. Returns one
    /// entry per input, in order; for an id that existed already, the stored run.
    pub async fn create_runs(
        self: &Arc<Self>,
        news: Vec<NewRun>,
    ) -> Result<Vec<Created>, FleetError> {
        if news.iter().any(|n| n.steps.is_empty()) {
            return Err(FleetError::NoSteps);
        }
        let now_ms = Utc::now().timestamp_millis();
        let mut runs = Vec::with_capacity(news.len());
        let mut spans = Vec::with_capacity(news.len());
        for new in news {
            let (mut run, span) = self.new_run_record(new, false);
            if self.sendable_now(&run, now_ms) {
                run.state = v1::RunState::Dispatched as i32;
            }
            runs.push(run);
            spans.push(span);
        }
        let mut out = Vec::with_capacity(runs.len());
        let mut later = Vec::new();
        // The first few runs are committed on their own, so their agents start without waiting
        // for the whole batch's transaction; the rest follow in one more.
        let head = if runs.len() > 2 * HEAD_RUNS {
            HEAD_RUNS
        } else {
            runs.len()
        };
        let tail_runs = runs.split_off(head);
        let tail_spans = spans.split_off(head);
        for (runs, spans) in [(runs, spans), (tail_runs, tail_spans)] {
            if runs.is_empty() {
                continue;
            }
            self.insert_and_send(runs, spans, now_ms, &mut out, &mut later)
                .await?;
        }
        self.dispatch_later(later);
        Ok(out)
    }

    /// Store `runs` in one transaction, publish the new ones and send those stored
    /// `dispatched`; runs due later are added to `later`, outcomes to `out` in order.
    async fn insert_and_send(
        &self,
        runs: Vec<v1::Run>,
        spans: Vec<tracing::Span>,
        now_ms: i64,
        out: &mut Vec<Created>,
        later: &mut Vec<(i64, String)>,
    ) -> Result<(), FleetError> {
        let inserted = self.store.insert_runs(&runs).await?;
        for ((run, span), new) in runs.into_iter().zip(spans).zip(inserted) {
            if !new {
                let id = run.id.clone();
                let existing = self.store.get_run(&id).await?;
                out.push((existing.unwrap_or(run), false));
                continue;
            }
            self.publish(&run);
            tracing::info!(parent: &span, run_id = %run.id, agent = %run.agent, steps = run.steps.len(), origin = %run.origin, state = state_of(&run).label(), "run created");
            if state_of(&run) == v1::RunState::Dispatched {
                self.send_now(&run);
            } else if Self::dispatch_at_ms(&run) > now_ms {
                later.push((Self::dispatch_at_ms(&run), run.id.clone()));
            } else {
                // Due but not sendable now (agent away, covered): the ordinary path decides.
                tracing::Instrument::instrument(self.send_start(run.clone()), span).await;
            }
            out.push((run, true));
        }
        Ok(())
    }

    /// Queue `StartRun` for a run stored `dispatched` without waiting for a full session
    /// queue: `try_send` first; a full queue gets a task that waits for room; a closed session
    /// drops it (the run is resent when the agent's session opens again).
    fn send_now(&self, run: &v1::Run) {
        let Some(tx) = self.session_tx(&run.agent) else {
            return;
        };
        match tx.try_send(Ok(super::dispatch::start_command(run))) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(msg)) => {
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    /// One task that sends the runs of a batch whose dispatch time lies ahead (jitter), in due
    /// order: `(due Unix ms, run id)`. Each is re-read and sent only if still pending.
    fn dispatch_later(self: &Arc<Self>, mut later: Vec<(i64, String)>) {
        if later.is_empty() {
            return;
        }
        let fleet = Arc::clone(self);
        later.sort_unstable();
        tokio::spawn(crate::store::fence::inherit(async move {
            for (due, id) in later {
                let wait_ms = due.saturating_sub(Utc::now().timestamp_millis());
                if wait_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
                        .await;
                }
                fleet.dispatch_run(&id).await;
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fixtures::fleet;

    fn new_run(i: usize) -> NewRun {
        NewRun {
            id: Some(format!("run-{i:03}")),
            agent: "a".into(),
            steps: vec![v1::Step {
                ma: "AD".into(),
                profile: "Delta Import".into(),
                state: v1::StepState::Waiting as i32,
                ..Default::default()
            }],
            origin: "schedule".into(),
            ..NewRun::default()
        }
    }

    #[tokio::test]
    async fn a_large_batch_is_stored_whole_in_order_and_a_repeat_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, store) = fleet(dir.path()).await;
        let n = 2 * HEAD_RUNS + 7;
        let created = fleet
            .create_runs((0..n).map(new_run).collect())
            .await
            .unwrap();
        let ids: Vec<&str> = created.iter().map(|(r, _)| r.id.as_str()).collect();
        let want: Vec<String> = (0..n).map(|i| format!("run-{i:03}")).collect();
        assert_eq!(ids, want, "one outcome per input, in order");
        assert!(created.iter().all(|(_, new)| *new));
        for id in &want {
            let run = store.get_run(id).await.unwrap().unwrap();
            // Agent `a` is not connected: stored pending, waiting for it.
            assert_eq!(state_of(&run), v1::RunState::Pending, "{id}");
        }
        // The same ids again (a duplicate fire): nothing new, the stored runs come back.
        let again = fleet
            .create_runs((0..n).map(new_run).collect())
            .await
            .unwrap();
        assert_eq!(again.len(), n);
        assert!(again.iter().all(|(_, new)| !*new));
    }
}
