//! The console's files (`controller/console/`), compiled into the binary: `GET /` is
//! `index.html`, `GET /assets/<path>` a file under `console/assets/` (or, failing that, under
//! `console/` itself), with a content type by extension. Assets are public: they hold no fleet
//! data, which is read through `/api/*` with a session.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ConsoleError;

#[derive(rust_embed::RustEmbed)]
#[folder = "console/"]
struct Files;

/// The content type of a file by its extension; unknown ones are served as bytes (and, with
/// `X-Content-Type-Options: nosniff`, never run as script).
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Result<Response, ConsoleError> {
    let f = Files::get(path).ok_or_else(|| ConsoleError::NotFound(format!("no file {path}")))?;
    let mut resp = (StatusCode::OK, f.data.into_owned()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    Ok(resp)
}

/// `GET /`.
pub async fn index() -> Result<Response, ConsoleError> {
    file("index.html")
}

/// `GET /assets/<path>`.
pub async fn asset(Path(path): Path<String>) -> Result<Response, ConsoleError> {
    if path.split('/').any(|seg| seg == ".." || seg.is_empty()) {
        return Err(ConsoleError::NotFound(format!("no file {path}")));
    }
    file(&format!("assets/{path}")).or_else(|_| file(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/b/style.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }

    #[test]
    fn index_html_is_embedded() {
        assert!(Files::get("index.html").is_some());
    }
}
