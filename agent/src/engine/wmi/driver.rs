//! [`WmiEngine`]: the `mim-wmi` driver over any [`WmiApi`]. Every WMI call runs on a tokio
//! blocking thread, bounded in time and in number, so a frozen engine makes calls fail instead of
//! piling up threads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use syncfleet_proto::sync::lock;

use syncfleet_proto::vocab::{self, ResultClass};

use super::api::{MaRecord, PendingCounter, WmiApi, WmiError, normalize_guid};
use super::config::WmiConfig;
use super::discovery::{EngineProfiles, ProfileOrigin, ProfileSource, merge_profiles};
use super::run_number::parse_run_number;
use super::status::{engine_error, is_provider_failure, parse_counter, provider_string_error};
use crate::engine::runhistory;
use crate::engine::{
    BoxFuture, EngineError, EngineHealth, EngineInfo, ExecuteOutcome, MaInfo, MaStatus,
    PendingCounters, ProgressSink, SyncEngine,
};

/// Driver kind reported by [`SyncEngine::info`].
pub const KIND: &str = "mim-wmi";

/// At most this many WMI calls (other than `Execute`) may be outstanding at once. Calls that time
/// out keep their blocking thread until WMI answers; past this many, the engine is treated as
/// frozen and further calls fail at once instead of piling up threads.
pub const MAX_OUTSTANDING_CALLS: usize = 16;

/// How long one read of the engine's run profiles (or its failure) is reused: inventories are
/// also taken for telemetry, and a profile edited in the engine shows within this time.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// The last read of the engine's run profiles: when, and its outcome (the failure as text).
type DiscoveryCache = Option<(tokio::time::Instant, Result<Arc<EngineProfiles>, String>)>;

