//! The process-wide budget of request-body bytes held in memory. Every stream reserves what
//! it buffers (and, while it routes, the parsed and re-streamed copy) and gives it back when it
//! lets go of the body; a stream that would go over the budget is answered 429 with
//! `retry-after`, so a burst of huge prompts cannot exhaust the pod.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes buffered by all streams together, against a limit.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: AtomicU64,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes reserved right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserves `bytes` more when they fit under the limit.
    fn try_add(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// One stream's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Reservation {
    /// An empty reservation on `budget`.
    pub fn new(budget: Arc<ByteBudget>) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Grows the reservation to `total` bytes; `false` (nothing changed) when that would go
    /// over the budget. Shrinking always succeeds.
    pub fn resize(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            self.budget.release(self.bytes - total);
            self.bytes = total;
            return true;
        }
        if !self.budget.try_add(total - self.bytes) {
            return false;
        }
        self.bytes = total;
        true
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let budget = ByteBudget::new(100);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        assert!(a.resize(60));
        assert!(!b.resize(41), "over the limit");
        assert_eq!(b.bytes(), 0);
        assert!(b.resize(40));
        assert_eq!(budget.used(), 100);
        assert!(a.resize(10));
        assert_eq!(budget.used(), 50);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let budget = ByteBudget::new(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut r = Reservation::new(budget.clone());
                        if r.resize(1 + i % 300) {
                            assert!(budget.used() <= budget.limit());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(budget.used(), 0);
    }
}
