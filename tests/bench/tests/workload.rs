//! Workload generation: reproducibility, shapes, sharing structure, and the oracle on it.

use std::collections::HashMap;

use kvroute_bench::oracle::oracle;
use kvroute_bench::text::estimate_tokens;
use kvroute_bench::workload::{Role, ShapeOverrides, Workload, WorkloadKind};

fn small(kind: WorkloadKind, seed: u64) -> Workload {
    let o = ShapeOverrides {
        groups: Some(5),
        prompts_per_group: Some(4),
        system_tokens: Some(256),
        question_tokens: Some(32),
        output_tokens: Some(8),
        turns: Some(3),
        ..ShapeOverrides::default()
    };
    Workload::generate(kind, kind.shape(&o), seed, 4)
}

#[test]
fn same_seed_same_workload_other_seed_other_text() {
    let a = small(WorkloadKind::SharedPrefix, 42);
    assert_eq!(a, small(WorkloadKind::SharedPrefix, 42));
    let b = small(WorkloadKind::SharedPrefix, 43);
    assert_ne!(
        a.sessions[0].requests[0].prompt(),
        b.sessions[0].requests[0].prompt()
    );
}

#[test]
fn shared_prefix_shape_and_exact_system_sharing() {
    let w = small(WorkloadKind::SharedPrefix, 7);
    assert_eq!(w.len(), 20);
    let mut systems: HashMap<usize, String> = HashMap::new();
    let mut per_group: HashMap<usize, usize> = HashMap::new();
    let mut questions = Vec::new();
    for r in w.requests_in_order() {
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].role, Role::User);
        assert_eq!(r.max_tokens, 8);
        let system = &r.messages[0].content;
        assert_eq!(estimate_tokens(system, 4), 256);
        assert_eq!(estimate_tokens(&r.messages[1].content, 4), 32);
        // Prompt = system + "\n\n" + question: 288 tokens plus the separator.
        let tokens = estimate_tokens(&r.prompt(), 4);
        assert!((288..=290).contains(&tokens), "{tokens}");
        assert_eq!(r.prompt(), format!("{system}\n\n{}", r.messages[1].content));
        assert_eq!(
            systems.entry(r.group).or_insert_with(|| system.clone()),
            system
        );
        *per_group.entry(r.group).or_default() += 1;
        questions.push(r.messages[1].content.clone());
    }
    assert_eq!(per_group.len(), 5);
    assert!(per_group.values().all(|&n| n == 4));
    // Different groups share no prefix block at all, questions are all distinct.
    let firsts: Vec<&str> = systems.values().map(|s| &s[..64]).collect();
    for (i, a) in firsts.iter().enumerate() {
        assert!(firsts[i + 1..].iter().all(|b| a != b));
    }
    questions.sort();
    questions.dedup();
    assert_eq!(questions.len(), 20);
    // Interleaved: the order is not simply group by group.
    let groups: Vec<usize> = w.requests_in_order().iter().map(|r| r.group).collect();
    let mut sorted = groups.clone();
    sorted.sort();
    assert_ne!(groups, sorted);
    // Request ids follow the canonical order.
    let ids: Vec<usize> = w.requests_in_order().iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
}

#[test]
fn oracle_of_shared_prefix_matches_closed_form() {
    let w = small(WorkloadKind::SharedPrefix, 3);
    let prompts: Vec<String> = w.requests_in_order().iter().map(|r| r.prompt()).collect();
    let o = oracle(prompts.iter().map(String::as_str), 4, 16);
    // Every request but the first of its group hits the whole system prompt plus separator,
    // in whole blocks: floor((1024 + 2) / 64) = 16 blocks of 16 tokens.
    assert_eq!(o.hit_tokens, 5 * 3 * 256);
    let prompt_tokens: u64 = prompts.iter().map(|p| estimate_tokens(p, 4) as u64).sum();
    assert_eq!(o.prompt_tokens, prompt_tokens);
}

#[test]
fn multi_turn_turns_extend_the_previous_turn() {
    let w = small(WorkloadKind::MultiTurn, 11);
    assert_eq!(w.sessions.len(), 20);
    assert_eq!(w.len(), 60);
    for s in &w.sessions {
        assert_eq!(s.requests.len(), 3);
        for (t, pair) in s.requests.windows(2).enumerate() {
            let (prev, next) = (&pair[0], &pair[1]);
            assert_eq!(next.turn, t + 1);
            assert_eq!(next.messages.len(), prev.messages.len() + 2);
            assert_eq!(next.messages[..prev.messages.len()], prev.messages[..]);
            let answer = &next.messages[prev.messages.len()];
            assert_eq!(answer.role, Role::Assistant);
            assert_eq!(estimate_tokens(&answer.content, 4), 8);
            assert!(next.prompt().starts_with(&prev.prompt()));
            assert!(prev.id < next.id);
        }
    }
}

#[test]
fn default_shapes_scale_and_zipf() {
    let none = ShapeOverrides::default();
    let sp = WorkloadKind::SharedPrefix.shape(&none);
    assert_eq!(
        (
            sp.groups,
            sp.prompts_per_group,
            sp.system_tokens,
            sp.question_tokens,
            sp.output_tokens
        ),
        (64, 16, 2048, 128, 256)
    );
    let hi = WorkloadKind::GieHighCache.shape(&none);
    assert_eq!(
        (
            hi.groups,
            hi.prompts_per_group,
            hi.system_tokens,
            hi.question_tokens
        ),
        (256, 16, 2048, 256)
    );
    let lo = WorkloadKind::GieLowCache.shape(&none);
    assert_eq!(
        (
            lo.groups,
            lo.system_tokens,
            lo.question_tokens,
            lo.output_tokens
        ),
        (256, 256, 2048, 256)
    );
    let scaled = WorkloadKind::SharedPrefix.shape(&ShapeOverrides {
        scale: Some(0.25),
        ..ShapeOverrides::default()
    });
    assert_eq!((scaled.groups, scaled.prompts_per_group), (16, 16));
    // Zipf: same total, the most popular group gets far more than the least popular one.
    let zipf = WorkloadKind::SharedPrefix.shape(&ShapeOverrides {
        groups: Some(8),
        prompts_per_group: Some(50),
        system_tokens: Some(16),
        question_tokens: Some(4),
        zipf: Some(1.2),
        ..ShapeOverrides::default()
    });
    let w = Workload::generate(WorkloadKind::SharedPrefix, zipf, 5, 4);
    assert_eq!(w.len(), 400);
    let mut counts = [0usize; 8];
    for r in w.requests_in_order() {
        counts[r.group] += 1;
    }
    assert!(counts[0] > 3 * counts[7].max(1), "{counts:?}");
}

#[test]
fn chunks_cover_sessions_once() {
    let w = small(WorkloadKind::SharedPrefix, 1);
    let chunks = w.chunks(6);
    assert_eq!(chunks, vec![0..6, 6..12, 12..18, 18..20]);
    assert_eq!(w.chunks(0).len(), 20);
}
