//! The approximate prefix index: which worker has recently been sent which prompt prefix.
//!
//! One radix tree per cache [`Namespace`] (model, LoRA adapter, `cache_salt`) and key kind,
//! over prompt bytes: text keys are split only on UTF-8 char boundaries, token keys only on
//! 4-byte token boundaries. Each node lists the workers holding the prefix that ends at it; a
//! worker listed on a node is listed on all its ancestors. Nodes live in a slab addressed by
//! `u32`, edges are stored contiguously and children are found by the first unit of their edge.
//!
//! Memory is bounded by [`PrefixIndex::max_bytes`], counting edge bytes, node slots, per-node
//! allocations (rounded like the allocator does), the LRU set and the maps. Every insert ends
//! with an eviction pass that removes the least recently inserted (leaf, worker) entries until
//! the index is back under its bound: the work is amortized over the bytes inserted, so there
//! is no timer and no unbounded pause.
//!
//! "Approximate": the index records where kvroute sent prompts, not what engines really keep.

mod evict;
mod key;
mod namespace;
mod node;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;

pub use key::{KeyKind, PrefixKey};
pub use namespace::Namespace;

use key::{common_prefix, floor_boundary, unit_key};
use node::{NIL, Node, Slab, alloc_cost};

use crate::worker::WorkerId;

/// Default memory bound: 256 MiB.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// Smallest accepted memory bound (smaller values are raised to it).
pub const MIN_MAX_BYTES: usize = 64 << 10;

/// Bytes charged per LRU entry: the 16-byte key plus its share of B-tree nodes. Leaves hold
/// 5 to 11 keys; measured with a counting allocator, appends in tick order cost 34 bytes per
/// entry and heavy churn (removals, merges) about 51 before malloc rounding: 64 is an upper
/// bound with room to spare.
const LRU_ENTRY_BYTES: usize = 64;

/// The result of walking a key down a tree.
#[derive(Clone, Debug, Default)]
struct Walk {
    /// The tree's root, [`NIL`] when the namespace has no tree yet.
    root: u32,
    /// Nodes matched in full, root first, each with the key depth at its end.
    path: Vec<(u32, usize)>,
    /// A child whose edge matched only partly, and how many bytes of it (a whole number of
    /// units, at least one).
    partial: Option<(u32, usize)>,
}

impl Walk {
    /// Key bytes matched by fully matched nodes.
    fn depth(&self) -> usize {
        self.path.last().map_or(0, |&(_, d)| d)
    }
}

/// Per-worker matched lengths of one key, plus the walk (so inserting right after does not
/// walk again).
#[derive(Clone, Debug, Default)]
pub struct PrefixMatch {
    lengths: Vec<(WorkerId, usize)>,
    key_len: usize,
    walk: Walk,
    version: u64,
}

impl PrefixMatch {
    /// Bytes of the key `worker` holds (0 when it holds nothing).
    pub fn matched(&self, worker: WorkerId) -> usize {
        self.lengths
            .iter()
            .find(|(w, _)| *w == worker)
            .map_or(0, |&(_, n)| n)
    }

    /// `matched(worker) / key length`, 0 for an empty key.
    pub fn ratio(&self, worker: WorkerId) -> f32 {
        if self.key_len == 0 {
            0.0
        } else {
            self.matched(worker) as f32 / self.key_len as f32
        }
    }

    /// Every worker holding a non-empty part of the key, with its matched length.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, usize)> + '_ {
        self.lengths.iter().copied().filter(|&(_, n)| n > 0)
    }

    /// Length of the key in bytes.
    pub fn key_len(&self) -> usize {
        self.key_len
    }
}

/// The bounded, approximate prefix index.
#[derive(Debug)]
pub struct PrefixIndex {
    slab: Slab,
    /// Tree roots by encoded namespace.
    roots: HashMap<Box<[u8]>, u32>,
    /// Encoded namespace of each root (to drop the tree when its root goes).
    root_names: HashMap<u32, Box<[u8]>>,
    /// Heap bytes of the encoded namespaces (each held twice).
    name_bytes: usize,
    /// (tick, node, worker) candidates for eviction, oldest first; stale entries are skipped.
    lru: BTreeSet<(u64, u32, WorkerId)>,
    /// Edge bytes attributed to each worker.
    sizes: HashMap<WorkerId, usize>,
    max_bytes: usize,
    /// Logical clock: one tick per insert.
    clock: u64,
    /// Bumped by every change, so a stale [`PrefixMatch`] walk is never reused.
    version: u64,
}

impl Default for PrefixIndex {
    fn default() -> PrefixIndex {
        PrefixIndex::new(DEFAULT_MAX_BYTES)
    }
}

