//! Run profile discovery: the engine's own run profiles and their steps, read from its SQL
//! database because WMI cannot list them (`docs/engine.md`, "Run profile discovery").
//!
//! This file is portable: the [`ProfileSource`] trait, the parsing of one profile's
//! `mms_run_profile.configuration_xml` into a [`RunProfileInfo`], and the merge of discovered
//! profiles with the configuration's declarations ([`merge_profiles`]). The source that reads
//! the database over TDS is Windows-only (`sql.rs`); the tests use a fake.

use std::collections::HashMap;

use roxmltree::Node;

use super::api::normalize_guid;
use super::config::STEP_TYPES;
use crate::engine::runhistory::strip_prolog;
use crate::engine::{BoxFuture, RunProfileInfo, RunStepInfo};

/// Largest `configuration_xml` parsed; a run profile is a few kilobytes.
pub const MAX_PROFILE_XML_BYTES: usize = 1024 * 1024;

/// Node cap of one profile's DOM (a profile with 100 steps has about 3,000 nodes).
const MAX_PROFILE_NODES: u32 = 100_000;

/// One row of `mms_run_profile` joined to `mms_management_agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProfile {
    /// `mms_management_agent.ma_id`, a GUID (any case, braces or not).
    pub ma_id: String,
    /// `mms_management_agent.ma_name`.
    pub ma_name: String,
    /// `mms_run_profile.run_profile_name`: the name `Execute` takes.
    pub name: String,
    /// `mms_run_profile.configuration_xml`, verbatim.
    pub configuration_xml: String,
}

/// Everything one read of the engine's database returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineProfiles {
    pub profiles: Vec<StoredProfile>,
    /// Partition GUID (normalized, `{UPPER}`) → partition name (e.g. `DC=contoso,DC=com`).
    pub partitions: HashMap<String, String>,
    /// Why partition names could not be read, when they could not: steps then keep the
    /// partition GUID the profile stores.
    pub partitions_unresolved: Option<String>,
}

/// Why the engine's run profiles could not be read. Every variant makes the driver fall back
/// to declarations and the standard profiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the sync engine's database is not reachable: {0}")]
    Unreachable(String),
    #[error(
        "the agent's account may not read the sync engine's database: {0} (it needs read \
         access to the tables mms_management_agent, mms_run_profile and mms_partition; see \
         docs/engine.md, \"Run profile discovery\")"
    )]
    Denied(String),
    #[error("the location of the sync engine's database is unknown: {0}")]
    Location(String),
}

/// Where the engine's run profiles are read from: the engine's SQL database on Windows
/// (`SqlProfiles`), a fake in tests. Implementations bound their own waiting and never
/// write.
pub trait ProfileSource: Send + Sync + 'static {
    /// Every run profile of every MA, with the partition names of the MAs.
    fn read(&self) -> BoxFuture<'_, Result<EngineProfiles, DiscoveryError>>;

    /// Where it reads from, for log lines (e.g. `SQL Server localhost\MIM, database
    /// FIMSynchronizationService`).
    fn describe(&self) -> String;
}

/// Why one profile's configuration XML could not be turned into steps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileXmlError {
    #[error("configuration XML is {bytes} bytes, more than the {limit} accepted")]
    TooLarge { bytes: usize, limit: usize },
    #[error("configuration XML is not well-formed: {0}")]
    Xml(String),
    #[error("configuration XML has root <{0}>, expected <run-configuration> or <configuration>")]
    UnexpectedRoot(String),
    #[error("configuration XML has no <step>")]
    NoSteps,
    #[error("step {step}: no <step-type type=\"...\">")]
    NoStepType { step: usize },
    #[error("step {step}: step type {found:?} is not one of {known}")]
    UnknownStepType {
        step: usize,
        found: String,
        known: String,
    },
}

fn direct_children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text(node: Node<'_, '_>) -> String {
    node.text().unwrap_or_default().trim().to_owned()
}

/// A partition reference as the profile stores it: a GUID in braces is resolved through
/// `partitions` (normalized keys); anything else (a name, or an unknown GUID) is kept verbatim.
pub fn resolve_partition(raw: &str, partitions: &HashMap<String, String>) -> String {
    let raw = raw.trim();
    if raw.is_empty() {
        return String::new();
    }
    partitions
        .get(&normalize_guid(raw))
        .cloned()
        .unwrap_or_else(|| raw.to_owned())
}

