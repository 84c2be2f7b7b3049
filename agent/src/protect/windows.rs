//! The Windows calls behind [`super::on_windows`]: the account of the process token, and a
//! DACL built from SDDL applied with `SetNamedSecurityInfoW`.

use std::os::windows::ffi::OsStrExt as _;
use std::path::Path;

use windows::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, HANDLE, HLOCAL, LocalFree};
use windows::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, GetTokenInformation,
    LookupAccountSidW, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SID_NAME_USE, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
use windows::core::{BOOL, PCWSTR, PWSTR};

use super::{Kind, ProtectError, Protection, private_sddl};

/// The account this process runs as.
struct Account {
    sid: String,
    /// `DOMAIN\name`, or the SID when the name cannot be looked up.
    name: String,
}

/// Frees memory the system allocated with `LocalAlloc` when dropped.
struct LocalMem(*mut core::ffi::c_void);

impl Drop for LocalMem {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a system call documented to allocate with
            // LocalAlloc and is freed exactly once, here.
            unsafe {
                LocalFree(Some(HLOCAL(self.0)));
            }
        }
    }
}

/// Closes a handle when dropped.
struct OwnedHandle(HANDLE);

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by OpenProcessToken and is closed exactly once, here.
        // A failure to close leaves nothing to do.
        let _ = unsafe { CloseHandle(self.0) };
    }
}

fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Restricts `path` to SYSTEM, Administrators and the account of this process.
pub(super) fn restrict(path: &Path, kind: Kind) -> Result<Protection, ProtectError> {
    let account = current_account()?;
    let sddl = private_sddl(kind, &account.sid)?;
    set_dacl(path, &sddl).map_err(|problem| ProtectError::Apply {
        path: path.to_path_buf(),
        account: account.name.clone(),
        problem,
    })?;
    Ok(Protection::SystemAdministratorsAnd {
        account: account.name,
    })
}

fn current_account() -> Result<Account, ProtectError> {
    let mut token = HANDLE::default();
    // SAFETY: GetCurrentProcess returns a pseudo-handle valid for this process; `token` is a
    // valid place for the handle written out.
    unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) }
        .map_err(|e| ProtectError::Account(format!("cannot open the process token: {e}")))?;
    let token = OwnedHandle(token);
    let mut len = 0u32;
    // SAFETY: a size query (no buffer, length 0); it fails with ERROR_INSUFFICIENT_BUFFER by
    // design and writes the needed size into `len`.
    let _ = unsafe { GetTokenInformation(token.0, TokenUser, None, 0, &mut len) };
    if len == 0 {
        return Err(ProtectError::Account(
            "the process token has no user".into(),
        ));
    }
    // u64 elements: the buffer is aligned for TOKEN_USER.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` holds at least `len` bytes and is 8-byte aligned.
    unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            Some(buf.as_mut_ptr().cast()),
            len,
            &mut len,
        )
    }
    .map_err(|e| ProtectError::Account(format!("cannot read the process token: {e}")))?;
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into `buf`,
    // which outlives every use of `sid` below.
    let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut text = PWSTR::null();
    // SAFETY: `sid` is a valid SID (above); `text` receives a LocalAlloc'ed string.
    unsafe { ConvertSidToStringSidW(sid, &mut text) }
        .map_err(|e| ProtectError::Account(format!("cannot format the account's SID: {e}")))?;
    let text_mem = LocalMem(text.0.cast());
    // SAFETY: `text` is the NUL-terminated string written by ConvertSidToStringSidW, alive
    // until `text_mem` drops.
    let sid_string = unsafe { text.to_string() }
        .map_err(|e| ProtectError::Account(format!("the account's SID is not text: {e}")))?;
    drop(text_mem);
    let name = account_name(sid).unwrap_or_else(|| sid_string.clone());
    Ok(Account {
        sid: sid_string,
        name,
    })
}

/// `DOMAIN\name` of `sid`, `None` when it cannot be looked up.
fn account_name(sid: PSID) -> Option<String> {
    let (mut n, mut d) = (0u32, 0u32);
    let mut kind = SID_NAME_USE::default();
    // SAFETY: a size query with no buffers; the sizes are written into `n` and `d`.
    let _ =
        unsafe { LookupAccountSidW(PCWSTR::null(), sid, None, &mut n, None, &mut d, &mut kind) };
    if n == 0 {
        return None;
    }
    let mut name = vec![0u16; n as usize];
    let mut domain = vec![0u16; d.max(1) as usize];
    // SAFETY: the buffers hold the sizes the query asked for, passed in `n` and `d`.
    unsafe {
        LookupAccountSidW(
            PCWSTR::null(),
            sid,
            Some(PWSTR(name.as_mut_ptr())),
            &mut n,
            Some(PWSTR(domain.as_mut_ptr())),
            &mut d,
            &mut kind,
        )
    }
    .ok()?;
    let name = String::from_utf16_lossy(name.get(..n as usize)?);
    let domain = String::from_utf16_lossy(domain.get(..d as usize)?);
    Some(if domain.is_empty() {
        name
    } else {
        format!(r"{domain}\{name}")
    })
}

/// Applies the DACL of `sddl` to `path` as a protected DACL (inheritance from the parent
/// removed). Errors are described as text for [`ProtectError::Apply`].
fn set_dacl(path: &Path, sddl: &str) -> Result<(), String> {
    let sddl_w = wide(std::ffi::OsStr::new(sddl));
    let mut sd = PSECURITY_DESCRIPTOR::default();
    // SAFETY: `sddl_w` is NUL-terminated; `sd` receives a LocalAlloc'ed descriptor, freed by
    // `sd_mem`.
    unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            PCWSTR(sddl_w.as_ptr()),
            SDDL_REVISION_1,
            &mut sd,
            None,
        )
    }
    .map_err(|e| format!("the access rule {sddl} is refused: {e}"))?;
    let sd_mem = LocalMem(sd.0);
    let (mut present, mut defaulted) = (BOOL(0), BOOL(0));
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `sd` is the valid descriptor made above; the out pointers are valid.
    unsafe { GetSecurityDescriptorDacl(sd, &mut present, &mut dacl, &mut defaulted) }
        .map_err(|e| format!("cannot read the access rule {sddl}: {e}"))?;
    if !present.as_bool() || dacl.is_null() {
        return Err(format!("the access rule {sddl} has no DACL"));
    }
    let path_w = wide(path.as_os_str());
    // SAFETY: `path_w` is NUL-terminated; `dacl` points into the descriptor owned by
    // `sd_mem`, which lives until the end of this function.
    let rc = unsafe {
        SetNamedSecurityInfoW(
            PCWSTR(path_w.as_ptr()),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            None,
            None,
            Some(dacl),
            None,
        )
    };
    drop(sd_mem);
    if rc == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(windows::core::Error::from(rc.to_hresult()).to_string())
    }
}
