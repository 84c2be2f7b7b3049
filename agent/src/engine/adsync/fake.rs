//! A scripted [`PowerShellRunner`] for tests: answers per cmdlet, queued or fixed, and a log of
//! every call.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;
use syncfleet_proto::sync::lock;

use super::runner::{AdsyncError, PowerShellRunner};
use crate::engine::BoxFuture;

type Answer = Result<Value, AdsyncError>;

#[derive(Default)]
pub struct FakeRunner {
    /// Answers used once each, in order, before `fixed`.
    queued: Mutex<HashMap<String, VecDeque<Answer>>>,
    /// Answers used every time.
    fixed: Mutex<HashMap<String, Answer>>,
    /// Every call: command and arguments.
    pub calls: Mutex<Vec<(String, Value)>>,
    /// Released to let a queued `Invoke-ADSyncRunProfile` answer (when `hold_invoke`).
    pub release: tokio::sync::Notify,
    pub hold_invoke: std::sync::atomic::AtomicBool,
}

impl FakeRunner {
    pub fn new() -> FakeRunner {
        FakeRunner::default()
    }

    /// Answer `command` with `answer` every time (after queued answers).
    pub fn always(&self, command: &str, answer: Answer) -> &Self {
        lock(&self.fixed).insert(command.to_owned(), answer);
        self
    }

    /// Answer the next call of `command` with `answer`.
    pub fn then(&self, command: &str, answer: Answer) -> &Self {
        lock(&self.queued)
            .entry(command.to_owned())
            .or_default()
            .push_back(answer);
        self
    }

    pub fn calls_of(&self, command: &str) -> Vec<Value> {
        lock(&self.calls)
            .iter()
            .filter(|(c, _)| c == command)
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn ps_error(command: &str, message: &str) -> AdsyncError {
        AdsyncError::PowerShell {
            command: command.to_owned(),
            message: message.to_owned(),
            category: "InvalidOperation".to_owned(),
        }
    }
}

impl PowerShellRunner for FakeRunner {
    fn call<'a>(
        &'a self,
        command: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, AdsyncError>> {
        Box::pin(async move {
            lock(&self.calls).push((command.to_owned(), args));
            if command == super::runner::INVOKE_RUN_PROFILE
                && self.hold_invoke.load(std::sync::atomic::Ordering::SeqCst)
            {
                self.release.notified().await;
            }
            let queued = lock(&self.queued)
                .get_mut(command)
                .and_then(VecDeque::pop_front);
            match queued {
                Some(a) => a,
                None => lock(&self.fixed).get(command).cloned().unwrap_or_else(|| {
                    Err(FakeRunner::ps_error(command, "not scripted in the test"))
                }),
            }
        })
    }
}
