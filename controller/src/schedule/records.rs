//! The scheduler's records in the store, apart from the schedule documents so that
//! re-applying a document never resets them: each schedule's cursor (every fire time up to it
//! is accounted for), buffered fire times (`buffer_one`), a catch-up decided at a start and not
//! yet evaluated, and the counters. Records and counter deltas that belong together are written
//! in one transaction.

use chrono::{DateTime, Utc};

use super::scheduler::Scheduler;
use crate::store::StoreError;

// The record keys are built in one place, `store::keys`; the local names read better here.
pub(super) use crate::store::keys::{
    buffered as buffered_key, buffered_prefix, catchup as catchup_key, cursor as cursor_key,
};

pub(super) fn millis_value(t: DateTime<Utc>) -> Vec<u8> {
    t.timestamp_millis().to_string().into_bytes()
}

pub(super) fn parse_millis(raw: &[u8]) -> Option<DateTime<Utc>> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis)
}

impl Scheduler {
    pub(super) async fn bump(&self, schedule: &str, counter: &'static str, by: u64) {
        if by == 0 {
            return;
        }
        let s = schedule.to_string();
        if let Err(e) = self.fleet.store.bump_counters(&s, &[(counter, by)]).await {
            tracing::error!(schedule, counter, error = %e, "cannot count");
        }
    }

    pub(super) async fn cursor(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let k = cursor_key(schedule);
        let raw = self.fleet.store.get_state(&k).await?;
        Ok(raw.as_deref().and_then(parse_millis))
    }

    pub(super) async fn set_cursor(&self, schedule: &str, t: DateTime<Utc>) {
        self.advance_cursor(schedule, t, Vec::new()).await;
    }

    /// Move the schedule's cursor (every fire time up to it is accounted for) and add the
    /// counts of the fire times passed on the way, in one transaction: a crash between the two
    /// can neither lose nor double-count a fire time.
    pub(super) async fn advance_cursor(
        &self,
        schedule: &str,
        t: DateTime<Utc>,
        deltas: Vec<(&'static str, u64)>,
    ) {
        let record = (cursor_key(schedule), Some(millis_value(t)));
        self.commit_state(schedule, vec![record], deltas).await;
    }

    /// Write or delete state records and add to counters of a schedule in one transaction.
    pub(super) async fn commit_state(
        &self,
        schedule: &str,
        records: Vec<(String, Option<Vec<u8>>)>,
        mut deltas: Vec<(&'static str, u64)>,
    ) {
        deltas.retain(|(_, by)| *by > 0);
        let s = schedule.to_string();
        if let Err(e) = self
            .fleet
            .store
            .commit_schedule_state(&s, &records, &deltas, None)
            .await
        {
            tracing::error!(schedule, error = %e, "cannot store the schedule's state");
        }
    }
}
