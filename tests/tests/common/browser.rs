//! A real headless Chromium driven over W3C WebDriver, for the web console's browser test.
//!
//! `chromedriver` (Debian package `chromium-driver`) runs as a child process on a free loopback
//! port, killed on drop; the WebDriver client is `fantoccini` over plain HTTP (chromedriver
//! speaks HTTP on loopback only). Chromium (Debian package `chromium`) runs headless in a fresh
//! profile and trusts the controller's certificate by pinning the SHA-256 of its public key
//! (`--ignore-certificate-errors-spki-list`), not by accepting any certificate: a console that
//! served another key would fail the TLS handshake.
//!
//! The tests are synchronous like the rest of the harness: [`Browser`] owns a small tokio
//! runtime and blocks on each WebDriver command. Every wait is bounded and fails naming what it
//! awaited, with the page's visible text to show where it stood.
//!
//! Test files include it with `#[path = "common/browser.rs"] mod browser;` next to
//! `mod common;`, so that only they build the WebDriver client.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    reason = "shared test harness: not every test uses every helper; tests fail loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
pub use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::{Proc, free_port, poll, workspace_root};

/// Where Debian installs Chromium and its WebDriver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Default bound of a wait in the page: generous for a loaded 2-core machine, it is a liveness
/// bound, never a speed assertion.
pub const WAIT: Duration = Duration::from_secs(30);

/// Base64 of the SHA-256 of the SubjectPublicKeyInfo of the first certificate in a PEM file:
/// the form Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_pin(cert_pem: &Path) -> String {
    let pem = std::fs::read(cert_pem)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", cert_pem.display()));
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", cert_pem.display()))
        .unwrap_or_else(|e| panic!("bad PEM in {}: {e}", cert_pem.display()));
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .unwrap_or_else(|e| panic!("bad certificate in {}: {e}", cert_pem.display()));
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Whether chromedriver on `port` answers `/status` with `"ready":true`. Read with a short
/// timeout: chromedriver keeps the connection open after its answer.
fn driver_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&raw).contains("\"ready\":true") {
            return true;
        }
    }
    false
}

