//! Who may do what: enrollment tokens, operator credentials and the audit log (revoking an agent
//! is `agents revoke`, in `agents.rs`).
//!
//! ```text
//! syncfleet tokens create --agent NAME [--labels k=v,...] [--ttl 30m]
//! syncfleet operators create NAME --role viewer|operator|admin [--ttl 90d] [--out FILE]
//! syncfleet operators list
//! syncfleet operators revoke NAME --note TEXT
//! syncfleet audit list [--since 1h|RFC3339] [--who IDENTITY] [--limit N]
//! ```
//!
//! - `tokens create` prints the token (shown only this once; the controller keeps a hash), its
//!   expiry, the CA pin and the exact `syncfleet-agent enroll` command for the sync server.
//!   `-o json`: `{token, token_id, expires_at, ca_pin}`.
//! - `operators create` generates the operator's key and CSR here (the key never goes to the
//!   controller) and writes `NAME.pem`, `NAME.key` (owner only) and `ca.pem`; with `--out FILE`
//!   next to FILE, plus FILE itself: a complete CLI config with one context NAME (controller URL
//!   and `tls_server_name` of the current context), so `SYNCFLEET_CONFIG=FILE syncfleet ...`
//!   acts as that operator. Existing credentials and config files are never overwritten; an
//!   existing different `ca.pem` is kept and the CA goes to `NAME-ca.pem` instead.
//! - `operators list` prints every operator certificate the controller issued:
//!   `NAME ROLE STATE SERIAL ISSUED EXPIRES` (`STATE` is `valid`, `revoked` or `expired`;
//!   `-o wide` adds `FINGERPRINT ISSUED-BY REVOKED-BY NOTE`); `-o json` an array of
//!   certificates (see [`operator_json`]).
//! - `operators revoke NAME --note TEXT` refuses every certificate issued to NAME so far, on
//!   every call from then on (a new credential can be issued with `operators create`). The
//!   controller refuses to revoke the caller's own credential while nobody else holds a valid
//!   admin certificate. Prints the revoked certificates' serials (`-o json`: `{name,
//!   certificates}`).
//! - `audit list` prints `AT WHO ACTION TARGET RESULT REQUEST-ID DETAIL` (`-o wide` adds
//!   `PEER`), newest first; `-o json` an array of entries with RFC 3339 `at`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use syncfleet_proto::v1::{
    AuditEntry, CreateOperatorRequest, CreateTokenRequest, CreateTokenResponse, ListAuditRequest,
    ListOperatorsRequest, OperatorCertificate, RevokeOperatorRequest, Role,
};

use super::connect::Client;
use super::output::{self, ArrayOut, out};
use super::table::{self, Table};
use super::{CliError, EXIT_OK, OutputFormat, Session};
use crate::contexts::{Context, upsert_context};

/// Audit entries asked for in one `ListAudit` page (the controller's maximum).
const AUDIT_PAGE: u32 = 1000;

/// `tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a one-time enrollment token bound to one agent name; prints it once with the CA
    /// pin and the command to run on the sync server
    Create {
        /// Agent (sync server) name the token is for
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// Labels the agent gets when it enrolls, k=v (comma-separated or repeated)
        #[arg(long, value_name = "K=V,...", value_delimiter = ',', value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How long the token can be used, e.g. 30m, 2h [default: the controller's, 30m]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u32>,
    },
}

/// `operators ...`
#[derive(Debug, Subcommand)]
pub enum OperatorsCommand {
    /// Issue an operator certificate (key generated here) and write it, the key and the CA;
    /// with --out, also a CLI config file for it
    Create {
        /// Operator name (1-63 of a-z A-Z 0-9 . _ -)
        #[arg(value_parser = parse_name)]
        name: String,
        /// What the operator may do: viewer reads; operator also runs, cancels, approves,
        /// pauses, resumes and drains; admin also applies fleet files, creates tokens and
        /// operators and revokes agents and operators
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Certificate lifetime, e.g. 90d [default: the controller's, 90 days]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u32>,
        /// Write a CLI config file with one context for this operator (credentials next to it)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Every operator certificate the controller issued, with its state
    #[command(visible_alias = "ls")]
    List,
    /// Revoke an operator: every certificate issued to NAME so far is refused from now on
    Revoke {
        /// Operator name
        #[arg(value_parser = parse_name)]
        name: String,
        /// Why (kept with the revocation and in the audit log)
        #[arg(long, value_parser = super::non_blank)]
        note: String,
    },
}

/// `audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit log entries, newest first
    #[command(visible_alias = "ls")]
    List {
        /// Only entries at or after this: a duration ago (1h, 30m, 7d) or an RFC 3339 time
        #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
        since: Option<Since>,
        /// Only entries of this identity, e.g. operator/alice or agent/sync-01
        #[arg(long, value_name = "IDENTITY")]
        who: Option<String>,
        /// At most this many entries, the newest [default: 100]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
}

/// `--role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl RoleArg {
    pub fn proto(self) -> Role {
        match self {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RoleArg::Viewer => "viewer",
            RoleArg::Operator => "operator",
            RoleArg::Admin => "admin",
        }
    }
}

/// `--since`: a duration before now, or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(DateTime<Utc>),
}

