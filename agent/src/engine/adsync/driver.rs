//! [`AdsyncEngine`]: the `adsync` driver over any [`PowerShellRunner`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use syncfleet_proto::sync::lock;
use syncfleet_proto::vocab;

use super::config::AdsyncConfig;
use super::model::{self, SchedulerState, items, number, text};
use super::runner::{AdsyncError, INVOKE_RUN_PROFILE, PowerShellRunner};
use crate::engine::runhistory;
use crate::engine::{
    BoxFuture, EngineError, EngineHealth, EngineInfo, EngineProgress, ExecuteOutcome, MaInfo,
    MaStatus, PendingCounters, ProgressSink, RunProfileInfo, SyncEngine,
};

/// Driver kind reported by [`SyncEngine::info`].
pub const KIND: &str = "adsync";

/// What [`SyncEngine::stop`] returns when the connector runs nothing.
pub const NOT_RUNNING: &str = "ma-not-running";

/// What the driver knows about one connector from the last `Get-ADSyncConnector`.
#[derive(Debug, Clone)]
struct Connector {
    id: String,
    /// `ConnectorTypeName` (else `Type`), e.g. `AD`, `Extensible2`.
    ma_type: String,
    /// Run profiles with whether their steps are known.
    profiles: Vec<(RunProfileInfo, bool)>,
}

/// The `adsync` driver (see the module documentation for the rules it implements).
pub struct AdsyncEngine<R: PowerShellRunner> {
    runner: Arc<R>,
    cfg: AdsyncConfig,
    connectors: Mutex<HashMap<String, Connector>>,
    /// Staging mode as last read from `Get-ADSyncScheduler`.
    staging: Mutex<Option<bool>>,
}

/// An engine failure from a runner failure.
fn engine_error(what: &str, e: &AdsyncError) -> EngineError {
    EngineError::Unavailable(format!("{what}: {e}"))
}

impl<R: PowerShellRunner> AdsyncEngine<R> {
    /// A driver over `runner`; makes no call.
    pub fn new(runner: Arc<R>, cfg: AdsyncConfig) -> Result<Self, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        Ok(AdsyncEngine {
            runner,
            cfg,
            connectors: Mutex::new(HashMap::new()),
            staging: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &AdsyncConfig {
        &self.cfg
    }

    /// `Get-ADSyncScheduler`, remembering staging mode.
    pub async fn scheduler(&self) -> Result<SchedulerState, EngineError> {
        let s = read_scheduler(self.runner.as_ref()).await?;
        *lock(&self.staging) = Some(s.staging_mode_enabled);
        Ok(s)
    }

    /// Staging mode as last read; `None` before the first read.
    pub fn staging_mode(&self) -> Option<bool> {
        *lock(&self.staging)
    }

    /// `Get-ADSyncConnector`, in the module's order; refreshes the cache.
    async fn list(&self) -> Result<Vec<(String, Connector)>, EngineError> {
        let out = self
            .runner
            .call("Get-ADSyncConnector", json!({}))
            .await
            .map_err(|e| engine_error("list connectors", &e))?;
        let mut found = Vec::new();
        for c in items(&out) {
            let Some(name) = text(c, "Name").filter(|n| !n.is_empty()) else {
                continue;
            };
            let connector = Connector {
                id: text(c, "Identifier").unwrap_or_default(),
                ma_type: text(c, "ConnectorTypeName")
                    .filter(|t| !t.is_empty())
                    .or_else(|| text(c, "Type"))
                    .unwrap_or_default(),
                profiles: model::run_profiles(c),
            };
            found.push((name, connector));
        }
        *lock(&self.connectors) = found.iter().cloned().collect();
        Ok(found)
    }

    async fn connectors(&self) -> Result<HashMap<String, Connector>, EngineError> {
        Ok(self.list().await?.into_iter().collect())
    }

    async fn connector(&self, ma: &str) -> Result<Connector, EngineError> {
        if let Some(c) = lock(&self.connectors).get(ma) {
            return Ok(c.clone());
        }
        self.connectors()
            .await?
            .remove(ma)
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))
    }

    /// The newest run of a connector (`Get-ADSyncRunProfileResult -ConnectorId -NumberRequested
    /// 1`); `None` when it never ran.
    async fn last_run(&self, connector_id: &str) -> Result<Option<Value>, EngineError> {
        let out = self
            .runner
            .call(
                "Get-ADSyncRunProfileResult",
                json!({ "ConnectorId": connector_id, "NumberRequested": 1 }),
            )
            .await
            .map_err(|e| engine_error("Get-ADSyncRunProfileResult", &e))?;
        Ok(items(&out).into_iter().next().cloned())
    }

