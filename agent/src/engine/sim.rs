//! A simulated MIM synchronization engine: the `sim` driver for Linux development, demos, tests
//! and benchmarks.
//!
//! # Contract
//!
//! The simulator behaves like the engine *as seen through its WMI interface* (domain brief §2.1):
//! it returns the engine's raw result strings and writes run-history XML in the engine's format,
//! so everything above the driver (executor, lock manager, [`crate::runhistory`] parser, UI) is
//! exercised exactly as against a real server. It is deterministic: the same [`SimConfig::seed`]
//! and the same sequence of calls at the same (tokio) times give the same counters, run numbers
//! and ids, so tests may run under paused tokio time.
//!
//! # Model (first version; kept in small pieces so later iterations can refine it)
//!
//! Per MA: a connector space of `connectors` objects; *source changes* that accumulate at
//! `change_rate_per_hour` of simulated time; *staged* pending imports; *pending exports*; and
//! *unconfirmed exports* that the next import confirms (domain brief §5 "Normal" cycle: delta
//! import → delta sync → export → confirming import).
//!
//! | Step | Claims at step start | Reports | Commits at step end |
//! |---|---|---|---|
//! | Delta Import (`delta-import`/`to-cs`) | source changes + unconfirmed exports | `stage-add/update/delete` (`completed-no-objects` when nothing) | staged pending imports |
//! | Full Import (`full-import`/`to-cs`) | the same, reads every object | as delta + `stage-no-change` ≈ connectors | the same |
//! | Delta Sync (`apply-rules`/`apply-pending`) | staged imports | inbound-flow counters; outbound-flow counters per target MA, zeros omitted (§4 quirk 4) | connector changes; pending exports on the *other* MAs |
//! | Full Sync (`apply-rules`/`reevaluate-flow-connectors`) | the same, re-evaluates every connector | as delta + `connector-no-flow` for the rest | the same |
//! | Export (`export`) | pending exports | `export-add/update/delete/failure` | unconfirmed exports (seen as `stage-update`/`stage-delete` by the next import) |
//!
//! Confirming imports never cause outbound flows, so a delta cycle converges. A stopped step
//! commits the fraction of its claim that it processed and hands the rest back.
//!
//! # Engine rules reproduced (domain brief §3.3, §6)
//!
//! - One run per MA: a second `Execute` returns `no-start-ma-already-running` (§6.3).
//! - One synchronization at a time: a profile with a sync-class step ([`RunStepInfo::is_sync`])
//!   while another MA runs one returns [`CONCURRENT_SYNC_REFUSAL`], which contains `0x8023063d`
//!   (§6.2; how the refusal reaches a WMI caller is unconfirmed, so the string carries both the
//!   HRESULT and the event text). Imports and exports on different MAs may overlap.
//! - Unknown profile → `no-start-unknown-profile-name`; unknown MA → [`EngineError::NoSuchMa`].
//! - `Stop()` ends the run promptly with `stopped-user-termination-from-wmi-or-ui` and, like the
//!   real method, returns only once the run has stopped (§6.12); `ma-not-running` when idle.
//! - Runs execute in their own task: if the caller of `execute` goes away, the run carries on and
//!   stays visible through `status` and `run_details`, as a real engine run does when the agent dies
//!   (§9 design note 5).
//!
//! # Time
//!
//! A step lasts `time_scale × (step_base_secs + objects × secs_per_object)` of tokio time
//! (`tokio::time::sleep`, so paused-time tests work); the defaults are 2 s and 2 ms, so at
//! `time_scale` 1.0 a full import of 25,000 objects takes ~52 s and at the dev scale of 0.05 ~2.6 s
//! (a small delta import is dominated by the 2 s base: ~0.1 s at 0.05). Source changes
//! accrue per *simulated* hour, i.e. tokio time divided by `time_scale`. Timestamps in the XML are
//! wall-clock times (construction time plus tokio time elapsed), so they agree with what the agent
//! observes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::{
    BoxFuture, EngineError, EngineHealth, EngineInfo, EngineProgress, ExecuteOutcome, MaInfo,
    MaStatus, PendingCounters, ProgressSink, RunProfileInfo, RunStepInfo, SyncEngine,
};

/// Result of a run stopped through [`SyncEngine::stop`] (domain brief §3.4).
pub const STOPPED_BY_USER: &str = "stopped-user-termination-from-wmi-or-ui";

/// What `Execute` returns when another MA already synchronizes (domain brief §6.2, event 6309).
pub const CONCURRENT_SYNC_REFUSAL: &str = "call-failure: 0x8023063d The operation cannot be \
     performed because other synchronization run profile is already running.";

/// Run profiles every simulated MA has: (name, step type, sub-type), domain brief §5.
pub const STANDARD_PROFILES: [(&str, &str, &str); 5] = [
    ("Full Import", "full-import", "to-cs"),
    ("Delta Import", "delta-import", "to-cs"),
    ("Full Sync", "apply-rules", "reevaluate-flow-connectors"),
    ("Delta Sync", "apply-rules", "apply-pending"),
    ("Export", "export", ""),
];

/// Progress is reported this many times per step (every 10 % of its duration).
const PROGRESS_TICKS: u32 = 10;
/// Default fixed cost of a step at `time_scale` 1.0 ([`SimConfig::step_base_secs`]).
const STEP_BASE_SECS: f64 = 2.0;
/// Default cost per processed object at `time_scale` 1.0 ([`SimConfig::secs_per_object`]).
const SECS_PER_OBJECT: f64 = 0.002;
/// No simulated step lasts longer than a day, whatever the configuration says.
const MAX_STEP_SECS: f64 = 86_400.0;
/// At most this many object errors are drawn for one step when `error_rate` hits.
const MAX_FAILURES_PER_STEP: u64 = 5;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// One simulated sync server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seeds every random draw (counter splits, GUIDs, run numbers, errors).
    pub seed: u64,
    /// Duration multiplier: 1.0 = realistic, ~0.05 for dev (a delta import takes 1–3 s), ~0.01
    /// or less in tests. Must be > 0.
    pub time_scale: f64,
    /// Reported as [`EngineInfo::version`].
    pub version: String,
    /// `security-id` written into run history: the account that "invoked" the runs (§1).
    pub security_id: String,
    /// Probability (0..=1) that a sync or export step hits a few object errors
    /// (`completed-sync-errors` / `completed-export-errors`). 0 keeps tests deterministic.
    pub error_rate: f64,
    /// Runs kept per MA in the run history (oldest dropped first, like `ClearRuns`).
    pub history_limit: usize,
    /// Fixed cost of a step in seconds at `time_scale` 1.0 (connection, watermark, commit).
    pub step_base_secs: f64,
    /// Cost per processed object in seconds at `time_scale` 1.0.
    pub secs_per_object: f64,
    pub mas: Vec<SimMaConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::example(0)
    }
}

/// One simulated management agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMaConfig {
    pub name: String,
    /// `MIIS_ManagementAgent.Type`: `AD`, `MSSQL`, `FIM`, `Extensible2`, ...
    pub ma_type: String,
    /// Connector-space size at start.
    #[serde(default = "default_connectors")]
    pub connectors: u64,
    /// Changes per simulated hour in the connected source.
    #[serde(default = "default_change_rate")]
    pub change_rate_per_hour: f64,
    /// Partition of every run step (AD: the domain DN; others: `default`).
    #[serde(default = "default_partition")]
    pub partition: String,
    /// Whether other MAs' syncs create pending exports here (false for import-only sources such
    /// as an HR database).
    #[serde(default = "default_true")]
    pub receives_exports: bool,
}

fn default_connectors() -> u64 {
    1_000
}
fn default_change_rate() -> f64 {
    60.0
}
fn default_partition() -> String {
    "default".to_owned()
}
fn default_true() -> bool {
    true
}

impl SimMaConfig {
    pub fn new(
        name: &str,
        ma_type: &str,
        connectors: u64,
        change_rate_per_hour: f64,
        partition: &str,
    ) -> Self {
        SimMaConfig {
            name: name.to_owned(),
            ma_type: ma_type.to_owned(),
            connectors,
            change_rate_per_hour,
            partition: partition.to_owned(),
            receives_exports: true,
        }
    }

    fn import_only(mut self) -> Self {
        self.receives_exports = false;
        self
    }
}

impl SimConfig {
    /// A realistic server of a demo fleet. Index 0: `AD` (25,000 connectors), `HR` (MSSQL,
    /// 12,000), `MIM Service` (FIM, 30,000). Index 1 adds `Entra ID` (Extensible2) with other
    /// sizes. Higher indexes vary sizes and seed (odd ones have Entra ID).
    pub fn example(server_index: usize) -> SimConfig {
        let i = u64::try_from(server_index).unwrap_or(u64::MAX);
        let mas = match server_index {
            0 => vec![
                SimMaConfig::new("AD", "AD", 25_000, 300.0, "DC=contoso,DC=com"),
                SimMaConfig::new("HR", "MSSQL", 12_000, 60.0, "default").import_only(),
                SimMaConfig::new("MIM Service", "FIM", 30_000, 120.0, "default"),
            ],
            1 => vec![
                SimMaConfig::new("AD", "AD", 48_000, 480.0, "DC=eu,DC=contoso,DC=com"),
                SimMaConfig::new("HR", "MSSQL", 21_000, 90.0, "default").import_only(),
                SimMaConfig::new("MIM Service", "FIM", 52_000, 150.0, "default"),
                SimMaConfig::new("Entra ID", "Extensible2", 50_000, 240.0, "default"),
            ],
            _ => {
                let ad = 8_000 + i.wrapping_mul(13_337) % 60_000;
                let hr = 3_000 + i.wrapping_mul(7_919) % 25_000;
                let mut mas = vec![
                    SimMaConfig::new(
                        "AD",
                        "AD",
                        ad,
                        100.0 + (i % 7) as f64 * 60.0,
                        &format!("DC=site{i},DC=contoso,DC=com"),
                    ),
                    SimMaConfig::new("HR", "MSSQL", hr, 30.0 + (i % 5) as f64 * 15.0, "default")
                        .import_only(),
                    SimMaConfig::new("MIM Service", "FIM", ad + hr / 2, 120.0, "default"),
                ];
                if server_index % 2 == 1 {
                    mas.push(SimMaConfig::new(
                        "Entra ID",
                        "Extensible2",
                        ad + ad / 10,
                        200.0,
                        "default",
                    ));
                }
                mas
            }
        };
        SimConfig {
            seed: 0x5F1E_E700_0000_0000 ^ i.wrapping_mul(0x9E37_79B9),
            time_scale: 1.0,
            version: "MIM 2016 4.6.607.0".to_owned(),
            security_id: "CONTOSO\\svc-syncfleet".to_owned(),
            error_rate: 0.0,
            history_limit: 1_000,
            step_base_secs: STEP_BASE_SECS,
            secs_per_object: SECS_PER_OBJECT,
            mas,
        }
    }