/// Decrements the outstanding-call count when a blocking call ends (even if it panics).
struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `mim-wmi` engine driver over any [`WmiApi`] (see the module documentation for the
/// rules it implements).
pub struct WmiEngine<A: WmiApi> {
    pub(super) api: Arc<A>,
    pub(super) cfg: WmiConfig,
    /// MA name → `{GUID}`, from the last `list_mas`.
    guids: Mutex<HashMap<String, String>>,
    /// Engine version from the last successful probe.
    version: Mutex<Option<String>>,
    outstanding: Arc<AtomicUsize>,
    /// Where the engine's run profiles are read from; `None`: declarations and standard
    /// profiles only.
    profile_source: Option<Arc<dyn ProfileSource>>,
    discovery: Mutex<DiscoveryCache>,
    /// MA name → where its run profiles came from in the last inventory.
    origins: Mutex<HashMap<String, ProfileOrigin>>,
    /// Discovery warnings already logged (each is logged once).
    warned: Mutex<HashSet<String>>,
}

impl<A: WmiApi> WmiEngine<A> {
    /// A driver over `api`; fails when the configuration is invalid. Makes no WMI call.
    pub fn new(api: A, cfg: WmiConfig) -> Result<Self, EngineError> {
        cfg.validate()?;
        Ok(WmiEngine {
            api: Arc::new(api),
            cfg,
            guids: Mutex::new(HashMap::new()),
            version: Mutex::new(None),
            outstanding: Arc::new(AtomicUsize::new(0)),
            profile_source: None,
            discovery: Mutex::new(None),
            origins: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// Read the engine's run profiles from `source` when [`WmiConfig::discover`] is on.
    pub fn with_profile_source(mut self, source: Arc<dyn ProfileSource>) -> Self {
        self.profile_source = Some(source);
        self
    }

    /// MA name → where its run profiles came from in the last [`SyncEngine::inventory`].
    pub fn profile_origins(&self) -> HashMap<String, ProfileOrigin> {
        lock(&self.origins).clone()
    }

    /// Log `message` at warn level the first time `key` is seen.
    fn warn_once(&self, key: String, f: impl FnOnce()) {
        if lock(&self.warned).insert(key) {
            f();
        }
    }

    /// The engine's run profiles, or why they are not available (discovery off, no source, or
    /// the source failed or did not answer within [`WmiConfig::blocking_timeout`]). A read is
    /// reused for [`DISCOVERY_TTL`]; failures are logged once per distinct reason.
    async fn discovered(&self) -> Result<Arc<EngineProfiles>, String> {
        if !self.cfg.discover {
            return Err("run profile discovery is off (discover = false)".to_owned());
        }
        let Some(source) = self.profile_source.clone() else {
            return Err("run profile discovery is not available in this build".to_owned());
        };
        if let Some((at, cached)) = lock(&self.discovery).as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return cached.clone();
        }
        let limit = self.cfg.blocking_timeout;
        let read = match tokio::time::timeout(limit, source.read()).await {
            Ok(Ok(profiles)) => Ok(Arc::new(profiles)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the sync engine's database ({}) did not answer within {limit:?}",
                source.describe()
            )),
        };
        match &read {
            Ok(p) => {
                if let Some(why) = &p.partitions_unresolved {
                    self.warn_once(format!("partitions\0{why}"), || {
                        tracing::warn!(
                            reason = %why,
                            "partition names of the engine's run profiles cannot be read; \
                             steps keep the partition GUID the profile stores"
                        );
                    });
                }
            }
            Err(why) => self.warn_once(format!("discovery\0{why}"), || {
                tracing::warn!(
                    source = %source.describe(),
                    reason = %why,
                    "run profiles cannot be discovered from the sync engine's database; \
                     management agents use the declared profiles, or the five standard \
                     single-step profiles when none are declared"
                );
            }),
        }
        *lock(&self.discovery) = Some((tokio::time::Instant::now(), read.clone()));
        read
    }

    pub fn config(&self) -> &WmiConfig {
        &self.cfg
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    /// Run `f` on a blocking thread, bounded by `limit`. A call that times out keeps its thread
    /// until WMI answers; at most [`MAX_OUTSTANDING_CALLS`] may be outstanding.
    pub(super) async fn blocking<T, F>(
        &self,
        what: &str,
        limit: Duration,
        f: F,
    ) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&A) -> T + Send + 'static,
    {
        let n = self.outstanding.fetch_add(1, Ordering::SeqCst);
        let guard = Outstanding(Arc::clone(&self.outstanding));
        if n >= MAX_OUTSTANDING_CALLS {
            return Err(EngineError::Unavailable(format!(
                "{n} WMI calls are still waiting for the sync engine; it looks frozen, \
                 {what} not attempted"
            )));
        }
        let api = Arc::clone(&self.api);
        let handle = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f(&api)
        });
        match tokio::time::timeout(limit, handle).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EngineError::Unavailable(format!(
                "WMI call {what} failed on its thread: {e}"
            ))),
            Err(_) => Err(EngineError::Unavailable(format!(
                "WMI call {what} did not answer within {limit:?}; the sync engine may be frozen"
            ))),
        }
    }

    /// `{GUID}` of an MA, from the cache or a fresh `list_mas`.
    pub(super) async fn guid_of(&self, ma: &str) -> Result<String, EngineError> {
        if let Some(g) = lock(&self.guids).get(ma) {
            return Ok(g.clone());
        }
        self.list().await?;
        lock(&self.guids)
            .get(ma)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))
    }

    pub(super) async fn list(&self) -> Result<Vec<MaRecord>, EngineError> {
        let mas = self
            .blocking("MIIS_ManagementAgent", self.cfg.blocking_timeout, |a| {
                a.list_mas()
            })
            .await?
            .map_err(|e| engine_error(None, "list management agents", &e))?;
        *lock(&self.guids) = mas
            .iter()
            .map(|m| (m.name.clone(), normalize_guid(&m.guid)))
            .collect();
        Ok(mas)
    }

    pub(super) async fn fetch_run_details(
        &self,
        ma: &str,
        run_number: u64,
    ) -> Result<String, EngineError> {
        // The last run through MIIS_ManagementAgent.RunDetails() (documented, cheap); older
        // runs through MIIS_RunHistory (key format UNCONFIRMED, see the module docs).
        let m = ma.to_owned();
        let last = self
            .blocking(
                "RunNumber/RunDetails",
                self.cfg.blocking_timeout,
                move |a| {
                    let n = a.run_number(&m)?;
                    if parse_run_number(&n).ok().flatten() == Some(run_number) {
                        a.run_details(&m).map(Some)
                    } else {
                        Ok(None)
                    }
                },
            )
            .await?
            .map_err(|e| engine_error(Some(ma), "RunDetails", &e))?;
        if let Some(xml) = last {
            if is_provider_failure(&xml) {
                return Err(provider_string_error("RunDetails", ma, &xml));
            }
            // A new run may have started between the two calls: check the number when we can.
            match runhistory::parse_one(&xml) {
                Ok(run) if run.run_number != run_number => {}
                _ => return Ok(xml),
            }
        }
        let guid = self.guid_of(ma).await?;
        let found = self
            .blocking(
                "MIIS_RunHistory.RunDetails",
                self.cfg.blocking_timeout,
                move |a| a.history_details(&guid, run_number),
            )
            .await?
            .map_err(|e| engine_error(None, "MIIS_RunHistory.RunDetails", &e))?;
        match found {
            Some(xml) if is_provider_failure(&xml) => Err(provider_string_error(
                "MIIS_RunHistory.RunDetails",
                ma,
                &xml,
            )),
            Some(xml) => Ok(xml),
            None => Err(EngineError::NoSuchRun {
                ma: ma.to_owned(),
                run_number,
            }),
        }
    }

    pub(super) async fn probe(&self) -> EngineHealth {
        let want_version = lock(&self.version).is_none();
        let probed = self
            .blocking("health probe", self.cfg.blocking_timeout, move |a| {
                let running = a.service_running();
                let mas = match running {
                    Ok(true) => Some(a.list_mas().map(|m| m.len())),
                    _ => None,
                };
                let version = if want_version {
                    a.engine_version().ok()
                } else {
                    None
                };
                (running, mas, version)
            })
            .await;
        let unhealthy = |detail: String| EngineHealth {
            healthy: false,
            detail,
        };
        match probed {
            Err(e) => unhealthy(e.to_string()),
            Ok((running, mas, version)) => {
                if let Some(v) = version.filter(|v| !v.trim().is_empty()) {
                    *lock(&self.version) = Some(v);
                }
                match (running, mas) {
                    (Err(e), _) => unhealthy(format!("cannot query the service state: {e}")),
                    (Ok(false), _) => unhealthy(format!(
                        "service {} is not running (or not installed)",
                        self.cfg.service_name
                    )),
                    (Ok(true), Some(Err(e))) => {
                        unhealthy(format!("cannot list management agents: {e}"))
                    }
                    (Ok(true), _) => EngineHealth {
                        healthy: true,
                        detail: String::new(),
                    },
                }
            }
        }
    }
}