/// Parse one run profile's `configuration_xml` (`<run-configuration>` with
/// `<configuration><step>...`, or a bare `<configuration>`) into its steps, in document order
/// (the order the engine runs them). `name` is the profile's name from the database row; the
/// XML's own `<name>` is not used. A step's sub-types (`import-subtype`,
/// `apply-rules-subtype`, `export-subtype`, ...) are joined with `", "`; its `<partition>` is
/// resolved through `partitions` (see [`resolve_partition`]).
pub fn parse_run_configuration(
    name: &str,
    xml: &str,
    partitions: &HashMap<String, String>,
) -> Result<RunProfileInfo, ProfileXmlError> {
    if xml.len() > MAX_PROFILE_XML_BYTES {
        return Err(ProfileXmlError::TooLarge {
            bytes: xml.len(),
            limit: MAX_PROFILE_XML_BYTES,
        });
    }
    let options = roxmltree::ParsingOptions {
        // DTDs are how entity-expansion attacks start; the engine never writes one.
        allow_dtd: false,
        nodes_limit: MAX_PROFILE_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(strip_prolog(xml), options)
        .map_err(|e| ProfileXmlError::Xml(e.to_string()))?;
    let root = doc.root_element();
    let configurations: Vec<Node<'_, '_>> = match root.tag_name().name() {
        "run-configuration" => direct_children(root, "configuration").collect(),
        "configuration" => vec![root],
        other => return Err(ProfileXmlError::UnexpectedRoot(other.to_owned())),
    };
    let mut steps = Vec::new();
    for (i, step) in configurations
        .into_iter()
        .flat_map(|c| direct_children(c, "step"))
        .enumerate()
    {
        let number = i + 1;
        let step_type_node = direct_children(step, "step-type")
            .next()
            .ok_or(ProfileXmlError::NoStepType { step: number })?;
        let step_type = step_type_node.attribute("type").unwrap_or_default().trim();
        if step_type.is_empty() {
            return Err(ProfileXmlError::NoStepType { step: number });
        }
        if !STEP_TYPES.contains(&step_type) {
            return Err(ProfileXmlError::UnknownStepType {
                step: number,
                found: step_type.to_owned(),
                known: STEP_TYPES.join(", "),
            });
        }
        let subtypes: Vec<String> = step_type_node
            .children()
            .filter(|c| c.is_element() && c.tag_name().name().ends_with("-subtype"))
            .map(text)
            .filter(|s| !s.is_empty())
            .collect();
        let partition = direct_children(step, "partition")
            .next()
            .map(|p| resolve_partition(&text(p), partitions))
            .unwrap_or_default();
        steps.push(RunStepInfo {
            step_type: step_type.to_owned(),
            subtype: subtypes.join(", "),
            partition,
        });
    }
    if steps.is_empty() {
        return Err(ProfileXmlError::NoSteps);
    }
    Ok(RunProfileInfo {
        name: name.to_owned(),
        steps,
    })
}

/// Database name when the registry has none (the engine's installer default).
pub const DEFAULT_DATABASE: &str = "FIMSynchronizationService";

/// Where the engine's database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseLocation {
    pub host: String,
    pub instance: Option<String>,
    pub port: Option<u16>,
    pub database: String,
}

impl std::fmt::Display for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQL Server {}", self.host)?;
        if let Some(i) = &self.instance {
            write!(f, "\\{i}")?;
        }
        if let Some(p) = self.port {
            write!(f, ",{p}")?;
        }
        write!(f, ", database {}", self.database)
    }
}

/// Parse `host`, `host\instance`, `host,port` (optionally prefixed `tcp:`); `.` and
/// `(local)` mean `localhost`.
pub fn parse_server(server: &str, database: String) -> Result<DatabaseLocation, String> {
    let s = server.trim();
    let s = s.strip_prefix("tcp:").unwrap_or(s);
    let (rest, port) = match s.split_once(',') {
        Some((h, p)) => (
            h,
            Some(p.trim().parse::<u16>().map_err(|_| {
                format!("{server:?}: the port after ',' must be a number from 1 to 65535")
            })?),
        ),
        None => (s, None),
    };
    let (host, instance) = match rest.split_once('\\') {
        Some((h, i)) if !i.trim().is_empty() => (h.trim(), Some(i.trim().to_owned())),
        Some((h, _)) => (h.trim(), None),
        None => (rest.trim(), None),
    };
    let host = match host {
        "" | "." | "(local)" => "localhost",
        h => h,
    };
    Ok(DatabaseLocation {
        host: host.to_owned(),
        instance,
        port,
        database,
    })
}