    /// Check values a config file may get wrong. [`SimEngine::new`] clamps instead of failing;
    /// [`SimEngine::try_new`] calls this first.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(format!(
                "sim time_scale must be > 0, got {}",
                self.time_scale
            ));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return bad(format!(
                "sim error_rate must be within 0..=1, got {}",
                self.error_rate
            ));
        }
        if self.history_limit == 0 {
            return bad("sim history_limit must be at least 1".to_owned());
        }
        for (key, v) in [
            ("step_base_secs", self.step_base_secs),
            ("secs_per_object", self.secs_per_object),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("sim {key} must be >= 0, got {v}"));
            }
        }
        for (n, ma) in self.mas.iter().enumerate() {
            if ma.name.trim().is_empty() {
                return bad(format!("sim MA #{n} has an empty name"));
            }
            if self.mas[..n].iter().any(|o| o.name == ma.name) {
                return bad(format!("sim MA name {:?} appears twice", ma.name));
            }
            if !(ma.change_rate_per_hour.is_finite() && ma.change_rate_per_hour >= 0.0) {
                return bad(format!(
                    "sim MA {:?}: change_rate_per_hour must be >= 0, got {}",
                    ma.name, ma.change_rate_per_hour
                ));
            }
        }
        Ok(())
    }

    /// Clamp out-of-range values and drop duplicate MA names (first one wins).
    fn sanitized(mut self) -> SimConfig {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            self.time_scale = 1e-6;
        }
        self.time_scale = self.time_scale.clamp(1e-6, 1e6);
        self.error_rate = if self.error_rate.is_finite() {
            self.error_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.history_limit = self.history_limit.max(1);
        if !(self.step_base_secs.is_finite() && self.step_base_secs >= 0.0) {
            self.step_base_secs = STEP_BASE_SECS;
        }
        if !(self.secs_per_object.is_finite() && self.secs_per_object >= 0.0) {
            self.secs_per_object = SECS_PER_OBJECT;
        }
        let mut seen: Vec<String> = Vec::new();
        self.mas.retain(|ma| {
            let fresh = !seen.contains(&ma.name);
            seen.push(ma.name.clone());
            fresh
        });
        for ma in &mut self.mas {
            if !(ma.change_rate_per_hour.is_finite() && ma.change_rate_per_hour >= 0.0) {
                ma.change_rate_per_hour = 0.0;
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic helpers
// ---------------------------------------------------------------------------------------------

/// FNV-1a: a stable hash of names (std's hasher is not guaranteed stable across releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(seed: u64, name: &str, salt: u64) -> u64 {
    splitmix64(seed ^ splitmix64(fnv1a(name) ^ salt.rotate_left(17)))
}

/// A stable ratio in `lo..hi` for a (source MA, target MA, purpose) triple.
fn pair_ratio(seed: u64, from: &str, to: &str, salt: u64, lo: f64, hi: f64) -> f64 {
    let h = mix(seed, &format!("{from}\u{0}{to}"), salt);
    // 53 random bits → [0, 1).
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    lo + unit * (hi - lo)
}

/// A GUID in braces, upper case, as the engine prints it.
fn guid(rng: &mut StdRng) -> String {
    let bytes: [u8; 16] = rng.random();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    format!("{{{}}}", id.hyphenated()).to_ascii_uppercase()
}

/// `floor(n × f)`, exact at the ends.
fn part(n: u64, f: f64) -> u64 {
    if f >= 1.0 {
        n
    } else if f.is_nan() || f <= 0.0 {
        0
    } else {
        // Float rounding can only make this smaller than the exact product; `min` guards anyway.
        ((n as f64 * f).floor() as u64).min(n)
    }
}

fn step_duration(cfg: &SimConfig, objects: u64) -> Duration {
    let secs = cfg.time_scale * (cfg.step_base_secs + objects as f64 * cfg.secs_per_object);
    if !secs.is_finite() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(MAX_STEP_SECS)).unwrap_or(Duration::ZERO)
}

/// Add/update/delete counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta {
    add: u64,
    update: u64,
    delete: u64,
}

