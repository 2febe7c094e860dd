use std::collections::BTreeSet;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;
use crate::policy::PolicyConfig;
use crate::policy::tests_support::{env_rng, request, workers};
use crate::request::Prompt;
use crate::worker::LoadReport;

fn text(s: String) -> Prompt<'static> {
    Prompt::Text(s.into())
}

fn route_req(
    p: &mut ScorerPolicy,
    candidates: &[&Worker],
    req: &RouteRequest<'_>,
    rng: &mut dyn rand::RngCore,
) -> Pick {
    let mut env = PolicyEnv { now_ms: 0, rng };
    p.pick(req, candidates, &mut env)
}

fn route(p: &mut ScorerPolicy, ws: &[Worker], prompt: &Prompt<'_>, rng: &mut SmallRng) -> Pick {
    let candidates: Vec<&Worker> = ws.iter().collect();
    route_req(p, &candidates, &request(prompt), rng)
}

fn load(waiting: u32, running: u32, kv: f32) -> Option<LoadReport> {
    Some(LoadReport {
        waiting,
        running,
        kv_cache_usage: kv,
        observed_at_ms: 0,
    })
}

fn shared_prefix() -> String {
    "You are a helpful assistant. ".repeat(70)
}

#[test]
fn scores_match_hand_computation() {
    let ws = workers(3);
    let sig = |i: usize, prefix: f64, queue: u32, running: u32, kv: Option<f64>| Signals {
        prefix,
        queue,
        running,
        kv_cache: kv,
        lora: true,
        session: i == 1,
    };
    let signals = [
        sig(0, 1.0, 2, 1, Some(0.2)),
        sig(1, 0.5, 4, 3, None),
        sig(2, 0.0, 0, 0, Some(0.6)),
    ];
    let s = Scores::compute(&signals, &ScorerWeights::default());
    assert_eq!(s.queue, vec![0.5, 0.0, 1.0]);
    assert_eq!(s.running, vec![1.0 - 1.0 / 3.0, 0.0, 1.0]);
    // Unknown KV use counts as the mean of the known ones (0.4).
    let kv: Vec<f64> = s.kv_cache.iter().map(|v| (v * 1e9).round() / 1e9).collect();
    assert_eq!(kv, vec![0.8, 0.6, 0.4]);
    // prefix 3, queue 2, running 0, kv 2, lora 1, session 1.
    let expected = [
        3.0 + 2.0 * 0.5 + 2.0 * 0.8 + 1.0,
        1.5 + 0.0 + 2.0 * 0.6 + 1.0 + 1.0,
        0.0 + 2.0 + 2.0 * 0.4 + 1.0,
    ];
    for (got, want) in s.total.iter().zip(expected) {
        assert!((got - want).abs() < 1e-9, "{:?} vs {expected:?}", s.total);
    }
    let _ = ws;
}

#[test]
fn idle_workers_all_score_one_on_load() {
    let ws = workers(3);
    let signals: Vec<Signals> = ws.iter().map(|w| Signals::of(w, 0.0, None, None)).collect();
    let s = Scores::compute(&signals, &ScorerWeights::default());
    assert_eq!(s.queue, vec![1.0; 3]);
    assert_eq!(s.kv_cache, vec![1.0; 3]);
    assert_eq!(s.total, vec![2.0 + 2.0 + 1.0; 3]);
}

#[test]
fn signals_use_engine_load_else_in_flight() {
    let mut ws = workers(2);
    ws[0].in_flight = 3;
    ws[1].in_flight = 3;
    ws[1].load = load(5, 2, 0.7);
    let a = Signals::of(&ws[0], 0.25, Some("sql"), Some(WorkerId(0)));
    assert_eq!((a.queue, a.running, a.kv_cache), (3, 3, None));
    assert!(a.session && !a.lora);
    let b = Signals::of(&ws[1], 2.0, None, Some(WorkerId(0)));
    assert_eq!((b.queue, b.running), (5, 2));
    assert!((b.kv_cache.unwrap() - 0.7).abs() < 1e-6);
    assert_eq!(b.prefix, 1.0);
    assert!(b.lora && !b.session);
}