impl PrefixIndex {
    /// An empty index that never holds more than `max_bytes` (at least [`MIN_MAX_BYTES`]).
    pub fn new(max_bytes: usize) -> PrefixIndex {
        let max_bytes = max_bytes.max(MIN_MAX_BYTES);
        PrefixIndex {
            // Node slots may take at most half of the budget.
            slab: Slab::new(max_bytes / 2 / size_of::<Node>()),
            roots: HashMap::new(),
            root_names: HashMap::new(),
            name_bytes: 0,
            lru: BTreeSet::new(),
            sizes: HashMap::new(),
            max_bytes,
            clock: 0,
            version: 0,
        }
    }

    /// The memory bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes used, as accounted against the bound.
    pub fn bytes_used(&self) -> usize {
        let map = |cap: usize, entry: usize| {
            if cap == 0 {
                0
            } else {
                alloc_cost(cap * (entry + 1))
            }
        };
        self.slab.bytes()
            + self.lru.len() * LRU_ENTRY_BYTES
            + map(self.roots.capacity(), size_of::<(Box<[u8]>, u32)>())
            + map(self.root_names.capacity(), size_of::<(u32, Box<[u8]>)>())
            + self.name_bytes
            + map(self.sizes.capacity(), size_of::<(WorkerId, usize)>())
    }

    /// Prompt bytes stored in edges (each shared prefix counted once).
    pub fn stored_bytes(&self) -> usize {
        self.slab.edge_bytes()
    }

    /// Live tree nodes, roots included.
    pub fn node_count(&self) -> usize {
        self.slab.live()
    }

    /// Bytes of prefixes attributed to `worker` (the "tree size" of the worker).
    pub fn worker_size(&self, worker: WorkerId) -> usize {
        self.sizes.get(&worker).copied().unwrap_or(0)
    }

    /// The longest key the index stores; longer keys are cut (on a unit boundary).
    fn key_limit(&self) -> usize {
        self.max_bytes / 8
    }

    /// How much of `key` each worker holds in namespace `ns`: a worker holds the key up to
    /// the deepest node on the key's path that lists it.
    pub fn match_prefix(&self, ns: &Namespace<'_>, key: &PrefixKey<'_>) -> PrefixMatch {
        let bytes = key.truncated(self.key_limit());
        let walk = self.walk(ns, key.kind(), bytes);
        PrefixMatch {
            lengths: self.lengths(&walk),
            key_len: key.len(),
            walk,
            version: self.version,
        }
    }

    /// Records that `worker` now holds `key` in namespace `ns`.
    pub fn insert(&mut self, ns: &Namespace<'_>, key: &PrefixKey<'_>, worker: WorkerId) {
        self.insert_matched(ns, key, &PrefixMatch::default(), worker);
    }

    /// Like [`PrefixIndex::insert`], reusing the walk of `m` — which must be the result of
    /// [`PrefixIndex::match_prefix`] for the same `ns` and `key` — when nothing changed since.
    pub fn insert_matched(
        &mut self,
        ns: &Namespace<'_>,
        key: &PrefixKey<'_>,
        m: &PrefixMatch,
        worker: WorkerId,
    ) {
        // Room for a new root, a split node and a new leaf; may evict, which bumps the version.
        if !self.reserve_slots(3) {
            return;
        }
        let limit = self.key_limit();
        let bytes = key.truncated(limit);
        let walk = if m.version == self.version && m.walk.root != NIL && !m.walk.path.is_empty() {
            m.walk.clone()
        } else {
            self.walk(ns, key.kind(), bytes)
        };
        self.apply(ns, key.kind(), bytes, walk, worker);
        self.evict_to_bound();
    }

    /// Walks `bytes` down the tree of `ns`.
    fn walk(&self, ns: &Namespace<'_>, kind: KeyKind, bytes: &[u8]) -> Walk {
        let Some(&root) = self.roots.get(ns.encode(kind).as_slice()) else {
            return Walk {
                root: NIL,
                ..Walk::default()
            };
        };
        let mut walk = Walk {
            root,
            path: vec![(root, 0)],
            partial: None,
        };
        let (mut node, mut depth) = (root, 0);
        while depth < bytes.len() {
            let rest = &bytes[depth..];
            let Some(child) = self.slab.get(node).child(unit_key(kind, rest)) else {
                break;
            };
            let edge = &self.slab.get(child).edge;
            let common = common_prefix(edge, rest);
            if common == edge.len() {
                depth += common;
                node = child;
                walk.path.push((child, depth));
                continue;
            }
            let common = floor_boundary(kind, bytes, depth + common) - depth;
            if common > 0 {
                walk.partial = Some((child, common));
            }
            break;
        }
        walk
    }

