//! Bounded session memory: session key -> the worker that served it last.
//!
//! Two generations of at most `capacity / 2` entries each: when the young one fills up it
//! becomes the old one and the previous old one is dropped, so memory is bounded and recently
//! used sessions survive (a hit in the old generation is promoted).

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::worker::WorkerId;

/// Session key hash -> worker.
#[derive(Debug)]
pub struct Sessions {
    young: HashMap<u64, WorkerId>,
    old: HashMap<u64, WorkerId>,
    half: usize,
}

impl Sessions {
    /// Remembers about `capacity` sessions (at least 2).
    pub fn new(capacity: usize) -> Sessions {
        Sessions {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    /// The worker that last served `key`.
    pub fn get(&self, key: &str) -> Option<WorkerId> {
        let h = xxh3_64(key.as_bytes());
        self.young.get(&h).or_else(|| self.old.get(&h)).copied()
    }

    /// Records that `worker` serves `key`.
    pub fn insert(&mut self, key: &str, worker: WorkerId) {
        let h = xxh3_64(key.as_bytes());
        if !self.young.contains_key(&h) && self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&h);
        self.young.insert(h, worker);
    }

    /// Forgets every session of `worker`.
    pub fn remove_worker(&mut self, worker: WorkerId) {
        self.young.retain(|_, w| *w != worker);
        self.old.retain(|_, w| *w != worker);
    }

    /// Sessions remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}
