//! State records that carry their own expiry: sign-in links and console sessions are stored
//! as JSON objects with an `expires_ms` field (milliseconds since the Unix epoch) under one key
//! prefix each, and swept the same way.

use super::{Store, StoreError};

/// The one field every expiring record has; the rest of the record is ignored here.
#[derive(serde::Deserialize)]
struct Expiry {
    expires_ms: i64,
}

/// Delete the records under `prefix` whose expiry is at or before `now_ms`, and records that
/// cannot be read (they could never be honoured); returns how many were deleted.
pub async fn sweep_expired(
    store: &dyn Store,
    prefix: &str,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for (key, raw) in store.list_state(prefix).await? {
        let expired = serde_json::from_slice::<Expiry>(&raw)
            .map(|r| r.expires_ms <= now_ms)
            .unwrap_or(true);
        if expired {
            store.delete_state_prefix(&key).await?;
            n += 1;
        }
    }
    Ok(n)
}
