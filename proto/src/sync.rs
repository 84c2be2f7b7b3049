//! Locking a `std::sync::Mutex` whose holder may have panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, taking over a poisoned lock.
///
/// Contract for callers: every mutex locked through this holds plain values that are updated
/// in single statements (a push, a pop, an assignment, a map insert), so a holder that panicked
/// cannot have left the value half-changed, and refusing the lock forever would only turn one
/// panic into many.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_value() {
        let m = Arc::new(Mutex::new(vec![1]));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("holder panics");
        })
        .join();
        assert!(m.is_poisoned());
        super::lock(&m).push(2);
        assert_eq!(*super::lock(&m), [1, 2]);
    }
}
