//! A full consistency check of the index, for tests and debugging.

use std::collections::HashMap;

use super::PrefixIndex;
use super::key::{KeyKind, unit_key};
use super::node::NIL;
use crate::worker::WorkerId;

impl PrefixIndex {
    /// Checks every structural invariant: parent/child links, children sorted by a unit that
    /// matches their edge, non-empty edges that are whole units (valid UTF-8 for text, whole
    /// tokens), each listed worker also listed on the parent, per-worker sizes, and the memory
    /// bound. Walks the whole index: O(size).
    pub fn validate(&self) -> Result<(), String> {
        let mut sizes: HashMap<WorkerId, usize> = HashMap::new();
        let mut live = 0;
        for id in 0..self.slab.len() as u32 {
            let node = self.slab.get(id);
            if !node.live {
                continue;
            }
            live += 1;
            let kind = node.kind();
            if node.parent == NIL {
                if !node.edge.is_empty() || !self.root_names.contains_key(&id) {
                    return Err(format!("root {id} has an edge or no namespace"));
                }
            } else {
                let parent = self.slab.get(node.parent);
                if !parent.live || parent.child(node.unit()) != Some(id) {
                    return Err(format!("node {id} is not linked from its parent"));
                }
                if node.edge.is_empty() {
                    return Err(format!("node {id} has an empty edge"));
                }
                let whole = match kind {
                    KeyKind::Text => std::str::from_utf8(&node.edge).is_ok(),
                    KeyKind::Tokens => node.edge.len().is_multiple_of(4),
                };
                if !whole {
                    return Err(format!("node {id} has an edge cut inside a unit"));
                }
                if let Some((w, _)) = node
                    .workers
                    .iter()
                    .find(|(w, _)| parent.tick_of(*w).is_none())
                {
                    return Err(format!("{w:?} listed on node {id} but not on its parent"));
                }
            }
            if node.workers.is_empty() {
                return Err(format!("node {id} is held by nobody"));
            }
            if !node.children.is_sorted_by_key(|&(u, _)| u) {
                return Err(format!("children of node {id} are not sorted"));
            }
            for &(unit, child) in &node.children {
                let c = self.slab.get(child);
                if !c.live || c.parent != id || unit_key(kind, &c.edge) != unit {
                    return Err(format!("bad child link {id} -> {child}"));
                }
            }
            for &(w, _) in &node.workers {
                *sizes.entry(w).or_default() += node.edge.len();
            }
        }
        if live != self.slab.live() {
            return Err(format!("{live} live nodes, slab says {}", self.slab.live()));
        }
        sizes.retain(|_, s| *s > 0);
        if sizes != self.sizes {
            return Err(format!("sizes {:?} != recorded {:?}", sizes, self.sizes));
        }
        if self.roots.len() != self.root_names.len() {
            return Err("roots and root names disagree".into());
        }
        if self.bytes_used() > self.max_bytes {
            return Err(format!(
                "{} bytes used > bound {}",
                self.bytes_used(),
                self.max_bytes
            ));
        }
        Ok(())
    }
}
