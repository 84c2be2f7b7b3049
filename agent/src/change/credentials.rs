//! The credentials change sources name (`[credentials.NAME]` of the agent's configuration):
//! resolved and their secret files read when a poller starts, and the TLS configuration built
//! from them. Secrets live in memory only while a poller needs them; they are never logged
//! (the [`Secrets`] `Debug` hides them) and never sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Credential;

/// A credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "credential {name:?} is not in the agent's configuration; add [credentials.{name}] to the agent's configuration file (agent.toml) with username and password_file, token_file or client_cert and client_key"
    )]
    Missing { name: String },
    #[error("credential {name:?}: cannot read {key} {path}: {problem}")]
    File {
        name: String,
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "credential {name:?}: {problem}; fix [credentials.{name}] in the agent's configuration"
    )]
    Invalid { name: String, problem: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// A credential with its secrets read.
#[derive(Clone, Default)]
pub struct Secrets {
    /// The credential's name (empty: none, anonymous).
    pub name: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// Client certificate chain and key (PEM) for SASL EXTERNAL.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Extra trusted CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

fn read(name: &str, key: &'static str, path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|e| CredentialError::File {
        name: name.to_string(),
        key,
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

fn read_secret(name: &str, key: &'static str, path: &Path) -> Result<String, CredentialError> {
    let raw = read(name, key, path)?;
    let text = String::from_utf8(raw).map_err(|_| CredentialError::Invalid {
        name: name.to_string(),
        problem: format!("{key} {} is not UTF-8 text", path.display()),
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Resolve the credential a source names (`None`: anonymous / the agent's own account) and
/// read its files.
pub fn resolve(
    all: &BTreeMap<String, Credential>,
    name: Option<&str>,
) -> Result<Secrets, CredentialError> {
    let Some(name) = name else {
        return Ok(Secrets::default());
    };
    let c = all.get(name).ok_or_else(|| CredentialError::Missing {
        name: name.to_string(),
    })?;
    let mut s = Secrets {
        name: name.to_string(),
        username: c.username.clone(),
        ..Secrets::default()
    };
    if let Some(p) = &c.password_file {
        s.password = Some(read_secret(name, "password_file", p)?);
    }
    if let Some(p) = &c.token_file {
        s.token = Some(read_secret(name, "token_file", p)?);
    }
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            s.client_cert = Some((
                read(name, "client_cert", cert)?,
                read(name, "client_key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(CredentialError::Invalid {
                name: name.to_string(),
                problem: "client_cert and client_key go together".to_string(),
            });
        }
    }
    if let Some(p) = &c.ca_file {
        s.ca_pem = Some(read(name, "ca_file", p)?);
    }
    Ok(s)
}

/// A rustls client configuration (ring provider): the system roots plus the credential's
/// `ca_file`, and its client certificate when it has one.
pub fn tls_config(secrets: &Secrets) -> Result<Arc<rustls::ClientConfig>, CredentialError> {
    let tls = |e: String| CredentialError::Tls(e);
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if let Some(pem) = &secrets.ca_pem {
        let mut added = 0;
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            let c = c.map_err(|e| tls(format!("ca_file of {:?}: {e}", secrets.name)))?;
            roots
                .add(c)
                .map_err(|e| tls(format!("ca_file of {:?}: {e}", secrets.name)))?;
            added += 1;
        }
        if added == 0 {
            return Err(tls(format!(
                "ca_file of credential {:?} holds no PEM certificate",
                secrets.name
            )));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(e.to_string()))?
    .with_root_certificates(roots);
    let config = match &secrets.client_cert {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut &cert[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("client_cert of {:?}: {e}", secrets.name)))?;
            let key = rustls_pemfile::private_key(&mut &key[..])
                .map_err(|e| tls(format!("client_key of {:?}: {e}", secrets.name)))?
                .ok_or_else(|| {
                    tls(format!(
                        "client_key of {:?} holds no PEM private key",
                        secrets.name
                    ))
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(format!("client certificate of {:?}: {e}", secrets.name)))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_credential_names_the_section_to_add() {
        let err = resolve(&BTreeMap::new(), Some("corp-ldap")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("credential \"corp-ldap\" is not in the agent's configuration")
                && msg.contains("[credentials.corp-ldap]"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_read_from_files_and_hidden_from_debug() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret-value\n").unwrap();
        let mut all = BTreeMap::new();
        all.insert(
            "hr".to_string(),
            Credential {
                username: Some("cn=reader".into()),
                password_file: Some(pw),
                ..Credential::default()
            },
        );
        let s = resolve(&all, Some("hr")).unwrap();
        assert_eq!(s.password.as_deref(), Some("s3cret-value"));
        assert!(!format!("{s:?}").contains("s3cret"));
        all.get_mut("hr").unwrap().password_file = Some(dir.path().join("absent"));
        let err = resolve(&all, Some("hr")).unwrap_err().to_string();
        assert!(
            err.contains("password_file") && err.contains("absent"),
            "{err}"
        );
    }
}
