//! Which worker holds which KV-cache block, built from the workers' own events.
//!
//! Per worker the index keeps the set of block hashes the engine reported stored and not yet
//! removed, bounded by `max_blocks_per_worker` (the oldest reports go first when an engine's
//! removals were lost). A query walks a request's block-hash chain and reports, per worker,
//! how many leading blocks it holds: an engine reuses a cached prefix only from the first
//! block on, so a hole ends the match.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{KvEvent, KvEventBatch};
use crate::worker::WorkerId;

/// Bounds of the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Most blocks remembered per worker (at least 1).
    pub max_blocks_per_worker: usize,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            max_blocks_per_worker: 1 << 17,
        }
    }
}

/// One worker's blocks with their report order, for bounded eviction.
#[derive(Debug, Default)]
struct WorkerBlocks {
    /// Block hash to the sequence number of its latest report.
    blocks: HashMap<u64, u64>,
    /// Sequence number to block hash, oldest first.
    order: BTreeMap<u64, u64>,
}

/// Block hashes per worker, and workers per block hash.
#[derive(Debug)]
pub struct BlockIndex {
    config: IndexConfig,
    holders: HashMap<u64, Vec<WorkerId>>,
    workers: HashMap<WorkerId, WorkerBlocks>,
    next_seq: u64,
}

impl BlockIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> BlockIndex {
        BlockIndex {
            config,
            holders: HashMap::new(),
            workers: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Applies a worker's event batch. Offload-tier events are ignored.
    pub fn apply(&mut self, worker: WorkerId, batch: &KvEventBatch) {
        for event in batch.events.iter().filter(|e| e.is_device_tier()) {
            match event {
                KvEvent::BlockStored { block_hashes, .. } => {
                    for &h in block_hashes {
                        self.store(worker, h);
                    }
                }
                KvEvent::BlockRemoved { block_hashes, .. } => {
                    for &h in block_hashes {
                        self.remove(worker, h);
                    }
                }
                KvEvent::AllBlocksCleared => self.clear_worker(worker),
            }
        }
    }

    fn store(&mut self, worker: WorkerId, hash: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let wb = self.workers.entry(worker).or_default();
        match wb.blocks.insert(hash, seq) {
            Some(old) => {
                wb.order.remove(&old);
            }
            None => self.holders.entry(hash).or_default().push(worker),
        }
        wb.order.insert(seq, hash);
        let max = self.config.max_blocks_per_worker.max(1);
        while wb.blocks.len() > max {
            let Some((_, oldest)) = wb.order.pop_first() else {
                break;
            };
            wb.blocks.remove(&oldest);
            unhold(&mut self.holders, oldest, worker);
        }
    }

    fn remove(&mut self, worker: WorkerId, hash: u64) {
        let Some(wb) = self.workers.get_mut(&worker) else {
            return;
        };
        if let Some(seq) = wb.blocks.remove(&hash) {
            wb.order.remove(&seq);
            unhold(&mut self.holders, hash, worker);
        }
    }

    /// Forgets everything about `worker` (cleared cache, lost events, removed worker).
    pub fn clear_worker(&mut self, worker: WorkerId) {
        if let Some(wb) = self.workers.remove(&worker) {
            for hash in wb.blocks.keys() {
                unhold(&mut self.holders, *hash, worker);
            }
        }
    }

    /// Blocks held by `worker`.
    pub fn worker_blocks(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.blocks.len())
    }

    /// Distinct blocks held by any worker.
    pub fn distinct_blocks(&self) -> usize {
        self.holders.len()
    }

    /// For the block-hash chain `hashes`, the number of leading blocks each worker holds
    /// (workers holding none are absent).
    pub fn prefix_matches(&self, hashes: &[u64]) -> HashMap<WorkerId, usize> {
        let mut matched = HashMap::new();
        let Some(first) = hashes.first().and_then(|h| self.holders.get(h)) else {
            return matched;
        };
        let mut alive: Vec<WorkerId> = first.clone();
        for (i, h) in hashes.iter().enumerate() {
            if i > 0 {
                let Some(holders) = self.holders.get(h) else {
                    break;
                };
                alive.retain(|w| holders.contains(w));
            }
            if alive.is_empty() {
                break;
            }
            for w in &alive {
                matched.insert(*w, i + 1);
            }
        }
        matched
    }
}

