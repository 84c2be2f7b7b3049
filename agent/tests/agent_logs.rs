//! Log lines of agents: every line and span names its agent, also when several agents run in
//! one process (the controller's `dev` mode), and text logs written to a file carry no colour
//! codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on unexpected errors"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests wait for real child processes by polling with short blocking sleeps"
)]

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncfleet_agent::AgentConfig;
use tokio_util::sync::CancellationToken;

/// Collects what the JSON formatter writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// A port nothing listens on: the agents keep failing to connect and say so.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The `agent` fields of the spans a JSON line was emitted in (`spans`: the current span and
/// its parents).
fn agents_of(line: &serde_json::Value) -> Vec<String> {
    line["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["agent"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_line_of_in_process_agents_names_its_agent() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let port = closed_port();
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            // TLS files are only read before connecting; the connection is refused anyway.
            for f in ["ca.pem", "agent.pem", "agent.key"] {
                std::fs::write(dir.path().join(f), "not a certificate").unwrap();
            }
            let cfg = AgentConfig {
                name: format!("sync-0{}", i + 1),
                controller: format!("https://127.0.0.1:{port}"),
                data_dir: dir.path().to_path_buf(),
                reconnect_max_backoff: Duration::from_millis(200),
                ..AgentConfig::default()
            };
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(syncfleet_agent::run(cfg, stop)));
        }
        // Until each agent has logged a few lines (start, failed connections).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let lines = out.lines();
            let count = |name: &str| {
                lines
                    .iter()
                    .filter(|l| agents_of(l).iter().any(|a| a == name))
                    .count()
            };
            if count("sync-01") >= 3 && count("sync-02") >= 3 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agents logged too little: {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let lines = out.lines();
    assert!(!lines.is_empty());
    for line in &lines {
        let agents = agents_of(line);
        assert!(
            !agents.is_empty() && agents.iter().all(|a| *a == agents[0]),
            "a line without its agent: {line}"
        );
    }
    let started: Vec<String> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "agent starting")
        .flat_map(agents_of)
        .collect();
    assert_eq!(started.len(), 2, "{lines:#?}");
    assert!(started.contains(&"sync-01".to_string()) && started.contains(&"sync-02".to_string()));
}

#[test]
fn text_logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::write(dir.path().join(f), "not a certificate").unwrap();
    }
    let log = dir.path().join("agent.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncfleet-agent"))
        .args(["run", "--name", "s1", "--controller"])
        .arg(format!("https://127.0.0.1:{}", closed_port()))
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("NO_COLOR")
        .env("SYNCFLEET_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("agent starting") && text.lines().count() >= 2 {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent logged too little:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a file:\n{text:?}"
    );
    assert!(
        text.contains("agent=s1") || text.contains("agent{"),
        "{text}"
    );
}
