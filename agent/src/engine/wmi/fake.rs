//! A scripted WMI surface and helpers for the driver's tests.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::engine::{EngineProgress, ProgressSink};

pub(super) const DS_SAMPLE: &str = include_str!(
    "../../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
);
pub(super) const EXPORT_SAMPLE: &str = include_str!(
    "../../../tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
);
pub(super) const EXPORT_MA: &str = "MOSS-UserProfile";
pub(super) const EXPORT_GUID: &str = "{FB0D00E1-4E0B-44DA-AF5F-62D4D99B2FBC}";
pub(super) const DS_MA: &str = "MOSSAD-company";

/// What the fake's `Execute` does.
pub(super) struct ExecPlan {
    /// Whether the engine starts a run (run number + 1, `RunStatus()` = `in-progress`).
    pub(super) starts_run: bool,
    /// `RunDetails()` while the run is in progress.
    pub(super) in_progress_xml: Option<String>,
    /// Block until the test sends on the gate.
    pub(super) wait_for_gate: bool,
    /// What `Execute` returns.
    pub(super) result: Result<String, WmiError>,
    /// `RunStatus()` answers after `Execute` returned, one per call; the last one sticks.
    pub(super) statuses_after: Vec<String>,
    /// `RunDetails()` after the run.
    pub(super) final_xml: Option<String>,
}

impl ExecPlan {
    pub(super) fn returns(result: &str) -> Self {
        ExecPlan {
            starts_run: true,
            in_progress_xml: None,
            wait_for_gate: false,
            result: Ok(result.to_owned()),
            statuses_after: vec![result.to_owned()],
            final_xml: None,
        }
    }

    pub(super) fn refused(result: Result<String, WmiError>) -> Self {
        ExecPlan {
            starts_run: false,
            statuses_after: Vec::new(),
            result,
            ..ExecPlan::returns("")
        }
    }
}

#[derive(Default)]
pub(super) struct MaState {
    pub(super) run_number: String,
    pub(super) run_status: String,
    pub(super) run_profile: String,
    pub(super) details: String,
    pub(super) statuses: VecDeque<String>,
    pub(super) history: HashMap<u64, String>,
    pub(super) counters: HashMap<&'static str, String>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) mas: Vec<MaRecord>,
    pub(super) state: HashMap<String, MaState>,
    pub(super) plans: VecDeque<ExecPlan>,
    /// Method name → error every call of it returns.
    pub(super) failing: HashMap<&'static str, WmiError>,
    pub(super) service_running: bool,
    pub(super) calls: Vec<String>,
    /// What `ClearRuns` answers (`success` when unset).
    pub(super) clear_runs_answer: Option<String>,
}

/// A scripted WMI surface.
#[derive(Default)]
pub(super) struct FakeWmi {
    pub(super) inner: Mutex<Inner>,
    pub(super) gate: Mutex<Option<mpsc::Receiver<()>>>,
    /// Calls named here block until the gate opens (for timeouts).
    pub(super) hang: Mutex<Vec<&'static str>>,
}

impl FakeWmi {
    pub(super) fn new() -> Self {
        let fake = FakeWmi::default();
        {
            let mut i = fake.inner.lock().unwrap();
            i.service_running = true;
            for (name, guid, t) in [
                (EXPORT_MA, EXPORT_GUID, "Extensible2"),
                (DS_MA, "85098734-66bc-4938-8122-c5f585f463d0", "AD"),
            ] {
                i.mas.push(MaRecord {
                    name: name.into(),
                    guid: guid.into(),
                    ma_type: t.into(),
                });
                i.state.insert(name.into(), MaState::default());
            }
        }
        fake
    }

    pub(super) fn with_state(self, ma: &str, f: impl FnOnce(&mut MaState)) -> Self {
        f(self.inner.lock().unwrap().state.get_mut(ma).unwrap());
        self
    }

    pub(super) fn plan(self, p: ExecPlan) -> Self {
        self.inner.lock().unwrap().plans.push_back(p);
        self
    }

    pub(super) fn failing(self, method: &'static str, e: WmiError) -> Self {
        self.inner.lock().unwrap().failing.insert(method, e);
        self
    }

    pub(super) fn gate(&self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some(rx);
        tx
    }