impl Since {
    /// The instant meant, relative to `now`.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => chrono::TimeDelta::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// Parses `--since`: `1h`, `30m`, `7d` (ago), or RFC 3339 (`2025-01-31T08:00:00Z`).
pub fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(d) = humantime::parse_duration(s.trim()) {
        return Ok(Since::Ago(d));
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| Since::At(t.with_timezone(&Utc)))
        .map_err(|_| {
            format!(
                "\"{s}\" is neither a duration (1h, 30m, 7d) nor an RFC 3339 time (2025-01-31T08:00:00Z)"
            )
        })
}

/// Parses a lifetime (`30m`, `2h`, `90d`) into whole seconds (1 s … ~136 years).
pub fn parse_ttl(s: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("\"{s}\" is not a duration ({e}); use e.g. 30m, 2h, 90d"))?;
    let secs = d.as_secs();
    if secs == 0 {
        return Err(format!("\"{s}\" is shorter than a second"));
    }
    u32::try_from(secs).map_err(|_| format!("\"{s}\" is too long"))
}

/// Parses one `k=v` label.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("label \"{s}\" must look like key=value"));
    };
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        return Err(format!("label \"{s}\" has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Checks an operator name (the same rules as agent names: it goes into a certificate).
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "\"{s}\" is not a valid name: use 1-63 characters from a-z, A-Z, 0-9, '.', '_' and '-'"
        ))
    }
}

/// The pin as shown to humans and in the enroll command.
fn pin_display(pin: &str) -> String {
    if pin.starts_with("sha256:") {
        pin.to_string()
    } else {
        format!("sha256:{pin}")
    }
}

/// The command to run on the sync server.
pub fn enroll_command(
    controller: &str,
    tls_server_name: Option<&str>,
    token: &str,
    pin: &str,
    agent: &str,
) -> String {
    let mut cmd = format!(
        "syncfleet-agent enroll --controller {controller} --token {token} --ca-pin {} --name {agent}",
        pin_display(pin)
    );
    if let Some(name) = tls_server_name {
        cmd.push_str(&format!(" --tls-server-name {name}"));
    }
    cmd
}

/// `-o json` of `tokens create`.
pub fn token_json(t: &CreateTokenResponse) -> Value {
    json!({
        "token": t.token,
        "token_id": t.token_id,
        "expires_at": output::timestamp_json(t.expires_at.as_ref()),
        "ca_pin": t.ca_pin,
    })
}

/// The human block of `tokens create` (stdout).
pub fn token_block(
    t: &CreateTokenResponse,
    agent: &str,
    controller: &str,
    tls_server_name: Option<&str>,
    now: DateTime<Utc>,
) -> String {
    let expires = match table::instant(t.expires_at.as_ref()) {
        Some(at) => format!(
            "{} (in {})",
            table::local_time(t.expires_at.as_ref()),
            table::duration(at - now)
        ),
        None => "-".to_string(),
    };
    format!(
        "token:    {}\nagent:    {agent}\nexpires:  {expires}\nca-pin:   {}\nenroll:   {}\n",
        t.token,
        pin_display(&t.ca_pin),
        enroll_command(controller, tls_server_name, &t.token, &t.ca_pin, agent)
    )
}

/// One audit entry as JSON.
pub fn audit_entry_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": output::timestamp_json(e.at.as_ref()),
        "who": e.who,
        "action": e.action,
        "target": e.target,
        "result": e.result,
        "detail": e.detail,
        "request_id": e.request_id,
        "peer": e.peer,
    })
}

