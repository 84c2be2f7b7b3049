//! `ldap` source: entries under a base of given object classes, compared by a hash of the
//! attributes that are not ignored.
//!
//! - The change stamp (`uSNChanged` on Active Directory / AD LDS, `modifyTimestamp`
//!   elsewhere; `auto` asks the root DSE for `highestCommittedUSN`) selects the entries written
//!   since the cursor. `modifyTimestamp` has one-second resolution: the last second is read
//!   again (`>=`) and entries already seen are recognised by their hash.
//! - An entry counts as changed when its hash differs or it is new: an entry whose only
//!   changes are in ignored attributes (`lastLogon` and the like) does not count.
//! - Deletions are found by a DN listing every [`LISTING_EVERY`] polls and at least every
//!   [`LISTING_MAX_AGE`]; renames write the change stamp and count like an add.
//! - The first poll of a definition reads every entry (paged) as the baseline and reports
//!   nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use syncfleet_proto::schedule_model::{
    ChangeStamp, DEFAULT_IGNORED_ATTRIBUTES, LdapScope, LdapSourceDoc,
};
use tokio::time::Instant;

use super::credentials::{Secrets, tls_config};
use super::{MAX_EXAMPLES, PollOutcome, SourceError};
use crate::journal::ChangeState;

/// Bound on connecting (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on each operation (bind, each search).
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Page size of the paged searches.
const PAGE_SIZE: i32 = 500;
/// A DN listing (deletions) every this many polls...
pub const LISTING_EVERY: u32 = 12;
/// ... and at least this often.
pub const LISTING_MAX_AGE: Duration = Duration::from_secs(60);

/// Which attribute is the change stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    Usn,
    ModifyTimestamp,
}

impl Mode {
    fn attribute(self) -> &'static str {
        match self {
            Mode::Usn => "uSNChanged",
            Mode::ModifyTimestamp => "modifyTimestamp",
        }
    }
}

/// What is stored in the journal besides the cursor.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    mode: Option<Mode>,
    /// Lower-cased DN to hash of its watched attributes.
    hashes: BTreeMap<String, String>,
}

pub struct LdapSource {
    doc: LdapSourceDoc,
    secrets: Secrets,
    /// Lower-cased names of the ignored attributes.
    ignored: HashSet<String>,
    /// The state in memory (`None` until read from the journal or made by the baseline).
    stored: Option<Stored>,
    polls_since_listing: u32,
    last_listing: Instant,
}

fn ldap_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Ldap(format!("{what}: {e}"))
}

impl LdapSource {
    pub fn new(doc: LdapSourceDoc, secrets: Secrets) -> Self {
        let watch: HashSet<String> = doc
            .watch_attributes
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        let ignored = DEFAULT_IGNORED_ATTRIBUTES
            .iter()
            .map(|a| a.to_string())
            .chain(doc.ignore_attributes.iter().cloned())
            .map(|a| a.to_ascii_lowercase())
            .filter(|a| !watch.contains(a))
            .collect();
        Self {
            doc,
            secrets,
            ignored,
            stored: None,
            polls_since_listing: 0,
            last_listing: Instant::now(),
        }
    }

    /// `(&(|(objectClass=a)(objectClass=b))<filter>)`.
    fn base_filter(&self) -> String {
        let classes = match self.doc.object_classes.as_slice() {
            [] => "(objectClass=*)".to_string(),
            [one] => format!("(objectClass={})", ldap3::ldap_escape(one.as_str())),
            many => format!(
                "(|{})",
                many.iter()
                    .map(|c| format!("(objectClass={})", ldap3::ldap_escape(c.as_str())))
                    .collect::<String>()
            ),
        };
        let extra = self.doc.filter.as_deref().unwrap_or("").trim();
        let extra = if extra.is_empty() || extra.starts_with('(') {
            extra.to_string()
        } else {
            format!("({extra})")
        };
        format!("(&{classes}{extra})")
    }

    fn scope(&self) -> Scope {
        match self.doc.scope {
            LdapScope::Base => Scope::Base,
            LdapScope::One => Scope::OneLevel,
            LdapScope::Sub => Scope::Subtree,
        }
    }

