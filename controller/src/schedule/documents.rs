//! Applying and deleting fleet documents for the API: the store change is
//! [`documents::apply`](crate::documents::apply)'s; this module tells the scheduler afterwards,
//! so that the document module does not depend on the scheduler that reads its documents.

use syncfleet_proto::v1;

use super::scheduler::Scheduler;
use crate::documents::DocumentError;
use crate::documents::apply;
use crate::fleet::Fleet;

/// [`apply::apply`] at the scheduler's current time; the scheduler reloads when stored
/// documents changed.
pub async fn apply_documents(
    fleet: &Fleet,
    scheduler: &Scheduler,
    req: &v1::ApplyRequest,
    who: &str,
) -> Result<v1::ApplyResponse, DocumentError> {
    let applied = apply::apply(fleet.store.as_ref(), scheduler.clock().now(), req, who).await?;
    if applied.stored_changed {
        scheduler.reload();
    }
    Ok(applied.response)
}

/// [`apply::delete_document`], then the scheduler reloads.
pub async fn delete_document(
    fleet: &Fleet,
    scheduler: &Scheduler,
    req: v1::DeleteDocumentRequest,
) -> Result<v1::DeleteDocumentResponse, DocumentError> {
    let deleted = apply::delete_document(fleet.store.as_ref(), req).await?;
    scheduler.reload();
    Ok(deleted)
}
