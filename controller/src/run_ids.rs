//! Run ids as operators type them: the whole id, or any unique prefix of at least
//! [`MIN_PREFIX`] characters, as git and docker accept short ids. `syncfleet run --follow`
//! prints the first 8 characters of a run's id, so what it prints can be pasted back.

use std::sync::Arc;

use crate::limits::echo;
use crate::store::{Store, StoreError};

/// Shortest prefix looked up; shorter strings must match a whole id.
pub const MIN_PREFIX: usize = 4;
/// How many candidates an ambiguous prefix names.
const SHOWN_CANDIDATES: usize = 5;
/// Longer input is no run id (ids are UUIDs or derived names well below this).
const MAX_ID_LEN: usize = 200;

/// Why a typed run id names no single run.
#[derive(Debug, thiserror::Error)]
pub enum RunIdError {
    #[error("no run with id {}; list runs with 'syncfleet runs list'", echo(.0))]
    NotFound(String),
    #[error(
        "run id prefix {} matches more than one run ({}); type more characters",
        echo(prefix),
        candidates.join(", ")
    )]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("run id of {0} characters is too long (at most {MAX_ID_LEN})")]
    TooLong(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The full id of the one run that `id` names: itself when a run has exactly that id, else
/// the single run whose id starts with it.
pub async fn resolve(store: &Arc<dyn Store>, id: &str) -> Result<String, RunIdError> {
    if id.len() > MAX_ID_LEN {
        return Err(RunIdError::TooLong(id.len()));
    }
    let owned = id.to_string();
    let (exact, candidates) = {
        let s = &store;
        async move {
            if s.get_run(&owned).await?.is_some() {
                return Ok::<_, StoreError>((true, Vec::new()));
            }
            if owned.chars().count() < MIN_PREFIX {
                return Ok((false, Vec::new()));
            }
            Ok((
                false,
                s.run_ids_with_prefix(&owned, SHOWN_CANDIDATES + 1).await?,
            ))
        }
    }
    .await?;
    if exact {
        return Ok(id.to_string());
    }
    match candidates.as_slice() {
        [] => Err(RunIdError::NotFound(id.to_string())),
        [one] => Ok(one.clone()),
        many => {
            let mut shown: Vec<String> = many.iter().take(SHOWN_CANDIDATES).cloned().collect();
            if many.len() > SHOWN_CANDIDATES {
                shown.push("…".to_string());
            }
            Err(RunIdError::Ambiguous {
                prefix: id.to_string(),
                candidates: shown,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use syncfleet_proto::v1;

    async fn store_with(ids: &[&str]) -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("controller.db")).unwrap());
        for id in ids {
            let run = v1::Run {
                id: (*id).to_string(),
                agent: "sync-01".into(),
                ..Default::default()
            };
            assert!(store.insert_run(&run).await.unwrap());
        }
        (dir, store)
    }

    #[tokio::test]
    async fn a_unique_prefix_names_its_run_and_an_ambiguous_one_lists_candidates() {
        let (_dir, store) = store_with(&[
            "01a23390-aaaa-7000-8000-000000000001",
            "01a23390-bbbb-7000-8000-000000000002",
            "01b00000-cccc-7000-8000-000000000003",
        ])
        .await;
        assert_eq!(
            resolve(&store, "01b0").await.unwrap(),
            "01b00000-cccc-7000-8000-000000000003"
        );
        assert_eq!(
            resolve(&store, "01a23390-b").await.unwrap(),
            "01a23390-bbbb-7000-8000-000000000002"
        );
        let whole = "01a23390-aaaa-7000-8000-000000000001";
        assert_eq!(resolve(&store, whole).await.unwrap(), whole);
        let err = resolve(&store, "01a23390").await.unwrap_err().to_string();
        assert!(err.contains("matches more than one run"), "{err}");
        assert!(
            err.contains("01a23390-aaaa") && err.contains("01a23390-bbbb"),
            "{err}"
        );
        // Too short to be a prefix, and no such whole id.
        assert!(matches!(
            resolve(&store, "01a").await,
            Err(RunIdError::NotFound(_))
        ));
        assert!(matches!(
            resolve(&store, "ffff").await,
            Err(RunIdError::NotFound(_))
        ));
        // `_` and `%` are not wildcards.
        assert!(matches!(
            resolve(&store, "01a2____").await,
            Err(RunIdError::NotFound(_))
        ));
    }
}
