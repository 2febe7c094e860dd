//! Engines' KV-cache events and what precise prefix routing builds from them.
//!
//! vLLM and SGLang publish, per engine, which prefix-cache blocks they store and evict
//! (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`) as msgpack batches over ZMQ. This module
//! holds the event model and its wire codec ([`wire`]), a hasher that computes the same block
//! hashes from token ids as vLLM ([`hasher`]), and an index of which worker holds which block
//! ([`index`]). The transport (ZMQ sockets, sequence numbers, replay) belongs to the shells.

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
}
