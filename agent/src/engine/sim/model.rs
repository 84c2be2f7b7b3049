//! The per-MA model: connector space, source changes, staged imports, pending and unconfirmed
//! exports; and step work, claimed at step start, evaluated for any processed fraction and
//! committed at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::{SimConfig, SimMaConfig};
use super::xml::{DiscoveryRecord, ErrorRecord, OutboundRecord, StepReport};
use super::{
    MAX_FAILURES_PER_STEP, MAX_STEP_SECS, MaInfo, PendingCounters, RunProfileInfo, RunStepInfo,
    STANDARD_PROFILES,
};

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

pub(super) fn mix(seed: u64, name: &str, salt: u64) -> u64 {
    splitmix64(seed ^ splitmix64(fnv1a(name) ^ salt.rotate_left(17)))
}

/// A stable ratio in `lo..hi` for a (source MA, target MA, purpose) triple.
pub(super) fn pair_ratio(seed: u64, from: &str, to: &str, salt: u64, lo: f64, hi: f64) -> f64 {
    let h = mix(seed, &format!("{from}\u{0}{to}"), salt);
    // 53 random bits → [0, 1).
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    lo + unit * (hi - lo)
}

/// A GUID in braces, upper case, as the engine prints it.
pub(super) fn guid(rng: &mut StdRng) -> String {
    let bytes: [u8; 16] = rng.random();
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    format!("{{{}}}", id.hyphenated()).to_ascii_uppercase()
}

/// `floor(n × f)`, exact at the ends.
pub(super) fn part(n: u64, f: f64) -> u64 {
    if f >= 1.0 {
        n
    } else if f.is_nan() || f <= 0.0 {
        0
    } else {
        // Float rounding can only make this smaller than the exact product; `min` guards anyway.
        ((n as f64 * f).floor() as u64).min(n)
    }
}

pub(super) fn step_duration(cfg: &SimConfig, objects: u64) -> Duration {
    let secs = cfg.time_scale * (cfg.step_base_secs + objects as f64 * cfg.secs_per_object);
    if !secs.is_finite() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(MAX_STEP_SECS)).unwrap_or(Duration::ZERO)
}

/// Add/update/delete counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub add: u64,
    pub update: u64,
    pub delete: u64,
}

impl Delta {
    pub fn total(self) -> u64 {
        self.add
            .saturating_add(self.update)
            .saturating_add(self.delete)
    }
    pub fn plus(self, o: Delta) -> Delta {
        Delta {
            add: self.add.saturating_add(o.add),
            update: self.update.saturating_add(o.update),
            delete: self.delete.saturating_add(o.delete),
        }
    }
    pub fn minus(self, o: Delta) -> Delta {
        Delta {
            add: self.add.saturating_sub(o.add),
            update: self.update.saturating_sub(o.update),
            delete: self.delete.saturating_sub(o.delete),
        }
    }
    pub fn part(self, f: f64) -> Delta {
        Delta {
            add: part(self.add, f),
            update: part(self.update, f),
            delete: part(self.delete, f),
        }
    }
    fn without_deletes(self) -> Delta {
        Delta { delete: 0, ..self }
    }
}

// ---------------------------------------------------------------------------------------------
// MA state
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub(super) struct MaSim {
    pub cfg: SimMaConfig,
    pub info: MaInfo,
    /// Counter draws.
    pub rng: StdRng,
    /// Ids (step GUIDs, error objects): separate, so ids never shift counter draws.
    pub id_rng: StdRng,
    /// Failure draws (rates, stop points, error counts): separate, so enabling failure
    /// injection never shifts counter draws.
    pub fail_rng: StdRng,
    pub connectors: u64,
    /// Changes in the connected source not imported yet.
    pub source: Delta,
    accrual_carry: f64,
    accrued_until: Instant,
    /// Engine creation, for [`SimMaConfig::source_events`] times.
    created: Instant,
    /// How many of the (time-ordered) source events were applied.
    events_applied: usize,
    /// Staged pending imports from source changes (they flow out to other MAs on sync).
    pub staged: Delta,
    /// Staged pending imports that confirm our own exports (no outbound flow).
    pub staged_confirm: Delta,
    pub pending_export: Delta,
    /// Exported, not yet seen by an import (kept as update/delete: a confirmed add is an update
    /// of the already existing connector-space object).
    pub unconfirmed: Delta,
    pub export_batch: u64,
    pub last_successful_export_batch: u64,
    pub next_run_number: u64,
    pub running: Option<Running>,
    pub history: BTreeMap<u64, String>,
}

/// The run an MA executes now.
#[derive(Debug)]
pub(super) struct Running {
    pub profile: String,
    pub run_number: u64,
    /// The profile has a sync-class step (the engine refuses it while another MA synchronizes).
    pub synchronizes: bool,
    pub stop: Arc<Notify>,
    pub done: watch::Receiver<bool>,
}