#[test]
fn in_flight_elsewhere_counts_when_no_engine_load_is_known() {
    let mut ws = workers(1);
    ws[0].in_flight = 1;
    ws[0].in_flight_elsewhere = 4;
    let s = Signals::of(&ws[0], 0.0, None, None);
    assert_eq!((s.queue, s.running), (5, 5));
    assert_eq!(ws[0].load(), 5);
}

#[test]
fn max_score_breaks_ties_at_random() {
    let mut rng = env_rng();
    let mut firsts = BTreeSet::new();
    for _ in 0..50 {
        let order = PickerConfig::MaxScore.rank(&[1.0, 0.2, 1.0], &mut rng);
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], 1);
        firsts.insert(order[0]);
    }
    assert_eq!(firsts, BTreeSet::from([0, 2]));
}

#[test]
fn softmax_temperature_controls_spread() {
    let mut rng = env_rng();
    let scores = [1.0, 0.0];
    let count_first = |t: f64, rng: &mut SmallRng| {
        let picker = PickerConfig::Softmax { temperature: t };
        (0..400)
            .filter(|_| picker.rank(&scores, rng)[0] == 0)
            .count()
    };
    assert_eq!(count_first(0.01, &mut rng), 400);
    // exp(1/0.5) = 7.4: about 88% expected.
    let mid = count_first(0.5, &mut rng);
    assert!((300..=390).contains(&mid), "{mid}");
    // Nearly uniform.
    let hot = count_first(100.0, &mut rng);
    assert!((150..=250).contains(&hot), "{hot}");
    // A bad temperature degrades to max_score.
    assert_eq!(count_first(0.0, &mut rng), 400);
}

#[test]
fn shared_prefixes_converge_and_misses_spread() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let ws = workers(4);
    let mut rng = env_rng();
    let chosen: BTreeSet<WorkerId> = (0..30)
        .map(|i| {
            let prompt = text(format!("{}Question {i}?", shared_prefix()));
            route(&mut p, &ws, &prompt, &mut rng).ranked[0]
        })
        .collect();
    assert_eq!(chosen.len(), 1);
    let mut counts = [0usize; 4];
    for i in 0..100 {
        let prompt = text(format!("{i:03} distinct prompt body"));
        counts[route(&mut p, &ws, &prompt, &mut rng).ranked[0].0 as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c >= 10), "{counts:?}");
}

#[test]
fn queue_beats_a_weak_prefix_match_but_not_a_strong_one() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let mut ws = workers(2);
    let mut rng = env_rng();
    let prompt = text(shared_prefix());
    let holder = route(&mut p, &ws, &prompt, &mut rng).ranked[0];
    let other = WorkerId(1 - holder.0);
    // Full match, holder has 2 queued and the other is idle: 3 + 0 vs 0 + 2 -> holder.
    ws[holder.0 as usize].in_flight = 2;
    assert_eq!(route(&mut p, &ws, &prompt, &mut rng).ranked[0], holder);
    // A quarter match: 0.75 + 0 vs 2 -> the idle worker.
    let weak = text(format!("{}{}", &shared_prefix()[..500], "x".repeat(1530)));
    let pick = route(&mut p, &ws, &weak, &mut rng);
    assert_eq!(pick.ranked[0], other);
}

#[test]
fn kv_cache_pressure_moves_requests() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let mut ws = workers(2);
    ws[0].load = load(0, 0, 0.95);
    ws[1].load = load(0, 0, 0.10);
    let mut rng = env_rng();
    for i in 0..20 {
        let prompt = text(format!("{i} fresh prompt"));
        assert_eq!(route(&mut p, &ws, &prompt, &mut rng).ranked[0], WorkerId(1));
    }
}