/// `-o json` of `audit list`.
pub fn audit_json(entries: &[AuditEntry]) -> Value {
    Value::Array(entries.iter().map(audit_entry_json).collect())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `AT WHO ACTION TARGET RESULT REQUEST-ID DETAIL`, wide: `PEER`.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    let mut t = Table::new(&[
        "AT",
        "WHO",
        "ACTION",
        "TARGET",
        "RESULT",
        "REQUEST-ID",
        "DETAIL",
    ])
    .wide(&["PEER"]);
    for e in entries {
        t.row(vec![
            table::local_time(e.at.as_ref()),
            dash(&e.who),
            dash(&e.action),
            dash(&e.target),
            dash(&e.result),
            dash(&e.request_id),
            // One line per entry, whatever the detail holds.
            dash(&e.detail.split_whitespace().collect::<Vec<_>>().join(" ")),
            dash(&e.peer),
        ]);
    }
    t.render()
}

/// `viewer`, `operator`, `admin` (`-` when unset).
fn role_label(role: i32) -> &'static str {
    match Role::try_from(role).unwrap_or(Role::Unspecified) {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Unspecified => "-",
    }
}

/// `valid`, `revoked` or `expired` (at `now`).
pub fn operator_state(c: &OperatorCertificate, now: DateTime<Utc>) -> &'static str {
    if c.revoked {
        "revoked"
    } else if table::instant(c.not_after.as_ref()).is_some_and(|t| t <= now) {
        "expired"
    } else {
        "valid"
    }
}

/// One operator certificate as JSON (`state` as [`operator_state`] at `now`).
pub fn operator_json(c: &OperatorCertificate, now: DateTime<Utc>) -> Value {
    json!({
        "name": c.name,
        "role": role_label(c.role),
        "state": operator_state(c, now),
        "serial": c.serial,
        "fingerprint": c.fingerprint,
        "issued_at": output::timestamp_json(c.issued_at.as_ref()),
        "not_after": output::timestamp_json(c.not_after.as_ref()),
        "issued_by": c.issued_by,
        "revoked": c.revoked,
        "revoked_at": output::timestamp_json(c.revoked_at.as_ref()),
        "revoked_by": c.revoked_by,
        "revoke_note": c.revoke_note,
    })
}

/// `NAME ROLE STATE SERIAL ISSUED EXPIRES`, wide: `FINGERPRINT ISSUED-BY REVOKED-BY NOTE`.
pub fn operators_table(certs: &[OperatorCertificate], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&["NAME", "ROLE", "STATE", "SERIAL", "ISSUED", "EXPIRES"]).wide(&[
        "FINGERPRINT",
        "ISSUED-BY",
        "REVOKED-BY",
        "NOTE",
    ]);
    for c in certs {
        t.row(vec![
            c.name.clone(),
            role_label(c.role).to_string(),
            operator_state(c, now).to_string(),
            c.serial.clone(),
            table::local_time(c.issued_at.as_ref()),
            table::local_time(c.not_after.as_ref()),
            dash(&c.fingerprint),
            dash(&c.issued_by),
            dash(&c.revoked_by),
            dash(
                &c.revoke_note
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        ]);
    }
    t.render()
}

/// Where `operators create` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorFiles {
    /// The config file (`--out`), if any.
    pub config: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `ca.pem`, or `NAME-ca.pem` when a different `ca.pem` is already there.
    pub ca: PathBuf,
}

/// Plans the files of `operators create NAME [--out FILE]` (`cwd` when there is no `--out`),
/// refusing to overwrite an existing config file or credentials.
pub fn plan_operator_files(
    name: &str,
    out_file: Option<&Path>,
    cwd: &Path,
) -> Result<OperatorFiles, String> {
    let dir = match out_file {
        Some(f) => match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => cwd.to_path_buf(),
        },
        None => cwd.to_path_buf(),
    };
    let dir = if dir.is_absolute() {
        dir
    } else {
        cwd.join(dir)
    };
    let config = out_file.map(|f| {
        if f.is_absolute() {
            f.to_path_buf()
        } else {
            cwd.join(f)
        }
    });
    let files = OperatorFiles {
        config,
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join("ca.pem"),
    };
    for p in files.config.iter().chain([&files.cert, &files.key]) {
        if p.exists() {
            return Err(format!(
                "{} already exists; remove it or choose another {}",
                p.display(),
                if out_file.is_some() {
                    "--out"
                } else {
                    "folder (or pass --out FILE)"
                }
            ));
        }
    }
    Ok(files)
}