/// The folder screenshots go to: `target/console-screenshots/` of the workspace (created).
pub fn screenshot_dir() -> PathBuf {
    let dir = workspace_root().join("target").join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One headless Chromium session behind its own chromedriver.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    /// Killed on drop (after the session is closed, which ends Chromium).
    driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium trusting the certificates whose SPKI pins
    /// are given ([`spki_pin`]); chromedriver's log goes to `log_dir/<name>-chromedriver.log`.
    /// A missing browser or driver fails naming the Debian packages to install.
    pub fn start(name: &str, spki_pins: &[String], log_dir: &Path) -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).is_file(),
                "{path} not found: install Debian's `{package}` package (the web console's \
                 browser test needs `apt-get install chromium chromium-driver`)"
            );
        }
        let port = free_port();
        let log = log_dir.join(format!("{name}-chromedriver.log"));
        let driver = Proc::spawn(
            &format!("{name} chromedriver"),
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display())),
            log_dir.join(format!("{name}-chromedriver.stderr")),
        );
        let ready = poll(Duration::from_secs(30), || driver_ready(port).then_some(()));
        assert!(
            ready.is_some(),
            "chromedriver on port {port} was not ready within 30s; its log: {}",
            log.display()
        );
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !spki_pins.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_pins.join(",")
            ));
        }
        let caps = json!({
            "acceptInsecureCerts": false,
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a Chromium session through chromedriver: {e}; its log: {}",
                    log.display()
                )
            });
        Browser {
            rt,
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.c().goto(url))
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    pub fn current_url(&self) -> String {
        self.rt
            .block_on(self.c().current_url())
            .unwrap()
            .to_string()
    }

    /// Resizes the window (CSS pixels of the outer window).
    pub fn set_size(&self, width: u32, height: u32) {
        self.rt
            .block_on(self.c().set_window_size(width, height))
            .unwrap();
    }

    /// Runs a script in the page (`arguments[i]` are `args`) and returns its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs an asynchronous script: it gets a callback as its last argument and the result is
    /// what it passes to it (e.g. the outcome of a `fetch`).
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute_async(script, args))
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// The page's visible text (`document.body.innerText`), for failure messages.
    pub fn page_text(&self) -> String {
        self.execute(
            "return document.body ? document.body.innerText : ''",
            vec![],
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.rt
            .block_on(self.c().find_all(Locator::Css(css)))
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// The visible texts of the elements matching `css` now, in document order.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let v = self.execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText)",
            vec![json!(css)],
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// An attribute of the first element matching `css`, if any.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let v = self.execute(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null",
            vec![json!(css), json!(name)],
        );
        v.as_str().map(str::to_string)
    }

    /// Polls until `check` gives Some (at most `timeout`); fails naming `what` with the page's
    /// URL and text.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        if let Some(v) = poll(timeout, || check(self)) {
            return v;
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\nat {}\npage text:\n{}",
            self.current_url(),
            self.page_text()
        )
    }

    /// Waits until at least `n` elements match `css`.
    pub fn wait_count(&self, what: &str, css: &str, n: usize) -> usize {
        self.wait(what, WAIT, |b| {
            let c = b.count(css);
            (c >= n).then_some(c)
        })
    }

    /// Waits until an element matching `css` shows a text containing `needle`; returns it.
    pub fn wait_text(&self, what: &str, css: &str, needle: &str) -> String {
        self.wait(what, WAIT, |b| {
            b.texts(css).into_iter().find(|t| t.contains(needle))
        })
    }

    /// Clicks the first element matching `css`, waiting for it to exist; a live page may
    /// replace the element between finding and clicking it, so a stale element is found again.
    pub fn click(&self, css: &str) {
        let mut last = String::new();
        let clicked = poll(WAIT, || {
            let res = self.rt.block_on(async {
                let el = self.c().find(Locator::Css(css)).await?;
                el.click().await
            });
            match res {
                Ok(()) => Some(()),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        if clicked.is_none() {
            panic!(
                "could not click {css} within {WAIT:?}: {last}\nat {}\npage text:\n{}",
                self.current_url(),
                self.page_text()
            );
        }
    }

    /// Types `text` into the first element matching `css` (waiting for it to exist).
    pub fn fill(&self, css: &str, text: &str) {
        self.wait_count(&format!("a field {css} to fill"), css, 1);
        let el = self
            .rt
            .block_on(self.c().find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("cannot find {css}: {e}"));
        self.rt
            .block_on(el.send_keys(text))
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// Moves the keyboard focus to the first element matching `css` (waiting for it).
    pub fn focus(&self, css: &str) {
        self.wait_count(&format!("an element {css} to focus"), css, 1);
        self.execute(
            "document.querySelector(arguments[0]).focus(); return null",
            vec![json!(css)],
        );
    }

    /// Presses a key in the element that has the keyboard focus.
    pub fn press(&self, key: Key) {
        let keys = char::from(key).to_string();
        self.rt
            .block_on(async {
                let el = self.c().active_element().await?;
                el.send_keys(&keys).await
            })
            .unwrap_or_else(|e| panic!("cannot press {key:?}: {e}"));
    }

    /// The `id` of the element that has the keyboard focus (empty when it has none).
    pub fn focused_id(&self) -> String {
        self.execute(
            "return document.activeElement ? document.activeElement.id : ''",
            vec![],
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Writes a PNG of the viewport to `target/console-screenshots/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .rt
            .block_on(self.c().screenshot())
            .unwrap_or_else(|e| panic!("screenshot {name} failed: {e}"));
        assert!(
            png.starts_with(b"\x89PNG"),
            "screenshot {name} is not a PNG"
        );
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Ends the session, which quits Chromium; chromedriver is killed by `Proc`'s drop.
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
        let _ = &self.driver;
    }
}
