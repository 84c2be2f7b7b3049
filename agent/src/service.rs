//! The agent as a Windows service: what it tells the Service Control Manager (SCM) and how it
//! answers the SCM's controls, as plain logic that runs and is tested on every platform. The
//! calls into the SCM itself are a thin layer on Windows that feeds [`drive`] the controls it
//! receives and hands each [`Status`] on.
//!
//! The SCM's contract, which this keeps:
//! - `START_PENDING` while starting, then `RUNNING` accepting `STOP` and `SHUTDOWN`.
//! - On `STOP` or `SHUTDOWN`: `STOP_PENDING` at once, accepting no further control, and the
//!   agent's shutdown token is cancelled: the same graceful path as Ctrl-C or SIGTERM (no new
//!   runs; the run in flight is finished by the engine or journaled as interrupted).
//! - While stopping, a status with a larger checkpoint at least every wait hint, so the SCM
//!   never takes the winding-down agent for hung (an engine step can take long to end).
//! - `STOPPED` once the agent has returned: exit code 0 when it ended cleanly, otherwise
//!   [`EXIT_FAILED`] as a service-specific code (so the recovery actions apply).
//! - `INTERROGATE` is answered with the current status; every other control is refused as not
//!   implemented and changes nothing.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The service-specific exit code reported when the agent ended with an error.
pub const EXIT_FAILED: u32 = 1;

/// The wait hint given to the SCM while starting or stopping: the checkpoint then grows twice
/// within it.
pub const WAIT_HINT: Duration = Duration::from_secs(10);

/// The service's state as the SCM knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    StartPending,
    Running,
    StopPending,
    Stopped,
}

/// A control the SCM sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Stop,
    /// The system is shutting down: handled like [`Control::Stop`].
    Shutdown,
    Interrogate,
    /// Any other control code (pause, parameter change, ...).
    Other(u32),
}

/// The synchronous answer of the control handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    NoError,
    NotImplemented,
}

/// One status report for the SCM (the fields of `SERVICE_STATUS` the agent sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// Whether `STOP` and `SHUTDOWN` are accepted (only while running).
    pub accepts_stop: bool,
    /// Grows while a start or stop is pending; 0 otherwise.
    pub checkpoint: u32,
    /// How long the SCM waits for the next report while pending; zero otherwise.
    pub wait_hint: Duration,
    /// 0, or [`EXIT_FAILED`] once stopped after an error.
    pub exit_code: u32,
}

/// The control handler's immediate answer to `control`.
pub fn reply_to(control: Control) -> Reply {
    match control {
        Control::Stop | Control::Shutdown | Control::Interrogate => Reply::NoError,
        Control::Other(_) => Reply::NotImplemented,
    }
}

/// The service's status through its life (see the module documentation).
#[derive(Debug)]
pub struct Lifecycle {
    status: Status,
}

