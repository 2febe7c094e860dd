//! Tree nodes in a slab (`Vec<Node>` addressed by `u32`, with a free list), and the memory
//! accounting of everything they own.

use std::mem::size_of;

use super::key::{KeyKind, unit_key};
use crate::worker::WorkerId;

/// "No node": the parent of a root.
pub(super) const NIL: u32 = u32::MAX;

/// Bytes the allocator really hands out for a request of `n` bytes: glibc-style chunks carry
/// an 8-byte header, are 16-byte aligned and at least 32 bytes. Zero-sized requests allocate
/// nothing.
pub(super) fn alloc_cost(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).div_ceil(16).max(2) * 16
    }
}

/// One edge of the radix tree and the workers holding the prefix that ends with it.
#[derive(Debug, Default)]
pub(super) struct Node {
    /// The bytes of this edge (from the parent to this node); empty only for roots.
    pub edge: Box<[u8]>,
    /// Children as (first unit of their edge, node), sorted by unit.
    pub children: Vec<(u32, u32)>,
    /// Workers holding the whole prefix down to this node, with the tick of their last insert
    /// through it. A worker listed here is listed on every ancestor.
    pub workers: Vec<(WorkerId, u64)>,
    /// Parent node, [`NIL`] for a root.
    pub parent: u32,
    /// Token keys (else text).
    pub tokens: bool,
    /// In use (else on the free list).
    pub live: bool,
}

impl Node {
    /// Heap bytes owned by this node.
    fn heap_cost(&self) -> usize {
        alloc_cost(self.edge.len())
            + alloc_cost(self.children.capacity() * size_of::<(u32, u32)>())
            + alloc_cost(self.workers.capacity() * size_of::<(WorkerId, u64)>())
    }

    /// The key kind of the tree this node is in.
    pub fn kind(&self) -> KeyKind {
        if self.tokens {
            KeyKind::Tokens
        } else {
            KeyKind::Text
        }
    }

    /// The child whose edge starts with `unit`.
    pub fn child(&self, unit: u32) -> Option<u32> {
        self.children
            .binary_search_by_key(&unit, |&(u, _)| u)
            .ok()
            .map(|i| self.children[i].1)
    }

    /// The tick of `worker` on this node, if it is listed.
    pub fn tick_of(&self, worker: WorkerId) -> Option<u64> {
        self.workers
            .iter()
            .find(|(w, _)| *w == worker)
            .map(|&(_, t)| t)
    }

    /// The unit key this node is registered under in its parent.
    pub fn unit(&self) -> u32 {
        unit_key(self.kind(), &self.edge)
    }
}

/// The node slab with exact heap accounting.
#[derive(Debug, Default)]
pub(super) struct Slab {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Heap bytes owned by live nodes.
    heap: usize,
    /// Total edge bytes of live nodes.
    edge_bytes: usize,
    /// Most slots the slab may ever hold.
    limit: usize,
}

impl Slab {
    /// A slab of at most `limit` slots.
    pub fn new(limit: usize) -> Slab {
        Slab {
            limit: limit.max(4),
            ..Slab::default()
        }
    }

    /// Bytes held: slots (used or not), free list and the nodes' heap.
    pub fn bytes(&self) -> usize {
        alloc_cost(self.nodes.capacity() * size_of::<Node>())
            + alloc_cost(self.free.capacity() * size_of::<u32>())
            + self.heap
    }

    /// Total edge bytes stored.
    pub fn edge_bytes(&self) -> usize {
        self.edge_bytes
    }

    /// Live nodes.
    pub fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Slot count: ids range over `0..len()`.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Slots available without growing.
    pub fn spare(&self) -> usize {
        self.free.len() + (self.nodes.capacity() - self.nodes.len())
    }

    /// Grows the slot capacity (doubling, up to the limit). False when at the limit.
    pub fn grow(&mut self) -> bool {
        let cap = self.nodes.capacity();
        let target = (cap * 2).max(16).min(self.limit);
        if target <= cap {
            return false;
        }
        self.nodes.reserve_exact(target - self.nodes.len());
        self.free.reserve_exact(target - self.free.len());
        true
    }

    /// The node `id`.
    pub fn get(&self, id: u32) -> &Node {
        &self.nodes[id as usize]
    }

    /// Edits node `id`, keeping the accounting exact.
    pub fn edit<R>(&mut self, id: u32, f: impl FnOnce(&mut Node) -> R) -> R {
        let node = &mut self.nodes[id as usize];
        let (heap, edge) = (node.heap_cost(), node.edge.len());
        let r = f(node);
        self.heap = self.heap - heap + node.heap_cost();
        self.edge_bytes = self.edge_bytes - edge + node.edge.len();
        r
    }

    /// Stores `node` in a free slot. The caller made room with [`Slab::spare`]/[`Slab::grow`];
    /// without room the vector grows on its own (still accounted).
    pub fn alloc(&mut self, mut node: Node) -> u32 {
        node.live = true;
        self.heap += node.heap_cost();
        self.edge_bytes += node.edge.len();
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = node;
            id
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    /// Releases node `id` (its heap is dropped at once) to the free list.
    pub fn release(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize];
        if !node.live {
            return;
        }
        self.heap -= node.heap_cost();
        self.edge_bytes -= node.edge.len();
        *node = Node::default();
        self.free.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_cost_rounds_like_malloc() {
        assert_eq!(alloc_cost(0), 0);
        assert_eq!(alloc_cost(1), 32);
        assert_eq!(alloc_cost(24), 32);
        assert_eq!(alloc_cost(25), 48);
        assert_eq!(alloc_cost(1000), 1008);
    }

    #[test]
    fn slab_reuses_slots_and_accounts_heap() {
        let mut slab = Slab::new(64);
        assert!(slab.grow());
        let a = slab.alloc(Node {
            edge: b"hello".to_vec().into(),
            ..Node::default()
        });
        assert_eq!(slab.edge_bytes(), 5);
        let with_node = slab.bytes();
        slab.release(a);
        assert_eq!(slab.edge_bytes(), 0);
        assert!(slab.bytes() < with_node);
        let b = slab.alloc(Node::default());
        assert_eq!(a, b);
        assert_eq!(slab.live(), 1);
    }
}
