//! Access restriction of the agent's secrets: the private key, the journal and the data folder.
//!
//! - **Unix**: a private file is mode `0600` (owner read/write only); the folder and the journal
//!   keep the modes the umask gives them.
//! - **Windows**: an explicit, protected DACL (no entries inherited from the parent folder)
//!   granting full control to SYSTEM, the Administrators group and the account the agent runs
//!   as, and to nobody else. Folders carry the entries as inheritable (`OICI`), so files created
//!   in them later (the journal's `-wal`/`-shm` files) get the same entries.
//!
//! When the restriction cannot be applied the write fails with [`ProtectError`]: a message
//! never claims a restriction that was not made.

use std::fmt;
use std::path::{Path, PathBuf};

#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "the Windows security API (process token, SDDL, SetNamedSecurityInfoW) is only reachable through FFI"
)]
mod windows;

/// SID of `NT AUTHORITY\SYSTEM`.
pub const SYSTEM_SID: &str = "S-1-5-18";
/// SID of `BUILTIN\Administrators`.
pub const ADMINISTRATORS_SID: &str = "S-1-5-32-544";

/// Failures to restrict access to a file or folder.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error(
        "cannot restrict access to {} to SYSTEM, Administrators and {account}: {problem}; run the agent as an administrator or as the account that owns the folder",
        path.display()
    )]
    Apply {
        path: PathBuf,
        account: String,
        problem: String,
    },
    #[error(
        "cannot tell which account this process runs as ({0}), so the private files cannot be restricted to it"
    )]
    Account(String),
    #[error("{0:?} is not a security identifier of the form S-1-<authority>-<sub-authorities>")]
    BadSid(String),
}

/// A file or a folder (folders get inheritable entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Folder,
}

/// What was done to restrict access, as the messages state it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Unix mode `0600`.
    OwnerOnly,
    /// A protected DACL granting SYSTEM, Administrators and `account` (a name such as
    /// `NT SERVICE\syncfleet-agent`, or the SID when the name cannot be looked up).
    SystemAdministratorsAnd { account: String },
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::OwnerOnly => f.write_str("mode 0600, owner only"),
            Protection::SystemAdministratorsAnd { account } => {
                write!(f, "readable only by SYSTEM, Administrators and {account}")
            }
        }
    }
}

/// `true` for a SID string `S-1-<authority>(-<sub-authority>)*`: digits only, so that a SID
/// placed in an SDDL string can never add entries of its own.
pub fn is_sid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("S-1-") else {
        return false;
    };
    rest.split('-')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// The SDDL of the protected DACL granting full control (`FA`) to SYSTEM, Administrators and
/// the account `account_sid`, inheritable by files and subfolders for a [`Kind::Folder`]. The
/// account's entry is left out when it is SYSTEM itself (a service running as LocalSystem).
pub fn private_sddl(kind: Kind, account_sid: &str) -> Result<String, ProtectError> {
    if !is_sid(account_sid) {
        return Err(ProtectError::BadSid(account_sid.to_string()));
    }
    let flags = match kind {
        Kind::File => "",
        Kind::Folder => "OICI",
    };
    let mut sddl = String::from("D:P");
    for sid in [SYSTEM_SID, ADMINISTRATORS_SID, account_sid] {
        let entry = format!("(A;{flags};FA;;;{sid})");
        if !sddl.contains(&entry) {
            sddl.push_str(&entry);
        }
    }
    Ok(sddl)
}

/// Restricts a private file (the key) as the OS allows: mode `0600` on unix, the protected DACL
/// on Windows ([`private_sddl`]). Errors are returned, never skipped.
pub fn private_file(path: &Path) -> Result<Option<Protection>, ProtectError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            ProtectError::Apply {
                path: path.to_path_buf(),
                account: "the owner".into(),
                problem: e.to_string(),
            }
        })?;
        Ok(Some(Protection::OwnerOnly))
    }
    #[cfg(windows)]
    {
        windows::restrict(path, Kind::File).map(Some)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = path;
        Ok(None)
    }
}

/// On Windows, gives `path` the protected DACL of [`private_sddl`]; elsewhere does nothing
/// (the journal and the folder keep the modes the umask gives them on unix).
pub fn on_windows(path: &Path, kind: Kind) -> Result<Option<Protection>, ProtectError> {
    #[cfg(windows)]
    {
        windows::restrict(path, kind).map(Some)
    }
    #[cfg(not(windows))]
    {
        let _ = (path, kind);
        Ok(None)
    }
}

/// Creates the folder `dir` (and its parents) when it does not exist yet and then, on Windows,
/// restricts it as [`on_windows`] does. An existing folder is left as it is: the installer (or
/// an administrator) may have granted the service account access to it, and the agent must
/// not take that away.
pub fn create_private_dir(dir: &Path) -> Result<(), CreateDirError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| CreateDirError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    on_windows(dir, Kind::Folder)?;
    Ok(())
}

/// Failures of [`create_private_dir`].
#[derive(Debug, thiserror::Error)]
pub enum CreateDirError {
    #[error("cannot create the folder {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protect(#[from] ProtectError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dacl_grants_system_administrators_and_the_account_and_is_protected() {
        let sid = "S-1-5-80-1234-5678";
        assert_eq!(
            private_sddl(Kind::Folder, sid).unwrap(),
            "D:P(A;OICI;FA;;;S-1-5-18)(A;OICI;FA;;;S-1-5-32-544)(A;OICI;FA;;;S-1-5-80-1234-5678)"
        );
        // A file has no inheritance flags.
        assert_eq!(
            private_sddl(Kind::File, sid).unwrap(),
            "D:P(A;;FA;;;S-1-5-18)(A;;FA;;;S-1-5-32-544)(A;;FA;;;S-1-5-80-1234-5678)"
        );
    }

    #[test]
    fn a_service_running_as_system_gets_no_duplicate_entry() {
        assert_eq!(
            private_sddl(Kind::File, SYSTEM_SID).unwrap(),
            "D:P(A;;FA;;;S-1-5-18)(A;;FA;;;S-1-5-32-544)"
        );
    }

    #[test]
    fn only_a_sid_can_be_placed_in_the_dacl() {
        for bad in [
            "",
            "S-1-",
            "S-1-5-",
            "S-1-5--1",
            "BA",
            "S-1-5-18)(A;;FA;;;WD",
            "s-1-5-18",
            "S-1-5-x",
        ] {
            assert!(!is_sid(bad), "{bad:?}");
            let err = private_sddl(Kind::File, bad).unwrap_err().to_string();
            assert!(err.contains("is not a security identifier"), "{err}");
        }
        for good in ["S-1-5-18", "S-1-5-21-1004336348-1177238915-682003330-512"] {
            assert!(is_sid(good), "{good}");
        }
    }

    #[test]
    fn messages_say_what_was_done() {
        assert_eq!(Protection::OwnerOnly.to_string(), "mode 0600, owner only");
        assert_eq!(
            Protection::SystemAdministratorsAnd {
                account: r"NT SERVICE\syncfleet-agent".into()
            }
            .to_string(),
            r"readable only by SYSTEM, Administrators and NT SERVICE\syncfleet-agent"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_owner_only_on_unix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(private_file(&p).unwrap(), Some(Protection::OwnerOnly));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(private_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_missing_folder_is_created_and_an_existing_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a").join("b");
        create_private_dir(&d).unwrap();
        assert!(d.is_dir());
        create_private_dir(&d).unwrap();
        create_private_dir(Path::new("")).unwrap();
    }
}
