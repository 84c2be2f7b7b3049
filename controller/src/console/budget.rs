//! How many audit entries anonymous refusals may write: someone probing the console (guessing
//! sign-in links, posting without a session) must not flood the audit log. Refusals of a
//! signed-in operator are always audited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Audit entries of anonymous refusals per peer address per minute at most.
pub const ANONYMOUS_AUDITS_PER_MINUTE: u32 = 5;

/// Anonymous refusals audited per peer address in the current minute.
#[derive(Debug, Default)]
pub struct AnonymousAudits {
    seen: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl AnonymousAudits {
    /// Whether one more anonymous refusal from `ip` in minute `minute` (Unix minutes) is
    /// audited.
    pub fn admit(&self, ip: IpAddr, minute: i64) -> bool {
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (t, _)| *t == minute);
        let e = m.entry(ip).or_insert((minute, 0));
        e.1 += 1;
        e.1 <= ANONYMOUS_AUDITS_PER_MINUTE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_per_address_per_minute() {
        let b = AnonymousAudits::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let other = IpAddr::from([10, 0, 0, 2]);
        let admitted = (0..8).filter(|_| b.admit(a, 100)).count();
        assert_eq!(admitted, 5);
        assert!(b.admit(other, 100));
        assert!(b.admit(a, 101), "a new minute starts a new budget");
    }
}
