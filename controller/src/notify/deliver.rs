//! The two transports of a notifier: a webhook (HTTP POST of a JSON body) and SMTP e-mail.
//!
//! Both verify TLS against the operating system's roots unless the document names a CA file,
//! bound each attempt by the document's timeout, and bound what they send and read.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

use crate::documents::model::{EmailDoc, SmtpTls, WebhookDoc};

/// Default limit of one webhook attempt.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of one SMTP attempt.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest message text sent (longer text is cut, with a note).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most bytes of a receiver's error response quoted in the error.
const MAX_ERROR_BODY: usize = 300;

/// Why a delivery attempt failed; the text is shown by `syncfleet notifiers show`.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot read CA file {path}: {problem}")]
    CaFile { path: String, problem: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("webhook request failed: {0}")]
    Http(String),
    #[error("webhook answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error(
        "environment variable {0} (email.password_env) is not set on the controller; set it and restart the controller"
    )]
    NoPassword(String),
    #[error("cannot build the e-mail: {0}")]
    Message(String),
    #[error("SMTP: {0}")]
    Smtp(String),
}

/// One message as the transports send it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub text: String,
    /// The JSON body of a webhook (`text` first, structured fields under `syncfleet`).
    pub json: serde_json::Value,
}

fn read_pem(path: &str) -> Result<Vec<u8>, DeliveryError> {
    std::fs::read(path).map_err(|e| DeliveryError::CaFile {
        path: path.to_string(),
        problem: e.to_string(),
    })
}

fn roots(ca_file: Option<&str>) -> Result<rustls::RootCertStore, DeliveryError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_pem(path)?;
            for c in rustls_pemfile::certs(&mut &pem[..]) {
                let c = c.map_err(|e| DeliveryError::CaFile {
                    path: path.to_string(),
                    problem: e.to_string(),
                })?;
                roots.add(c).map_err(|e| DeliveryError::CaFile {
                    path: path.to_string(),
                    problem: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(DeliveryError::CaFile {
                    path: path.to_string(),
                    problem: "no PEM certificate in it".to_string(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(DeliveryError::Tls(
                    "no trusted root certificates found on this system; install the ca-certificates package or set ca_file".to_string(),
                ));
            }
        }
    }
    Ok(roots)
}

/// `text` cut at [`MAX_TEXT_BYTES`] on a character boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[cut: the message was longer]", &text[..end])
}

/// POST the message's JSON to the webhook; any 2xx is delivered. Redirects are not followed
/// (a receiver's URL carries its secret, which must not travel to another host).
pub async fn webhook(w: &WebhookDoc, msg: &Outgoing) -> Result<(), DeliveryError> {
    let builder = reqwest::Client::builder()
        .timeout(w.timeout.unwrap_or(WEBHOOK_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("syncfleet/", env!("CARGO_PKG_VERSION")));
    // reqwest's client always carries a TLS configuration (it needs one even for http://):
    // ours, with the ring provider; the roots matter only for https.
    let roots = if w.url.starts_with("https:") {
        roots(w.ca_file.as_deref())?
    } else {
        rustls::RootCertStore::empty()
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DeliveryError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = builder
        .use_preconfigured_tls(config)
        .build()
        .map_err(|e| DeliveryError::Http(e.to_string()))?;
    let body = serde_json::to_vec(&msg.json).map_err(|e| DeliveryError::Http(e.to_string()))?;
    let resp = client
        .post(&w.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| DeliveryError::Http(error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // Read at most a little of the error body, chunk by chunk.
    let mut resp = resp;
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    Err(DeliveryError::Status {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

/// The error and its sources on one line (reqwest's own text says only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        // Some errors repeat their source's text in their own; say each part once.
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        src = c.source();
    }
    s
}

/// Send the message as a plain-text e-mail to every recipient.
pub async fn email(e: &EmailDoc, msg: &Outgoing) -> Result<(), DeliveryError> {
    let bad = |x: &dyn std::fmt::Display| DeliveryError::Message(x.to_string());
    let from: Mailbox = e.from.parse().map_err(|x| bad(&x))?;
    let mut m = Message::builder().from(from).subject(msg.subject.clone());
    for to in &e.to {
        m = m.to(to.parse::<Mailbox>().map_err(|x| bad(&x))?);
    }
    let message = m
        .header(ContentType::TEXT_PLAIN)
        .body(msg.text.clone())
        .map_err(|x| bad(&x))?;
    let port = e.port.unwrap_or(match e.tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    let params = || -> Result<TlsParameters, DeliveryError> {
        let mut b = TlsParameters::builder(e.server.clone());
        if let Some(path) = &e.ca_file {
            let pem = read_pem(path)?;
            let cert = Certificate::from_pem(&pem).map_err(|x| DeliveryError::CaFile {
                path: path.clone(),
                problem: x.to_string(),
            })?;
            b = b
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|x| DeliveryError::Tls(x.to_string()))
    };
    let tls = match e.tls {
        SmtpTls::Starttls => Tls::Required(params()?),
        SmtpTls::Tls => Tls::Wrapper(params()?),
        SmtpTls::None => Tls::None,
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.server.as_str())
        .port(port)
        .tls(tls)
        .timeout(Some(e.timeout.unwrap_or(SMTP_TIMEOUT)));
    if let (Some(user), Some(var)) = (&e.username, &e.password_env) {
        let password = std::env::var(var).map_err(|_| DeliveryError::NoPassword(var.clone()))?;
        t = t.credentials(Credentials::new(user.clone(), password));
    }
    t.build()
        .send(message)
        .await
        .map_err(|x| DeliveryError::Smtp(error_chain(&x)))?;
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An HTTPS receiver on loopback with a certificate for `localhost` from a CA of its own;
    /// answers 204 to one request per connection and hands the request's body over.
    async fn https_receiver(
        dir: &std::path::Path,
    ) -> (u16, String, tokio::sync::mpsc::Receiver<Vec<u8>>) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A refused handshake (the client did not trust us) ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let n = tls.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap();
                            if buf.len() >= end + 4 + len {
                                break buf[end + 4..end + 4 + len].to_vec();
                            }
                        }
                    };
                    tls.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                        .await
                        .unwrap();
                    tls.shutdown().await.ok();
                    tx.send(body).await.unwrap();
                });
            }
        });
        (port, ca_file.to_str().unwrap().to_string(), rx)
    }

    fn message() -> Outgoing {
        Outgoing {
            subject: "s".into(),
            text: "t".into(),
            json: serde_json::json!({"text": "run held"}),
        }
    }

    #[tokio::test]
    async fn https_webhooks_trust_the_configured_ca_and_refuse_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let (port, ca_file, mut bodies) = https_receiver(dir.path()).await;
        let mut w = WebhookDoc {
            url: format!("https://localhost:{port}/hook"),
            ca_file: Some(ca_file),
            timeout: Some(Duration::from_secs(10)),
        };
        webhook(&w, &message()).await.unwrap();
        let body = bodies.recv().await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"text": "run held"})
        );
        // With the system's roots the receiver's private CA is not trusted.
        w.ca_file = None;
        let e = webhook(&w, &message()).await.unwrap_err().to_string();
        assert!(e.contains("certificate"), "{e}");
        // A CA file that is not there says so.
        w.ca_file = Some(dir.path().join("nope.pem").to_str().unwrap().to_string());
        let e = webhook(&w, &message()).await.unwrap_err().to_string();
        assert!(e.starts_with("cannot read CA file"), "{e}");
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_TEXT_BYTES + 64);
        assert!(cut.ends_with("[cut: the message was longer]"));
        assert_eq!(bounded("short"), "short");
    }
}
