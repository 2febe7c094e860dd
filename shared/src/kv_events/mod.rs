//! Engines' KV-cache events and what precise prefix routing builds from them.
//!
//! vLLM and SGLang publish, per engine, which prefix-cache blocks they store and evict
//! (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`) as msgpack batches over ZMQ. This module
//! holds the event model and its wire codec ([`wire`]), a hasher that computes the same block
//! hashes from token ids as vLLM ([`hasher`]), and an index of which worker holds which block
//! ([`index`]). The transport (ZMQ sockets, sequence numbers, replay) belongs to the shells.

use std::borrow::Cow;

pub mod hasher;
pub mod index;
pub mod wire;

pub use hasher::{BlockHasher, HasherConfig};
pub use index::{BlockIndex, IndexConfig};
pub use wire::{Encoding, WireError, decode_batch, encode_batch};

/// One engine's KV-cache event.
#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    /// Full blocks entered the prefix cache, in chain order.
    BlockStored {
        /// Hash of each stored block (low 64 bits of the engine's hash).
        block_hashes: Vec<u64>,
        /// Hash of the block before the first one, `None` at the start of a prompt.
        parent_block_hash: Option<u64>,
        /// Token ids of the stored blocks, concatenated.
        token_ids: Vec<u32>,
        /// Tokens per block.
        block_size: u32,
        /// LoRA adapter id, when the blocks belong to one.
        lora_id: Option<u64>,
        /// Storage tier (`GPU`, `CPU`, ...), when the engine says.
        medium: Option<String>,
    },
    /// Blocks left the cache.
    BlockRemoved {
        /// Hashes of the removed blocks.
        block_hashes: Vec<u64>,
        /// Storage tier, when the engine says.
        medium: Option<String>,
    },
    /// The whole cache was reset (engine restart, cache flush).
    AllBlocksCleared,
}

impl KvEvent {
    /// Whether the event concerns the accelerator tier that prefix routing cares about:
    /// events without a medium, or for `GPU`, do; offload tiers (`CPU`, disk) do not.
    pub fn is_device_tier(&self) -> bool {
        let medium = match self {
            KvEvent::BlockStored { medium, .. } | KvEvent::BlockRemoved { medium, .. } => medium,
            KvEvent::AllBlocksCleared => return true,
        };
        medium
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
    }
}

/// A batch of events as one engine published it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvEventBatch {
    /// Publication time, seconds since the Unix epoch on the engine's clock.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<KvEvent>,
    /// Data-parallel rank of the publishing engine, when it has several.
    pub dp_rank: Option<u32>,
}

impl KvEventBatch {
    /// A batch holding only `AllBlocksCleared`: what a shell applies when it lost track of a
    /// worker's cache (sequence gap without replay, publisher restart, disconnect).
    pub fn cleared() -> KvEventBatch {
        KvEventBatch {
            ts: 0.0,
            events: vec![KvEvent::AllBlocksCleared],
            dp_rank: None,
        }
    }

    /// Block hashes the batch names (an `AllBlocksCleared` counts as one).
    pub fn weight(&self) -> usize {
        self.events.iter().map(KvEvent::weight).sum()
    }

    /// The same events, in order, as batches naming at most `max_hashes` block hashes each
    /// (at least one), so a shell can apply a huge batch without holding the router for
    /// its whole length. A batch within the bound is borrowed, not copied. A `BlockStored`
    /// event is cut between blocks: each later part names the previous part's last block as
    /// its parent and carries its own tokens.
    pub fn chunks(&self, max_hashes: usize) -> Vec<Cow<'_, KvEventBatch>> {
        let max = max_hashes.max(1);
        if self.weight() <= max {
            return vec![Cow::Borrowed(self)];
        }
        let mut out: Vec<Cow<'_, KvEventBatch>> = Vec::new();
        let mut current = self.part(Vec::new());
        let mut room = max;
        for event in &self.events {
            for piece in event.split(max) {
                let w = piece.weight();
                if w > room && !current.events.is_empty() {
                    out.push(Cow::Owned(std::mem::replace(
                        &mut current,
                        self.part(Vec::new()),
                    )));
                    room = max;
                }
                room = room.saturating_sub(w);
                current.events.push(piece);
            }
        }
        if !current.events.is_empty() {
            out.push(Cow::Owned(current));
        }
        out
    }

    fn part(&self, events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            ts: self.ts,
            events,
            dp_rank: self.dp_rank,
        }
    }
}

