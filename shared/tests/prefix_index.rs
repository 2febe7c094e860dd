//! Property tests of the prefix index against a naive model, its memory bound, and its memory
//! accounting against real allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kvroute_core::WorkerId;
use kvroute_core::prefix_index::{MIN_MAX_BYTES, Namespace, PrefixIndex, PrefixKey};
use proptest::prelude::*;

/// Counts the heap bytes allocated by the current thread (tests run on several threads).
struct CountingAlloc;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + delta));
}

fn live_bytes() -> isize {
    LIVE_BYTES.with(|c| c.get())
}

// SAFETY: every call forwards to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const NAMESPACES: [Namespace<'static>; 3] = [
    Namespace {
        model: "m",
        lora: None,
        cache_salt: None,
    },
    Namespace {
        model: "m",
        lora: Some("adapter"),
        cache_salt: None,
    },
    Namespace {
        model: "m",
        lora: None,
        cache_salt: Some("salt"),
    },
];

#[derive(Clone, Debug, PartialEq)]
enum Key {
    Text(String),
    Tokens(Vec<u32>),
}

impl Key {
    fn prefix_key(&self) -> PrefixKey<'_> {
        match self {
            Key::Text(t) => PrefixKey::text(t),
            Key::Tokens(ids) => PrefixKey::tokens(ids),
        }
    }

    /// The naive matched length of `self` against `stored`: the common byte prefix, cut back
    /// to a whole char or token. 0 across kinds.
    fn naive_match(&self, stored: &Key) -> usize {
        match (self, stored) {
            (Key::Text(q), Key::Text(s)) => {
                let mut n = q.bytes().zip(s.bytes()).take_while(|(a, b)| a == b).count();
                while !q.is_char_boundary(n) {
                    n -= 1;
                }
                n
            }
            (Key::Tokens(q), Key::Tokens(s)) => {
                4 * q.iter().zip(s).take_while(|(a, b)| a == b).count()
            }
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert { ns: usize, key: Key, worker: u32 },
    Remove(u32),
}

/// Short keys over an alphabet of chars sharing lead bytes ('é'/'è'), so prefixes collide.
fn small_key() -> impl Strategy<Value = Key> {
    let text = prop::collection::vec(
        prop::sample::select(vec!["a", "b", "é", "è", "€", "😀"]),
        0..10,
    )
    .prop_map(|v| Key::Text(v.concat()));
    let tokens = prop::collection::vec(prop::sample::select(vec![1u32, 2, 0x0100, 0x0101]), 0..8)
        .prop_map(Key::Tokens);
    prop_oneof![3 => text, 1 => tokens]
}

fn small_ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        12 => (0..3usize, small_key(), 0..4u32).prop_map(|(ns, key, worker)| Op::Insert { ns, key, worker }),
        1 => (0..4u32).prop_map(Op::Remove),
    ];
    prop::collection::vec(op, 0..40)
}

/// Long keys (up to ~12 KiB) so a 64 KiB index evicts all the time.
fn big_ops() -> impl Strategy<Value = Vec<Op>> {
    let piece = prop::sample::select(vec!["system prompt ", "é", "€€", "x", "\u{1F600}"]);
    let text = prop::collection::vec(piece, 0..1500).prop_map(|v| Key::Text(v.concat()));
    let tokens = prop::collection::vec(0..3u32, 0..2000).prop_map(Key::Tokens);
    let key = prop_oneof![3 => text, 1 => tokens];
    let op = prop_oneof![
        20 => (0..3usize, key, 0..6u32).prop_map(|(ns, key, worker)| Op::Insert { ns, key, worker }),
        1 => (0..6u32).prop_map(Op::Remove),
    ];
    prop::collection::vec(op, 1..60)
}