/// Drops `worker` from the holders of `hash`.
fn unhold(holders: &mut HashMap<u64, Vec<WorkerId>>, hash: u64, worker: WorkerId) {
    if let Some(ws) = holders.get_mut(&hash) {
        ws.retain(|w| *w != worker);
        if ws.is_empty() {
            holders.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(hashes: &[u64]) -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: hashes.to_vec(),
            parent_block_hash: None,
            token_ids: Vec::new(),
            block_size: 16,
            lora_id: None,
            medium: None,
        }
    }

    fn batch(events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            ts: 0.0,
            events,
            dp_rank: None,
        }
    }

    const A: WorkerId = WorkerId(0);
    const B: WorkerId = WorkerId(1);

    #[test]
    fn prefix_matches_stop_at_the_first_hole() {
        let mut ix = BlockIndex::new(IndexConfig::default());
        ix.apply(A, &batch(vec![stored(&[1, 2, 3, 4])]));
        ix.apply(B, &batch(vec![stored(&[1, 2]), stored(&[4])]));
        let m = ix.prefix_matches(&[1, 2, 3, 4, 5]);
        assert_eq!(m.get(&A), Some(&4));
        assert_eq!(m.get(&B), Some(&2));
        assert!(ix.prefix_matches(&[9, 1, 2]).is_empty());
        assert!(ix.prefix_matches(&[]).is_empty());
    }

    #[test]
    fn removal_and_clear_are_per_worker() {
        let mut ix = BlockIndex::new(IndexConfig::default());
        ix.apply(A, &batch(vec![stored(&[1, 2, 3])]));
        ix.apply(B, &batch(vec![stored(&[1, 2, 3])]));
        ix.apply(
            A,
            &batch(vec![KvEvent::BlockRemoved {
                block_hashes: vec![2],
                medium: Some("GPU".into()),
            }]),
        );
        let m = ix.prefix_matches(&[1, 2, 3]);
        assert_eq!((m.get(&A), m.get(&B)), (Some(&1), Some(&3)));
        ix.apply(B, &KvEventBatch::cleared());
        assert_eq!(ix.worker_blocks(B), 0);
        assert_eq!(ix.prefix_matches(&[1, 2, 3]).get(&B), None);
        assert_eq!(ix.worker_blocks(A), 2);
        ix.clear_worker(A);
        assert_eq!(ix.distinct_blocks(), 0);
    }

    #[test]
    fn offload_tier_events_are_ignored() {
        let mut ix = BlockIndex::new(IndexConfig::default());
        ix.apply(A, &batch(vec![stored(&[1])]));
        ix.apply(
            A,
            &batch(vec![KvEvent::BlockRemoved {
                block_hashes: vec![1],
                medium: Some("CPU".into()),
            }]),
        );
        assert_eq!(ix.prefix_matches(&[1]).get(&A), Some(&1));
    }

    #[test]
    fn memory_is_bounded_oldest_reports_go_first() {
        let mut ix = BlockIndex::new(IndexConfig {
            max_blocks_per_worker: 100,
        });
        for h in 0..1000u64 {
            ix.apply(A, &batch(vec![stored(&[h])]));
        }
        // Re-reporting a block refreshes it.
        ix.apply(A, &batch(vec![stored(&[900])]));
        ix.apply(A, &batch(vec![stored(&[1000])]));
        assert_eq!(ix.worker_blocks(A), 100);
        assert_eq!(ix.distinct_blocks(), 100);
        assert!(ix.prefix_matches(&[900]).contains_key(&A));
        assert!(!ix.prefix_matches(&[901]).contains_key(&A));
        assert!(ix.prefix_matches(&[999]).contains_key(&A));
        assert!(!ix.prefix_matches(&[0]).contains_key(&A));
    }
}