/// Writes `contents` to `path` through a temporary file and a rename; `private` files are
/// owner read/write only (0600 on unix).
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".syncfleet.")
        .tempfile_in(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(if private {
                0o600
            } else {
                0o644
            }))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A fresh operator key (PEM) and a CSR for it (PEM, CN = `name`).
pub fn operator_key_and_csr(name: &str) -> Result<(rcgen::KeyPair, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// `true` when the PEM certificate was issued for `key`.
pub fn cert_is_for_key(cert_pem: &str, key: &rcgen::KeyPair) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    match x509_parser::parse_x509_certificate(&pem.contents) {
        Ok((_, cert)) => cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        Err(_) => false,
    }
}

pub use syncfleet_proto::status::request_id;

impl Session<'_> {
    /// Runs `tokens create`.
    pub(super) async fn tokens(
        &self,
        client: &mut Client,
        cmd: &TokensCommand,
    ) -> Result<u8, CliError> {
        let TokensCommand::Create { agent, labels, ttl } = cmd;
        self.tokens_create(client, agent, labels, *ttl).await
    }

    /// Runs `operators create`.
    pub(super) async fn operators(
        &self,
        client: &mut Client,
        cmd: &OperatorsCommand,
    ) -> Result<u8, CliError> {
        match cmd {
            OperatorsCommand::Create {
                name,
                role,
                ttl,
                out,
            } => {
                self.operators_create(client, name, *role, *ttl, out.as_deref())
                    .await
            }
            OperatorsCommand::List => self.operators_list(client).await,
            OperatorsCommand::Revoke { name, note } => {
                self.operators_revoke(client, name, note).await
            }
        }
    }

    async fn operators_list(&self, client: &mut Client) -> Result<u8, CliError> {
        let certs = client
            .list_operators(ListOperatorsRequest {})
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner()
            .certificates;
        let now = Utc::now();
        self.print_list(
            &Value::Array(certs.iter().map(|c| operator_json(c, now)).collect()),
            certs.is_empty(),
            || operators_table(&certs, now),
            "no operator certificates recorded",
        )
    }

    async fn operators_revoke(
        &self,
        client: &mut Client,
        name: &str,
        note: &str,
    ) -> Result<u8, CliError> {
        let certs = client
            .revoke_operator(RevokeOperatorRequest {
                name: name.to_string(),
                note: note.to_string(),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner()
            .certificates;
        let now = Utc::now();
        let serials: Vec<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
        self.print_result(
            &json!({
                "name": name,
                "certificates": certs.iter().map(|c| operator_json(c, now)).collect::<Vec<_>>(),
            }),
            &format!(
                "revoked operator {name}: {} certificate(s) refused from now on{}\n",
                certs.len(),
                if serials.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", serials.join(", "))
                }
            ),
            Some(&format!(
                "a new credential for {name} can be issued with 'syncfleet operators create {name} --role ...'"
            )),
        )
    }

    /// Runs `audit list`.
    pub(super) async fn audit(
        &self,
        client: &mut Client,
        cmd: &AuditCommand,
    ) -> Result<u8, CliError> {
        let AuditCommand::List { since, who, limit } = cmd;
        self.audit_list(client, *since, who.as_deref(), *limit)
            .await
    }

    pub(super) async fn tokens_create(
        &self,
        client: &mut Client,
        agent: &str,
        labels: &[(String, String)],
        ttl: Option<u32>,
    ) -> Result<u8, CliError> {
        let labels: BTreeMap<String, String> = labels.iter().cloned().collect();
        let t = client
            .create_token(CreateTokenRequest {
                agent: agent.to_string(),
                labels: labels.into_iter().collect(),
                ttl_seconds: ttl.unwrap_or(0),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        let ctx = &self.rc.context;
        self.print_result(
            &token_json(&t),
            &token_block(
                &t,
                agent,
                &ctx.controller,
                ctx.tls_server_name.as_deref(),
                Utc::now(),
            ),
            Some(&format!(
                "the token is shown only now and works once; run the enroll command on the sync server {agent} before it expires"
            )),
        )
    }

    pub(super) async fn operators_create(
        &self,
        client: &mut Client,
        name: &str,
        role: RoleArg,
        ttl: Option<u32>,
        out_file: Option<&Path>,
    ) -> Result<u8, CliError> {
        let cwd = std::env::current_dir()
            .map_err(|e| CliError::Failed(format!("cannot tell the current folder: {e}")))?;
        let mut files = plan_operator_files(name, out_file, &cwd).map_err(CliError::Failed)?;
        let (key, csr_pem) = operator_key_and_csr(name)
            .map_err(|e| CliError::Failed(format!("cannot generate the operator key: {e}")))?;
        let resp = client
            .create_operator(CreateOperatorRequest {
                name: name.to_string(),
                role: role.proto() as i32,
                csr_pem,
                ttl_seconds: ttl.unwrap_or(0),
            })
            .await
            .map_err(|e| self.rpc_err(&e))?
            .into_inner();
        if !cert_is_for_key(&resp.cert_pem, &key) {
            return Err(CliError::Failed(
                "the controller returned a certificate for a different key; nothing was written"
                    .into(),
            ));
        }
        // Keep an existing, different CA file (another fleet's config may use it).
        if let Ok(existing) = std::fs::read_to_string(&files.ca)
            && existing.trim() != resp.ca_pem.trim()
        {
            files.ca = files.ca.with_file_name(format!("{name}-ca.pem"));
        }
        let write = |path: &Path, contents: &str, private: bool| {
            write_file(path, contents.as_bytes(), private).map_err(|e| {
                CliError::Failed(format!(
                    "cannot write {}: {}",
                    path.display(),
                    crate::contexts::io_message(&e)
                ))
            })
        };
        write(&files.key, &key.serialize_pem(), true)?;
        write(&files.cert, &resp.cert_pem, false)?;
        write(&files.ca, &resp.ca_pem, false)?;
        if let Some(cfg_path) = &files.config {
            let file_name = |p: &Path| PathBuf::from(p.file_name().unwrap_or(p.as_os_str()));
            // The same controllers as this context: the list, or the single address.
            let (controller, controllers) = if self.rc.context.controllers.is_empty() {
                (self.rc.context.controller.clone(), Vec::new())
            } else {
                (String::new(), self.rc.context.controllers.clone())
            };
            let ctx = Context {
                controller,
                controllers,
                ca_cert: file_name(&files.ca),
                client_cert: file_name(&files.cert),
                client_key: file_name(&files.key),
                tls_server_name: self.rc.context.tls_server_name.clone(),
            };
            upsert_context(cfg_path, name, &ctx, true)?;
        }
        let not_after = output::timestamp_json(resp.not_after.as_ref());
        match self.format {
            OutputFormat::Json | OutputFormat::Yaml => self.data(&json!({
                "name": name,
                "role": role.label(),
                "identity": resp.identity,
                "not_after": not_after,
                "config": files.config.as_ref().map(|p| p.display().to_string()),
                "cert": files.cert.display().to_string(),
                "key": files.key.display().to_string(),
                "ca": files.ca.display().to_string(),
            }))?,
            OutputFormat::Table => {
                let mut block = format!(
                    "operator: {name}\nrole:     {}\nidentity: {}\nexpires:  {}\n",
                    role.label(),
                    dash(&resp.identity),
                    table::local_time(resp.not_after.as_ref())
                );
                if let Some(c) = &files.config {
                    block.push_str(&format!("config:   {}\n", c.display()));
                }
                block.push_str(&format!(
                    "cert:     {}\nkey:      {}\nca:       {}\n",
                    files.cert.display(),
                    files.key.display(),
                    files.ca.display()
                ));
                out(&block)?;
                match &files.config {
                    Some(c) => eprintln!(
                        "act as {name} with 'SYNCFLEET_CONFIG={} syncfleet agents list' (or --config); the key is private to this user",
                        c.display()
                    ),
                    None => eprintln!(
                        "wrote {name}.pem, {name}.key (private) and {} to {}; point a context's client_cert, client_key and ca_cert at them, or use --out FILE next time for a ready config file",
                        files
                            .ca
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        cwd.display()
                    ),
                }
            }
        }
        Ok(EXIT_OK)
    }

    /// `audit list`: the newest `limit` (default 100) matching entries, `ListAudit` page
    /// after page; with `-o json`/`-o yaml` each page is printed as it arrives (one array in
    /// all).
    pub(super) async fn audit_list(
        &self,
        client: &mut Client,
        since: Option<Since>,
        who: Option<&str>,
        limit: Option<u32>,
    ) -> Result<u8, CliError> {
        let limit = limit.unwrap_or(100);
        // Resolved once, so every page has the same bound.
        let since = since.map(|s| syncfleet_proto::time::to_proto(s.resolve(Utc::now())));
        let mut stream = (self.format != OutputFormat::Table)
            .then(|| ArrayOut::new(self.format == OutputFormat::Yaml));
        let mut entries = Vec::new();
        let mut shown = 0u32;
        let mut page_token = String::new();
        while shown < limit {
            let resp = client
                .list_audit(ListAuditRequest {
                    since,
                    who: who.unwrap_or_default().to_string(),
                    limit: 0,
                    page_size: (limit - shown).min(AUDIT_PAGE),
                    page_token,
                })
                .await
                .map_err(|e| self.rpc_err(&e))?
                .into_inner();
            let got = resp.entries.len();
            for e in resp
                .entries
                .into_iter()
                .take(usize::try_from(limit - shown).unwrap_or(usize::MAX))
            {
                shown += 1;
                match &mut stream {
                    Some(array) => array.push(&audit_entry_json(&e))?,
                    None => entries.push(e),
                }
            }
            // An empty page with a token would loop forever on a misbehaving server; stop.
            if resp.next_page_token.is_empty() || got == 0 {
                break;
            }
            page_token = resp.next_page_token;
        }
        if let Some(array) = stream {
            array.finish()?;
            return Ok(EXIT_OK);
        }
        self.print_list(
            &audit_json(&entries),
            entries.is_empty(),
            || audit_table(&entries),
            "no audit entries match",
        )
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn ts(rfc: &str) -> prost_types::Timestamp {
        syncfleet_proto::time::to_proto(
            chrono::DateTime::parse_from_rfc3339(rfc)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn since_takes_durations_or_instants() {
        let now = DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = parse_since("1h").unwrap();
        assert_eq!(s, Since::Ago(Duration::from_secs(3600)));
        assert_eq!(s.resolve(now).to_rfc3339(), "2025-03-01T11:00:00+00:00");
        assert_eq!(
            parse_since("7d").unwrap().resolve(now).to_rfc3339(),
            "2025-02-22T12:00:00+00:00"
        );
        let s = parse_since("2025-01-31T08:00:00+01:00").unwrap();
        assert_eq!(s.resolve(now).to_rfc3339(), "2025-01-31T07:00:00+00:00");
        let e = parse_since("yesterday").unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn ttls_and_labels_and_names_are_checked() {
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1s"), Ok(1));
        assert_eq!(parse_ttl("90d"), Ok(90 * 86_400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert_eq!(
            parse_label(" env = prod "),
            Ok(("env".to_string(), "prod".to_string()))
        );
        assert_eq!(
            parse_label("k=a=b"),
            Ok(("k".to_string(), "a=b".to_string()))
        );
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_name("alice").is_ok());
        assert!(parse_name("alice smith").is_err());
        assert!(parse_name("").is_err());
    }

    #[test]
    fn token_output_has_the_enroll_command() {
        let t = CreateTokenResponse {
            token: "abc123.s3cr3t".into(),
            token_id: "abc123".into(),
            expires_at: Some(ts("2025-03-01T12:30:00Z")),
            ca_pin: "ab".repeat(32),
        };
        let now = DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let block = token_block(&t, "sync-07", "https://127.0.0.1:7443", None, now);
        let pin = format!("sha256:{}", "ab".repeat(32));
        assert!(block.starts_with("token:    abc123.s3cr3t\n"), "{block}");
        assert!(block.contains("(in 30m00s)"), "{block}");
        assert!(block.contains(&format!("ca-pin:   {pin}\n")), "{block}");
        assert!(
            block.ends_with(&format!(
                "enroll:   syncfleet-agent enroll --controller https://127.0.0.1:7443 --token abc123.s3cr3t --ca-pin {pin} --name sync-07\n"
            )),
            "{block}"
        );
        assert_eq!(
            enroll_command("https://10.0.0.5:7443", Some("controller"), "t", &pin, "a"),
            format!(
                "syncfleet-agent enroll --controller https://10.0.0.5:7443 --token t --ca-pin {pin} --name a --tls-server-name controller"
            )
        );
        let j = token_json(&t);
        assert_eq!(j["token"], "abc123.s3cr3t");
        assert_eq!(j["ca_pin"], "ab".repeat(32));
        assert_eq!(j["expires_at"], "2025-03-01T12:30:00.000Z");
    }

    fn entry(id: u64, who: &str, action: &str, result: &str, detail: &str) -> AuditEntry {
        AuditEntry {
            id,
            at: Some(ts("2025-03-01T12:00:00Z")),
            who: who.into(),
            action: action.into(),
            target: "agent/sync-01".into(),
            result: result.into(),
            detail: detail.into(),
            request_id: format!("req-{id}"),
            peer: "127.0.0.1:5000".into(),
        }
    }

    #[test]
    fn audit_table_and_json() {
        let entries = vec![
            entry(
                2,
                "operator/alice",
                "StartRun",
                "denied",
                "missing permission run:operate\nfor viewer",
            ),
            entry(1, "", "ListAgents", "denied", ""),
        ];
        let table = audit_table(&entries);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("AT "), "{table}");
        for col in ["WHO", "ACTION", "TARGET", "RESULT", "REQUEST-ID", "DETAIL"] {
            assert!(lines[0].contains(col), "{table}");
        }
        assert!(lines[1].contains("operator/alice"), "{table}");
        assert!(
            lines[1].ends_with("missing permission run:operate for viewer"),
            "{table}"
        );
        assert!(lines[2].contains(" - "), "empty cells are dashes: {table}");
        let j = audit_json(&entries);
        assert_eq!(j[0]["at"], "2025-03-01T12:00:00.000Z");
        assert_eq!(j[0]["who"], "operator/alice");
        assert_eq!(j[0]["request_id"], "req-2");
        assert_eq!(j[1]["detail"], "");
        assert_eq!(j.as_array().unwrap().len(), 2);
    }

    #[test]
    fn operator_files_go_next_to_the_config_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("alice/config.toml");
        let f = plan_operator_files("alice", Some(&cfg), Path::new("/elsewhere")).unwrap();
        assert_eq!(f.config.as_deref(), Some(cfg.as_path()));
        assert_eq!(f.cert, dir.path().join("alice/alice.pem"));
        assert_eq!(f.key, dir.path().join("alice/alice.key"));
        assert_eq!(f.ca, dir.path().join("alice/ca.pem"));
        let f = plan_operator_files("bob", None, dir.path()).unwrap();
        assert_eq!(f.config, None);
        assert_eq!(f.key, dir.path().join("bob.key"));
        let f = plan_operator_files("bob", Some(Path::new("bob.toml")), dir.path()).unwrap();
        assert_eq!(f.config, Some(dir.path().join("bob.toml")));
        assert_eq!(f.cert, dir.path().join("bob.pem"));

        std::fs::write(dir.path().join("bob.key"), "x").unwrap();
        let e = plan_operator_files("bob", None, dir.path()).unwrap_err();
        assert!(e.contains("bob.key already exists"), "{e}");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(&cfg, "").unwrap();
        let e = plan_operator_files("alice", Some(&cfg), dir.path()).unwrap_err();
        assert!(e.contains("choose another --out"), "{e}");
    }

    #[test]
    fn operator_key_files_are_private_and_the_csr_carries_the_key() {
        let (key, csr) = operator_key_and_csr("alice").unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&parsed.public_key),
            key.public_key_raw()
        );
        // A certificate for the CSR matches the key; one for another key does not.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = parsed.signed_by(&issuer).unwrap().pem();
        assert!(cert_is_for_key(&cert, &key));
        let (other, _) = operator_key_and_csr("alice").unwrap();
        assert!(!cert_is_for_key(&cert, &other));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/alice.key");
        write_file(&p, key.serialize_pem().as_bytes(), true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let q = dir.path().join("a/alice.pem");
            write_file(&q, cert.as_bytes(), false).unwrap();
            let mode = std::fs::metadata(&q).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }
}