    /// Why a profile must not run on a staging server: it has an export step, or steps the
    /// driver cannot tell. `None` when it may run.
    async fn staging_refusal(
        &self,
        ma: &str,
        profile: &str,
    ) -> Result<Option<String>, EngineError> {
        if !self.scheduler().await?.staging_mode_enabled {
            return Ok(None);
        }
        // Fresh: a profile edited in the Synchronization Service Manager must not slip through.
        let connectors = self.connectors().await?;
        let c = connectors
            .get(ma)
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))?;
        let why = match c.profiles.iter().find(|(p, _)| p.name == profile) {
            Some((p, true)) if p.steps.iter().all(|s| s.step_type != "export") => return Ok(None),
            Some((_, true)) => "it has an export step",
            Some((_, false)) => "its steps cannot be read, so it may export",
            None => "the connector does not list it, so its steps are unknown",
        };
        Ok(Some(why.to_owned()))
    }
}

/// Consecutive failed status reads after which [`AdsyncEngine::follow`] gives up.
pub const MAX_FOLLOW_FAILURES: u32 = 5;

impl<R: PowerShellRunner> AdsyncEngine<R> {
    /// After the process of a run was lost: wait until the connector is idle, then report the
    /// result of the run that started after `before`; an error when no such run exists (it did
    /// not start) or the engine cannot be read.
    async fn follow(
        &self,
        ma: &str,
        connector_id: &str,
        before: u64,
        seen: Option<u64>,
    ) -> Result<ExecuteOutcome, EngineError> {
        let mut failures = 0;
        loop {
            match self.status(ma).await {
                Ok(MaStatus::Idle) => break,
                Ok(MaStatus::InProgress { .. }) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_FOLLOW_FAILURES {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
        let run = self.last_run(connector_id).await?;
        match run
            .as_ref()
            .and_then(|r| Some((number(r, "RunNumber")?, text(r, "Result")?)))
        {
            Some((n, result)) if n > before && seen.is_none_or(|s| s == n) => Ok(ExecuteOutcome {
                result,
                run_number: Some(n),
            }),
            _ => Err(EngineError::Unavailable(format!(
                "the PowerShell process running {ma:?} was lost and the engine shows no run after run {before}"
            ))),
        }
    }
}

/// `Get-ADSyncScheduler` through any runner.
pub async fn read_scheduler<R: PowerShellRunner + ?Sized>(
    runner: &R,
) -> Result<SchedulerState, EngineError> {
    let out = runner
        .call("Get-ADSyncScheduler", json!({}))
        .await
        .map_err(|e| engine_error("Get-ADSyncScheduler", &e))?;
    SchedulerState::parse(&out).ok_or_else(|| {
        EngineError::Unavailable(format!(
            "Get-ADSyncScheduler answered without SyncCycleEnabled: {out}"
        ))
    })
}

impl<R: PowerShellRunner> SyncEngine for AdsyncEngine<R> {
    fn info(&self) -> EngineInfo {
        let version = match self.staging_mode() {
            Some(true) => "Entra Connect Sync (staging mode: exports are refused)",
            Some(false) => "Entra Connect Sync",
            None => "Entra Connect Sync (not probed yet)",
        };
        EngineInfo {
            kind: KIND.to_owned(),
            version: version.to_owned(),
        }
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>> {
        Box::pin(async move {
            Ok(self
                .list()
                .await?
                .into_iter()
                .map(|(name, c)| MaInfo {
                    name,
                    guid: format!("{{{}}}", c.id.trim_matches(['{', '}']).to_ascii_uppercase()),
                    ma_type: c.ma_type,
                    run_profiles: c.profiles.into_iter().map(|(p, _)| p).collect(),
                })
                .collect())
        })
    }

    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>> {
        Box::pin(async move {
            if let Some(why) = self.staging_refusal(ma, profile).await? {
                tracing::warn!(
                    ma,
                    profile,
                    reason = %why,
                    "run profile refused: this Entra Connect server is in staging mode"
                );
                return Ok(ExecuteOutcome {
                    result: vocab::STAGING_MODE_REFUSED.to_owned(),
                    run_number: None,
                });
            }
            let c = self.connector(ma).await?;
            let before = self
                .last_run(&c.id)
                .await?
                .and_then(|r| number(&r, "RunNumber"))
                .unwrap_or(0);
            let invoke = self.runner.call(
                INVOKE_RUN_PROFILE,
                json!({ "ConnectorName": ma, "RunProfileName": profile }),
            );
            tokio::pin!(invoke);
            let mut seen: Option<u64> = None;
            let mut tick = tokio::time::interval(self.cfg.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let outcome = loop {
                tokio::select! {
                    r = &mut invoke => break r,
                    _ = tick.tick(), if seen.is_none() => {
                        if let Ok(Some(run)) = self.last_run(&c.id).await
                            && let Some(n) = number(&run, "RunNumber").filter(|n| *n > before)
                        {
                            seen = Some(n);
                            let _ = progress.send(EngineProgress {
                                run_number: n,
                                progress: None,
                                details_xml: None,
                            });
                        }
                    }
                }
            };
            let result = match outcome {
                Ok(out) => model::invoke_result(&out).ok_or_else(|| {
                    EngineError::Unavailable(format!(
                        "{INVOKE_RUN_PROFILE} answered without a Result: {out}"
                    ))
                })?,
                // The engine's refusal or failure, kept as data like the WMI provider's string
                // (0x8023063d inside still classifies as busy).
                Err(AdsyncError::PowerShell { message, .. }) => {
                    format!("call-failure: {}", message.trim())
                }
                Err(e @ (AdsyncError::Died { .. } | AdsyncError::Protocol { .. })) => {
                    // The engine may still run the profile: follow it to its end.
                    tracing::warn!(ma, profile, error = %e, "lost the PowerShell process of a run; following the run through the engine");
                    return self.follow(ma, &c.id, before, seen).await;
                }
                Err(e) => return Err(engine_error(INVOKE_RUN_PROFILE, &e)),
            };
            let run_number = match seen {
                Some(n) => Some(n),
                None => self
                    .last_run(&c.id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| number(&r, "RunNumber"))
                    .filter(|n| *n > before),
            };
            Ok(ExecuteOutcome { result, run_number })
        })
    }

    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            if self.status(ma).await? == MaStatus::Idle {
                return Ok(NOT_RUNNING.to_owned());
            }
            match self
                .runner
                .call("Stop-ADSyncRunProfile", json!({ "ConnectorName": ma }))
                .await
            {
                Ok(_) => Ok("success".to_owned()),
                Err(AdsyncError::PowerShell { message, .. }) => {
                    Ok(format!("call-failure: {}", message.trim()))
                }
                Err(e) => Err(engine_error("Stop-ADSyncRunProfile", &e)),
            }
        })
    }

    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>> {
        Box::pin(async move {
            let out = self
                .runner
                .call("Get-ADSyncConnectorRunStatus", json!({}))
                .await
                .map_err(|e| engine_error("Get-ADSyncConnectorRunStatus", &e))?;
            let busy = items(&out).into_iter().any(|s| {
                let idle = text(s, "RunState").is_some_and(|r| r.eq_ignore_ascii_case("idle"));
                // An entry without a connector name cannot be attributed: count it as this one.
                let this = text(s, "ConnectorName").is_none_or(|n| n == ma);
                this && !idle
            });
            if !busy {
                return Ok(MaStatus::Idle);
            }
            let c = self.connector(ma).await?;
            let run = self.last_run(&c.id).await.ok().flatten();
            let running = run
                .as_ref()
                .filter(|r| model::flag(r, "IsRunComplete") == Some(false));
            Ok(MaStatus::InProgress {
                profile: running
                    .and_then(|r| text(r, "RunProfileName"))
                    .unwrap_or_default(),
                run_number: running.and_then(|r| number(r, "RunNumber")).unwrap_or(0),
            })
        })
    }

    fn pending<'a>(&'a self, _ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>> {
        Box::pin(async move {
            Err(EngineError::Unavailable(
                "the adsync driver does not read pending import/export counters".into(),
            ))
        })
    }

    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let c = self.connector(ma).await?;
            let out = self
                .runner
                .call(
                    "Get-ADSyncRunProfileResult",
                    json!({ "ConnectorId": c.id, "RunNumber": run_number, "RunStepDetails": true }),
                )
                .await
                .map_err(|e| engine_error("Get-ADSyncRunProfileResult", &e))?;
            let Some(result) = items(&out)
                .into_iter()
                .find(|r| number(r, "RunNumber") == Some(run_number))
            else {
                return Err(EngineError::NoSuchRun {
                    ma: ma.to_owned(),
                    run_number,
                });
            };
            let xml = model::run_history_xml(result, &c.id, true);
            if runhistory::parse_one(&xml).is_ok() {
                return Ok(xml);
            }
            tracing::warn!(
                ma,
                run_number,
                "a run result's XML fragments are not well-formed; reporting its counters without them"
            );
            Ok(model::run_history_xml(result, &c.id, false))
        })
    }

    fn health(&self) -> BoxFuture<'_, EngineHealth> {
        Box::pin(async move {
            match self.scheduler().await {
                Ok(_) => EngineHealth {
                    healthy: true,
                    detail: String::new(),
                },
                Err(e) => EngineHealth {
                    healthy: false,
                    detail: e.to_string(),
                },
            }
        })
    }
}