impl<A: WmiApi> SyncEngine for WmiEngine<A> {
    /// Kind `mim-wmi`; version from the last successful health probe, else `unknown`.
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: KIND.to_owned(),
            version: lock(&self.version)
                .clone()
                .unwrap_or_else(|| "unknown".to_owned()),
        }
    }

    /// MAs from `MIIS_ManagementAgent`; run profiles discovered from the engine's database,
    /// with the configuration's declarations as overrides (module docs).
    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>> {
        Box::pin(async move {
            let mas = self.list().await?;
            for p in &self.cfg.profiles {
                if !mas.iter().any(|m| m.name == p.ma) {
                    tracing::warn!(ma = %p.ma, profile = %p.name, "declared profile of an unknown MA");
                }
            }
            let discovered = self.discovered().await;
            let mut out = Vec::with_capacity(mas.len());
            let mut origins = HashMap::with_capacity(mas.len());
            for m in mas {
                let merged = merge_profiles(
                    &m.name,
                    &m.guid,
                    self.cfg.declared_for(&m.name)?,
                    WmiConfig::standard_profiles,
                    discovered.as_deref().map_err(String::as_str),
                );
                for u in &merged.undiscoverable {
                    self.warn_once(
                        format!("profile\0{}\0{}\0{}", m.name, u.profile, u.reason),
                        || {
                            tracing::warn!(
                                ma = %m.name,
                                profile = %u.profile,
                                reason = %u.reason,
                                "run profile cannot be discovered from the engine's database; \
                                 it is left out of the inventory until it is declared in the \
                                 configuration (profiles)"
                            );
                        },
                    );
                }
                let previous = lock(&self.origins).get(&m.name).cloned();
                if previous.as_ref() != Some(&merged.origin) {
                    tracing::info!(ma = %m.name, source = %merged.origin, "run profiles of management agent");
                }
                origins.insert(m.name.clone(), merged.origin);
                out.push(MaInfo {
                    run_profiles: merged.profiles,
                    guid: normalize_guid(&m.guid),
                    name: m.name,
                    ma_type: m.ma_type,
                });
            }
            *lock(&self.origins) = origins;
            Ok(out)
        })
    }

    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>> {
        Box::pin(self.run_execute(ma, profile, progress))
    }

    /// `Stop()`'s string verbatim (`success`, `ma-not-running`, `access-denied`, ...).
    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            self.blocking("Stop", self.cfg.stop_timeout, move |a| a.stop(&m))
                .await?
                .map_err(|e| engine_error(Some(ma), "Stop", &e))
        })
    }

    /// `RunStatus()` = `in-progress` (or `completing-*`, when the MA is still busy) →
    /// [`MaStatus::InProgress`] with `RunProfile()` and `RunNumber()` (0 when unreadable).
    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            let (status, busy) = self
                .blocking("RunStatus", self.cfg.blocking_timeout, move |a| {
                    let status = a.run_status(&m)?;
                    let busy = if vocab::classify(&status) == ResultClass::Transitional {
                        Some((a.run_profile(&m)?, a.run_number(&m)?))
                    } else {
                        None
                    };
                    Ok::<_, WmiError>((status, busy))
                })
                .await?
                .map_err(|e| engine_error(Some(ma), "RunStatus", &e))?;
            if is_provider_failure(&status) {
                return Err(provider_string_error("RunStatus", ma, &status));
            }
            Ok(match busy {
                None => MaStatus::Idle,
                Some((profile, number)) => MaStatus::InProgress {
                    profile,
                    run_number: parse_run_number(&number).ok().flatten().unwrap_or(0),
                },
            })
        })
    }

    /// The `Num*()` counters; a non-numeric answer is an error naming the string.
    fn pending<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>> {
        Box::pin(async move {
            let m = ma.to_owned();
            let raw = self
                .blocking("Num*", self.cfg.blocking_timeout, move |a| {
                    PendingCounter::ALL
                        .iter()
                        .map(|c| a.num(&m, *c).map(|s| (*c, s)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?
                .map_err(|e| engine_error(Some(ma), "Num*", &e))?;
            let mut counters = PendingCounters::default();
            for (c, s) in raw {
                *c.slot(&mut counters) = parse_counter(ma, c, &s)?;
            }
            Ok(counters)
        })
    }

    /// Run-history XML of run `run_number`: `RunDetails()` when it is the MA's last run, else
    /// `MIIS_RunHistory`; [`EngineError::NoSuchRun`] when neither has it.
    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(self.fetch_run_details(ma, run_number))
    }

    /// Healthy when the service runs and `MIIS_ManagementAgent` can be listed within
    /// [`WmiConfig::blocking_timeout`] (a frozen engine shows as unhealthy).
    fn health(&self) -> BoxFuture<'_, EngineHealth> {
        Box::pin(self.probe())
    }

    /// `MIIS_Server.ClearRuns(EndingBefore)`, bounded by [`WmiConfig::stop_timeout`] (clearing
    /// many runs can take minutes); the engine's string is returned verbatim.
    fn clear_runs(
        &self,
        ending_before: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<String, EngineError>> {
        Box::pin(async move {
            let arg = super::api::clear_runs_argument(ending_before);
            self.blocking("ClearRuns", self.cfg.stop_timeout, move |a| {
                a.clear_runs(&arg)
            })
            .await?
            .map_err(|e| engine_error(None, "ClearRuns", &e))
        })
    }
}

#[cfg(test)]
mod tests;