impl Delta {
    fn total(self) -> u64 {
        self.add
            .saturating_add(self.update)
            .saturating_add(self.delete)
    }
    fn plus(self, o: Delta) -> Delta {
        Delta {
            add: self.add.saturating_add(o.add),
            update: self.update.saturating_add(o.update),
            delete: self.delete.saturating_add(o.delete),
        }
    }
    fn minus(self, o: Delta) -> Delta {
        Delta {
            add: self.add.saturating_sub(o.add),
            update: self.update.saturating_sub(o.update),
            delete: self.delete.saturating_sub(o.delete),
        }
    }
    fn part(self, f: f64) -> Delta {
        Delta {
            add: part(self.add, f),
            update: part(self.update, f),
            delete: part(self.delete, f),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine state
// ---------------------------------------------------------------------------------------------

/// The simulated engine. Cheap to clone (shared state behind an `Arc`); a std `Mutex` guards
/// the state and is never held across an `.await`.
#[derive(Debug, Clone)]
pub struct SimEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: SimConfig,
    /// Tokio time and wall-clock time at construction: XML timestamps are `epoch_wall` plus the
    /// tokio time elapsed since `epoch`.
    epoch: Instant,
    epoch_wall: DateTime<Utc>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    mas: Vec<MaSim>,
}

#[derive(Debug)]
struct MaSim {
    cfg: SimMaConfig,
    info: MaInfo,
    /// Counter draws.
    rng: StdRng,
    /// Ids (step GUIDs, error objects): separate, so ids never shift counter draws.
    id_rng: StdRng,
    connectors: u64,
    /// Changes in the connected source not imported yet.
    source: Delta,
    accrual_carry: f64,
    accrued_until: Instant,
    /// Staged pending imports from source changes (they flow out to other MAs on sync).
    staged: Delta,
    /// Staged pending imports that confirm our own exports (no outbound flow).
    staged_confirm: Delta,
    pending_export: Delta,
    /// Exported, not yet seen by an import (kept as update/delete: a confirmed add is an update
    /// of the already existing connector-space object).
    unconfirmed: Delta,
    export_batch: u64,
    last_successful_export_batch: u64,
    next_run_number: u64,
    running: Option<Running>,
    history: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct Running {
    profile: String,
    run_number: u64,
    /// The profile has a sync-class step (§6.2 refusal applies).
    synchronizes: bool,
    stop: Arc<Notify>,
    done: watch::Receiver<bool>,
}

impl MaSim {
    fn new(cfg: SimMaConfig, seed: u64, now: Instant) -> MaSim {
        let mut id_rng = StdRng::seed_from_u64(mix(seed, &cfg.name, 2));
        let guid = guid(&mut id_rng);
        let run_profiles = STANDARD_PROFILES
            .iter()
            .map(|(name, step_type, subtype)| RunProfileInfo {
                name: (*name).to_owned(),
                steps: vec![RunStepInfo {
                    step_type: (*step_type).to_owned(),
                    subtype: (*subtype).to_owned(),
                    partition: cfg.partition.clone(),
                }],
            })
            .collect();
        let info = MaInfo {
            name: cfg.name.clone(),
            guid,
            ma_type: cfg.ma_type.clone(),
            run_profiles,
        };
        MaSim {
            rng: StdRng::seed_from_u64(mix(seed, &cfg.name, 1)),
            id_rng,
            connectors: cfg.connectors,
            source: Delta::default(),
            accrual_carry: 0.0,
            accrued_until: now,
            staged: Delta::default(),
            staged_confirm: Delta::default(),
            pending_export: Delta::default(),
            unconfirmed: Delta::default(),
            export_batch: 0,
            last_successful_export_batch: 0,
            next_run_number: 1_000 + mix(seed, &cfg.name, 3) % 9_000,
            running: None,
            history: BTreeMap::new(),
            info,
            cfg,
        }
    }

    /// Let source changes accumulate up to `now` (simulated time = tokio time / `time_scale`).
    fn accrue(&mut self, now: Instant, time_scale: f64) {
        let real = now
            .saturating_duration_since(self.accrued_until)
            .as_secs_f64();
        self.accrued_until = now;
        let expected =
            self.cfg.change_rate_per_hour * real / time_scale / 3600.0 + self.accrual_carry;
        if !expected.is_finite() || expected < 1.0 {
            self.accrual_carry = if expected.is_finite() {
                expected.max(0.0)
            } else {
                0.0
            };
            return;
        }
        let whole = expected.floor();
        self.accrual_carry = expected - whole;
        // A long idle period cannot change more than every object plus as many new ones.
        let cap = self.connectors.max(1_000).saturating_mul(2);
        let n = (whole as u64).min(cap);
        let add = part(n, self.rng.random_range(0.05..0.15));
        let delete = part(n, self.rng.random_range(0.01..0.05));
        let update = n.saturating_sub(add).saturating_sub(delete);
        let next = self.source.plus(Delta {
            add,
            update,
            delete,
        });
        // Repeated changes to one object are one pending change.
        self.source = Delta {
            add: next.add,
            update: next.update.min(self.connectors),
            delete: next.delete.min(self.connectors),
        };
    }

    /// A few failing objects when the error dice hit.
    fn draw_failures(&mut self, error_rate: f64, eligible: u64) -> Vec<FailedObject> {
        if error_rate <= 0.0 || eligible == 0 || !self.rng.random_bool(error_rate) {
            return Vec::new();
        }
        let k = 1 + self
            .rng
            .random_range(0..eligible.min(MAX_FAILURES_PER_STEP));
        (0..k)
            .map(|_| {
                let n: u32 = self.id_rng.random_range(1..1_000_000);
                FailedObject {
                    cs_guid: guid(&mut self.id_rng),
                    dn: fake_dn(&self.cfg, n),
                }
            })
            .collect()
    }

    fn pending(&self) -> PendingCounters {
        let import = self.staged.plus(self.staged_confirm);
        PendingCounters {
            import_add: import.add,
            import_update: import.update,
            import_delete: import.delete,
            export_add: self.pending_export.add,
            export_update: self.pending_export.update,
            export_delete: self.pending_export.delete,
            total_connectors: self.connectors,
            cs_objects: self.connectors.saturating_add(self.staged.add),
        }
    }
}

fn fake_dn(ma: &SimMaConfig, n: u32) -> String {
    match ma.ma_type.as_str() {
        "AD" => format!("CN=User{n:06},OU=Users,{}", ma.partition),
        "MSSQL" => format!("EmployeeID={n:06}"),
        "FIM" => format!("Person-{n:06}"),
        _ => format!("user{n:06}@contoso.onmicrosoft.com"),
    }
}

/// The server a connected data source is reached on, for `ma-connection`.
fn connection_server(ma: &SimMaConfig) -> String {
    match ma.ma_type.as_str() {
        "AD" => {
            let domain: Vec<&str> = ma
                .partition
                .split(',')
                .filter_map(|rdn| {
                    let (k, v) = rdn.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("DC").then_some(v)
                })
                .collect();
            if domain.is_empty() {
                "DC01.contoso.com:389".to_owned()
            } else {
                format!("DC01.{}:389", domain.join("."))
            }
        }
        "MSSQL" => "SQL01.contoso.com".to_owned(),
        "FIM" => "http://mimservice.contoso.com:5725".to_owned(),
        "Extensible2" => "graph.microsoft.com".to_owned(),
        _ => "localhost".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Step work: claimed at step start, evaluated for any processed fraction, committed at the end
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Import { full: bool },
    Sync { full: bool },
    Export,
}

impl StepKind {
    fn of(step: &RunStepInfo) -> StepKind {
        match step.step_type.as_str() {
            "full-import" | "full-import-reevaluate-rules" => StepKind::Import { full: true },
            "delta-import" => StepKind::Import { full: false },
            "apply-rules" => StepKind::Sync {
                full: step.subtype != "apply-pending",
            },
            _ => StepKind::Export,
        }
    }
}

#[derive(Debug, Clone)]
struct FailedObject {
    cs_guid: String,
    dn: String,
}

#[derive(Debug, Clone)]
struct TargetFlow {
    index: usize,
    name: String,
    guid: String,
    add_ratio: f64,
    update_ratio: f64,
    delete_ratio: f64,
}

#[derive(Debug, Clone)]
enum Work {
    Import {
        source: Delta,
        confirm: Delta,
        no_change: u64,
    },
    Sync {
        staged: Delta,
        confirm: Delta,
        /// Full sync: connectors re-evaluated without staged changes.
        others: u64,
        join_ratio: f64,
        no_flow_ratio: f64,
        failures: Vec<FailedObject>,
        targets: Vec<TargetFlow>,
    },
    Export {
        pending: Delta,
        failures: Vec<FailedObject>,
        error_type: &'static str,
        error_code: &'static str,
        error_literal: &'static str,
    },
}

/// State changes of a processed step.
#[derive(Debug, Clone)]
enum Effects {
    Import {
        staged: Delta,
        confirm: Delta,
        back_source: Delta,
        back_confirm: Delta,
    },
    Sync {
        joined_or_projected: u64,
        deleted: u64,
        back_staged: Delta,
        back_confirm: Delta,
        exports: Vec<(usize, Delta)>,
    },
    Export {
        exported: Delta,
        back_pending: Delta,
    },
}

/// What a step reports and does after processing a fraction of its work.
#[derive(Debug, Clone)]
struct Evaluated {
    result: String,
    report: StepReport,
    effects: Effects,
}

impl Work {
    fn evaluate(&self, f: f64, stopped: bool) -> Evaluated {
        let mut report = StepReport::default();
        let (effects, errors_result) = match self {
            Work::Import {
                source,
                confirm,
                no_change,
            } => {
                let s = source.part(f);
                let c = confirm.part(f);
                let unchanged = part(*no_change, f);
                report.set("stage-no-change", unchanged);
                report.set("stage-add", s.add.saturating_add(c.add));
                report.set("stage-update", s.update.saturating_add(c.update));
                report.set("stage-delete", s.delete.saturating_add(c.delete));
                let nothing = s.total() == 0 && c.total() == 0 && unchanged == 0;
                (
                    Effects::Import {
                        staged: s,
                        confirm: c,
                        back_source: source.minus(s),
                        back_confirm: confirm.minus(c),
                    },
                    nothing.then_some("completed-no-objects"),
                )
            }
            Work::Sync {
                staged,
                confirm,
                others,
                join_ratio,
                no_flow_ratio,
                failures,
                targets,
            } => {
                let s = staged.part(f);
                let c = confirm.part(f);
                let failed = part(failures.len() as u64, f).min(s.update);
                let ok_updates = s.update - failed;
                let no_flow = part(ok_updates, *no_flow_ratio);
                let flow = ok_updates - no_flow;
                let joined = part(s.add, *join_ratio);
                report.set("disconnector-joined-flow", joined);
                report.set("disconnector-projected-flow", s.add - joined);
                report.set("connector-flow", flow);
                report.set(
                    "connector-no-flow",
                    no_flow
                        .saturating_add(c.add)
                        .saturating_add(c.update)
                        .saturating_add(part(*others, f)),
                );
                report.set("connector-delete-remove-mv", s.delete);
                report.set("connector-delete-leave-mv", c.delete);
                report.set("flow-failure", failed);
                let mut exports = Vec::new();
                for t in targets {
                    let out = Delta {
                        add: part(s.add, t.add_ratio),
                        update: part(flow, t.update_ratio),
                        delete: part(s.delete, t.delete_ratio),
                    };
                    if out.total() == 0 {
                        // The engine omits an MA without outbound changes and zero counters.
                        continue;
                    }
                    let counters = [
                        ("provisioned-add-flow", out.add),
                        ("connector-flow", out.update),
                        ("provisioned-disconnect", out.delete),
                    ]
                    .into_iter()
                    .filter(|(_, v)| *v > 0)
                    .collect();
                    report.outbound.push(OutboundRecord {
                        ma: t.name.clone(),
                        ma_id: t.guid.clone(),
                        counters,
                    });
                    exports.push((t.index, out));
                }
                for fo in failures
                    .iter()
                    .take(usize::try_from(failed).unwrap_or(usize::MAX))
                {
                    report.errors.push(ErrorRecord::Import {
                        cs_guid: fo.cs_guid.clone(),
                        dn: fo.dn.clone(),
                    });
                }
                (
                    Effects::Sync {
                        joined_or_projected: s.add,
                        deleted: s.delete,
                        back_staged: staged.minus(s).plus(Delta {
                            update: failed,
                            ..Delta::default()
                        }),
                        back_confirm: confirm.minus(c),
                        exports,
                    },
                    (failed > 0).then_some("completed-sync-errors"),
                )
            }
            Work::Export {
                pending,
                failures,
                error_type,
                error_code,
                error_literal,
            } => {
                let p = pending.part(f);
                let failed = part(failures.len() as u64, f).min(p.update);
                let exported = Delta {
                    update: p.update - failed,
                    ..p
                };
                report.set("export-add", exported.add);
                report.set("export-update", exported.update);
                report.set("export-delete", exported.delete);
                report.set("export-failure", failed);
                for fo in failures
                    .iter()
                    .take(usize::try_from(failed).unwrap_or(usize::MAX))
                {
                    report.errors.push(ErrorRecord::Export {
                        cs_guid: fo.cs_guid.clone(),
                        dn: fo.dn.clone(),
                        error_type,
                        error_code,
                        error_literal,
                    });
                }
                (
                    Effects::Export {
                        exported,
                        back_pending: pending.minus(p).plus(Delta {
                            update: failed,
                            ..Delta::default()
                        }),
                    },
                    (failed > 0).then_some("completed-export-errors"),
                )
            }
        };
        let result = if stopped {
            STOPPED_BY_USER
        } else {
            errors_result.unwrap_or("success")
        };
        Evaluated {
            result: result.to_owned(),
            report,
            effects,
        }
    }
}

/// Export error flavour per connected system (the engine's `error-type` set is open, §4).
fn export_error_for(ma_type: &str) -> (&'static str, &'static str, &'static str) {
    match ma_type {
        "AD" => ("permission-issue", "0x80070005", "Access is denied."),
        "FIM" => (
            "ma-extension-error",
            "0x80230703",
            "Microsoft.ResourceManagement.WebServices.Faults.ServiceFaultException: \
             Policy prohibits the request from completing.",
        ),
        _ => (
            "cd-error",
            "0x80230703",
            "The connected system rejected the change: invalid attribute value.",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Run records and XML
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct RunHeader {
    ma_id: String,
    ma_name: String,
    run_number: u64,
    profile: String,
    security_id: String,
}

#[derive(Debug, Clone, Default)]
struct StepReport {
    /// Staging, inbound-flow and export counters by element name (absent = 0).
    counters: BTreeMap<&'static str, u64>,
    outbound: Vec<OutboundRecord>,
    errors: Vec<ErrorRecord>,
}

impl StepReport {
    fn set(&mut self, name: &'static str, value: u64) {
        self.counters.insert(name, value);
    }
}

#[derive(Debug, Clone)]
struct OutboundRecord {
    ma: String,
    ma_id: String,
    counters: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone)]
enum ErrorRecord {
    Import {
        cs_guid: String,
        dn: String,
    },
    Export {
        cs_guid: String,
        dn: String,
        error_type: &'static str,
        error_code: &'static str,
        error_literal: &'static str,
    },
}

#[derive(Debug, Clone)]
struct StepRecord {
    number: u32,
    id: String,
    step: RunStepInfo,
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    result: String,
    progress: Option<String>,
    /// `Some(server)` for steps that connect to the data source (imports, exports).
    server: Option<String>,
    /// Pre-rendered, trusted `custom-data` content (AD MA step data).
    custom_data: Option<&'static str>,
    current_export_batch: u64,
    last_successful_export_batch: u64,
    report: StepReport,
}

mod xml {
    //! Run-history XML in the engine's layout (element structure of the real samples in
    //! `agent/tests/data/run-history/`, domain brief §4).

    use std::borrow::Cow;
    use std::fmt::Write as _;

    use super::{ErrorRecord, RunHeader, StepRecord};
    use crate::runhistory::format_engine_timestamp;

    const STAGING: [(&str, bool); 7] = [
        ("stage-no-change", false),
        ("stage-add", true),
        ("stage-update", true),
        ("stage-rename", true),
        ("stage-delete", true),
        ("stage-delete-add", true),
        ("stage-failure", true),
    ];
    const INBOUND: [(&str, bool); 17] = [
        ("disconnector-filtered", true),
        ("disconnector-joined-no-flow", true),
        ("disconnector-joined-flow", true),
        ("disconnector-joined-remove-mv", true),
        ("disconnector-projected-no-flow", true),
        ("disconnector-projected-flow", true),
        ("disconnector-projected-remove-mv", true),
        ("disconnector-remains", false),
        ("connector-filtered-remove-mv", true),
        ("connector-filtered-leave-mv", true),
        ("connector-flow", true),
        ("connector-flow-remove-mv", true),
        ("connector-no-flow", true),
        ("connector-delete-remove-mv", true),
        ("connector-delete-leave-mv", true),
        ("connector-delete-add-processed", true),
        ("flow-failure", true),
    ];
    const EXPORT: [(&str, bool); 6] = [
        ("export-add", true),
        ("export-update", true),
        ("export-rename", true),
        ("export-delete", true),
        ("export-delete-add", true),
        ("export-failure", true),
    ];

    /// Escape text and attribute values.
    pub(super) fn escape(s: &str) -> Cow<'_, str> {
        if !s.contains(['&', '<', '>', '"', '\'']) {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len() + 16);
        for c in s.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&apos;"),
                c => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// A whole run: completed steps plus, while running, the current step. Steps are written
    /// highest number first, as the engine does (§4 quirk 1).
    pub(super) fn render(
        h: &RunHeader,
        done: &[StepRecord],
        current: Option<&StepRecord>,
    ) -> String {
        let mut x = String::with_capacity(6_000 * (done.len() + 1));
        // `write!` into a `String` cannot fail; the `fmt::Result` is ignored throughout.
        x.push_str("<?xml version=\"1.0\" encoding=\"utf-16\"?>\n<run-history>\n <run-details>\n");
        let _ = writeln!(x, "  <ma-id>{}</ma-id>", escape(&h.ma_id));
        let _ = writeln!(x, "  <ma-name>{}</ma-name>", escape(&h.ma_name));
        let _ = writeln!(x, "  <run-number>{}</run-number>", h.run_number);
        let _ = writeln!(
            x,
            "  <run-profile-name>{}</run-profile-name>",
            escape(&h.profile)
        );
        let _ = writeln!(x, "  <security-id>{}</security-id>", escape(&h.security_id));
        for s in current.into_iter().chain(done.iter().rev()) {
            step(&mut x, s);
        }
        x.push_str(" </run-details>\n</run-history>\n");
        x
    }

    fn step(x: &mut String, s: &StepRecord) {
        let _ = writeln!(
            x,
            "  <step-details step-number=\"{}\" step-id=\"{}\">",
            s.number,
            escape(&s.id)
        );
        let _ = writeln!(
            x,
            "   <start-date>{}</start-date>",
            format_engine_timestamp(s.started)
        );
        if let Some(end) = s.ended {
            let _ = writeln!(
                x,
                "   <end-date>{}</end-date>",
                format_engine_timestamp(end)
            );
        }
        match &s.progress {
            Some(p) => {
                let _ = writeln!(
                    x,
                    "   <step-result progress=\"{}\">{}</step-result>",
                    escape(p),
                    escape(&s.result)
                );
            }
            None => {
                let _ = writeln!(x, "   <step-result>{}</step-result>", escape(&s.result));
            }
        }
        x.push_str("   <step-description>\n");
        let _ = writeln!(x, "    <step-type type=\"{}\">", escape(&s.step.step_type));
        if !s.step.subtype.is_empty() {
            let element = match s.step.step_type.as_str() {
                "apply-rules" => "apply-rules-subtype",
                "export" => "export-subtype",
                _ => "import-subtype",
            };
            let _ = writeln!(x, "     <{element}>{}</{element}>", escape(&s.step.subtype));
        }
        x.push_str("    </step-type>\n");
        let _ = writeln!(
            x,
            "    <partition>{}</partition>",
            escape(&s.step.partition)
        );
        if let Some(custom) = s.custom_data {
            let _ = writeln!(x, "    <custom-data>\n     {custom}\n    </custom-data>");
        }
        x.push_str("   </step-description>\n");
        let _ = writeln!(
            x,
            "   <current-export-step-counter>{}</current-export-step-counter>",
            s.current_export_batch
        );
        let _ = writeln!(
            x,
            "   <last-successful-export-step-counter>{}</last-successful-export-step-counter>",
            s.last_successful_export_batch
        );
        x.push_str("   <ma-connection>\n");
        if let Some(server) = &s.server {
            let server = escape(server);
            let _ = writeln!(
                x,
                "    <connection-result>success</connection-result><server>{server}</server>\
                 <connection-log><incident><connection-result>success</connection-result>\
                 <date>{}</date><server>{server}</server></incident></connection-log>",
                format_engine_timestamp(s.started)
            );
        }
        x.push_str("   </ma-connection>\n");
        x.push_str("   <ma-discovery-errors>\n   </ma-discovery-errors>\n");
        x.push_str("   <ma-discovery-counters>\n   </ma-discovery-counters>\n");
        errors(x, s);
        x.push_str("   <mv-retry-errors/>\n");
        for out in &s.report.outbound {
            let _ = writeln!(
                x,
                "   <outbound-flow-counters ma=\"{}\" ma-id=\"{}\">",
                escape(&out.ma),
                escape(&out.ma_id)
            );
            for (name, value) in &out.counters {
                let _ = writeln!(x, "    <{name} detail=\"true\">{value}</{name}>");
            }
            x.push_str("   </outbound-flow-counters>\n");
        }
        counters(x, "staging-counters", &STAGING, s);
        counters(x, "inbound-flow-counters", &INBOUND, s);
        counters(x, "export-counters", &EXPORT, s);
        x.push_str("  </step-details>\n");
    }

    fn counters(x: &mut String, block: &str, names: &[(&str, bool)], s: &StepRecord) {
        let _ = writeln!(x, "   <{block}>");
        for (name, detail) in names {
            let value = s.report.counters.get(name).copied().unwrap_or(0);
            let _ = writeln!(x, "    <{name} detail=\"{detail}\">{value}</{name}>");
        }
        let _ = writeln!(x, "   </{block}>");
    }

    fn errors(x: &mut String, s: &StepRecord) {
        if s.report.errors.is_empty() {
            x.push_str("   <synchronization-errors/>\n");
            return;
        }
        let when = format_engine_timestamp(s.ended.unwrap_or(s.started));
        x.push_str("   <synchronization-errors>");
        for e in &s.report.errors {
            match e {
                ErrorRecord::Import { cs_guid, dn } => {
                    let _ = write!(
                        x,
                        "<import-error cs-guid=\"{}\" dn=\"{}\">\n\
                         \x20   <first-occurred>{when}</first-occurred>\n\
                         \x20   <retry-count>0</retry-count>\n\
                         \x20   <date-occurred>{when}</date-occurred>\n\
                         \x20   <error-type>extension-dll-exception</error-type>\n\
                         \x20   <algorithm-step>import-flow</algorithm-step>\n\
                         \x20   <extension-error-info>\n\
                         \x20    <extension-name>Contoso.Sync.RulesExtension</extension-name>\n\
                         \x20    <extension-callsite>import-flow</extension-callsite>\n\
                         \x20    <extension-context>cd.person:department-&gt;mv.person:department</extension-context>\n\
                         \x20    <call-stack>System.NullReferenceException: Object reference not set to an instance of an object.\n\
                         \x20  at Contoso.Sync.RulesExtension.MapAttributesForImport(String FlowRuleName, CSEntry csentry, MVEntry mventry)</call-stack>\n\
                         \x20   </extension-error-info>\n\
                         \x20  </import-error>\n",
                        escape(cs_guid),
                        escape(dn)
                    );
                }
                ErrorRecord::Export {
                    cs_guid,
                    dn,
                    error_type,
                    error_code,
                    error_literal,
                } => {
                    let _ = write!(
                        x,
                        "<export-error cs-guid=\"{}\" dn=\"{}\">\n\
                         \x20   <date-occurred>{when}</date-occurred>\n\
                         \x20   <first-occurred>{when}</first-occurred>\n\
                         \x20   <retry-count>0</retry-count>\n\
                         \x20   <error-type>{}</error-type>\n\
                         \x20   <cd-error>\n\
                         \x20    <error-code>{}</error-code><error-literal>{}</error-literal>\n\
                         \x20   </cd-error>\n\
                         \x20  </export-error>\n",
                        escape(cs_guid),
                        escape(dn),
                        escape(error_type),
                        escape(error_code),
                        escape(error_literal)
                    );
                }
            }
        }
        x.push_str("   </synchronization-errors>\n");
    }
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// A run that passed the engine's start checks.
#[derive(Debug)]
struct StartedRun {
    ma: usize,
    header: RunHeader,
    steps: Vec<RunStepInfo>,
    stop: Arc<Notify>,
    done: watch::Sender<bool>,
}

enum Begin {
    /// `no-start-*` or the concurrent-sync refusal: no run number.
    Refused(&'static str),
    Started(StartedRun),
}

/// A planned step: its claimed work and the in-progress record.
struct Planned {
    work: Work,
    record: StepRecord,
    duration: Duration,
    objects: u64,
}

/// Marks the MA idle and wakes `stop` callers when the run ends — also if the run task is
/// dropped half-way (runtime shutdown), so an MA can never stay "running" forever.
struct RunGuard {
    inner: Arc<Inner>,
    ma: usize,
    run_number: u64,
    done: watch::Sender<bool>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            if let Some(m) = st.mas.get_mut(self.ma)
                && m.running
                    .as_ref()
                    .is_some_and(|r| r.run_number == self.run_number)
            {
                m.running = None;
            }
        }
        self.done.send_replace(true);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; should one ever, the counters stay usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let elapsed = at.saturating_duration_since(self.epoch);
        self.epoch_wall + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::zero())
    }

    fn ma_index(st: &State, ma: &str) -> Result<usize, EngineError> {
        st.mas
            .iter()
            .position(|m| m.cfg.name == ma)
            .ok_or_else(|| EngineError::NoSuchMa(ma.to_owned()))
    }

    /// The engine's start checks (§3.3, §6), atomically with marking the MA running.
    fn begin(&self, ma: &str, profile: &str) -> Result<Begin, EngineError> {
        let mut st = self.lock();
        let idx = Self::ma_index(&st, ma)?;
        let Some(prof) = st.mas[idx].info.profile(profile).cloned() else {
            return Ok(Begin::Refused("no-start-unknown-profile-name"));
        };
        if st.mas[idx].running.is_some() {
            return Ok(Begin::Refused("no-start-ma-already-running"));
        }
        let synchronizes = prof.steps.iter().any(RunStepInfo::is_sync);
        if synchronizes
            && st
                .mas
                .iter()
                .any(|m| m.running.as_ref().is_some_and(|r| r.synchronizes))
        {
            return Ok(Begin::Refused(CONCURRENT_SYNC_REFUSAL));
        }
        let m = &mut st.mas[idx];
        let run_number = m.next_run_number;
        m.next_run_number = m.next_run_number.saturating_add(1);
        let stop = Arc::new(Notify::new());
        let (done, done_rx) = watch::channel(false);
        m.running = Some(Running {
            profile: prof.name.clone(),
            run_number,
            synchronizes,
            stop: stop.clone(),
            done: done_rx,
        });
        Ok(Begin::Started(StartedRun {
            ma: idx,
            header: RunHeader {
                ma_id: m.info.guid.clone(),
                ma_name: m.cfg.name.clone(),
                run_number,
                profile: prof.name,
                security_id: self.cfg.security_id.clone(),
            },
            steps: prof.steps,
            stop,
            done,
        }))
    }

    /// Claim the step's work from the MA state.
    fn plan_step(&self, ma: usize, step: &RunStepInfo, number: u32) -> Planned {
        let now = Instant::now();
        let started = self.wall(now);
        let seed = self.cfg.seed;
        let mut st = self.lock();
        let targets: Vec<(usize, String, String)> = st
            .mas
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != ma && m.cfg.receives_exports)
            .map(|(i, m)| (i, m.cfg.name.clone(), m.info.guid.clone()))
            .collect();
        let m = &mut st.mas[ma];
        let kind = StepKind::of(step);
        let (work, objects) = match kind {
            StepKind::Import { full } => {
                m.accrue(now, self.cfg.time_scale);
                let source = std::mem::take(&mut m.source);
                let confirm = std::mem::take(&mut m.unconfirmed);
                let changed = source
                    .update
                    .saturating_add(source.delete)
                    .saturating_add(confirm.total());
                let (no_change, objects) = if full {
                    (
                        m.connectors.saturating_sub(changed),
                        m.connectors.saturating_add(source.add),
                    )
                } else {
                    (0, source.total().saturating_add(confirm.total()))
                };
                (
                    Work::Import {
                        source,
                        confirm,
                        no_change,
                    },
                    objects,
                )
            }
            StepKind::Sync { full } => {
                let staged = std::mem::take(&mut m.staged);
                let confirm = std::mem::take(&mut m.staged_confirm);
                let touched = staged
                    .update
                    .saturating_add(staged.delete)
                    .saturating_add(confirm.total());
                let (others, objects) = if full {
                    (
                        m.connectors.saturating_sub(touched),
                        m.connectors.saturating_add(staged.add),
                    )
                } else {
                    (0, staged.total().saturating_add(confirm.total()))
                };
                let join_ratio = m.rng.random_range(0.2..0.6);
                let no_flow_ratio = m.rng.random_range(0.05..0.2);
                let failures = m.draw_failures(self.cfg.error_rate, staged.update);
                let from = m.cfg.name.clone();
                let targets = targets
                    .into_iter()
                    .map(|(index, name, guid)| TargetFlow {
                        add_ratio: pair_ratio(seed, &from, &name, 11, 0.6, 1.0),
                        update_ratio: pair_ratio(seed, &from, &name, 12, 0.3, 0.9),
                        delete_ratio: pair_ratio(seed, &from, &name, 13, 0.5, 1.0),
                        index,
                        name,
                        guid,
                    })
                    .collect();
                (
                    Work::Sync {
                        staged,
                        confirm,
                        others,
                        join_ratio,
                        no_flow_ratio,
                        failures,
                        targets,
                    },
                    objects,
                )
            }
            StepKind::Export => {
                let pending = std::mem::take(&mut m.pending_export);
                m.export_batch = m.export_batch.saturating_add(1);
                let failures = m.draw_failures(self.cfg.error_rate, pending.update);
                let (error_type, error_code, error_literal) = export_error_for(&m.cfg.ma_type);
                (
                    Work::Export {
                        pending,
                        failures,
                        error_type,
                        error_code,
                        error_literal,
                    },
                    pending.total(),
                )
            }
        };
        let connects = !matches!(kind, StepKind::Sync { .. });
        let record = StepRecord {
            number,
            id: guid(&mut m.id_rng),
            step: step.clone(),
            started,
            ended: None,
            result: "in-progress".to_owned(),
            progress: Some(format!("0/{objects}")),
            server: connects.then(|| connection_server(&m.cfg)),
            custom_data: (connects && m.cfg.ma_type == "AD").then_some(
                "<adma-step-data><batch-size>100</batch-size><page-size>500</page-size>\
                 <time-limit>120</time-limit></adma-step-data>",
            ),
            current_export_batch: m.export_batch,
            last_successful_export_batch: m.last_successful_export_batch,
            report: work.evaluate(0.0, false).report,
        };
        Planned {
            work,
            record,
            duration: step_duration(&self.cfg, objects),
            objects,
        }
    }

    /// Commit the processed fraction of a step and finish its record.
    fn complete_step(
        &self,
        ma: usize,
        work: &Work,
        fraction: f64,
        stopped: bool,
        record: &mut StepRecord,
    ) {
        let now = Instant::now();
        let eval = work.evaluate(fraction, stopped);
        let mut st = self.lock();
        match eval.effects {
            Effects::Import {
                staged,
                confirm,
                back_source,
                back_confirm,
            } => {
                let m = &mut st.mas[ma];
                m.staged = m.staged.plus(staged);
                m.staged_confirm = m.staged_confirm.plus(confirm);
                m.source = m.source.plus(back_source);
                m.unconfirmed = m.unconfirmed.plus(back_confirm);
            }
            Effects::Sync {
                joined_or_projected,
                deleted,
                back_staged,
                back_confirm,
                exports,
            } => {
                {
                    let m = &mut st.mas[ma];
                    m.connectors = m
                        .connectors
                        .saturating_add(joined_or_projected)
                        .saturating_sub(deleted);
                    m.staged = m.staged.plus(back_staged);
                    m.staged_confirm = m.staged_confirm.plus(back_confirm);
                }
                for (target, out) in exports {
                    if let Some(t) = st.mas.get_mut(target) {
                        // Provisioning creates the target connector now, with a pending export.
                        t.connectors = t.connectors.saturating_add(out.add);
                        t.pending_export = t.pending_export.plus(out);
                    }
                }
            }
            Effects::Export {
                exported,
                back_pending,
            } => {
                let m = &mut st.mas[ma];
                m.unconfirmed = m.unconfirmed.plus(Delta {
                    add: 0,
                    update: exported.add.saturating_add(exported.update),
                    delete: exported.delete,
                });
                m.connectors = m.connectors.saturating_sub(exported.delete);
                m.pending_export = m.pending_export.plus(back_pending);
                if !stopped {
                    m.last_successful_export_batch = m.export_batch;
                    record.last_successful_export_batch = m.export_batch;
                }
            }
        }
        drop(st);
        record.ended = Some(self.wall(now));
        record.result = eval.result;
        record.progress = None;
        record.report = eval.report;
    }

    fn store_history(&self, ma: usize, run_number: u64, xml: String) {
        let limit = self.cfg.history_limit;
        let mut st = self.lock();
        if let Some(m) = st.mas.get_mut(ma) {
            m.history.insert(run_number, xml);
            while m.history.len() > limit {
                m.history.pop_first();
            }
        }
    }

    /// The body of a run, in its own task.
    async fn run(self: Arc<Self>, run: StartedRun, progress: ProgressSink) -> ExecuteOutcome {
        let StartedRun {
            ma,
            header,
            steps,
            stop,
            done,
        } = run;
        let guard = RunGuard {
            inner: self.clone(),
            ma,
            run_number: header.run_number,
            done,
        };
        let mut records: Vec<StepRecord> = Vec::with_capacity(steps.len());
        for (i, step) in steps.iter().enumerate() {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let Planned {
                work,
                mut record,
                duration,
                objects,
            } = self.plan_step(ma, step, number);
            self.store_history(
                ma,
                header.run_number,
                xml::render(&header, &records, Some(&record)),
            );
            let t0 = Instant::now();
            let mut stopped = false;
            for tick in 1..=PROGRESS_TICKS {
                let deadline = t0 + duration * tick / PROGRESS_TICKS;
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = stop.notified() => {
                        stopped = true;
                        break;
                    }
                }
                if tick < PROGRESS_TICKS {
                    let f = f64::from(tick) / f64::from(PROGRESS_TICKS);
                    record.report = work.evaluate(f, false).report;
                    let progress_text = format!(
                        "{}/{objects}",
                        objects.saturating_mul(u64::from(tick)) / u64::from(PROGRESS_TICKS)
                    );
                    record.progress = Some(progress_text.clone());
                    let details = xml::render(&header, &records, Some(&record));
                    self.store_history(ma, header.run_number, details.clone());
                    // The receiver may be gone (caller not interested): the run goes on.
                    let _ = progress.send(EngineProgress {
                        run_number: header.run_number,
                        progress: Some(progress_text),
                        details_xml: Some(details),
                    });
                }
            }
            let fraction = if !stopped || duration.is_zero() {
                1.0
            } else {
                (t0.elapsed().as_secs_f64() / duration.as_secs_f64()).clamp(0.0, 1.0)
            };
            self.complete_step(ma, &work, fraction, stopped, &mut record);
            let lets_next_run =
                syncfleet_proto::vocab::classify(&record.result).lets_next_step_run();
            records.push(record);
            if stopped || !lets_next_run {
                // §3.4 / §5: a stopped (or discovery-error) step ends the run.
                break;
            }
        }
        self.store_history(ma, header.run_number, xml::render(&header, &records, None));
        let result = syncfleet_proto::vocab::most_severe(records.iter().map(|r| r.result.as_str()))
            .unwrap_or("no-start-no-steps-in-profile")
            .to_owned();
        drop(guard);
        ExecuteOutcome {
            result,
            run_number: Some(header.run_number),
        }
    }
}

impl SimEngine {
    /// Build a simulated server. Out-of-range values are clamped and duplicate MA names dropped
    /// (see [`SimConfig::validate`] to reject them instead).
    pub fn new(cfg: SimConfig) -> SimEngine {
        let cfg = cfg.sanitized();
        let epoch = Instant::now();
        let mas = cfg
            .mas
            .iter()
            .map(|ma| MaSim::new(ma.clone(), cfg.seed, epoch))
            .collect();
        SimEngine {
            inner: Arc::new(Inner {
                epoch,
                epoch_wall: Utc::now(),
                state: Mutex::new(State { mas }),
                cfg,
            }),
        }
    }

    /// [`SimConfig::validate`], then [`SimEngine::new`].
    pub fn try_new(cfg: SimConfig) -> Result<SimEngine, EngineError> {
        cfg.validate()?;
        Ok(SimEngine::new(cfg))
    }

    /// The effective (sanitized) configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Simulate changes in the MA's connected data source (picked up by the next import), on top
    /// of the configured change rate. For tests and demos.
    pub fn inject_source_changes(
        &self,
        ma: &str,
        add: u64,
        update: u64,
        delete: u64,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.lock();
        let idx = Inner::ma_index(&st, ma)?;
        let m = &mut st.mas[idx];
        m.source = m.source.plus(Delta {
            add,
            update,
            delete,
        });
        Ok(())
    }
}

impl SyncEngine for SimEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            kind: "sim".to_owned(),
            version: self.inner.cfg.version.clone(),
        }
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Vec<MaInfo>, EngineError>> {
        Box::pin(async move {
            let st = self.inner.lock();
            Ok(st.mas.iter().map(|m| m.info.clone()).collect())
        })
    }

    fn execute<'a>(
        &'a self,
        ma: &'a str,
        profile: &'a str,
        progress: ProgressSink,
    ) -> BoxFuture<'a, Result<ExecuteOutcome, EngineError>> {
        Box::pin(async move {
            let run = match self.inner.begin(ma, profile)? {
                Begin::Refused(result) => {
                    return Ok(ExecuteOutcome {
                        result: result.to_owned(),
                        run_number: None,
                    });
                }
                Begin::Started(run) => run,
            };
            let run_number = run.header.run_number;
            let (tx, rx) = oneshot::channel();
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let outcome = inner.run(run, progress).await;
                let _ = tx.send(outcome);
            });
            rx.await.map_err(|_| {
                EngineError::Unavailable(format!(
                    "simulated run {run_number} on {ma:?} ended without a result"
                ))
            })
        })
    }

    fn stop<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let (stop, mut done) = {
                let st = self.inner.lock();
                let idx = Inner::ma_index(&st, ma)?;
                match &st.mas[idx].running {
                    None => return Ok("ma-not-running".to_owned()),
                    Some(r) => (r.stop.clone(), r.done.clone()),
                }
            };
            stop.notify_one();
            // `Stop()` is synchronous (§6.12): return once the run has ended. An error means the
            // run task is gone, which also means it ended.
            let _ = done.wait_for(|ended| *ended).await;
            Ok("success".to_owned())
        })
    }

    fn status<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<MaStatus, EngineError>> {
        Box::pin(async move {
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            Ok(match &st.mas[idx].running {
                None => MaStatus::Idle,
                Some(r) => MaStatus::InProgress {
                    profile: r.profile.clone(),
                    run_number: r.run_number,
                },
            })
        })
    }

    fn pending<'a>(&'a self, ma: &'a str) -> BoxFuture<'a, Result<PendingCounters, EngineError>> {
        Box::pin(async move {
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            Ok(st.mas[idx].pending())
        })
    }

    fn run_details<'a>(
        &'a self,
        ma: &'a str,
        run_number: u64,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let st = self.inner.lock();
            let idx = Inner::ma_index(&st, ma)?;
            st.mas[idx]
                .history
                .get(&run_number)
                .cloned()
                .ok_or_else(|| EngineError::NoSuchRun {
                    ma: ma.to_owned(),
                    run_number,
                })
        })
    }

    fn health(&self) -> BoxFuture<'_, EngineHealth> {
        Box::pin(async move {
            EngineHealth {
                healthy: true,
                detail: String::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runhistory::{self, RunDetails, StepDetails};
    use syncfleet_proto::vocab::{self, ResultClass};

    /// Example server 0 with no background change accrual, so counters depend only on calls.
    fn quiet(time_scale: f64) -> SimConfig {
        let mut cfg = SimConfig::example(0);
        cfg.time_scale = time_scale;
        for ma in &mut cfg.mas {
            ma.change_rate_per_hour = 0.0;
        }
        cfg
    }

    fn sink() -> ProgressSink {
        tokio::sync::mpsc::unbounded_channel().0
    }

    async fn exec(e: &SimEngine, ma: &str, profile: &str) -> (ExecuteOutcome, RunDetails) {
        let out = e.execute(ma, profile, sink()).await.unwrap();
        let n = out.run_number.expect("run started");
        let xml = e.run_details(ma, n).await.unwrap();
        let run = runhistory::parse_one(&xml).unwrap();
        assert_eq!(run.run_number, n);
        assert_eq!(run.result(), Some(out.result.as_str()));
        (out, run)
    }

    fn only_step(run: &RunDetails) -> &StepDetails {
        assert_eq!(run.steps.len(), 1);
        &run.steps[0]
    }

    async fn pending(e: &SimEngine, ma: &str) -> PendingCounters {
        e.pending(ma).await.unwrap()
    }

    async fn wait_until_running(e: &SimEngine, ma: &str) -> u64 {
        for _ in 0..5_000 {
            if let MaStatus::InProgress { run_number, .. } = e.status(ma).await.unwrap() {
                return run_number;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{ma} never started");
    }

    async fn wait_until_idle(e: &SimEngine, ma: &str) {
        for _ in 0..10_000 {
            if e.status(ma).await.unwrap() == MaStatus::Idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{ma} never finished");
    }

    fn strip_times(mut run: RunDetails) -> RunDetails {
        for s in &mut run.steps {
            s.started_at = None;
            s.finished_at = None;
            for i in &mut s.connection_incidents {
                i.date = None;
            }
        }
        run
    }

    fn is_engine_guid(s: &str) -> bool {
        let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else {
            return false;
        };
        let parts: Vec<&str> = inner.split('-').collect();
        parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
            && inner
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('A'..='F').contains(&c))
    }

    #[tokio::test]
    async fn delta_cycle_counters_are_consistent() {
        let e = SimEngine::new(quiet(1e-4));
        let inventory = e.inventory().await.unwrap();
        let guid_of = |name: &str| {
            inventory
                .iter()
                .find(|m| m.name == name)
                .unwrap()
                .guid
                .clone()
        };
        e.inject_source_changes("HR", 10, 20, 3).unwrap();

        // Delta import stages the source changes.
        let (out, run) = exec(&e, "HR", "Delta Import").await;
        assert_eq!(out.result, "success");
        assert_eq!(run.ma, "HR");
        assert_eq!(run.ma_id, guid_of("HR"));
        assert_eq!(run.profile, "Delta Import");
        assert_eq!(run.security_id, "CONTOSO\\svc-syncfleet");
        let s = only_step(&run);
        assert_eq!(
            (s.step_type.as_str(), s.subtype.as_str()),
            ("delta-import", "to-cs")
        );
        assert_eq!(s.partition, "default");
        assert_eq!(s.connection_result.as_deref(), Some("success"));
        assert_eq!(s.connection_server.as_deref(), Some("SQL01.contoso.com"));
        assert_eq!(s.counter("stage-add"), 10);
        assert_eq!(s.counter("stage-update"), 20);
        assert_eq!(s.counter("stage-delete"), 3);
        assert_eq!(s.counter("stage-no-change"), 0);
        assert_eq!(s.counters.len(), 7 + 17 + 6, "all counters written");
        assert!(s.started_at.unwrap() <= s.finished_at.unwrap());
        let hr = pending(&e, "HR").await;
        assert_eq!(
            (hr.import_add, hr.import_update, hr.import_delete),
            (10, 20, 3)
        );
        assert_eq!(hr.total_connectors, 12_000);

        // Delta sync applies them and creates pending exports on the other MAs.
        let targets = ["AD", "MIM Service"];
        let mut before = Vec::new();
        for t in targets {
            before.push(pending(&e, t).await);
        }
        let (out, run) = exec(&e, "HR", "Delta Sync").await;
        assert_eq!(out.result, "success");
        let s = only_step(&run);
        assert_eq!(
            (s.step_type.as_str(), s.subtype.as_str()),
            ("apply-rules", "apply-pending")
        );
        assert_eq!(
            s.connection_result, None,
            "sync steps have an empty ma-connection"
        );
        assert_eq!(
            s.counter("disconnector-joined-flow") + s.counter("disconnector-projected-flow"),
            10
        );
        assert_eq!(
            s.counter("connector-flow") + s.counter("connector-no-flow"),
            20
        );
        assert_eq!(s.counter("connector-delete-remove-mv"), 3);
        assert_eq!(s.counter("flow-failure"), 0);
        assert!(!s.outbound.contains_key("HR"));
        assert!(s.outbound.contains_key("AD"), "{:?}", s.outbound);
        for (i, t) in targets.iter().enumerate() {
            let after = pending(&e, t).await;
            let out = s.outbound.get(*t).cloned().unwrap_or_default();
            assert!(
                out.values().all(|v| *v > 0),
                "zero outbound counters are omitted"
            );
            let get = |k: &str| out.get(k).copied().unwrap_or(0);
            assert_eq!(
                after.export_add - before[i].export_add,
                get("provisioned-add-flow")
            );
            assert_eq!(
                after.export_update - before[i].export_update,
                get("connector-flow")
            );
            assert_eq!(
                after.export_delete - before[i].export_delete,
                get("provisioned-disconnect")
            );
            assert_eq!(
                after.total_connectors - before[i].total_connectors,
                get("provisioned-add-flow")
            );
        }
        let hr = pending(&e, "HR").await;
        assert_eq!(
            (hr.import_add, hr.import_update, hr.import_delete),
            (0, 0, 0)
        );
        assert_eq!(hr.total_connectors, 12_000 + 10 - 3);
        assert_eq!(
            hr.export_add + hr.export_update + hr.export_delete,
            0,
            "HR is import-only"
        );

        // Export consumes AD's pending exports.
        let ad_before = pending(&e, "AD").await;
        assert!(ad_before.export_add > 0);
        let (out, run) = exec(&e, "AD", "Export").await;
        assert_eq!(out.result, "success");
        let s = only_step(&run);
        assert_eq!(s.step_type, "export");
        assert_eq!(s.subtype, "");
        assert_eq!(s.partition, "DC=contoso,DC=com");
        assert_eq!(s.connection_server.as_deref(), Some("DC01.contoso.com:389"));
        assert_eq!(s.counter("export-add"), ad_before.export_add);
        assert_eq!(s.counter("export-update"), ad_before.export_update);
        assert_eq!(s.counter("export-delete"), ad_before.export_delete);
        assert_eq!(s.counter("export-failure"), 0);
        let ad_after = pending(&e, "AD").await;
        assert_eq!(
            (
                ad_after.export_add,
                ad_after.export_update,
                ad_after.export_delete
            ),
            (0, 0, 0)
        );
        assert_eq!(
            ad_after.total_connectors,
            ad_before.total_connectors - ad_before.export_delete
        );

        // The confirming import sees the exported changes.
        let (_, run) = exec(&e, "AD", "Delta Import").await;
        let s = only_step(&run);
        assert_eq!(s.counter("stage-add"), 0);
        assert_eq!(
            s.counter("stage-update"),
            ad_before.export_add + ad_before.export_update
        );
        assert_eq!(s.counter("stage-delete"), ad_before.export_delete);
        assert!(s.has_staged_changes());

        // Syncing confirmations flows nowhere: the cycle converges.
        let mim_before = pending(&e, "MIM Service").await;
        let (_, run) = exec(&e, "AD", "Delta Sync").await;
        let s = only_step(&run);
        assert!(s.outbound.is_empty(), "{:?}", s.outbound);
        assert_eq!(
            s.counter("connector-no-flow"),
            ad_before.export_add + ad_before.export_update
        );
        assert_eq!(
            s.counter("connector-delete-leave-mv"),
            ad_before.export_delete
        );
        assert_eq!(pending(&e, "MIM Service").await, mim_before);

        // Nothing left: a delta import finds nothing.
        let (out, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(out.result, "completed-no-objects");
        assert!(!only_step(&run).has_staged_changes());
    }

    #[tokio::test]
    async fn full_import_and_full_sync_see_every_object() {
        let e = SimEngine::new(quiet(1e-4));
        e.inject_source_changes("AD", 4, 5, 2).unwrap();
        let (out, run) = exec(&e, "AD", "Full Import").await;
        assert_eq!(out.result, "success");
        let s = only_step(&run);
        assert_eq!(
            (s.step_type.as_str(), s.subtype.as_str()),
            ("full-import", "to-cs")
        );
        assert_eq!(s.counter("stage-no-change"), 25_000 - 5 - 2);
        assert_eq!(s.counter("stage-add"), 4);
        assert_eq!(s.counter("stage-update"), 5);
        assert_eq!(s.counter("stage-delete"), 2);

        let (out, run) = exec(&e, "AD", "Full Sync").await;
        assert_eq!(out.result, "success");
        let s = only_step(&run);
        assert_eq!(
            (s.step_type.as_str(), s.subtype.as_str()),
            ("apply-rules", "reevaluate-flow-connectors")
        );
        assert_eq!(
            s.counter("connector-flow") + s.counter("connector-no-flow"),
            25_000 - 2,
            "every remaining connector re-evaluated"
        );
        assert_eq!(s.counter("connector-delete-remove-mv"), 2);
        assert_eq!(pending(&e, "AD").await.total_connectors, 25_000 + 4 - 2);
        // AD flows to MIM Service, never to the import-only HR.
        assert!(s.outbound.contains_key("MIM Service"));
        assert!(!s.outbound.contains_key("HR"));
    }

    #[tokio::test]
    async fn every_profile_round_trips_through_the_parser() {
        let mut cfg = SimConfig::example(1);
        cfg.time_scale = 1e-4;
        let e = SimEngine::new(cfg);
        let inventory = e.inventory().await.unwrap();
        assert_eq!(inventory.len(), 4);
        for ma in &inventory {
            e.inject_source_changes(&ma.name, 3, 7, 1).unwrap();
            let mut last_run = None;
            for profile in &ma.run_profiles {
                let out = e.execute(&ma.name, &profile.name, sink()).await.unwrap();
                let n = out.run_number.unwrap();
                if let Some(prev) = last_run {
                    assert_eq!(n, prev + 1, "run numbers are consecutive per MA");
                }
                last_run = Some(n);
                let xml = e.run_details(&ma.name, n).await.unwrap();
                assert!(
                    xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-16\"?>\n<run-history>")
                );
                let run = runhistory::parse_one(&xml).unwrap();
                assert_eq!(run.ma, ma.name);
                assert_eq!(run.ma_id, ma.guid);
                assert_eq!(run.profile, profile.name);
                let s = only_step(&run);
                assert_eq!(s.step_type, profile.steps[0].step_type);
                assert_eq!(s.subtype, profile.steps[0].subtype);
                assert_eq!(s.partition, profile.steps[0].partition);
                assert!(is_engine_guid(&s.step_id), "{}", s.step_id);
                assert!(s.started_at.unwrap() <= s.finished_at.unwrap());
                assert_eq!(s.progress, None);
                assert_eq!(
                    vocab::classify(&out.result),
                    ResultClass::Success,
                    "{} {}: {}",
                    ma.name,
                    profile.name,
                    out.result
                );
            }
        }
    }

    #[tokio::test]
    async fn names_are_escaped_in_xml() {
        let mut cfg = quiet(1e-4);
        cfg.mas[0].name = "R&D <\"Lab\"> 'x'".to_owned();
        cfg.mas[0].partition = "DC=r&d,DC=contoso,DC=com".to_owned();
        cfg.security_id = "R&D\\svc<sync>".to_owned();
        let e = SimEngine::new(cfg);
        let name = "R&D <\"Lab\"> 'x'";
        e.inject_source_changes(name, 1, 0, 0).unwrap();
        let (_, run) = exec(&e, name, "Delta Import").await;
        assert_eq!(run.ma, name);
        assert_eq!(run.security_id, "R&D\\svc<sync>");
        assert_eq!(only_step(&run).partition, "DC=r&d,DC=contoso,DC=com");
        e.inject_source_changes(name, 5, 0, 0).unwrap();
        exec(&e, name, "Delta Import").await;
        let (_, run) = exec(&e, name, "Delta Sync").await;
        // Outbound from the renamed MA to the others still parses.
        assert!(only_step(&run).outbound.contains_key("MIM Service"));
        // And outbound *to* it carries the escaped name.
        e.inject_source_changes("MIM Service", 10, 0, 0).unwrap();
        exec(&e, "MIM Service", "Delta Import").await;
        let (_, run) = exec(&e, "MIM Service", "Delta Sync").await;
        assert!(only_step(&run).outbound.contains_key(name));
    }

    #[tokio::test]
    async fn second_execute_on_a_running_ma_is_refused() {
        // A full import of 25,000 objects: ~2.6 s at this scale, ended by `stop` below.
        let e = SimEngine::new(quiet(0.05));
        let e2 = e.clone();
        let first = tokio::spawn(async move { e2.execute("AD", "Full Import", sink()).await });
        let n = wait_until_running(&e, "AD").await;
        assert_eq!(
            e.status("AD").await.unwrap(),
            MaStatus::InProgress {
                profile: "Full Import".into(),
                run_number: n
            }
        );
        for profile in ["Delta Import", "Export", "Delta Sync"] {
            let out = e.execute("AD", profile, sink()).await.unwrap();
            assert_eq!(out.result, "no-start-ma-already-running");
            assert_eq!(out.run_number, None);
        }
        assert_eq!(e.stop("AD").await.unwrap(), "success");
        let out = first.await.unwrap().unwrap();
        assert_eq!(out.result, STOPPED_BY_USER);
        assert_eq!(out.run_number, Some(n));
        assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
        // Refusals do not consume run numbers.
        let next = e.execute("AD", "Delta Import", sink()).await.unwrap();
        assert_eq!(next.run_number, Some(n + 1));
    }

    #[tokio::test]
    async fn second_concurrent_sync_is_refused_with_0x8023063d() {
        // A full sync of 12,000 connectors: ~1.3 s at this scale, ended by `stop` below.
        let e = SimEngine::new(quiet(0.05));
        let e2 = e.clone();
        let first = tokio::spawn(async move { e2.execute("HR", "Full Sync", sink()).await });
        let n = wait_until_running(&e, "HR").await;
        for (ma, profile) in [("AD", "Full Sync"), ("MIM Service", "Delta Sync")] {
            let out = e.execute(ma, profile, sink()).await.unwrap();
            assert!(out.result.contains("0x8023063d"), "{}", out.result);
            assert_eq!(out.result, CONCURRENT_SYNC_REFUSAL);
            assert_eq!(vocab::classify(&out.result), ResultClass::Busy);
            assert_eq!(out.run_number, None);
            assert_eq!(e.status(ma).await.unwrap(), MaStatus::Idle);
        }
        // Imports and exports on other MAs may overlap a sync.
        let out = e.execute("AD", "Delta Import", sink()).await.unwrap();
        assert!(out.run_number.is_some());
        assert_eq!(out.result, "completed-no-objects");
        let out = e.execute("MIM Service", "Export", sink()).await.unwrap();
        assert_eq!(out.result, "success");
        assert!(matches!(
            e.status("HR").await.unwrap(),
            MaStatus::InProgress { run_number, .. } if run_number == n
        ));
        assert_eq!(e.stop("HR").await.unwrap(), "success");
        assert_eq!(first.await.unwrap().unwrap().result, STOPPED_BY_USER);
        // Once the sync ended, the next one may start.
        let out = e.execute("AD", "Delta Sync", sink()).await.unwrap();
        assert_eq!(out.result, "success");
    }

    #[tokio::test]
    async fn stop_ends_the_run_and_commits_the_processed_part() {
        let e = SimEngine::new(quiet(0.05));
        assert_eq!(e.stop("AD").await.unwrap(), "ma-not-running");
        e.inject_source_changes("AD", 0, 1_000, 0).unwrap();
        // Full import of ~26,000 objects: ~2.7 s at this scale.
        let e2 = e.clone();
        let run = tokio::spawn(async move { e2.execute("AD", "Full Import", sink()).await });
        let n = wait_until_running(&e, "AD").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = std::time::Instant::now();
        assert_eq!(e.stop("AD").await.unwrap(), "success");
        assert!(asked.elapsed() < Duration::from_secs(1), "stop is prompt");
        // Stop() returns once the run has stopped.
        assert_eq!(e.status("AD").await.unwrap(), MaStatus::Idle);
        let out = run.await.unwrap().unwrap();
        assert_eq!(out.result, STOPPED_BY_USER);
        assert_eq!(out.run_number, Some(n));
        assert_eq!(vocab::classify(&out.result), ResultClass::Intentional);
        assert_eq!(e.stop("AD").await.unwrap(), "ma-not-running");

        let xml = e.run_details("AD", n).await.unwrap();
        let run = runhistory::parse_one(&xml).unwrap();
        let s = only_step(&run);
        assert_eq!(s.result, STOPPED_BY_USER);
        assert!(s.finished_at.is_some());
        let staged = s.counter("stage-update");
        assert!(staged < 1_000, "stopped early: {staged}");
        assert_eq!(pending(&e, "AD").await.import_update, staged);
        // The unprocessed rest is still waiting in the source.
        let (_, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(only_step(&run).counter("stage-update"), 1_000 - staged);
    }

    #[tokio::test]
    async fn progress_is_reported_while_running() {
        let e = SimEngine::new(quiet(0.01));
        e.inject_source_changes("AD", 0, 500, 0).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = e.execute("AD", "Delta Import", tx).await.unwrap();
        let n = out.run_number.unwrap();
        let mut seen = Vec::new();
        while let Ok(p) = rx.try_recv() {
            seen.push(p);
        }
        assert_eq!(seen.len(), 9, "every 10 % except the end");
        let mut last_staged = 0;
        for (i, p) in seen.iter().enumerate() {
            assert_eq!(p.run_number, n);
            assert_eq!(
                p.progress.as_deref(),
                Some(format!("{}/500", 50 * (i + 1)).as_str())
            );
            let run = runhistory::parse_one(p.details_xml.as_deref().unwrap()).unwrap();
            let s = only_step(&run);
            assert_eq!(s.result, "in-progress");
            assert_eq!(s.finished_at, None);
            assert_eq!(s.progress, p.progress);
            assert!(s.counter("stage-update") >= last_staged);
            last_staged = s.counter("stage-update");
        }
        let (_, run) = exec(&e, "AD", "Delta Sync").await;
        assert_eq!(
            only_step(&run).counter("connector-flow")
                + only_step(&run).counter("connector-no-flow"),
            500
        );
    }

    #[tokio::test]
    async fn unknown_names_are_reported() {
        let e = SimEngine::new(quiet(1e-4));
        let out = e.execute("AD", "Delta Everything", sink()).await.unwrap();
        assert_eq!(out.result, "no-start-unknown-profile-name");
        assert_eq!(out.run_number, None);
        assert!(matches!(
            e.execute("Nope", "Delta Import", sink()).await,
            Err(EngineError::NoSuchMa(ma)) if ma == "Nope"
        ));
        assert!(matches!(
            e.status("Nope").await,
            Err(EngineError::NoSuchMa(_))
        ));
        assert!(matches!(
            e.pending("Nope").await,
            Err(EngineError::NoSuchMa(_))
        ));
        assert!(matches!(
            e.stop("Nope").await,
            Err(EngineError::NoSuchMa(_))
        ));
        assert!(matches!(
            e.run_details("AD", 1).await,
            Err(EngineError::NoSuchRun { run_number: 1, .. })
        ));
        assert!(matches!(
            e.inject_source_changes("Nope", 1, 1, 1),
            Err(EngineError::NoSuchMa(_))
        ));
    }

    /// The same seed and the same calls give the same counters, ids and run numbers.
    #[tokio::test]
    async fn same_seed_same_calls_same_counters() {
        async fn script(e: &SimEngine) -> (Vec<RunDetails>, Vec<PendingCounters>) {
            e.inject_source_changes("HR", 40, 120, 6).unwrap();
            e.inject_source_changes("AD", 7, 30, 2).unwrap();
            let mut runs = Vec::new();
            for (ma, profile) in [
                ("HR", "Delta Import"),
                ("HR", "Delta Sync"),
                ("AD", "Delta Import"),
                ("AD", "Delta Sync"),
                ("AD", "Export"),
                ("MIM Service", "Export"),
                ("AD", "Delta Import"),
                ("AD", "Delta Sync"),
                ("MIM Service", "Full Sync"),
            ] {
                runs.push(strip_times(exec(e, ma, profile).await.1));
            }
            let mut pendings = Vec::new();
            for ma in ["AD", "HR", "MIM Service"] {
                pendings.push(pending(e, ma).await);
            }
            (runs, pendings)
        }
        let mut cfg = quiet(1e-4);
        cfg.error_rate = 0.5;
        let a = script(&SimEngine::new(cfg.clone())).await;
        let b = script(&SimEngine::new(cfg.clone())).await;
        assert_eq!(a, b);
        assert!(a.0.iter().any(|r| r.steps[0].outbound.len() > 1));

        cfg.seed ^= 1;
        let c = script(&SimEngine::new(cfg)).await;
        assert_ne!(a.0[0].ma_id, c.0[0].ma_id, "another seed, other GUIDs");
    }

    #[tokio::test]
    async fn object_errors_when_the_error_rate_hits() {
        let mut cfg = quiet(1e-4);
        cfg.error_rate = 1.0;
        let e = SimEngine::new(cfg);
        e.inject_source_changes("HR", 0, 50, 0).unwrap();
        exec(&e, "HR", "Delta Import").await;
        let (out, run) = exec(&e, "HR", "Delta Sync").await;
        assert_eq!(out.result, "completed-sync-errors");
        let s = only_step(&run);
        let failed = s.counter("flow-failure");
        assert!((1..=MAX_FAILURES_PER_STEP).contains(&failed));
        assert_eq!(s.errors.count, failed);
        assert_eq!(
            s.counter("connector-flow") + s.counter("connector-no-flow"),
            50 - failed
        );
        let err = &s.errors.first[0];
        assert_eq!(err.kind, "import");
        assert_eq!(err.error_type, "extension-dll-exception");
        assert!(is_engine_guid(&err.cs_guid));
        assert!(err.dn.starts_with("EmployeeID="));
        assert!(
            err.error_literal
                .as_deref()
                .unwrap()
                .starts_with("System.NullReferenceException")
        );
        // Failed objects stay staged for the next sync.
        assert_eq!(pending(&e, "HR").await.import_update, failed);

        let ad = pending(&e, "AD").await;
        assert!(ad.export_update > 0);
        let (out, run) = exec(&e, "AD", "Export").await;
        assert_eq!(out.result, "completed-export-errors");
        let s = only_step(&run);
        let failed = s.counter("export-failure");
        assert!(failed >= 1);
        assert_eq!(s.counter("export-update"), ad.export_update - failed);
        let err = &s.errors.first[0];
        assert_eq!(err.kind, "export");
        assert_eq!(err.error_type, "permission-issue");
        assert_eq!(err.error_code.as_deref(), Some("0x80070005"));
        assert_eq!(err.error_literal.as_deref(), Some("Access is denied."));
        assert!(err.dn.starts_with("CN=User"));
        assert_eq!(pending(&e, "AD").await.export_update, failed);
    }

    #[tokio::test]
    async fn source_changes_accrue_with_simulated_time() {
        let mut cfg = quiet(1e-3);
        cfg.mas[0].change_rate_per_hour = 36_000.0; // 10 per simulated second
        let e = SimEngine::new(cfg);
        // 30 ms real = 30 simulated seconds ≈ 300 changes.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (out, run) = exec(&e, "AD", "Delta Import").await;
        assert_eq!(out.result, "success");
        let s = only_step(&run);
        let staged = s.counter("stage-add") + s.counter("stage-update") + s.counter("stage-delete");
        assert!(staged >= 250, "{staged}");
        let p = pending(&e, "AD").await;
        assert_eq!(p.import_add + p.import_update + p.import_delete, staged);
        assert_eq!(p.cs_objects, p.total_connectors + p.import_add);
        // HR has no change rate: nothing.
        assert_eq!(
            exec(&e, "HR", "Delta Import").await.0.result,
            "completed-no-objects"
        );
    }

    #[tokio::test]
    async fn a_run_outlives_its_caller() {
        // A full import of 25,000 objects: ~2.6 s at this scale.
        let e = SimEngine::new(quiet(0.05));
        let fut = e.execute("AD", "Full Import", sink());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), fut)
                .await
                .is_err()
        );
        let n = wait_until_running(&e, "AD").await;
        // In progress XML is already in the run history.
        let xml = e.run_details("AD", n).await.unwrap();
        assert_eq!(
            runhistory::parse_one(&xml).unwrap().result(),
            Some("in-progress")
        );
        wait_until_idle(&e, "AD").await;
        let xml = e.run_details("AD", n).await.unwrap();
        let run = runhistory::parse_one(&xml).unwrap();
        assert_eq!(run.result(), Some("success"));
        assert_eq!(only_step(&run).counter("stage-no-change"), 25_000);
    }

    #[tokio::test]
    async fn history_is_bounded() {
        let mut cfg = quiet(1e-4);
        cfg.history_limit = 2;
        let e = SimEngine::new(cfg);
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(exec(&e, "AD", "Delta Import").await.0.run_number.unwrap());
        }
        assert!(matches!(
            e.run_details("AD", runs[0]).await,
            Err(EngineError::NoSuchRun { .. })
        ));
        assert!(e.run_details("AD", runs[1]).await.is_ok());
        assert!(e.run_details("AD", runs[2]).await.is_ok());
    }

    #[tokio::test]
    async fn examples_describe_realistic_servers() {
        let zero = SimConfig::example(0);
        let names: Vec<(&str, &str, u64)> = zero
            .mas
            .iter()
            .map(|m| (m.name.as_str(), m.ma_type.as_str(), m.connectors))
            .collect();
        assert_eq!(
            names,
            vec![
                ("AD", "AD", 25_000),
                ("HR", "MSSQL", 12_000),
                ("MIM Service", "FIM", 30_000)
            ]
        );
        assert_eq!(zero.mas[0].partition, "DC=contoso,DC=com");
        let one = SimConfig::example(1);
        assert!(
            one.mas
                .iter()
                .any(|m| m.name == "Entra ID" && m.ma_type == "Extensible2")
        );
        assert_ne!(one.mas[0].connectors, zero.mas[0].connectors);
        let seeds: Vec<u64> = (0..6).map(|i| SimConfig::example(i).seed).collect();
        for (i, s) in seeds.iter().enumerate() {
            assert!(!seeds[..i].contains(s), "seeds differ");
        }
        assert_ne!(
            SimConfig::example(2).mas[0].connectors,
            SimConfig::example(3).mas[0].connectors
        );
        for i in 0..6 {
            SimConfig::example(i).validate().unwrap();
        }

        let e = SimEngine::new(zero.clone());
        let again = SimEngine::new(zero);
        let inv = e.inventory().await.unwrap();
        assert_eq!(
            inv,
            again.inventory().await.unwrap(),
            "GUIDs derive from the seed"
        );
        for ma in &inv {
            assert!(is_engine_guid(&ma.guid), "{}", ma.guid);
            let profiles: Vec<(&str, &str, &str)> = ma
                .run_profiles
                .iter()
                .map(|p| {
                    (
                        p.name.as_str(),
                        p.steps[0].step_type.as_str(),
                        p.steps[0].subtype.as_str(),
                    )
                })
                .collect();
            assert_eq!(profiles, STANDARD_PROFILES.to_vec());
        }
        assert!(
            inv.iter()
                .find(|m| m.name == "MIM Service")
                .unwrap()
                .is_mim_service()
        );
        assert_eq!(e.info().kind, "sim");
        assert_eq!(e.info().version, "MIM 2016 4.6.607.0");
        assert!(e.health().await.healthy);
        let sync_profiles: Vec<&str> = inv[0]
            .run_profiles
            .iter()
            .filter(|p| p.steps.iter().any(RunStepInfo::is_sync))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(sync_profiles, vec!["Full Sync", "Delta Sync"]);
    }

    #[test]
    fn config_from_toml_with_defaults_and_validation() {
        let cfg: SimConfig = toml::from_str(
            "seed = 7\ntime_scale = 0.05\n[[mas]]\nname = \"LDAP\"\nma_type = \"Extensible2\"\n",
        )
        .unwrap();
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.time_scale, 0.05);
        assert_eq!(cfg.error_rate, 0.0);
        assert_eq!(cfg.mas.len(), 1);
        assert_eq!(cfg.mas[0].connectors, 1_000);
        assert_eq!(cfg.mas[0].partition, "default");
        assert!(cfg.mas[0].receives_exports);
        assert_eq!((cfg.step_base_secs, cfg.secs_per_object), (2.0, 0.002));
        cfg.validate().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<SimConfig>(&json).unwrap(), cfg);
        assert!(
            toml::from_str::<SimConfig>("seeed = 1").is_err(),
            "typos are refused"
        );

        let mut bad = cfg.clone();
        bad.time_scale = 0.0;
        assert!(matches!(bad.validate(), Err(EngineError::Config(_))));
        let mut bad = cfg.clone();
        bad.error_rate = 2.0;
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.secs_per_object = -1.0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("secs_per_object")
        );
        let mut bad = cfg.clone();
        bad.mas.push(bad.mas[0].clone());
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        assert!(SimEngine::try_new(bad.clone()).is_err());
        // `new` clamps instead.
        let e = SimEngine::new(bad);
        assert_eq!(e.config().mas.len(), 1);
        assert_eq!(e.config().time_scale, 0.05);
    }

    #[test]
    fn helpers_are_exact_at_the_edges() {
        assert_eq!(part(u64::MAX, 1.0), u64::MAX);
        assert_eq!(part(10, 0.0), 0);
        assert_eq!(part(10, f64::NAN), 0);
        assert_eq!(part(10, 0.55), 5);
        let mut cfg = SimConfig::example(0);
        assert_eq!(step_duration(&cfg, 0), Duration::from_secs(2));
        assert_eq!(step_duration(&cfg, 25_000), Duration::from_secs(52));
        assert_eq!(step_duration(&cfg, u64::MAX), Duration::from_secs(86_400));
        cfg.time_scale = 0.05;
        assert_eq!(step_duration(&cfg, 0), Duration::from_millis(100));
        cfg.time_scale = f64::NAN;
        assert_eq!(step_duration(&cfg, 5), Duration::ZERO);
        assert_eq!(xml::escape("a&b<c>\"'"), "a&amp;b&lt;c&gt;&quot;&apos;");
        assert_eq!(
            connection_server(&SimMaConfig::new(
                "AD",
                "AD",
                1,
                0.0,
                "DC=eu,DC=contoso,DC=com"
            )),
            "DC01.eu.contoso.com:389"
        );
    }
}