#[test]
fn lora_filter_prefers_workers_with_the_adapter() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let mut ws = workers(3);
    ws[2].spec.lora_adapters = vec!["sql".into()];
    ws[2].in_flight = 3;
    let candidates: Vec<&Worker> = ws.iter().collect();
    let mut rng = env_rng();
    let prompt = text("select".into());
    let req = RouteRequest {
        lora: Some("sql"),
        ..request(&prompt)
    };
    for _ in 0..10 {
        let pick = route_req(&mut p, &candidates, &req, &mut rng);
        assert_eq!(pick.ranked[0], WorkerId(2));
        assert_eq!(pick.ranked.len(), 3);
    }
    // Nobody has it: any worker may load it.
    let req = RouteRequest {
        lora: Some("chat"),
        ..request(&prompt)
    };
    let chosen: BTreeSet<WorkerId> = (0..30)
        .map(|i| {
            let prompt = text(format!("{i} distinct"));
            let req = RouteRequest {
                prompt: &prompt,
                ..req
            };
            route_req(&mut p, &candidates[..2], &req, &mut rng).ranked[0]
        })
        .collect();
    assert_eq!(chosen.len(), 2);
}

#[test]
fn sessions_stick_softly() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let mut ws = workers(3);
    let mut rng = env_rng();
    let candidates: Vec<&Worker> = ws.iter().collect();
    let first = text("turn one".into());
    let req = RouteRequest {
        session_key: Some("user-7"),
        ..request(&first)
    };
    let home = route_req(&mut p, &candidates, &req, &mut rng).ranked[0];
    for i in 0..10 {
        let prompt = text(format!("unrelated turn {i}"));
        let req = RouteRequest {
            session_key: Some("user-7"),
            ..request(&prompt)
        };
        assert_eq!(
            route_req(&mut p, &candidates, &req, &mut rng).ranked[0],
            home
        );
    }
    // Soft: a busy home loses to idle workers (session 1 < queue 2).
    ws[home.0 as usize].in_flight = 2;
    let candidates: Vec<&Worker> = ws.iter().collect();
    let prompt = text("another turn".into());
    let req = RouteRequest {
        session_key: Some("user-7"),
        ..request(&prompt)
    };
    assert_ne!(
        route_req(&mut p, &candidates, &req, &mut rng).ranked[0],
        home
    );
}

#[test]
fn session_memory_is_bounded() {
    let mut s = Sessions::new(10);
    for i in 0..100 {
        s.insert(&format!("k{i}"), WorkerId(i % 3));
    }
    assert!(s.len() <= 10, "{}", s.len());
    assert_eq!(s.get("k99"), Some(WorkerId(0)));
    assert_eq!(s.get("k0"), None);
    s.remove_worker(WorkerId(0));
    assert_eq!(s.get("k99"), None);
}

#[test]
fn removed_worker_is_purged() {
    let mut p = ScorerPolicy::new(ScorerConfig::default());
    let ws = workers(2);
    let mut rng = env_rng();
    let prompt = text(shared_prefix());
    let holder = route(&mut p, &ws, &prompt, &mut rng).ranked[0];
    assert!(p.index().worker_size(holder) > 0);
    p.worker_removed(holder);
    assert_eq!(p.index().worker_size(holder), 0);
}

