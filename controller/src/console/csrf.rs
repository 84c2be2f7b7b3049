//! Cross-site request forgery checks of every mutating request (`POST`): the session's CSRF
//! token in `X-CSRF-Token` (compared in constant time), the console's own origin in `Origin`
//! when the browser sends one, and a JSON body. The session cookie is SameSite=Strict already;
//! these checks hold also where that attribute is not honoured.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq as _;

/// The header carrying the session's CSRF token.
pub const HEADER: &str = "x-csrf-token";

/// Why a mutating request was refused (the audit entry's detail, and the 403's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error(
        "CSRF check failed: the request comes from another site (Origin {origin}, expected {expected})"
    )]
    ForeignOrigin { origin: String, expected: String },
    #[error("CSRF check failed: no X-CSRF-Token header (send the csrf_token of /api/session)")]
    MissingToken,
    #[error("CSRF check failed: the X-CSRF-Token header does not match this session's token")]
    WrongToken,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    NotJson,
}

/// The `Origin` check: absent, or the console's own origin (`own`, from `console.url`), or
/// `https://` + the `Host` the browser connected to (the same server reached by another of its
/// certificate's names).
pub fn check_origin(headers: &HeaderMap, own: &str) -> Result<(), CsrfError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("?");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("https://{h}"));
    if origin == own.trim_end_matches('/') || host.as_deref() == Some(origin) {
        Ok(())
    } else {
        Err(CsrfError::ForeignOrigin {
            origin: origin.to_string(),
            expected: own.to_string(),
        })
    }
}

/// The token check: `X-CSRF-Token` equals `expected`.
pub fn check_token(headers: &HeaderMap, expected: &str) -> Result<(), CsrfError> {
    let Some(sent) = headers.get(HEADER) else {
        return Err(CsrfError::MissingToken);
    };
    if bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) && !expected.is_empty() {
        Ok(())
    } else {
        Err(CsrfError::WrongToken)
    }
}

/// The body check: `Content-Type: application/json` (parameters allowed).
pub fn check_json(headers: &HeaderMap) -> Result<(), CsrfError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(CsrfError::NotJson)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_must_be_the_consoles_own_when_sent() {
        let own = "https://ctl.example:7444";
        assert_eq!(check_origin(&headers(&[]), own), Ok(()));
        assert_eq!(
            check_origin(&headers(&[("origin", "https://ctl.example:7444")]), own),
            Ok(())
        );
        assert_eq!(
            check_origin(
                &headers(&[
                    ("origin", "https://127.0.0.1:7444"),
                    ("host", "127.0.0.1:7444")
                ]),
                own
            ),
            Ok(())
        );
        let e = check_origin(&headers(&[("origin", "https://evil.example")]), own).unwrap_err();
        assert!(matches!(e, CsrfError::ForeignOrigin { .. }), "{e}");
        assert!(
            check_origin(
                &headers(&[
                    ("origin", "http://ctl.example:7444"),
                    ("host", "ctl.example:7444")
                ]),
                own
            )
            .is_err(),
            "a plain-http origin is another origin"
        );
    }

    #[test]
    fn token_must_match_exactly() {
        assert_eq!(
            check_token(&headers(&[]), "abc"),
            Err(CsrfError::MissingToken)
        );
        assert_eq!(
            check_token(&headers(&[("x-csrf-token", "abd")]), "abc"),
            Err(CsrfError::WrongToken)
        );
        assert_eq!(
            check_token(&headers(&[("x-csrf-token", "ab")]), "abc"),
            Err(CsrfError::WrongToken)
        );
        assert_eq!(
            check_token(&headers(&[("x-csrf-token", "abc")]), "abc"),
            Ok(())
        );
        assert_eq!(
            check_token(&headers(&[("x-csrf-token", "")]), ""),
            Err(CsrfError::WrongToken)
        );
    }

    #[test]
    fn bodies_must_be_json() {
        assert_eq!(check_json(&headers(&[])), Err(CsrfError::NotJson));
        assert_eq!(
            check_json(&headers(&[("content-type", "text/plain")])),
            Err(CsrfError::NotJson)
        );
        assert_eq!(
            check_json(&headers(&[(
                "content-type",
                "application/json; charset=utf-8"
            )])),
            Ok(())
        );
    }
}
