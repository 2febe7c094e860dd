//! Removing entries: LRU eviction under the memory bound, and purging a worker.

use super::PrefixIndex;
use super::node::{NIL, alloc_cost};
use crate::worker::WorkerId;

impl PrefixIndex {
    /// Evicts least recently used (leaf, worker) entries until the index is within its bound.
    pub(super) fn evict_to_bound(&mut self) {
        while self.bytes_used() > self.max_bytes {
            if !self.evict_one() {
                break;
            }
        }
    }

    /// Makes sure `n` node slots are available without going over the bound: grows the slab
    /// while it may, else evicts. False if even an empty index has no room (never, with the
    /// minimum bound).
    pub(super) fn reserve_slots(&mut self, n: usize) -> bool {
        while self.slab.spare() < n {
            if self.slab.grow() {
                continue;
            }
            if !self.evict_one() {
                return false;
            }
        }
        true
    }

    /// Pops the oldest LRU entry and evicts it if it is still a (leaf, worker) entry. False
    /// when there is nothing left to pop.
    fn evict_one(&mut self) -> bool {
        let Some((tick, id, worker)) = self.lru.pop_first() else {
            return false;
        };
        let node = self.slab.get(id);
        if !node.live || node.tick_of(worker) != Some(tick) || self.listed_below(id, worker) {
            // Stale (touched since, or reused), or not a leaf for this worker: its deepest
            // descendants carry their own entries.
            return true;
        }
        self.version += 1;
        let parent = node.parent;
        self.unlist(id, worker);
        if self.slab.get(id).workers.is_empty() && self.slab.get(id).children.is_empty() {
            self.free_node(id);
        }
        if parent != NIL
            && let Some(t) = self.slab.get(parent).tick_of(worker)
            && !self.listed_below(parent, worker)
        {
            self.lru.insert((t, parent, worker));
        }
        true
    }

    /// Whether a child of `id` lists `worker`.
    fn listed_below(&self, id: u32, worker: WorkerId) -> bool {
        self.slab
            .get(id)
            .children
            .iter()
            .any(|&(_, c)| self.slab.get(c).tick_of(worker).is_some())
    }

    /// Removes `worker` from node `id`, adjusting its size.
    fn unlist(&mut self, id: u32, worker: WorkerId) {
        let edge = self.slab.get(id).edge.len();
        let removed = self.slab.edit(id, |n| {
            let before = n.workers.len();
            n.workers.retain(|(w, _)| *w != worker);
            if n.workers.len() * 2 < n.workers.capacity() {
                n.workers.shrink_to_fit();
            }
            n.workers.len() < before
        });
        if removed && let Some(size) = self.sizes.get_mut(&worker) {
            *size = size.saturating_sub(edge);
            if *size == 0 {
                self.sizes.remove(&worker);
            }
        }
    }

    /// Frees node `id`, unlinking it from a live parent or dropping its tree if it is a root.
    fn free_node(&mut self, id: u32) {
        let node = self.slab.get(id);
        let parent = node.parent;
        if parent == NIL {
            if let Some(name) = self.root_names.remove(&id) {
                self.name_bytes -= 2 * alloc_cost(name.len());
                self.roots.remove(&name);
            }
        } else if self.slab.get(parent).live {
            let unit = node.unit();
            self.slab.edit(parent, |p| {
                if let Ok(i) = p.children.binary_search_by_key(&unit, |&(u, _)| u) {
                    p.children.remove(i);
                }
                if p.children.len() * 2 < p.children.capacity() {
                    p.children.shrink_to_fit();
                }
            });
        }
        self.slab.release(id);
    }

    /// Forgets `worker` everywhere, at once: its entries, its size and every node only it held.
    pub fn remove_worker(&mut self, worker: WorkerId) {
        self.version += 1;
        let mut emptied = Vec::new();
        for id in 0..self.slab.len() as u32 {
            let node = self.slab.get(id);
            if node.live && node.tick_of(worker).is_some() {
                self.unlist(id, worker);
                if self.slab.get(id).workers.is_empty() {
                    emptied.push(id);
                }
            }
        }
        // A node nobody holds has no holders below it either: free the whole set, parents
        // unlinking as they go (children of an already freed parent are simply released).
        for id in emptied {
            self.free_node(id);
        }
        self.lru.retain(|&(_, _, w)| w != worker);
        self.sizes.remove(&worker);
    }
}
