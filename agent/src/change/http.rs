//! `http` source: GET a URL answering JSON; the value at a JSON pointer is the watermark.

use std::time::Duration;

use syncfleet_proto::schedule_model::HttpSourceDoc;

use super::credentials::{Secrets, tls_config};
use super::{PollOutcome, SourceError, watermark_outcome};
use crate::journal::ChangeState;

/// Bound on the whole request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body read; a larger answer is an error, not a memory spike.
pub const MAX_BODY: usize = 1024 * 1024;

pub struct HttpSource {
    doc: HttpSourceDoc,
    secrets: Secrets,
    client: reqwest::Client,
}

impl HttpSource {
    pub fn new(doc: HttpSourceDoc, secrets: Secrets) -> Result<Self, SourceError> {
        let config = tls_config(&secrets)?;
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // Credentials must not travel to another host.
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls((*config).clone())
            .user_agent(concat!("syncfleet-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Http(format!("HTTP client: {e}")))?;
        Ok(Self {
            doc,
            secrets,
            client,
        })
    }

    pub async fn poll(&mut self, prior: Option<&ChangeState>) -> Result<PollOutcome, SourceError> {
        let url = &self.doc.url;
        let mut req = self.client.get(url);
        if let Some(t) = &self.secrets.token {
            req = req.bearer_auth(t);
        } else if let Some(u) = &self.secrets.username {
            req = req.basic_auth(u, self.secrets.password.as_deref());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| SourceError::Http(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(SourceError::Http(format!(
                "GET {url}: HTTP {}",
                resp.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| SourceError::Http(format!("GET {url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(SourceError::Http(format!(
                    "GET {url}: the answer is larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| SourceError::Http(format!("GET {url}: the answer is not JSON: {e}")))?;
        let value = json.pointer(&self.doc.pointer).ok_or_else(|| {
            SourceError::Http(format!(
                "GET {url}: the answer has nothing at JSON pointer {:?}",
                self.doc.pointer
            ))
        })?;
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(watermark_outcome(prior, text))
    }
}
