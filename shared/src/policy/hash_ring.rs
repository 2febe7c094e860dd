//! A consistent-hash ring over worker addresses with bounded loads, shared by
//! `consistent_hash` and `prefix_hash`.
//!
//! Each worker owns `virtual_nodes` points, placed by hashing its address (xxh3, seeded with
//! the point's index), so a worker keeps its points across restarts of the router and a join
//! or leave moves only the keys of the arcs it gains or loses: about 1/N of them.
//!
//! The ring holds every worker the policy has seen until it is removed from the router;
//! unhealthy, draining or out-of-subset workers stay on it and are skipped when walking. A
//! walk that skips members visits the remaining ones in exactly the order a ring built from
//! them alone would, so per request the ring is only topped up with newcomers (a cheap
//! membership check) and never rebuilt for a changing candidate list.
//!
//! Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads"): a worker whose load after taking the request would exceed
//! `ceil(c * (total_load + 1) / n)` is passed over for the next one clockwise. With `c >= 1`
//! some candidate is always within the bound.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::worker::{Worker, WorkerId};

/// Virtual nodes per worker unless configured.
pub(super) const DEFAULT_VIRTUAL_NODES: u32 = 160;
/// Bounded-load factor `c` unless configured.
pub(super) const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// The ring: points sorted by hash, each owned by a worker.
#[derive(Debug, Default)]
pub(super) struct HashRing {
    virtual_nodes: u32,
    points: Vec<(u64, WorkerId)>,
    /// Ids on the ring, sorted.
    members: Vec<WorkerId>,
}

impl HashRing {
    /// An empty ring placing `virtual_nodes` points per worker (at least 1).
    pub(super) fn new(virtual_nodes: u32) -> HashRing {
        HashRing {
            virtual_nodes: virtual_nodes.max(1),
            ..HashRing::default()
        }
    }

    /// Adds the candidates that are not on the ring yet.
    pub(super) fn add_missing(&mut self, candidates: &[&Worker]) {
        let mut added = false;
        for w in candidates {
            if let Err(pos) = self.members.binary_search(&w.id) {
                self.members.insert(pos, w.id);
                let addr = w.spec.address.as_bytes();
                self.points.extend(
                    (0..self.virtual_nodes).map(|i| (xxh3_64_with_seed(addr, u64::from(i)), w.id)),
                );
                added = true;
            }
        }
        if added {
            self.points.sort_unstable();
        }
    }

    /// Takes a worker off the ring.
    pub(super) fn remove(&mut self, id: WorkerId) {
        if let Ok(pos) = self.members.binary_search(&id) {
            self.members.remove(pos);
            self.points.retain(|p| p.1 != id);
        }
    }

    /// Number of workers on the ring.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// The candidates in ring order from `key`'s position, each once. Candidates must have
    /// been added with [`HashRing::add_missing`]; any that were not come last.
    pub(super) fn walk(&self, key: u64, candidates: &[&Worker]) -> Vec<WorkerId> {
        let mut ids: Vec<(WorkerId, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id, i))
            .collect();
        ids.sort_unstable();
        let mut seen = vec![false; candidates.len()];
        let mut order = Vec::with_capacity(candidates.len());
        let start = self.points.partition_point(|p| p.0 < key);
        let (before, after) = self.points.split_at(start);
        for &(_, id) in after.iter().chain(before) {
            if order.len() == candidates.len() {
                break;
            }
            if let Ok(k) = ids.binary_search_by_key(&id, |e| e.0) {
                let idx = ids[k].1;
                if !seen[idx] {
                    seen[idx] = true;
                    order.push(id);
                }
            }
        }
        order.extend(
            candidates
                .iter()
                .enumerate()
                .filter(|(i, _)| !seen[*i])
                .map(|(_, w)| w.id),
        );
        order
    }

    /// Ring order from `key` with the first worker within the load bound moved to the front:
    /// the choice, then the ring order as fallbacks.
    pub(super) fn rank_bounded(
        &self,
        key: u64,
        candidates: &[&Worker],
        load_factor: f64,
    ) -> Vec<WorkerId> {
        let mut order = self.walk(key, candidates);
        let bound = load_bound(candidates, load_factor);
        let load_of = |id: WorkerId| {
            candidates
                .iter()
                .find(|w| w.id == id)
                .map_or(u64::MAX, |w| u64::from(w.load()))
        };
        if let Some(pos) = order.iter().position(|&id| load_of(id) < bound) {
            order[..=pos].rotate_right(1);
        }
        order
    }
}

/// `ceil(c * (total + 1) / n)`, with `c` taken as at least 1 so that the least-loaded
/// candidate always fits. A worker may take the request if its load is below this.
pub(super) fn load_bound(candidates: &[&Worker], load_factor: f64) -> u64 {
    let total: u64 = candidates.iter().map(|w| u64::from(w.load())).sum();
    let n = candidates.len().max(1) as f64;
    let c = if load_factor.is_finite() {
        load_factor.max(1.0)
    } else {
        1.0
    };
    (c * (total + 1) as f64 / n).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests_support::workers;

    fn refs(ws: &[Worker]) -> Vec<&Worker> {
        ws.iter().collect()
    }

    #[test]
    fn walk_visits_every_candidate_once_and_subsets_keep_order() {
        let ws = workers(6);
        let all = refs(&ws);
        let mut ring = HashRing::new(DEFAULT_VIRTUAL_NODES);
        ring.add_missing(&all);
        assert_eq!(ring.len(), 6);
        for key in [0u64, 1 << 20, u64::MAX / 3, u64::MAX] {
            let order = ring.walk(key, &all);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..6).map(WorkerId).collect::<Vec<_>>());
            // The walk over a subset is the full walk with the others left out.
            let subset: Vec<&Worker> = all.iter().copied().filter(|w| w.id.0 % 2 == 0).collect();
            let expected: Vec<WorkerId> =
                order.iter().copied().filter(|id| id.0 % 2 == 0).collect();
            assert_eq!(ring.walk(key, &subset), expected);
        }
    }

    #[test]
    fn points_depend_only_on_addresses() {
        let ws = workers(4);
        let mut a = HashRing::new(40);
        a.add_missing(&refs(&ws));
        let mut b = HashRing::new(40);
        let rev: Vec<&Worker> = ws.iter().rev().collect();
        for w in &rev {
            b.add_missing(&[*w]);
        }
        assert_eq!(a.points, b.points);
        a.remove(WorkerId(2));
        assert_eq!(a.points.len(), 3 * 40);
        assert!(a.points.iter().all(|p| p.1 != WorkerId(2)));
    }

    #[test]
    fn bound_skips_overloaded_workers() {
        let mut ws = workers(3);
        let mut ring = HashRing::new(DEFAULT_VIRTUAL_NODES);
        ring.add_missing(&refs(&ws));
        let natural = ring.walk(42, &refs(&ws));
        // Load the natural choice far beyond the bound: the next one clockwise is chosen.
        ws.iter_mut()
            .find(|w| w.id == natural[0])
            .unwrap()
            .in_flight = 10;
        let ranked = ring.rank_bounded(42, &refs(&ws), 1.25);
        assert_eq!(ranked[0], natural[1]);
        assert_eq!(ranked[1], natural[0]);
        assert_eq!(ranked[2], natural[2]);
        assert_eq!(load_bound(&refs(&ws), 1.25), 5); // ceil(1.25 * 11 / 3)
        assert_eq!(load_bound(&refs(&ws), 0.1), 4); // c is at least 1
    }
}
