//! Unit tests of the index.

use super::*;

fn ns() -> Namespace<'static> {
    Namespace {
        model: "m",
        lora: None,
        cache_salt: None,
    }
}

const A: WorkerId = WorkerId(0);
const B: WorkerId = WorkerId(1);

#[test]
fn match_follows_the_deepest_listing_node() {
    let mut idx = PrefixIndex::default();
    idx.insert(&ns(), &PrefixKey::text("hello world"), A);
    idx.insert(&ns(), &PrefixKey::text("hello there"), B);
    let m = idx.match_prefix(&ns(), &PrefixKey::text("hello world!"));
    assert_eq!(m.matched(A), 11);
    assert_eq!(m.matched(B), 6);
    assert_eq!(m.key_len(), 12);
    let m = idx.match_prefix(&ns(), &PrefixKey::text("hello wo"));
    assert_eq!(m.matched(A), 8);
    assert_eq!(m.matched(B), 6);
    assert_eq!(
        idx.match_prefix(&ns(), &PrefixKey::text("bye"))
            .iter()
            .count(),
        0
    );
    assert_eq!(idx.worker_size(A), 11);
    assert_eq!(idx.worker_size(B), 11);
    assert_eq!(idx.stored_bytes(), 16);
}

#[test]
fn matches_never_end_inside_a_char() {
    let mut idx = PrefixIndex::default();
    idx.insert(&ns(), &PrefixKey::text("café"), A);
    // 'é' (C3 A9) and 'è' (C3 A8) share their first byte.
    let m = idx.match_prefix(&ns(), &PrefixKey::text("cafè"));
    assert_eq!(m.matched(A), 3);
    idx.insert(&ns(), &PrefixKey::text("cafè"), B);
    assert_eq!(
        idx.match_prefix(&ns(), &PrefixKey::text("café")).matched(A),
        5
    );
    assert_eq!(
        idx.match_prefix(&ns(), &PrefixKey::text("cafè")).matched(B),
        5
    );
    assert_eq!(
        idx.match_prefix(&ns(), &PrefixKey::text("cafè")).matched(A),
        3
    );
}

#[test]
fn token_keys_split_on_whole_tokens() {
    let mut idx = PrefixIndex::default();
    idx.insert(&ns(), &PrefixKey::tokens(&[1, 2, 0x0300]), A);
    // 0x0300 and 0x0301 share 3 of their 4 bytes.
    let m = idx.match_prefix(&ns(), &PrefixKey::tokens(&[1, 2, 0x0301]));
    assert_eq!(m.matched(A), 8);
    // Text and tokens never share a tree.
    assert_eq!(
        idx.match_prefix(&ns(), &PrefixKey::text("\u{1}"))
            .matched(A),
        0
    );
}

#[test]
fn namespaces_are_isolated() {
    let mut idx = PrefixIndex::default();
    idx.insert(&ns(), &PrefixKey::text("shared prompt"), A);
    let salted = Namespace {
        cache_salt: Some("s"),
        ..ns()
    };
    let lora = Namespace {
        lora: Some("l"),
        ..ns()
    };
    let key = PrefixKey::text("shared prompt");
    assert_eq!(idx.match_prefix(&salted, &key).matched(A), 0);
    assert_eq!(idx.match_prefix(&lora, &key).matched(A), 0);
    assert_eq!(idx.match_prefix(&ns(), &key).matched(A), 13);
}

#[test]
fn remove_worker_purges_and_frees() {
    let mut idx = PrefixIndex::default();
    let empty = idx.bytes_used();
    idx.insert(&ns(), &PrefixKey::text("abcdef"), A);
    idx.insert(&ns(), &PrefixKey::text("abcxyz"), B);
    idx.remove_worker(A);
    let m = idx.match_prefix(&ns(), &PrefixKey::text("abcdef"));
    assert_eq!(m.matched(A), 0);
    assert_eq!(m.matched(B), 3);
    assert_eq!(idx.worker_size(A), 0);
    assert_eq!(idx.stored_bytes(), 6);
    idx.remove_worker(B);
    assert_eq!(idx.node_count(), 0);
    assert_eq!(idx.stored_bytes(), 0);
    // Only retained capacity (slots, empty maps) remains.
    assert!(idx.bytes_used() < empty + (16 << 10));
}

#[test]
fn insert_after_match_reuses_the_walk() {
    let mut idx = PrefixIndex::default();
    idx.insert(&ns(), &PrefixKey::text("system prompt: be brief. Q1"), A);
    let key = PrefixKey::text("system prompt: be brief. Q2");
    let m = idx.match_prefix(&ns(), &key);
    assert_eq!(m.matched(A), 26);
    idx.insert_matched(&ns(), &key, &m, B);
    let m2 = idx.match_prefix(&ns(), &key);
    assert_eq!(m2.matched(B), key.len());
    assert_eq!(m2.matched(A), 26);
    // A stale match (the index changed since) is not trusted.
    idx.insert_matched(
        &ns(),
        &PrefixKey::text("system prompt: be brief. Q1"),
        &m,
        B,
    );
    let m3 = idx.match_prefix(&ns(), &PrefixKey::text("system prompt: be brief. Q1"));
    assert_eq!(m3.matched(B), 27);
}

#[test]
fn eviction_keeps_the_bound_and_drops_the_oldest() {
    let mut idx = PrefixIndex::new(MIN_MAX_BYTES);
    let prompt = |i: usize| format!("{i:06}-{}", "x".repeat(1000));
    for i in 0..500 {
        idx.insert(
            &ns(),
            &PrefixKey::text(&prompt(i)),
            WorkerId((i % 3) as u32),
        );
        assert!(idx.bytes_used() <= idx.max_bytes());
    }
    let newest = idx.match_prefix(&ns(), &PrefixKey::text(&prompt(499)));
    assert_eq!(newest.matched(WorkerId(499 % 3)), 1007);
    let oldest = idx.match_prefix(&ns(), &PrefixKey::text(&prompt(0)));
    assert!(oldest.matched(WorkerId(0)) < 1007);
}

#[test]
fn oversized_keys_are_cut_on_a_boundary() {
    let mut idx = PrefixIndex::new(MIN_MAX_BYTES);
    let long = "é".repeat(MIN_MAX_BYTES);
    idx.insert(&ns(), &PrefixKey::text(&long), A);
    assert!(idx.bytes_used() <= idx.max_bytes());
    let m = idx.match_prefix(&ns(), &PrefixKey::text(&long));
    assert!(m.matched(A) > 0 && m.matched(A).is_multiple_of(2));
}