impl MaSim {
    pub fn new(cfg: SimMaConfig, seed: u64, now: Instant) -> MaSim {
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
            fail_rng: StdRng::seed_from_u64(mix(seed, &cfg.name, 4)),
            connectors: cfg.connectors,
            source: Delta::default(),
            accrual_carry: 0.0,
            accrued_until: now,
            created: now,
            events_applied: 0,
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
    pub fn accrue(&mut self, now: Instant, time_scale: f64) {
        // Scripted source events (a mass delete, a bulk hire) whose simulated time has come.
        let sim_secs = now.saturating_duration_since(self.created).as_secs_f64() / time_scale;
        while let Some(ev) = self.cfg.source_events.get(self.events_applied) {
            if ev.at_secs > sim_secs {
                break;
            }
            self.source = self.source.plus(Delta {
                add: ev.add,
                update: ev.update,
                delete: ev.delete,
            });
            self.events_applied += 1;
        }
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

    /// How many objects the `error_rate` dice make fail: a few, when they hit.
    pub fn draw_failure_count(&mut self, error_rate: f64, eligible: u64) -> u64 {
        if error_rate <= 0.0 || eligible == 0 || !self.rng.random_bool(error_rate.min(1.0)) {
            return 0;
        }
        1 + self
            .rng
            .random_range(0..eligible.min(MAX_FAILURES_PER_STEP))
    }

    /// Of `n` objects each failing with probability `rate`: how many fail (the expected count,
    /// rounded up or down by a seeded draw so that the mean is exact).
    pub fn draw_fraction(&mut self, n: u64, rate: f64) -> u64 {
        if n == 0 || rate <= 0.0 {
            return 0;
        }
        if rate >= 1.0 {
            return n;
        }
        let expected = n as f64 * rate;
        let whole = expected.floor();
        let round_up = self.rng.random_bool((expected - whole).clamp(0.0, 1.0));
        ((whole as u64).saturating_add(u64::from(round_up))).min(n)
    }

    /// `k` objects of this MA (ids and DNs) for error entries.
    pub fn failed_objects(&mut self, k: u64) -> Vec<FailedObject> {
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

    pub fn pending(&self) -> PendingCounters {
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
pub(super) fn connection_server(ma: &SimMaConfig) -> String {
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

/// `cd-error` of a dropped connection (`stopped-connectivity`), per connected system.
pub(super) fn connection_error_for(ma_type: &str) -> (&'static str, &'static str) {
    match ma_type {
        "AD" => ("81", "The LDAP server is unavailable."),
        "MSSQL" => (
            "0x80004005",
            "A network-related or instance-specific error occurred while establishing a \
             connection to SQL Server.",
        ),
        _ => (
            "0x80072EE2",
            "The operation timed out: the connected system did not answer.",
        ),
    }
}

/// Export error flavour per connected system (the engine's `error-type` set is open).
pub(super) fn export_error_for(ma_type: &str) -> (&'static str, &'static str, &'static str) {
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
// Step work
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepKind {
    Import { full: bool },
    Sync { full: bool },
    Export,
}

impl StepKind {
    pub fn of(step: &RunStepInfo) -> StepKind {
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
pub(super) struct FailedObject {
    pub cs_guid: String,
    pub dn: String,
}

#[derive(Debug, Clone)]
pub(super) struct TargetFlow {
    pub index: usize,
    pub name: String,
    pub guid: String,
    pub add_ratio: f64,
    pub update_ratio: f64,
    pub delete_ratio: f64,
}

#[derive(Debug, Clone)]
pub(super) enum Work {
    Import {
        source: Delta,
        confirm: Delta,
        no_change: u64,
        /// A full import detects deletions as objects missing from the source and obsoletes
        /// them at the end of the step: only a step that completes without
        /// discovery errors stages them.
        full: bool,
        /// Objects that fail discovery (`ma-discovery-errors`, `completed-discovery-errors`).
        discovery: Vec<FailedObject>,
        /// Objects that fail staging (`import-error`, `stage-failure`).
        staging: Vec<FailedObject>,
    },
    Sync {
        staged: Delta,
        confirm: Delta,
        /// Full sync: connectors re-evaluated without staged changes.
        others: u64,
        join_ratio: f64,
        no_flow_ratio: f64,
        failures: Vec<FailedObject>,
        /// Injected errors: all `failures` are reported even beyond the staged updates (objects
        /// whose earlier errors are retried).
        forced_failures: bool,
        targets: Vec<TargetFlow>,
    },
    Export {
        pending: Delta,
        /// Pending exports the connected system rejects (they stay pending).
        failed: Delta,
        /// One object per failure: `failed.total()` plus injected extras (earlier failures
        /// retried).
        failures: Vec<FailedObject>,
        error_type: &'static str,
        error_code: &'static str,
        error_literal: &'static str,
    },
}

/// How a step evaluation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish<'a> {
    /// Still running: report the processed part, no result yet.
    InProgress,
    /// Ran to its end.
    Completed,
    /// Ended early with this result (`stopped-*`).
    Stopped(&'a str),
}

/// State changes of a processed step.
#[derive(Debug, Clone)]
pub(super) enum Effects {
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
pub(super) struct Evaluated {
    pub result: String,
    pub report: StepReport,
    pub effects: Effects,
}

fn take_objects(objects: &[FailedObject], n: u64) -> impl Iterator<Item = &FailedObject> {
    objects
        .iter()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
}

impl Work {
    pub fn evaluate(&self, f: f64, finish: Finish<'_>) -> Evaluated {
        let mut report = StepReport::default();
        let (effects, errors_result) = match self {
            Work::Import {
                source,
                confirm,
                no_change,
                full,
                discovery,
                staging,
            } => {
                let obsoletes = !*full || (finish == Finish::Completed && discovery.is_empty());
                let (s, c) = if obsoletes {
                    (source.part(f), confirm.part(f))
                } else {
                    (
                        source.part(f).without_deletes(),
                        confirm.part(f).without_deletes(),
                    )
                };
                let unchanged = part(*no_change, f);
                let discovered = part(discovery.len() as u64, f);
                let staging_failed = part(staging.len() as u64, f);
                report.set("stage-no-change", unchanged);
                report.set("stage-add", s.add.saturating_add(c.add));
                report.set("stage-update", s.update.saturating_add(c.update));
                report.set("stage-delete", s.delete.saturating_add(c.delete));
                report.set("stage-failure", staging_failed);
                report.discovery.extend(
                    take_objects(discovery, discovered)
                        .map(|o| DiscoveryRecord { dn: o.dn.clone() }),
                );
                report
                    .errors
                    .extend(
                        take_objects(staging, staging_failed).map(|o| ErrorRecord::Staging {
                            cs_guid: o.cs_guid.clone(),
                            dn: o.dn.clone(),
                        }),
                    );
                let nothing = s.total() == 0 && c.total() == 0 && unchanged == 0;
                let errors_result = if discovered > 0 {
                    Some("completed-discovery-errors")
                } else if staging_failed > 0 {
                    Some("completed-sync-errors")
                } else if nothing {
                    Some("completed-no-objects")
                } else {
                    None
                };
                (
                    Effects::Import {
                        staged: s,
                        confirm: c,
                        back_source: source.minus(s),
                        back_confirm: confirm.minus(c),
                    },
                    errors_result,
                )
            }
            Work::Sync {
                staged,
                confirm,
                others,
                join_ratio,
                no_flow_ratio,
                failures,
                forced_failures,
                targets,
            } => {
                let s = staged.part(f);
                let c = confirm.part(f);
                let drawn = part(failures.len() as u64, f);
                let failed_staged = drawn.min(s.update);
                let failed = if *forced_failures {
                    drawn
                } else {
                    failed_staged
                };
                let ok_updates = s.update - failed_staged;
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
                report
                    .errors
                    .extend(
                        take_objects(failures, failed).map(|fo| ErrorRecord::Import {
                            cs_guid: fo.cs_guid.clone(),
                            dn: fo.dn.clone(),
                        }),
                    );
                (
                    Effects::Sync {
                        joined_or_projected: s.add,
                        deleted: s.delete,
                        back_staged: staged.minus(s).plus(Delta {
                            update: failed_staged,
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
                failed,
                failures,
                error_type,
                error_code,
                error_literal,
            } => {
                let p = pending.part(f);
                // `failed ≤ pending` per kind, and `part` is monotonic: `fp ≤ p`.
                let fp = failed.part(f);
                let extra = part((failures.len() as u64).saturating_sub(failed.total()), f);
                let exported = p.minus(fp);
                let failed_count = fp.total().saturating_add(extra);
                report.set("export-add", exported.add);
                report.set("export-update", exported.update);
                report.set("export-delete", exported.delete);
                report.set("export-failure", failed_count);
                report
                    .errors
                    .extend(
                        take_objects(failures, failed_count).map(|fo| ErrorRecord::Export {
                            cs_guid: fo.cs_guid.clone(),
                            dn: fo.dn.clone(),
                            error_type,
                            error_code,
                            error_literal,
                        }),
                    );
                (
                    Effects::Export {
                        exported,
                        back_pending: pending.minus(p).plus(fp),
                    },
                    (failed_count > 0).then_some("completed-export-errors"),
                )
            }
        };
        let result = match finish {
            Finish::InProgress => "in-progress",
            Finish::Stopped(result) => result,
            Finish::Completed => errors_result.unwrap_or("success"),
        };
        Evaluated {
            result: result.to_owned(),
            report,
            effects,
        }
    }
}