    pub(super) fn wait_gate(&self) {
        let rx = self.gate.lock().unwrap().take();
        if let Some(rx) = rx {
            let _ = rx.recv();
        }
    }

    pub(super) fn enter(&self, method: &'static str, ma: &str) -> Result<(), WmiError> {
        if self.hang.lock().unwrap().contains(&method) {
            self.wait_gate();
        }
        let mut i = self.inner.lock().unwrap();
        i.calls.push(format!("{method}({ma})"));
        if let Some(e) = i.failing.get(method) {
            return Err(e.clone());
        }
        if !ma.is_empty() && !i.state.contains_key(ma) {
            return Err(WmiError::com(hresult::WBEM_E_NOT_FOUND));
        }
        Ok(())
    }

    pub(super) fn ma<T>(
        &self,
        method: &'static str,
        ma: &str,
        f: impl FnOnce(&mut MaState) -> T,
    ) -> Result<T, WmiError> {
        self.enter(method, ma)?;
        let mut i = self.inner.lock().unwrap();
        Ok(f(i.state.get_mut(ma).unwrap()))
    }

    pub(super) fn calls(&self, method: &str) -> usize {
        let prefix = format!("{method}(");
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .count()
    }
}

impl WmiApi for FakeWmi {
    fn list_mas(&self) -> Result<Vec<MaRecord>, WmiError> {
        self.enter("list_mas", "")?;
        Ok(self.inner.lock().unwrap().mas.clone())
    }

    fn execute(&self, ma: &str, profile: &str) -> Result<String, WmiError> {
        self.enter("execute", ma)?;
        let plan = self
            .inner
            .lock()
            .unwrap()
            .plans
            .pop_front()
            .unwrap_or_else(|| ExecPlan::returns("success"));
        let run_number = if plan.starts_run {
            let mut i = self.inner.lock().unwrap();
            let st = i.state.get_mut(ma).unwrap();
            let n = parse_run_number(&st.run_number).unwrap().unwrap_or(0) + 1;
            st.run_number = n.to_string();
            st.run_status = "in-progress".into();
            st.run_profile = profile.into();
            if let Some(x) = &plan.in_progress_xml {
                st.details = x.clone();
            }
            Some(n)
        } else {
            None
        };
        if plan.wait_for_gate {
            self.wait_gate();
        }
        let mut i = self.inner.lock().unwrap();
        let st = i.state.get_mut(ma).unwrap();
        if let Some(n) = run_number {
            if let Some(x) = &plan.final_xml {
                st.details = x.clone();
                st.history.insert(n, x.clone());
            }
            st.statuses = plan.statuses_after.into_iter().collect();
            if let Some(s) = st.statuses.back() {
                st.run_status = s.clone();
            }
        }
        plan.result
    }

    fn stop(&self, ma: &str) -> Result<String, WmiError> {
        self.ma("stop", ma, |st| {
            if st.run_status == "in-progress" {
                "success".to_owned()
            } else {
                "ma-not-running".to_owned()
            }
        })
    }

    fn run_status(&self, ma: &str) -> Result<String, WmiError> {
        self.ma("run_status", ma, |st| {
            if st.statuses.len() > 1 {
                st.statuses.pop_front().unwrap_or_default()
            } else {
                st.run_status.clone()
            }
        })
    }

    fn run_number(&self, ma: &str) -> Result<String, WmiError> {
        self.ma("run_number", ma, |st| st.run_number.clone())
    }

    fn run_profile(&self, ma: &str) -> Result<String, WmiError> {
        self.ma("run_profile", ma, |st| st.run_profile.clone())
    }

    fn run_details(&self, ma: &str) -> Result<String, WmiError> {
        self.ma("run_details", ma, |st| st.details.clone())
    }

    fn history_details(&self, ma_guid: &str, run_number: u64) -> Result<Option<String>, WmiError> {
        self.enter("history_details", "")?;
        let i = self.inner.lock().unwrap();
        let Some(ma) = i.mas.iter().find(|m| normalize_guid(&m.guid) == ma_guid) else {
            return Ok(None);
        };
        Ok(i.state[&ma.name].history.get(&run_number).cloned())
    }

