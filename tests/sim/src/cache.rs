//! Simulated KV cache: a fixed number of blocks keyed by chained block hashes,
//! LRU eviction of blocks no running request holds, and KV event emission.

use std::collections::{BTreeSet, HashMap};

/// A change to the cache, shaped like vLLM's KV events (hashes as `u64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Blocks became resident; `parent` is the hash preceding the first one.
    BlockStored {
        /// Hashes of the stored blocks, in prompt order.
        block_hashes: Vec<u64>,
        /// Hash of the block before the first stored one, if any.
        parent_block_hash: Option<u64>,
        /// Token ids of the stored blocks, concatenated (empty when the prompt was not
        /// tokenized for real).
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: u32,
    },
    /// Blocks were evicted.
    BlockRemoved {
        /// Hashes of the evicted blocks.
        block_hashes: Vec<u64>,
    },
    /// The whole cache was flushed.
    AllBlocksCleared,
}

/// Receiver of cache changes (a publisher such as ZMQ can implement this).
pub trait KvEventSink: Send + Sync {
    /// Called with each cache change, in order, while the cache lock is held.
    fn publish(&self, event: KvEvent);
}

/// Sink that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl KvEventSink for NoopSink {
    fn publish(&self, _event: KvEvent) {}
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_used: u64,
    pins: u32,
}

/// LRU block cache with pinning; not thread-safe by itself (the engine wraps it in a mutex).
pub struct KvCache {
    capacity: usize,
    block_size: u32,
    entries: HashMap<u64, Entry>,
    /// Unpinned blocks ordered by last use: eviction candidates.
    lru: BTreeSet<(u64, u64)>,
    clock: u64,
    sink: Box<dyn KvEventSink>,
}

impl KvCache {
    /// A cache of `capacity` blocks of `block_size` tokens publishing to `sink`.
    pub fn new(capacity: usize, block_size: u32, sink: Box<dyn KvEventSink>) -> Self {
        KvCache {
            capacity,
            block_size,
            entries: HashMap::new(),
            lru: BTreeSet::new(),
            clock: 0,
            sink,
        }
    }

    /// Number of resident blocks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no block is resident.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of resident blocks held by at least one running request.
    pub fn pinned(&self) -> usize {
        self.entries.len() - self.lru.len()
    }

    /// Capacity in blocks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a block is resident.
    pub fn contains(&self, hash: u64) -> bool {
        self.entries.contains_key(&hash)
    }

    /// Number of leading `hashes` resident in the cache.
    pub fn match_prefix(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.entries.contains_key(h))
            .count()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Pins resident blocks (they become unevictable) and marks them used.
    /// Returns the pinned hashes; non-resident ones are skipped.
    pub fn pin(&mut self, hashes: &[u64]) -> Vec<u64> {
        let mut pinned = Vec::with_capacity(hashes.len());
        for &h in hashes {
            let now = self.tick();
            if let Some(e) = self.entries.get_mut(&h) {
                if e.pins == 0 {
                    self.lru.remove(&(e.last_used, h));
                }
                e.pins += 1;
                e.last_used = now;
                pinned.push(h);
            }
        }
        pinned
    }

    /// Releases pins taken by [`KvCache::pin`] or [`KvCache::store_pinned`].
    pub fn unpin(&mut self, hashes: &[u64]) {
        for &h in hashes {
            let now = self.tick();
            if let Some(e) = self.entries.get_mut(&h) {
                e.pins = e.pins.saturating_sub(1);
                e.last_used = now;
                if e.pins == 0 {
                    self.lru.insert((now, h));
                }
            }
        }
    }

    /// Stores the chain `hashes` (pinning every block, resident or new), evicting
    /// least-recently-used unpinned blocks when full. Stops at the first block that
    /// finds no room. Returns the pinned hashes, to be passed to [`KvCache::unpin`].
    pub fn store_pinned(&mut self, hashes: &[u64]) -> Vec<u64> {
        self.store_pinned_tokens(hashes, &[])
    }

