//! Accounting: how many bytes the model holds against its quota.
//!
//! This is the interface the rest of the shim uses; the backend here is in-process (one
//! atomic per process). The shared per-model ledger replaces it behind the same three
//! calls: `try_reserve` (one compare-and-add against the quota, no check-then-act window),
//! `release`, and `used`.

use std::sync::atomic::{AtomicU64, Ordering};

/// No quota: accounting only.
pub const UNLIMITED: u64 = u64::MAX;

/// Why a reservation was refused, for the one log line the shim prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub requested: u64,
    pub used: u64,
    pub quota: u64,
}

#[derive(Debug)]
pub struct Ledger {
    used: AtomicU64,
    quota: AtomicU64,
}

impl Ledger {
    pub fn new(quota: u64) -> Ledger {
        Ledger {
            used: AtomicU64::new(0),
            quota: AtomicU64::new(quota),
        }
    }

    /// Charges `bytes` if the total stays within the quota; all or nothing.
    pub fn try_reserve(&self, bytes: u64) -> Result<(), Refusal> {
        let quota = self.quota.load(Ordering::Relaxed);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = match used.checked_add(bytes) {
                Some(n) if n <= quota => n,
                _ => {
                    return Err(Refusal {
                        requested: bytes,
                        used,
                        quota,
                    });
                }
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Gives back what `try_reserve` charged. Never goes below zero.
    pub fn release(&self, bytes: u64) {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_sub(bytes);
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => used = actual,
            }
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The quota in bytes, `UNLIMITED` when there is none.
    pub fn quota(&self) -> u64 {
        self.quota.load(Ordering::Relaxed)
    }

    /// Fixes the quota once it is known (a percentage needs the device's size).
    pub fn set_quota(&self, quota: u64) {
        self.quota.store(quota, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_quota_fits_one_more_byte_does_not() {
        let l = Ledger::new(100);
        assert_eq!(l.try_reserve(60), Ok(()));
        assert_eq!(l.try_reserve(40), Ok(()));
        assert_eq!(
            l.try_reserve(1),
            Err(Refusal {
                requested: 1,
                used: 100,
                quota: 100
            })
        );
        l.release(40);
        assert_eq!(l.used(), 60);
        assert!(
            l.try_reserve(u64::MAX).is_err(),
            "overflow is a refusal, not a wrap"
        );
        l.release(1000);
        assert_eq!(l.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_quota() {
        let l = std::sync::Arc::new(Ledger::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if l.try_reserve(7).is_ok() {
                            assert!(l.used() <= 1000);
                            l.release(7);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.used(), 0);
    }
}