#[test]
fn config_parses_by_name_with_defaults() {
    let c: PolicyConfig = serde_json::from_str(
        r#"{"name":"scorer","weights":{"prefix":5},"picker":{"kind":"softmax","temperature":0.5}}"#,
    )
    .unwrap();
    let PolicyConfig::Scorer(c) = c else {
        panic!("not a scorer config");
    };
    assert_eq!(c.weights.prefix, 5.0);
    assert_eq!(c.weights.queue, 2.0);
    assert_eq!(c.picker, PickerConfig::Softmax { temperature: 0.5 });
    assert_eq!(
        PolicyConfig::from_name("scorer").unwrap().build().name(),
        "scorer"
    );
    let off: ScorerConfig = serde_json::from_str(r#"{"overload": null}"#).unwrap();
    assert_eq!(off.overload, None);
    assert!(serde_json::from_str::<ScorerConfig>(r#"{"nope": 1}"#).is_err());
}

/// Routes `prompt` to `target` only, so that the index records it there.
fn seed(p: &mut ScorerPolicy, ws: &[Worker], target: usize, prompt: &str, rng: &mut SmallRng) {
    let prompt = text(prompt.to_owned());
    route_req(p, &[&ws[target]], &request(&prompt), rng);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn picked_worker_is_always_a_candidate(
        n in 1u32..8,
        loads in proptest::collection::vec((0u32..50, 0u32..50, 0.0f32..1.0, any::<bool>()), 8),
        subset in proptest::collection::vec(any::<bool>(), 8),
        prompt in "\\PC{0,200}",
        softmax in any::<bool>(),
        seed_n in any::<u64>(),
    ) {
        let mut ws = workers(n);
        for (w, (inf, wait, kv, known)) in ws.iter_mut().zip(&loads) {
            w.in_flight = *inf;
            if *known {
                w.load = load(*wait, *inf, *kv);
            }
        }
        let mut candidates: Vec<&Worker> =
            ws.iter().zip(&subset).filter(|(_, s)| **s).map(|(w, _)| w).collect();
        if candidates.is_empty() {
            candidates.push(&ws[0]);
        }
        let config = ScorerConfig {
            picker: if softmax {
                PickerConfig::Softmax { temperature: 0.3 }
            } else {
                PickerConfig::MaxScore
            },
            ..ScorerConfig::default()
        };
        let mut p = ScorerPolicy::new(config);
        let mut rng = SmallRng::seed_from_u64(seed_n);
        let prompt = text(prompt);
        for _ in 0..3 {
            let pick = route_req(&mut p, &candidates, &request(&prompt), &mut rng);
            let ids: BTreeSet<WorkerId> = candidates.iter().map(|w| w.id).collect();
            prop_assert_eq!(pick.ranked.len(), candidates.len());
            let ranked: BTreeSet<WorkerId> = pick.ranked.iter().copied().collect();
            prop_assert_eq!(ranked, ids);
        }
    }

    #[test]
    fn longer_prefix_match_wins_at_equal_load(
        n in 2u32..6,
        long in 0usize..6,
        short in 0usize..6,
        in_flight in 0u32..20,
        kv in 0.0f32..1.0,
        seed_n in any::<u64>(),
    ) {
        let n_us = n as usize;
        let (long, short) = (long % n_us, short % n_us);
        prop_assume!(long != short);
        let mut ws = workers(n);
        for w in &mut ws {
            w.in_flight = in_flight;
            w.load = load(0, in_flight, kv);
        }
        let mut p = ScorerPolicy::new(ScorerConfig::default());
        let mut rng = SmallRng::seed_from_u64(seed_n);
        let base = shared_prefix();
        seed(&mut p, &ws, short, &base[..800], &mut rng);
        seed(&mut p, &ws, long, &base, &mut rng);
        let prompt = text(format!("{base} and a question"));
        let pick = route(&mut p, &ws, &prompt, &mut rng);
        prop_assert_eq!(pick.ranked[0], WorkerId(long as u32));
    }

    #[test]
    fn overloaded_worker_loses_despite_its_cache(
        n in 2u32..6,
        holder in 0usize..6,
        base_load in 0u32..10,
        excess in 0u32..40,
        seed_n in any::<u64>(),
    ) {
        let holder = holder % n as usize;
        let mut ws = workers(n);
        let mut p = ScorerPolicy::new(ScorerConfig::default());
        let mut rng = SmallRng::seed_from_u64(seed_n);
        seed(&mut p, &ws, holder, &shared_prefix(), &mut rng);
        let o = OverloadFilter::default();
        // Beyond both thresholds of the overload filter.
        let hot = (base_load + o.abs + 1 + excess).max((o.rel * f64::from(base_load)) as u32 + 1);
        for (i, w) in ws.iter_mut().enumerate() {
            w.in_flight = if i == holder { hot } else { base_load };
        }
        let prompt = text(shared_prefix());
        let pick = route(&mut p, &ws, &prompt, &mut rng);
        prop_assert_ne!(pick.ranked[0], WorkerId(holder as u32));
        prop_assert_eq!(*pick.ranked.last().unwrap(), WorkerId(holder as u32));
    }
}

#[test]
fn prefix_counts_whole_blocks_only() {
    assert_eq!(block_ratio(130, 200, 64), 0.64);
    assert_eq!(block_ratio(63, 100, 64), 0.0);
    assert_eq!(block_ratio(10, 0, 64), 0.0);
    assert_eq!(block_ratio(50, 100, 1), 0.5);
    assert_eq!(block_ratio(50, 100, 0), 0.5);
}