impl KvEvent {
    /// Block hashes the event names (`AllBlocksCleared`: 1).
    fn weight(&self) -> usize {
        match self {
            KvEvent::BlockStored { block_hashes, .. }
            | KvEvent::BlockRemoved { block_hashes, .. } => block_hashes.len().max(1),
            KvEvent::AllBlocksCleared => 1,
        }
    }

    /// The event cut into pieces naming at most `max` hashes each.
    fn split(&self, max: usize) -> Vec<KvEvent> {
        match self {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            } if block_hashes.len() > max => {
                let per_block = *block_size as usize;
                let mut parent = *parent_block_hash;
                block_hashes
                    .chunks(max)
                    .enumerate()
                    .map(|(i, hashes)| {
                        let start = (i * max).saturating_mul(per_block).min(token_ids.len());
                        let end = start
                            .saturating_add(hashes.len().saturating_mul(per_block))
                            .min(token_ids.len());
                        let piece = KvEvent::BlockStored {
                            block_hashes: hashes.to_vec(),
                            parent_block_hash: parent,
                            token_ids: token_ids[start..end].to_vec(),
                            block_size: *block_size,
                            lora_id: *lora_id,
                            medium: medium.clone(),
                        };
                        parent = hashes.last().copied();
                        piece
                    })
                    .collect()
            }
            KvEvent::BlockRemoved {
                block_hashes,
                medium,
            } if block_hashes.len() > max => block_hashes
                .chunks(max)
                .map(|hashes| KvEvent::BlockRemoved {
                    block_hashes: hashes.to_vec(),
                    medium: medium.clone(),
                })
                .collect(),
            other => vec![other.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(hashes: std::ops::Range<u64>, parent: Option<u64>) -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: hashes.clone().collect(),
            parent_block_hash: parent,
            token_ids: hashes
                .flat_map(|h| [h as u32 * 2, h as u32 * 2 + 1])
                .collect(),
            block_size: 2,
            lora_id: Some(3),
            medium: None,
        }
    }

    #[test]
    fn chunks_keep_order_bound_weight_and_chain_parents() {
        let batch = KvEventBatch {
            ts: 5.0,
            events: vec![
                stored(0..10, None),
                KvEvent::BlockRemoved {
                    block_hashes: vec![1, 2, 3],
                    medium: None,
                },
                KvEvent::AllBlocksCleared,
                stored(100..101, Some(9)),
            ],
            dp_rank: Some(1),
        };
        let chunks = batch.chunks(4);
        assert!(
            chunks
                .iter()
                .all(|c| c.weight() <= 4 && c.ts == 5.0 && c.dp_rank == Some(1))
        );
        assert_eq!(
            chunks.iter().map(|c| c.weight()).sum::<usize>(),
            batch.weight()
        );
        // The stored event's pieces, rejoined, are the original event.
        let pieces: Vec<&KvEvent> = chunks
            .iter()
            .flat_map(|c| &c.events)
            .filter(
                |e| matches!(e, KvEvent::BlockStored { block_hashes, .. } if block_hashes[0] < 100),
            )
            .collect();
        let mut hashes: Vec<u64> = Vec::new();
        let mut tokens: Vec<u32> = Vec::new();
        let mut expected_parent = None;
        for p in pieces {
            let KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                ..
            } = p
            else {
                unreachable!()
            };
            assert_eq!(*parent_block_hash, expected_parent);
            expected_parent = block_hashes.last().copied();
            hashes.extend(block_hashes);
            tokens.extend(token_ids);
        }
        assert_eq!(hashes, (0..10).collect::<Vec<_>>());
        let KvEvent::BlockStored { token_ids, .. } = &batch.events[0] else {
            unreachable!()
        };
        assert_eq!(&tokens, token_ids);
        // Small batches stay whole; an empty one stays one (empty) batch.
        let whole = batch.chunks(usize::MAX);
        assert_eq!(whole, vec![Cow::Borrowed(&batch)]);
        assert!(
            matches!(whole[0], Cow::Borrowed(_)),
            "a small batch is not copied"
        );
        let empty = KvEventBatch::default();
        assert_eq!(empty.chunks(4), vec![Cow::Borrowed(&empty)]);
    }
}