fn apply(index: &mut PrefixIndex, op: &Op) {
    match op {
        Op::Insert { ns, key, worker } => {
            index.insert(&NAMESPACES[*ns], &key.prefix_key(), WorkerId(*worker))
        }
        Op::Remove(w) => index.remove_worker(WorkerId(*w)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn bound_holds_under_random_inserts_and_removes(ops in big_ops()) {
        let mut index = PrefixIndex::new(MIN_MAX_BYTES);
        for op in &ops {
            apply(&mut index, op);
            prop_assert!(index.bytes_used() <= index.max_bytes());
            prop_assert_eq!(index.validate(), Ok(()));
        }
    }

    #[test]
    fn matches_equal_naive_reference(ops in small_ops(), queries in prop::collection::vec((0..3usize, small_key()), 1..20)) {
        let mut index = PrefixIndex::default();
        let mut model: Vec<(usize, u32, Key)> = Vec::new();
        for op in &ops {
            apply(&mut index, op);
            match op {
                Op::Insert { ns, key, worker } => model.push((*ns, *worker, key.clone())),
                Op::Remove(w) => model.retain(|(_, worker, _)| worker != w),
            }
        }
        prop_assert_eq!(index.validate(), Ok(()));
        for (ns, query) in &queries {
            let m = index.match_prefix(&NAMESPACES[*ns], &query.prefix_key());
            for w in 0..4u32 {
                let expected = model
                    .iter()
                    .filter(|(n, worker, _)| n == ns && *worker == w)
                    .map(|(_, _, k)| query.naive_match(k))
                    .max()
                    .unwrap_or(0);
                prop_assert_eq!(m.matched(WorkerId(w)), expected, "worker {} query {:?}", w, query);
            }
        }
    }

    #[test]
    fn edges_never_split_inside_a_char(words in prop::collection::vec(prop::collection::vec(prop::sample::select(vec!["é", "è", "ê", "€", "₤", "😀", "😁"]), 1..12), 1..30)) {
        let mut index = PrefixIndex::default();
        for (i, w) in words.iter().enumerate() {
            let text = w.concat();
            index.insert(&NAMESPACES[0], &PrefixKey::text(&text), WorkerId(i as u32 % 3));
            // validate() checks that every text edge is valid UTF-8 on its own.
            prop_assert_eq!(index.validate(), Ok(()));
            let m = index.match_prefix(&NAMESPACES[0], &PrefixKey::text(&text));
            for (_, n) in m.iter() {
                prop_assert!(text.is_char_boundary(n));
            }
        }
    }
}

/// A shared-prefix mix: `systems` system prompts of ~2 KiB, then a unique ~6 KiB tail.
fn mixed_prompt(i: usize, systems: usize) -> String {
    let system = format!(
        "System prompt #{}: you are a careful assistant. ",
        i % systems
    )
    .repeat(40);
    let tail: String = (0..600)
        .map(|j| format!("w{:x} ", (i * 7919 + j * 31) % 65_521))
        .collect();
    format!("{system}{tail}")
}

#[test]
fn accounting_matches_real_allocation() {
    let before = live_bytes();
    let mut index = PrefixIndex::default();
    let prompts: Vec<String> = (0..2000).map(|i| mixed_prompt(i, 20)).collect();
    let prompts_bytes = live_bytes();
    for (i, p) in prompts.iter().enumerate() {
        index.insert(
            &NAMESPACES[i % 2],
            &PrefixKey::text(p),
            WorkerId((i % 8) as u32),
        );
    }
    let real = (live_bytes() - prompts_bytes) as f64;
    let accounted = index.bytes_used() as f64;
    assert!(before <= prompts_bytes);
    println!(
        "real {real} B, accounted {accounted} B, stored {} B, {:.3} accounted B per stored B",
        index.stored_bytes(),
        accounted / index.stored_bytes() as f64
    );
    // Accounting is an upper bound of what was really requested, and not a wild one.
    assert!(real <= accounted, "real {real} > accounted {accounted}");
    assert!(
        accounted <= real * 1.5,
        "accounted {accounted} vs real {real}"
    );
    assert!(accounted / (index.stored_bytes() as f64) <= 3.0);
    assert_eq!(index.validate(), Ok(()));
}

#[test]
fn real_allocation_stays_under_the_bound_while_evicting() {
    let bound = 1 << 20;
    let start = live_bytes();
    let mut index = PrefixIndex::new(bound);
    let mut peak = 0;
    for i in 0..1500 {
        let prompt = mixed_prompt(i, 30);
        index.insert(
            &NAMESPACES[0],
            &PrefixKey::text(&prompt),
            WorkerId((i % 4) as u32),
        );
        drop(prompt);
        peak = peak.max(live_bytes() - start);
        assert!(index.bytes_used() <= bound);
    }
    assert!(peak as usize <= bound, "peak {peak}");
    assert_eq!(index.validate(), Ok(()));
}