    /// [`KvCache::store_pinned`] with the prompt's token ids, reported in `BlockStored`
    /// events (`tokens` may be empty or shorter than the blocks: then none are reported).
    pub fn store_pinned_tokens(&mut self, hashes: &[u64], tokens: &[u32]) -> Vec<u64> {
        let bs = self.block_size as usize;
        let mut token_ids = Vec::new();
        let mut pinned = Vec::with_capacity(hashes.len());
        let mut stored = Vec::new();
        let mut removed = Vec::new();
        let mut parent = None;
        let mut first_new_parent = None;
        for &h in hashes {
            if self.entries.contains_key(&h) {
                pinned.extend(self.pin(&[h]));
            } else {
                if self.entries.len() >= self.capacity {
                    match self.lru.pop_first() {
                        Some((_, victim)) => {
                            self.entries.remove(&victim);
                            removed.push(victim);
                        }
                        None => break,
                    }
                }
                let now = self.tick();
                self.entries.insert(
                    h,
                    Entry {
                        last_used: now,
                        pins: 1,
                    },
                );
                if stored.is_empty() {
                    first_new_parent = parent;
                }
                let i = pinned.len();
                if let Some(block) = tokens.get(i * bs..(i + 1) * bs) {
                    token_ids.extend_from_slice(block);
                }
                stored.push(h);
                pinned.push(h);
            }
            parent = Some(h);
        }
        if !removed.is_empty() {
            self.sink.publish(KvEvent::BlockRemoved {
                block_hashes: removed,
            });
        }
        if !stored.is_empty() {
            if token_ids.len() != stored.len() * bs {
                token_ids.clear();
            }
            self.sink.publish(KvEvent::BlockStored {
                block_hashes: stored,
                parent_block_hash: first_new_parent,
                token_ids,
                block_size: self.block_size,
            });
        }
        pinned
    }

    /// Drops every unpinned block (pinned ones stay until released).
    /// Returns false, changing nothing, when some block is pinned, like the engines
    /// refusing to reset while requests run.
    pub fn clear(&mut self) -> bool {
        if self.pinned() > 0 {
            return false;
        }
        self.entries.clear();
        self.lru.clear();
        self.sink.publish(KvEvent::AllBlocksCleared);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<KvEvent>>>);

    impl KvEventSink for Recorder {
        fn publish(&self, event: KvEvent) {
            if let Ok(mut v) = self.0.lock() {
                v.push(event);
            }
        }
    }

    #[test]
    fn lru_evicts_oldest_unpinned_block() {
        let rec = Recorder::default();
        let mut c = KvCache::new(3, 16, Box::new(rec.clone()));
        let p = c.store_pinned(&[1, 2]);
        c.unpin(&p);
        let p = c.store_pinned(&[3]);
        c.unpin(&p);
        // Touch 1 so that 2 becomes the oldest.
        let p = c.pin(&[1]);
        c.unpin(&p);
        let p = c.store_pinned(&[4]);
        c.unpin(&p);
        assert!(c.contains(1) && c.contains(3) && c.contains(4));
        assert!(!c.contains(2));
        let events = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert!(events.contains(&KvEvent::BlockRemoved {
            block_hashes: vec![2]
        }));
        assert_eq!(
            events.first(),
            Some(&KvEvent::BlockStored {
                block_hashes: vec![1, 2],
                parent_block_hash: None,
                token_ids: Vec::new(),
                block_size: 16
            })
        );
    }

    #[test]
    fn pinned_blocks_are_not_evicted() {
        let mut c = KvCache::new(2, 16, Box::new(NoopSink));
        let held = c.store_pinned(&[1, 2]);
        assert_eq!(c.pinned(), 2);
        let p = c.store_pinned(&[3]);
        assert!(p.is_empty(), "no room while both blocks are pinned");
        assert!(!c.clear());
        c.unpin(&held);
        let p = c.store_pinned(&[3]);
        assert_eq!(p, vec![3]);
        assert_eq!(c.match_prefix(&[1, 2]), 0);
        assert_eq!(c.match_prefix(&[2]), 1);
        c.unpin(&p);
        assert!(c.clear());
        assert!(c.is_empty());
    }

    #[test]
    fn stored_events_carry_the_blocks_token_ids() {
        let rec = Recorder::default();
        let mut c = KvCache::new(8, 2, Box::new(rec.clone()));
        let p = c.store_pinned_tokens(&[1], &[7, 8, 9, 10]);
        c.unpin(&p);
        let p = c.store_pinned_tokens(&[1, 2], &[7, 8, 9, 10]);
        c.unpin(&p);
        let events = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
        let ids: Vec<Vec<u32>> = events
            .iter()
            .filter_map(|e| match e {
                KvEvent::BlockStored { token_ids, .. } => Some(token_ids.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec![vec![7, 8], vec![9, 10]]);
    }
}