impl Lifecycle {
    /// A service that is starting.
    pub fn new(wait_hint: Duration) -> Lifecycle {
        Lifecycle {
            status: Status {
                state: State::StartPending,
                accepts_stop: false,
                checkpoint: 0,
                wait_hint,
                exit_code: 0,
            },
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The agent serves: `RUNNING`, accepting stop and shutdown.
    pub fn running(&mut self) -> Status {
        if self.status.state == State::StartPending {
            self.status = Status {
                state: State::Running,
                accepts_stop: true,
                checkpoint: 0,
                wait_hint: Duration::ZERO,
                exit_code: 0,
            };
        }
        self.status
    }

    /// Applies `control`; true when it starts the stop (the first `STOP` or `SHUTDOWN`).
    pub fn control(&mut self, control: Control) -> bool {
        match control {
            Control::Stop | Control::Shutdown
                if matches!(self.status.state, State::StartPending | State::Running) =>
            {
                self.status.state = State::StopPending;
                self.status.accepts_stop = false;
                self.status.checkpoint = 1;
                self.status.wait_hint = WAIT_HINT.max(self.status.wait_hint);
                true
            }
            _ => false,
        }
    }

    /// A sign of life while starting or stopping: the checkpoint grows. Unchanged otherwise.
    pub fn progress(&mut self) -> Status {
        if matches!(self.status.state, State::StartPending | State::StopPending) {
            self.status.checkpoint = self.status.checkpoint.saturating_add(1);
        }
        self.status
    }

    /// The agent has returned: `STOPPED` with `exit_code`.
    pub fn stopped(&mut self, exit_code: u32) -> Status {
        self.status = Status {
            state: State::Stopped,
            accepts_stop: false,
            checkpoint: 0,
            wait_hint: Duration::ZERO,
            exit_code,
        };
        self.status
    }
}

/// Runs `agent` as the service: reports `RUNNING`, turns the SCM's `controls` into the
/// cancellation of `shutdown` (which `agent` must obey), reports progress every half wait hint
/// while stopping, and `STOPPED` once `agent` has returned. Every status goes to `report`, in
/// order. Returns the agent's result.
pub async fn drive<E>(
    agent: impl Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
    mut controls: mpsc::UnboundedReceiver<Control>,
    mut report: impl FnMut(Status),
) -> Result<(), E> {
    let mut life = Lifecycle::new(WAIT_HINT);
    report(life.running());
    let mut agent = std::pin::pin!(agent);
    let mut ticks = tokio::time::interval(WAIT_HINT / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut controls_open = true;
    let result = loop {
        tokio::select! {
            result = &mut agent => break result,
            control = controls.recv(), if controls_open => match control {
                None => controls_open = false,
                Some(control) => {
                    if life.control(control) {
                        shutdown.cancel();
                        ticks.reset();
                        report(life.status());
                    } else if control == Control::Interrogate {
                        report(life.status());
                    }
                }
            },
            _ = ticks.tick(), if life.status().state == State::StopPending => {
                report(life.progress());
            }
        }
    };
    let code = if result.is_ok() { 0 } else { EXIT_FAILED };
    report(life.stopped(code));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    type Reports = Arc<Mutex<Vec<(Instant, Status)>>>;

    fn recorder() -> (Reports, impl FnMut(Status)) {
        let reports: Reports = Arc::default();
        let r = Arc::clone(&reports);
        (reports, move |s| {
            r.lock().unwrap().push((Instant::now(), s))
        })
    }

    /// An agent that, once `shutdown` is cancelled, needs `wind_down` to finish its run.
    async fn agent(shutdown: CancellationToken, wind_down: Duration) -> Result<(), String> {
        shutdown.cancelled().await;
        tokio::time::sleep(wind_down).await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_the_agent_and_reports_progress_within_the_wait_hint_until_stopped() {
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports, report) = recorder();
        let task = tokio::spawn(drive(
            agent(shutdown.clone(), Duration::from_secs(47)),
            shutdown.clone(),
            rx,
            report,
        ));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!shutdown.is_cancelled());
        let stop_at = Instant::now();
        tx.send(Control::Stop).unwrap();
        task.await.unwrap().unwrap();
        assert!(shutdown.is_cancelled());

        let reports = reports.lock().unwrap().clone();
        assert_eq!(reports[0].1.state, State::Running);
        assert!(reports[0].1.accepts_stop);
        let stopping: Vec<_> = reports
            .iter()
            .filter(|(_, s)| s.state == State::StopPending)
            .collect();
        assert_eq!(stopping[0].0, stop_at, "STOP_PENDING is reported at once");
        assert!(stopping.iter().all(|(_, s)| !s.accepts_stop));
        for pair in stopping.windows(2) {
            assert!(pair[1].1.checkpoint > pair[0].1.checkpoint, "{pair:?}");
            assert!(pair[1].0 - pair[0].0 < WAIT_HINT, "{pair:?}");
        }
        let (last_at, last) = reports.last().unwrap();
        assert_eq!(last.state, State::Stopped);
        assert_eq!(last.exit_code, 0);
        assert_eq!(*last_at - stop_at, Duration::from_secs(47));
        assert!(*last_at - stopping.last().unwrap().0 < WAIT_HINT);
        assert!(stopping.len() >= 47 / 5, "{stopping:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn interrogate_reports_the_status_and_other_controls_change_nothing() {
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports, report) = recorder();
        let task = tokio::spawn(drive(
            agent(shutdown.clone(), Duration::ZERO),
            shutdown.clone(),
            rx,
            report,
        ));
        tx.send(Control::Interrogate).unwrap();
        tx.send(Control::Other(2)).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!shutdown.is_cancelled());
        {
            let reports = reports.lock().unwrap();
            let states: Vec<_> = reports.iter().map(|(_, s)| s.state).collect();
            assert_eq!(states, [State::Running, State::Running]);
        }
        assert_eq!(reply_to(Control::Other(2)), Reply::NotImplemented);
        assert_eq!(reply_to(Control::Interrogate), Reply::NoError);
        assert_eq!(reply_to(Control::Stop), Reply::NoError);
        assert_eq!(reply_to(Control::Shutdown), Reply::NoError);

        // A system shutdown stops it like STOP; a second stop changes nothing.
        tx.send(Control::Shutdown).unwrap();
        tx.send(Control::Stop).unwrap();
        task.await.unwrap().unwrap();
        let reports = reports.lock().unwrap();
        let pending: Vec<_> = reports
            .iter()
            .filter(|(_, s)| s.state == State::StopPending)
            .collect();
        assert_eq!(pending.len(), 1, "{reports:?}");
        assert_eq!(reports.last().unwrap().1.state, State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_fails_on_its_own_is_reported_stopped_with_the_failure_code() {
        let shutdown = CancellationToken::new();
        let (_tx, rx) = mpsc::unbounded_channel();
        let (reports, report) = recorder();
        let failing = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err::<(), _>("journal cannot be opened".to_string())
        };
        let result = drive(failing, shutdown.clone(), rx, report).await;
        assert_eq!(result, Err("journal cannot be opened".to_string()));
        let reports = reports.lock().unwrap();
        let last = reports.last().unwrap().1;
        assert_eq!(last.state, State::Stopped);
        assert_eq!(last.exit_code, EXIT_FAILED);
        assert_eq!(reports.len(), 2, "{reports:?}");
    }

    #[test]
    fn lifecycle_moves_only_forward() {
        let mut life = Lifecycle::new(WAIT_HINT);
        assert_eq!(life.status().state, State::StartPending);
        assert_eq!(life.progress().checkpoint, 1);
        assert_eq!(life.running().state, State::Running);
        assert_eq!(life.progress().checkpoint, 0, "no checkpoint while running");
        assert!(life.control(Control::Stop));
        assert!(!life.control(Control::Stop));
        assert_eq!(life.running().state, State::StopPending);
        assert_eq!(life.stopped(0).state, State::Stopped);
        assert!(!life.control(Control::Shutdown));
    }
}