/// Where an MA's run profiles came from, for the log and [`super::WmiEngine::profile_origins`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileOrigin {
    /// Read from the engine's database; `declared` of them are overridden by the configuration.
    Discovered {
        discovered: usize,
        declared: usize,
        undiscoverable: usize,
    },
    /// Only the configuration's declarations (discovery off or unavailable).
    Declared { reason: String },
    /// The five standard single-step profiles (discovery off or unavailable, none declared).
    Standard { reason: String },
}

impl std::fmt::Display for ProfileOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileOrigin::Discovered {
                discovered,
                declared,
                undiscoverable,
            } => {
                write!(
                    f,
                    "discovered from the engine's database ({discovered} profiles"
                )?;
                if *declared > 0 {
                    write!(f, ", {declared} overridden or added by the configuration")?;
                }
                if *undiscoverable > 0 {
                    write!(f, ", {undiscoverable} undiscoverable")?;
                }
                write!(f, ")")
            }
            ProfileOrigin::Declared { reason } => {
                write!(f, "declared in the configuration only ({reason})")
            }
            ProfileOrigin::Standard { reason } => write!(
                f,
                "the five standard single-step profiles, not the engine's real ones ({reason}); \
                 declare the real steps in the configuration"
            ),
        }
    }
}

/// A profile that was found in the database but could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undiscoverable {
    pub profile: String,
    pub reason: ProfileXmlError,
}

/// The run profiles of one MA and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedProfiles {
    pub profiles: Vec<RunProfileInfo>,
    pub origin: ProfileOrigin,
    /// Profiles of this MA found in the database whose XML could not be parsed and that
    /// no declaration replaces (they are left out of the inventory).
    pub undiscoverable: Vec<Undiscoverable>,
}

/// The run profiles of MA `ma_name` (`ma_guid` from WMI):
///
/// - `discovered` is `Ok`: the engine's profiles of this MA (matched by MA GUID, else by
///   name); a declaration with the same profile name replaces the discovered one, other
///   declarations are added. Profiles whose XML cannot be parsed are left out unless declared.
/// - `discovered` is `Err(reason)` (discovery off or failed): the declarations, or the
///   `standard` profiles when this MA has none.
pub fn merge_profiles(
    ma_name: &str,
    ma_guid: &str,
    declared: Vec<RunProfileInfo>,
    standard: impl FnOnce() -> Vec<RunProfileInfo>,
    discovered: Result<&EngineProfiles, &str>,
) -> MergedProfiles {
    let engine = match discovered {
        Ok(e) => e,
        Err(reason) => {
            let origin_reason = reason.to_owned();
            return if declared.is_empty() {
                MergedProfiles {
                    profiles: standard(),
                    origin: ProfileOrigin::Standard {
                        reason: origin_reason,
                    },
                    undiscoverable: Vec::new(),
                }
            } else {
                MergedProfiles {
                    profiles: declared,
                    origin: ProfileOrigin::Declared {
                        reason: origin_reason,
                    },
                    undiscoverable: Vec::new(),
                }
            };
        }
    };
    let guid = normalize_guid(ma_guid);
    let rows: Vec<&StoredProfile> = {
        let by_guid: Vec<&StoredProfile> = engine
            .profiles
            .iter()
            .filter(|p| !p.ma_id.trim().is_empty() && normalize_guid(&p.ma_id) == guid)
            .collect();
        if by_guid.is_empty() {
            engine
                .profiles
                .iter()
                .filter(|p| p.ma_name == ma_name)
                .collect()
        } else {
            by_guid
        }
    };
    let declared_count = declared.len();
    let mut declared: Vec<Option<RunProfileInfo>> = declared.into_iter().map(Some).collect();
    let mut profiles = Vec::new();
    let mut undiscoverable = Vec::new();
    let mut discovered_count = 0;
    for row in rows {
        discovered_count += 1;
        // A declaration replaces the discovered profile in place.
        if let Some(d) = declared
            .iter_mut()
            .find(|d| d.as_ref().is_some_and(|d| d.name == row.name))
            .and_then(Option::take)
        {
            profiles.push(d);
            continue;
        }
        match parse_run_configuration(&row.name, &row.configuration_xml, &engine.partitions) {
            Ok(p) => profiles.push(p),
            Err(reason) => {
                discovered_count -= 1;
                undiscoverable.push(Undiscoverable {
                    profile: row.name.clone(),
                    reason,
                });
            }
        }
    }
    profiles.extend(declared.into_iter().flatten());
    MergedProfiles {
        profiles,
        origin: ProfileOrigin::Discovered {
            discovered: discovered_count,
            declared: declared_count,
            undiscoverable: undiscoverable.len(),
        },
        undiscoverable,
    }
}

#[cfg(test)]
mod tests;
