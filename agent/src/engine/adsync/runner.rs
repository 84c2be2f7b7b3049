//! [`PowerShellRunner`]: one cmdlet call in, its output objects (JSON) out; and
//! [`ProcessRunner`], which runs the calls in long-lived PowerShell processes speaking the
//! JSON-lines protocol of [`HOST_SCRIPT`].
//!
//! # Processes
//!
//! A PowerShell process runs one call at a time, and `Invoke-ADSyncRunProfile` holds its process
//! for the whole run. So [`ProcessRunner`] keeps:
//! - one **control** process for every other cmdlet (status, results, scheduler, stop), so that
//!   status reads and `Stop-ADSyncRunProfile` answer while runs execute; its calls are serialized
//!   and each is bounded by [`AdsyncConfig::call_timeout`];
//! - one **run process per run in progress**, at most [`AdsyncConfig::max_concurrent_runs`],
//!   taken from a small pool of loaded processes ([`AdsyncConfig::idle_run_processes`]) because
//!   starting PowerShell and importing ADSync takes seconds. A run has no time limit (the
//!   executor's watchdog stops runs through [`SyncEngine::stop`](crate::engine::SyncEngine::stop)).
//!
//! A process that times out, breaks the protocol or dies is ended (`kill_on_drop`) and replaced
//! by a new one at the next call; a call is never retried by the runner (an
//! `Invoke-ADSyncRunProfile` retried could run a profile twice). Dropping the future of an
//! `Invoke-ADSyncRunProfile` call does not end the process: the call finishes on its own task and
//! the process goes back to the pool.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use syncfleet_proto::sync::lock;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::config::AdsyncConfig;
use crate::engine::BoxFuture;

/// The PowerShell host loop the agent starts (`host.ps1`).
pub const HOST_SCRIPT: &str = include_str!("host.ps1");

/// The one cmdlet that runs without a time limit, in a run process of its own.
pub const INVOKE_RUN_PROFILE: &str = "Invoke-ADSyncRunProfile";

/// Lines of standard error kept to explain a process that died.
const STDERR_TAIL: usize = 20;

/// Lines that are not answers (host output of a module) skipped before an answer; more means
/// the process does not speak the protocol.
const MAX_NOISE_LINES: usize = 1000;

/// A failed cmdlet call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdsyncError {
    /// The cmdlet ran and failed (a terminating error, or `$ErrorActionPreference = 'Stop'`).
    #[error("{command} failed: {message} (category {category})")]
    PowerShell {
        command: String,
        message: String,
        category: String,
    },
    /// The PowerShell process could not be started or could not load the ADSync module.
    #[error("the PowerShell host could not start: {0}")]
    Start(String),
    /// The call did not answer in time; its process was ended.
    #[error(
        "{command} did not answer within {limit:?}; its PowerShell process was ended and is started again at the next call"
    )]
    Timeout { command: String, limit: Duration },
    /// The process exited during the call.
    #[error("the PowerShell process died during {command}: {detail}")]
    Died { command: String, detail: String },
    /// The process wrote something that is not the protocol (a line too long, bad JSON).
    #[error("the PowerShell host broke the protocol during {command}: {detail}")]
    Protocol { command: String, detail: String },
}

