//! The console's errors and their HTTP answers: `tonic::Status` from the `FleetService` calls
//! becomes an HTTP status here, at the console's edge, and every error answers with the same
//! JSON body, `{"error": <message>, "code": <snake_case code>, "request_id": <id or null>}`,
//! whose `error` the front end shows verbatim.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A `FleetService` call answered with an error (its authorization denials included).
    #[error("{}", .0.message())]
    Rpc(tonic::Status),
    /// No session cookie, or one that is unknown or expired.
    #[error("{0}")]
    NoSession(String),
    /// A mutating request without the session's CSRF token, with a foreign `Origin`, or not
    /// JSON. Audited as denied.
    #[error("{0}")]
    Forbidden(String),
    /// The request's parameters or body are not what the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// No such page or API path.
    #[error("{0}")]
    NotFound(String),
    /// Too many live-update streams are open.
    #[error("{0}")]
    Busy(String),
    /// The store failed.
    #[error("controller store error: {0}")]
    Store(#[from] StoreError),
}

impl From<crate::auth::AuthError> for ConsoleError {
    fn from(e: crate::auth::AuthError) -> Self {
        ConsoleError::Rpc(tonic::Status::from(e))
    }
}

impl From<tonic::Status> for ConsoleError {
    fn from(s: tonic::Status) -> Self {
        ConsoleError::Rpc(s)
    }
}

/// The HTTP status of a gRPC status code: InvalidArgument 400, Unauthenticated 401,
/// PermissionDenied 403, NotFound 404, FailedPrecondition/AlreadyExists/Aborted 409,
/// ResourceExhausted 429, Unavailable 503, anything else 500.
pub fn http_status_of(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The snake_case name of a gRPC code (`permission_denied`), the body's `code`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl ConsoleError {
    /// HTTP status and body code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ConsoleError::Rpc(s) => (http_status_of(s.code()), code_name(s.code())),
            ConsoleError::NoSession(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ConsoleError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ConsoleError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The request id of the call (the audit entry's), when the controller gave one.
    pub fn request_id(&self) -> Option<String> {
        match self {
            ConsoleError::Rpc(s) => s
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            _ => None,
        }
    }
}

/// A refusal with its audit entry's request id.
#[derive(Debug)]
pub struct Refusal {
    pub error: ConsoleError,
    pub request_id: Option<String>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = self.error.parts();
        if let ConsoleError::Store(e) = &self.error {
            tracing::error!(error = %e, "console: store error");
        }
        let request_id = self.request_id.or_else(|| self.error.request_id());
        let body = json!({
            "error": self.error.to_string(),
            "code": code,
            "request_id": request_id,
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Browsers show no credential dialog for this scheme; it names how to sign in.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Cookie realm=\"syncfleet console\""),
            );
        }
        resp
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        Refusal {
            error: self,
            request_id: None,
        }
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping the front end relies on: each gRPC code its HTTP status, and the body's
    /// `code`.
    #[test]
    fn grpc_codes_map_to_http_statuses() {
        use tonic::Code;
        let cases = [
            (Code::InvalidArgument, 400, "invalid_argument"),
            (Code::Unauthenticated, 401, "unauthenticated"),
            (Code::PermissionDenied, 403, "permission_denied"),
            (Code::NotFound, 404, "not_found"),
            (Code::FailedPrecondition, 409, "failed_precondition"),
            (Code::AlreadyExists, 409, "already_exists"),
            (Code::Aborted, 409, "aborted"),
            (Code::Unavailable, 503, "unavailable"),
            (Code::Internal, 500, "internal"),
            (Code::Unknown, 500, "unknown"),
        ];
        for (code, http, name) in cases {
            let e = ConsoleError::Rpc(tonic::Status::new(code, "m"));
            assert_eq!(
                e.parts(),
                (StatusCode::from_u16(http).unwrap_or_default(), name)
            );
        }
        assert_eq!(
            ConsoleError::NoSession("x".into()).parts().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ConsoleError::Forbidden("x".into()).parts().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn the_request_id_of_a_status_is_kept() {
        let s = crate::api::authorize::status_with_request_id(
            tonic::Status::permission_denied("no"),
            "abc",
        );
        assert_eq!(ConsoleError::Rpc(s).request_id().as_deref(), Some("abc"));
    }
}