    fn num(&self, ma: &str, counter: PendingCounter) -> Result<String, WmiError> {
        self.ma("num", ma, |st| {
            st.counters
                .get(counter.method())
                .cloned()
                .unwrap_or_else(|| "0".to_owned())
        })
    }

    fn service_running(&self) -> Result<bool, WmiError> {
        self.enter("service_running", "")?;
        Ok(self.inner.lock().unwrap().service_running)
    }

    fn clear_runs(&self, ending_before: &str) -> Result<String, WmiError> {
        self.enter("clear_runs", "")?;
        let mut i = self.inner.lock().unwrap();
        i.calls.push(format!("ClearRuns({ending_before})"));
        Ok(i.clear_runs_answer
            .clone()
            .unwrap_or_else(|| "success".into()))
    }

    fn engine_version(&self) -> Result<String, WmiError> {
        self.enter("engine_version", "")?;
        Ok("FIMSynchronizationService 4.6.607.0".to_owned())
    }
}

pub(super) fn fast_config() -> WmiConfig {
    WmiConfig {
        poll_interval: Duration::from_millis(10),
        completing_poll: Duration::from_millis(10),
        completing_timeout: Duration::from_secs(10),
        post_run_delay: Duration::from_millis(1),
        blocking_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
        ..WmiConfig::default()
    }
}

pub(super) fn engine(fake: FakeWmi) -> WmiEngine<FakeWmi> {
    WmiEngine::new(fake, fast_config()).unwrap()
}

pub(super) fn sink() -> (
    ProgressSink,
    tokio::sync::mpsc::UnboundedReceiver<EngineProgress>,
) {
    tokio::sync::mpsc::unbounded_channel()
}

pub(super) fn export_success_xml() -> String {
    EXPORT_SAMPLE.replace(
        "<step-result>completed-export-errors</step-result>",
        "<step-result>success</step-result>",
    )
}

/// `xml` (an export run of [`EXPORT_SAMPLE`], run 2590) renumbered as run `n`.
pub(super) fn renumbered(xml: &str, n: u64) -> String {
    xml.replace(
        "<run-number>2590</run-number>",
        &format!("<run-number>{n}</run-number>"),
    )
}

pub(super) fn export_in_progress_xml(progress: &str) -> String {
    EXPORT_SAMPLE.replace(
        "<step-result>completed-export-errors</step-result>",
        &format!("<step-result progress=\"{progress}\">in-progress</step-result>"),
    )
}

/// A scripted [`ProfileSource`]: answers with `answer` (or never, when `hang`), counting reads.
pub(super) struct FakeProfiles {
    pub(super) answer: Mutex<Result<EngineProfiles, DiscoveryError>>,
    pub(super) reads: std::sync::atomic::AtomicUsize,
    pub(super) hang: bool,
}

impl FakeProfiles {
    pub(super) fn answering(answer: Result<EngineProfiles, DiscoveryError>) -> Self {
        FakeProfiles {
            answer: Mutex::new(answer),
            reads: Default::default(),
            hang: false,
        }
    }

    pub(super) fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ProfileSource for FakeProfiles {
    fn read(&self) -> crate::engine::BoxFuture<'_, Result<EngineProfiles, DiscoveryError>> {
        Box::pin(async move {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.answer.lock().unwrap().clone()
        })
    }

    fn describe(&self) -> String {
        "fake database".to_owned()
    }
}

/// Run profile configuration XML in the engine's shape (`discovery/fixtures/`).
pub(super) mod profile_xml {
    pub(in crate::engine::wmi) const AD_DELTA: &str =
        include_str!("discovery/fixtures/ad-delta-import-delta-sync.xml");
    pub(in crate::engine::wmi) const FULL_SYNC: &str =
        include_str!("discovery/fixtures/full-sync.xml");
    pub(in crate::engine::wmi) const EXPORT_DROP: &str =
        include_str!("discovery/fixtures/ecma2-export-drop-file.xml");
    pub(in crate::engine::wmi) const FIM_DELTA_COMBINED: &str =
        include_str!("discovery/fixtures/fim-delta-import-and-delta-sync.xml");
    pub(in crate::engine::wmi) const MALFORMED: &str =
        include_str!("discovery/fixtures/malformed-truncated.xml");
}