    /// Per-worker matched lengths of a walk: deepest listing node first.
    fn lengths(&self, walk: &Walk) -> Vec<(WorkerId, usize)> {
        let mut out: Vec<(WorkerId, usize)> = Vec::new();
        let Some(&(root, _)) = walk.path.first() else {
            return out;
        };
        let everyone = self.slab.get(root).workers.len();
        // Sets only grow going up (a child's workers are a subset of its parent's), so a node
        // listing as many workers as the one below it lists the same ones.
        let mut below = 0;
        if let Some((child, common)) = walk.partial {
            let depth = walk.depth() + common;
            let workers = &self.slab.get(child).workers;
            out.extend(workers.iter().map(|&(w, _)| (w, depth)));
            below = workers.len();
        }
        for &(node, depth) in walk.path.iter().rev() {
            if out.len() == everyone {
                break;
            }
            let workers = &self.slab.get(node).workers;
            if workers.len() == below {
                continue;
            }
            below = workers.len();
            for &(w, _) in workers {
                if !out.iter().any(|&(o, _)| o == w) {
                    out.push((w, depth));
                }
            }
        }
        out
    }

    /// Marks `worker` on the walked path and adds what is missing of `bytes`.
    fn apply(
        &mut self,
        ns: &Namespace<'_>,
        kind: KeyKind,
        bytes: &[u8],
        walk: Walk,
        worker: WorkerId,
    ) {
        self.clock += 1;
        self.version += 1;
        let tick = self.clock;
        let mut path = walk.path;
        if path.is_empty() {
            let root = self.slab.alloc(Node {
                parent: NIL,
                tokens: kind == KeyKind::Tokens,
                ..Node::default()
            });
            let name: Box<[u8]> = ns.encode(kind).into();
            self.name_bytes += 2 * alloc_cost(name.len());
            self.roots.insert(name.clone(), root);
            self.root_names.insert(root, name);
            path.push((root, 0));
        }
        let mut old_tick = None;
        for &(node, _) in &path {
            old_tick = self.touch(node, worker, tick);
        }
        let (mut last, mut depth) = path.last().copied().unwrap_or((NIL, 0));
        if let Some((child, common)) = walk.partial {
            last = self.split(child, common);
            old_tick = self.touch(last, worker, tick);
            depth += common;
        }
        if depth < bytes.len() {
            let leaf = self.slab.alloc(Node {
                edge: bytes[depth..].into(),
                workers: vec![(worker, tick)],
                parent: last,
                tokens: kind == KeyKind::Tokens,
                ..Node::default()
            });
            *self.sizes.entry(worker).or_default() += bytes.len() - depth;
            let unit = unit_key(kind, &bytes[depth..]);
            self.slab.edit(last, |n| {
                let at = n.children.partition_point(|&(u, _)| u < unit);
                n.children.insert(at, (unit, leaf));
            });
            last = leaf;
            old_tick = None;
        }
        if let Some(old) = old_tick {
            self.lru.remove(&(old, last, worker));
        }
        self.lru.insert((tick, last, worker));
    }

    /// Lists `worker` on `node` with `tick`; returns its previous tick there.
    fn touch(&mut self, node: u32, worker: WorkerId, tick: u64) -> Option<u64> {
        let edge = self.slab.get(node).edge.len();
        let old = self.slab.edit(node, |n| {
            match n.workers.iter_mut().find(|(w, _)| *w == worker) {
                Some(entry) => Some(std::mem::replace(&mut entry.1, tick)),
                None => {
                    n.workers.push((worker, tick));
                    None
                }
            }
        });
        if old.is_none() && edge > 0 {
            *self.sizes.entry(worker).or_default() += edge;
        }
        old
    }

    /// Splits `child`'s edge after `at` bytes; returns the new upper node (same workers).
    fn split(&mut self, child: u32, at: usize) -> u32 {
        let c = self.slab.get(child);
        let (parent, tokens, workers) = (c.parent, c.tokens, c.workers.clone());
        let upper: Box<[u8]> = c.edge[..at].into();
        let unit = unit_key(c.kind(), &c.edge[at..]);
        let upper_unit = c.unit();
        let mid = self.slab.alloc(Node {
            edge: upper,
            children: vec![(unit, child)],
            workers,
            parent,
            tokens,
            ..Node::default()
        });
        self.slab.edit(child, |n| {
            // Keep the (usually long) lower part in its allocation: shift it down, shrink.
            let mut lower = std::mem::take(&mut n.edge).into_vec();
            lower.drain(..at);
            n.edge = lower.into_boxed_slice();
            n.parent = mid;
        });
        self.slab.edit(parent, |n| {
            if let Ok(i) = n.children.binary_search_by_key(&upper_unit, |&(u, _)| u) {
                n.children[i].1 = mid;
            }
        });
        mid
    }
}

#[cfg(test)]
mod tests;