impl AdsyncError {
    /// The cmdlet's own message, or the whole error for failures of the host.
    pub fn message(&self) -> String {
        match self {
            AdsyncError::PowerShell { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Runs one ADSync cmdlet with named parameters (`args`, a JSON object whose keys are parameter
/// names; `true` for a switch) and returns the cmdlet's output objects as a JSON array.
/// Implementations must be safe to call concurrently.
pub trait PowerShellRunner: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        command: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, AdsyncError>>;
}

/// JSON text with every non-ASCII character written as `\uXXXX` (UTF-16 code units), so that a
/// console code page other than UTF-8 cannot garble a request. Valid because in JSON text
/// non-ASCII characters occur only inside strings.
pub fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// One PowerShell process speaking the host protocol.
struct HostProcess {
    child: Child,
    stdin: ChildStdin,
    lines: FramedRead<ChildStdout, LinesCodec>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// The task reading standard error; it ends when the process's standard error closes.
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
}

impl HostProcess {
    async fn start(cfg: &AdsyncConfig) -> Result<HostProcess, AdsyncError> {
        let mut cmd = Command::new(&cfg.powershell);
        cmd.args(cfg.args(HOST_SCRIPT))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            AdsyncError::Start(format!(
                "cannot start {}: {e}; set engine.powershell to the PowerShell executable",
                cfg.powershell.display()
            ))
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(AdsyncError::Start(
                "the process has no standard streams".into(),
            ));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&tail);
        let max = cfg.max_line_bytes;
        let stderr_reader = tokio::spawn(async move {
            let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(max));
            while let Some(line) = lines.next().await {
                let Ok(line) = line else { break };
                let mut t = lock(&sink);
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut host = HostProcess {
            child,
            stdin,
            lines: FramedRead::new(stdout, LinesCodec::new_with_max_length(cfg.max_line_bytes)),
            stderr: tail,
            stderr_reader: Some(stderr_reader),
        };
        let ready = tokio::time::timeout(cfg.start_timeout, host.answer("start", None)).await;
        match ready {
            Err(_) => Err(AdsyncError::Start(format!(
                "no answer within {:?} (engine.start_timeout)",
                cfg.start_timeout
            ))),
            Ok(Err(e)) => Err(AdsyncError::Start(e.to_string())),
            Ok(Ok(v)) => match v.get("error") {
                Some(e) => Err(AdsyncError::Start(format!(
                    "{} (category {})",
                    e.as_str().unwrap_or_default(),
                    v.get("category")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ))),
                None if v.get("ready").and_then(Value::as_bool) == Some(true) => Ok(host),
                None => Err(AdsyncError::Start(format!("unexpected first line {v}"))),
            },
        }
    }

    /// Why the process is gone: its exit status and the last lines of its standard error. The
    /// exit status can be collected before the reader has taken the last lines from the pipe:
    /// the reader is given a moment to reach the end of standard error first.
    async fn death(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        let status = match self.child.try_wait() {
            Ok(Some(s)) => s.to_string(),
            _ => "still running, standard output closed".into(),
        };
        let tail: Vec<String> = lock(&self.stderr).iter().cloned().collect();
        if tail.is_empty() {
            status
        } else {
            format!("{status}; standard error: {}", tail.join(" | "))
        }
    }

    /// The next protocol line: a JSON object with `id` equal to `id` (or, for the first line, one
    /// with `ready`/`error`). Other lines are skipped (a module's host output).
    async fn answer(&mut self, command: &str, id: Option<u64>) -> Result<Value, AdsyncError> {
        let protocol = |detail: String| AdsyncError::Protocol {
            command: command.to_owned(),
            detail,
        };
        for _ in 0..MAX_NOISE_LINES {
            let line = match self.lines.next().await {
                Some(Ok(l)) => l,
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    return Err(protocol(
                        "an answer is longer than engine.max_line_bytes".into(),
                    ));
                }
                Some(Err(LinesCodecError::Io(e))) => {
                    return Err(AdsyncError::Died {
                        command: command.to_owned(),
                        detail: format!("reading its output: {e}"),
                    });
                }
                None => {
                    // Give the exit status a moment to be collected.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
                    return Err(AdsyncError::Died {
                        command: command.to_owned(),
                        detail: self.death().await,
                    });
                }
            };
            let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line.trim()) else {
                tracing::debug!(line = %line, "PowerShell host output that is not an answer, skipped");
                continue;
            };
            let matches = match id {
                Some(id) => map.get("id").and_then(Value::as_u64) == Some(id),
                None => map.contains_key("ready") || map.contains_key("error"),
            };
            if matches {
                return Ok(Value::Object(map));
            }
            tracing::debug!(line = %line, "PowerShell host answer for another request, skipped");
        }
        Err(protocol(format!(
            "{MAX_NOISE_LINES} lines without an answer"
        )))
    }

    async fn request(
        &mut self,
        id: u64,
        command: &str,
        args: &Value,
    ) -> Result<Value, AdsyncError> {
        let mut line =
            ascii_json(&json!({ "id": id, "command": command, "args": args }).to_string());
        line.push('\n');
        let written = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
            return Err(AdsyncError::Died {
                command: command.to_owned(),
                detail: format!("writing the request: {e}; {}", self.death().await),
            });
        }
        let answer = self.answer(command, Some(id)).await?;
        if let Some(message) = answer.get("error") {
            return Err(AdsyncError::PowerShell {
                command: command.to_owned(),
                message: message
                    .as_str()
                    .map_or_else(|| message.to_string(), str::to_owned),
                category: answer
                    .get("category")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        match answer.get("ok") {
            Some(Value::Array(items)) => Ok(Value::Array(items.clone())),
            // Windows PowerShell 5.1's shape of an extended array.
            Some(Value::Object(m)) if m.len() == 2 && m.contains_key("Count") => {
                match m.get("value") {
                    Some(Value::Array(items)) => Ok(Value::Array(items.clone())),
                    _ => Ok(Value::Array(vec![Value::Object(m.clone())])),
                }
            }
            Some(Value::Null) | None => Ok(Value::Array(Vec::new())),
            Some(other) => Ok(Value::Array(vec![other.clone()])),
        }
    }

    /// The operating system's id of the process (tests check restarts with it).
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Cmdlet calls in long-lived PowerShell processes (see the module documentation).
pub struct ProcessRunner {
    cfg: AdsyncConfig,
    next_id: AtomicU64,
    control: tokio::sync::Mutex<Option<HostProcess>>,
    idle_runs: Arc<Mutex<Vec<HostProcess>>>,
    run_slots: Arc<tokio::sync::Semaphore>,
}

impl ProcessRunner {
    /// A runner; starts no process until the first call.
    pub fn new(cfg: AdsyncConfig) -> ProcessRunner {
        let slots = cfg.max_concurrent_runs.max(1);
        ProcessRunner {
            cfg,
            next_id: AtomicU64::new(1),
            control: tokio::sync::Mutex::new(None),
            idle_runs: Arc::new(Mutex::new(Vec::new())),
            run_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        }
    }

    /// Process id of the control process, if one is running.
    pub async fn control_pid(&self) -> Option<u32> {
        self.control
            .lock()
            .await
            .as_ref()
            .and_then(HostProcess::pid)
    }

    async fn control_call(&self, command: &str, args: Value) -> Result<Value, AdsyncError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.control.lock().await;
        if slot.is_none() {
            *slot = Some(HostProcess::start(&self.cfg).await?);
        }
        let Some(host) = slot.as_mut() else {
            return Err(AdsyncError::Start("no control process".into()));
        };
        let limit = self.cfg.call_timeout;
        let outcome = match tokio::time::timeout(limit, host.request(id, command, &args)).await {
            Ok(r) => r,
            Err(_) => Err(AdsyncError::Timeout {
                command: command.to_owned(),
                limit,
            }),
        };
        if let Err(e) = &outcome
            && !matches!(e, AdsyncError::PowerShell { .. })
        {
            // Ended (kill_on_drop): its state is unknown after a timeout or a protocol error.
            *slot = None;
        }
        outcome
    }

    async fn run_call(&self, command: &str, args: Value) -> Result<Value, AdsyncError> {
        let permit = Arc::clone(&self.run_slots)
            .acquire_owned()
            .await
            .map_err(|_| AdsyncError::Start("the runner is shutting down".into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pooled = lock(&self.idle_runs).pop();
        let mut host = match pooled {
            Some(h) => h,
            None => HostProcess::start(&self.cfg).await?,
        };
        let idle = Arc::clone(&self.idle_runs);
        let keep = self.cfg.idle_run_processes;
        let command = command.to_owned();
        // On its own task: dropping the caller's future must not end the process mid-run.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let outcome = host.request(id, &command, &args).await;
            let reusable = match &outcome {
                Ok(_) | Err(AdsyncError::PowerShell { .. }) => true,
                Err(_) => false,
            };
            if reusable {
                let mut pool = lock(&idle);
                if pool.len() < keep {
                    pool.push(host);
                }
            }
            outcome
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(AdsyncError::Died {
                command: INVOKE_RUN_PROFILE.to_owned(),
                detail: format!("its task failed: {e}"),
            }),
        }
    }
}

impl PowerShellRunner for ProcessRunner {
    fn call<'a>(
        &'a self,
        command: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, AdsyncError>> {
        Box::pin(async move {
            if command == INVOKE_RUN_PROFILE {
                self.run_call(command, args).await
            } else {
                self.control_call(command, args).await
            }
        })
    }
}
