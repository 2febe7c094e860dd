//! Reconciling a discovered worker set with what discovery last applied to the router.
//!
//! Discovery (Kubernetes watches in the ext_proc shell) produces the *desired* set of
//! endpoints, keyed by `ip:port`; [`reconcile`] compares it with the set it *applied* last
//! time and says which workers to add or update and which to remove. It is a pure function,
//! so the shell only performs the resulting calls.

use std::collections::BTreeMap;

use crate::worker::WorkerSpec;

/// What to change in the router to go from the applied set to the desired one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Workers to add, or whose spec changed (models, adapters, engine, labels).
    pub upsert: Vec<WorkerSpec>,
    /// Addresses of workers to remove (gone, not ready, or no longer selected).
    pub remove: Vec<String>,
}

impl Reconcile {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The changes turning `applied` into `desired` (both keyed by `ip:port`). Unchanged workers
/// are left alone, so their health, counters and policy state survive.
pub fn reconcile(
    applied: &BTreeMap<String, WorkerSpec>,
    desired: &BTreeMap<String, WorkerSpec>,
) -> Reconcile {
    let remove = applied
        .keys()
        .filter(|address| !desired.contains_key(*address))
        .cloned()
        .collect();
    let upsert = desired
        .iter()
        .filter(|(address, spec)| applied.get(*address) != Some(*spec))
        .map(|(_, spec)| spec.clone())
        .collect();
    Reconcile { upsert, remove }
}

/// Merges several sources' endpoint lists into one desired set keyed by address. When two
/// sources name the same address the first one (in iteration order) wins.
pub fn merge<'a>(
    sources: impl IntoIterator<Item = &'a [WorkerSpec]>,
) -> BTreeMap<String, WorkerSpec> {
    let mut desired = BTreeMap::new();
    for specs in sources {
        for spec in specs {
            desired
                .entry(spec.address.clone())
                .or_insert_with(|| spec.clone());
        }
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: &str, model: &str) -> WorkerSpec {
        WorkerSpec {
            models: vec![model.to_owned()],
            ..WorkerSpec::new(address)
        }
    }

    fn set(specs: &[WorkerSpec]) -> BTreeMap<String, WorkerSpec> {
        merge([specs])
    }

    #[test]
    fn adds_updates_and_removes_only_what_changed() {
        let applied = set(&[spec("10.0.0.1:8000", "a"), spec("10.0.0.2:8000", "a")]);
        let desired = set(&[
            spec("10.0.0.1:8000", "a"),
            spec("10.0.0.2:8000", "b"),
            spec("10.0.0.3:8000", "a"),
        ]);
        let r = reconcile(&applied, &desired);
        assert_eq!(
            r.upsert,
            vec![spec("10.0.0.2:8000", "b"), spec("10.0.0.3:8000", "a")]
        );
        assert!(r.remove.is_empty());

        let r = reconcile(&desired, &set(&[spec("10.0.0.3:8000", "a")]));
        assert!(r.upsert.is_empty());
        assert_eq!(r.remove, vec!["10.0.0.1:8000", "10.0.0.2:8000"]);
    }

    #[test]
    fn same_set_is_a_no_op_and_empty_desired_removes_all() {
        let applied = set(&[spec("10.0.0.1:8000", "a")]);
        assert!(reconcile(&applied, &applied.clone()).is_empty());
        let r = reconcile(&applied, &BTreeMap::new());
        assert_eq!(r.remove, vec!["10.0.0.1:8000"]);
    }

    #[test]
    fn merge_keeps_the_first_source_on_duplicate_addresses() {
        let first = [spec("10.0.0.1:8000", "a")];
        let second = [spec("10.0.0.1:8000", "b"), spec("10.0.0.2:8000", "b")];
        let merged = merge([&first[..], &second[..]]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged["10.0.0.1:8000"].models, vec!["a".to_string()]);
    }
}