    /// Hash of the watched attributes: names lower-cased, ignored ones left out, values sorted
    /// (multi-valued attributes have no order).
    fn hash(&self, e: &SearchEntry) -> String {
        let mut attrs: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, values) in &e.attrs {
            let n = name.to_ascii_lowercase();
            if self.ignored.contains(&n) {
                continue;
            }
            attrs
                .entry(n)
                .or_default()
                .extend(values.iter().map(|v| v.as_bytes().to_vec()));
        }
        for (name, values) in &e.bin_attrs {
            let n = name.to_ascii_lowercase();
            if self.ignored.contains(&n) {
                continue;
            }
            attrs.entry(n).or_default().extend(values.iter().cloned());
        }
        let mut h = Sha256::new();
        for (name, mut values) in attrs {
            values.sort();
            h.update(name.as_bytes());
            h.update([0u8]);
            for v in values {
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
            h.update([1u8]);
        }
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    async fn connect(&self) -> Result<ldap3::Ldap, SourceError> {
        let url = &self.doc.url;
        let start_tls = self.doc.start_tls.unwrap_or(false);
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(CONNECT_TIMEOUT)
            .set_starttls(start_tls);
        if url.starts_with("ldaps:") || start_tls {
            settings = settings.set_config(tls_config(&self.secrets)?);
        }
        let (conn, mut ldap) =
            tokio::time::timeout(CONNECT_TIMEOUT, LdapConnAsync::with_settings(settings, url))
                .await
                .map_err(|_| {
                    SourceError::Ldap(format!(
                        "connect to {url}: no answer within {CONNECT_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| ldap_err(&format!("connect to {url}"), e))?;
        ldap3::drive!(conn);
        ldap.with_timeout(OP_TIMEOUT);
        if self.secrets.client_cert.is_some() {
            ldap.sasl_external_bind()
                .await
                .and_then(|r| r.success())
                .map_err(|e| ldap_err("SASL EXTERNAL bind with the client certificate", e))?;
        } else if let Some(user) = &self.secrets.username {
            let pw = self.secrets.password.as_deref().unwrap_or("");
            ldap.with_timeout(OP_TIMEOUT);
            ldap.simple_bind(user, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| ldap_err(&format!("bind as {user}"), e))?;
        }
        Ok(ldap)
    }

    async fn mode(&self, ldap: &mut ldap3::Ldap) -> Result<Mode, SourceError> {
        match self.doc.change_stamp {
            ChangeStamp::Usn => return Ok(Mode::Usn),
            ChangeStamp::ModifyTimestamp => return Ok(Mode::ModifyTimestamp),
            ChangeStamp::Auto => {}
        }
        ldap.with_timeout(OP_TIMEOUT);
        let (entries, _) = ldap
            .search(
                "",
                Scope::Base,
                "(objectClass=*)",
                vec!["highestCommittedUSN"],
            )
            .await
            .and_then(|r| r.success())
            .map_err(|e| ldap_err("read the root DSE", e))?;
        let usn = entries.into_iter().any(|e| {
            SearchEntry::construct(e)
                .attrs
                .keys()
                .any(|k| k.eq_ignore_ascii_case("highestCommittedUSN"))
        });
        Ok(if usn {
            Mode::Usn
        } else {
            Mode::ModifyTimestamp
        })
    }

    /// A paged search; calls `each` with every entry.
    async fn search(
        &self,
        ldap: &mut ldap3::Ldap,
        filter: &str,
        attrs: Vec<&str>,
        mut each: impl FnMut(SearchEntry),
    ) -> Result<(), SourceError> {
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE_SIZE)),
        ];
        ldap.with_timeout(OP_TIMEOUT);
        let mut stream = ldap
            .streaming_search_with(adapters, &self.doc.base, self.scope(), filter, attrs)
            .await
            .map_err(|e| ldap_err(&format!("search {filter} under {}", self.doc.base), e))?;
        while let Some(e) = stream
            .next()
            .await
            .map_err(|e| ldap_err(&format!("search {filter} under {}", self.doc.base), e))?
        {
            each(SearchEntry::construct(e));
        }
        stream
            .finish()
            .await
            .success()
            .map_err(|e| ldap_err(&format!("search {filter} under {}", self.doc.base), e))?;
        Ok(())
    }

    fn stamp_of(e: &SearchEntry, mode: Mode) -> Option<&str> {
        e.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(mode.attribute()))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Whether `a` is a later stamp than `b` (USNs numerically, generalized times as text,
    /// which orders them in one format).
    fn later(mode: Mode, a: &str, b: &str) -> bool {
        match mode {
            Mode::Usn => a.parse::<u64>().unwrap_or(0) > b.parse::<u64>().unwrap_or(0),
            Mode::ModifyTimestamp => a > b,
        }
    }

    pub async fn poll(&mut self, prior: Option<&ChangeState>) -> Result<PollOutcome, SourceError> {
        let mut ldap = self.connect().await?;
        let r = self.poll_connected(&mut ldap, prior).await;
        // The connection is closed either way; an unbind that fails changes nothing.
        let _ = ldap.unbind().await;
        r
    }

    async fn poll_connected(
        &mut self,
        ldap: &mut ldap3::Ldap,
        prior: Option<&ChangeState>,
    ) -> Result<PollOutcome, SourceError> {
        if self.stored.is_none()
            && let Some(p) = prior
        {
            match serde_json::from_slice::<Stored>(&p.state) {
                Ok(s) => self.stored = Some(s),
                Err(e) => {
                    tracing::warn!(base = %self.doc.base, error = %e, "stored LDAP source state unreadable; taking a new baseline");
                }
            }
        }
        let mode = match self.stored.as_ref().and_then(|s| s.mode) {
            Some(m) => m,
            None => self.mode(ldap).await?,
        };
        let base_filter = self.base_filter();
        let stamp_attr = mode.attribute();
        let Some(mut stored) = self.stored.take() else {
            // Baseline.
            let mut hashes = BTreeMap::new();
            let mut cursor = String::new();
            self.search(ldap, &base_filter, vec!["*", stamp_attr], |e| {
                if let Some(s) = Self::stamp_of(&e, mode)
                    && Self::later(mode, s, &cursor)
                {
                    cursor = s.to_string();
                }
                hashes.insert(e.dn.to_ascii_lowercase(), self.hash(&e));
            })
            .await?;
            let stored = Stored {
                mode: Some(mode),
                hashes,
            };
            let state = ChangeState {
                cursor,
                state: serde_json::to_vec(&stored).unwrap_or_default(),
            };
            self.stored = Some(stored);
            self.polls_since_listing = 0;
            self.last_listing = Instant::now();
            return Ok(PollOutcome {
                state,
                changes: 0,
                examples: Vec::new(),
                dirty: true,
            });
        };
        let old_cursor = prior.map(|p| p.cursor.clone()).unwrap_or_default();
        let mut cursor = old_cursor.clone();
        let filter = match (mode, old_cursor.is_empty()) {
            (_, true) => base_filter.clone(),
            (Mode::Usn, false) => format!(
                "(&{base_filter}(uSNChanged>={}))",
                old_cursor.parse::<u64>().unwrap_or(0).saturating_add(1)
            ),
            (Mode::ModifyTimestamp, false) => format!(
                "(&{base_filter}(modifyTimestamp>={}))",
                ldap3::ldap_escape(old_cursor.as_str())
            ),
        };
        let mut changes = 0u64;
        let mut examples = Vec::new();
        let mut seen = Vec::new();
        let r = self
            .search(ldap, &filter, vec!["*", stamp_attr], |e| {
                if let Some(s) = Self::stamp_of(&e, mode)
                    && Self::later(mode, s, &cursor)
                {
                    cursor = s.to_string();
                }
                seen.push((e.dn.clone(), self.hash(&e)));
            })
            .await;
        if let Err(e) = r {
            self.stored = Some(stored);
            return Err(e);
        }
        for (dn, hash) in seen {
            let key = dn.to_ascii_lowercase();
            if stored.hashes.get(&key) != Some(&hash) {
                changes += 1;
                if examples.len() < MAX_EXAMPLES {
                    examples.push(dn);
                }
                stored.hashes.insert(key, hash);
            }
        }
        self.polls_since_listing += 1;
        if self.polls_since_listing >= LISTING_EVERY
            || self.last_listing.elapsed() >= LISTING_MAX_AGE
        {
            let mut present = BTreeSet::new();
            let r = self
                .search(ldap, &base_filter, vec!["1.1"], |e| {
                    present.insert(e.dn.to_ascii_lowercase());
                })
                .await;
            match r {
                Ok(()) => {
                    let gone: Vec<String> = stored
                        .hashes
                        .keys()
                        .filter(|dn| !present.contains(*dn))
                        .cloned()
                        .collect();
                    for dn in gone {
                        stored.hashes.remove(&dn);
                        changes += 1;
                        if examples.len() < MAX_EXAMPLES {
                            examples.push(dn);
                        }
                    }
                    self.polls_since_listing = 0;
                    self.last_listing = Instant::now();
                }
                Err(e) => {
                    // The changes of this poll are not stored: the next poll sees them again.
                    self.stored = None;
                    return Err(e);
                }
            }
        }
        let dirty = changes > 0 || cursor != old_cursor;
        let state = ChangeState {
            cursor,
            state: if dirty {
                serde_json::to_vec(&stored).unwrap_or_default()
            } else {
                Vec::new()
            },
        };
        self.stored = Some(stored);
        Ok(PollOutcome {
            state,
            changes,
            examples,
            dirty,
        })
    }
}
