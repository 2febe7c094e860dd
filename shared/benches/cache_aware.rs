//! `cache_aware` decisions (prefix match + insert, with eviction) on an index filled to its
//! default bound with a shared-prefix mix.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kvroute_core::policy::{CacheAwareConfig, CacheAwarePolicy};
use kvroute_core::{Policy, PolicyEnv, Prompt, RouteRequest, Worker, WorkerId, WorkerSpec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Generates prompts: one of `shared` long shared prefixes (system prompt, document) followed
/// by a unique tail cut from a random word corpus.
struct Workload {
    prefixes: Vec<String>,
    corpus: String,
    tail_len: usize,
    rng: SmallRng,
    next: u64,
}

impl Workload {
    fn new(shared: usize, prefix_len: usize, tail_len: usize) -> Workload {
        let mut rng = SmallRng::seed_from_u64(1);
        let words = |n: usize, rng: &mut SmallRng| -> String {
            let mut s = String::with_capacity(n + 16);
            while s.len() < n {
                let len = rng.random_range(2..9);
                s.extend((0..len).map(|_| rng.random_range(b'a'..=b'z') as char));
                s.push(' ');
            }
            s.truncate(n);
            s
        };
        let prefixes = (0..shared)
            .map(|i| format!("<|system|> #{i} {}", words(prefix_len, &mut rng)))
            .collect();
        let corpus = words(4 << 20, &mut rng);
        Workload {
            prefixes,
            corpus,
            tail_len,
            rng,
            next: 0,
        }
    }

    fn prompt(&mut self) -> Prompt<'static> {
        self.next += 1;
        let prefix = &self.prefixes[self.rng.random_range(0..self.prefixes.len())];
        let at = self.rng.random_range(0..self.corpus.len() - self.tail_len);
        let tail = &self.corpus[at..at + self.tail_len];
        Prompt::Text(format!("{prefix}<|user|> request {} {tail}", self.next).into())
    }
}

fn workers(n: u32) -> Vec<Worker> {
    (0..n)
        .map(|i| Worker {
            id: WorkerId(i),
            spec: WorkerSpec::new(format!("10.0.0.{i}:8000")),
            healthy: true,
            draining: false,
            in_flight: 0,
            in_flight_elsewhere: 0,
            load: None,
        })
        .collect()
}

fn decide(policy: &mut CacheAwarePolicy, ws: &[&Worker], prompt: &Prompt<'_>, rng: &mut SmallRng) {
    let req = RouteRequest {
        model: "m",
        prompt,
        lora: None,
        cache_salt: None,
        session_key: None,
        tokens: None,
    };
    let mut env = PolicyEnv { now_ms: 0, rng };
    black_box(policy.pick(&req, ws, &mut env));
}

/// A policy whose index is full at its default bound (and has started evicting).
fn filled(workload: &mut Workload, ws: &[&Worker], rng: &mut SmallRng) -> CacheAwarePolicy {
    let mut policy = CacheAwarePolicy::new(CacheAwareConfig::default());
    let max = policy.index().max_bytes();
    let started = Instant::now();
    let mut n = 0;
    while policy.index().bytes_used() + 4 * workload.tail_len < max {
        decide(&mut policy, ws, &workload.prompt(), rng);
        n += 1;
    }
    // Keep going until eviction has run for a while.
    for _ in 0..n / 10 {
        decide(&mut policy, ws, &workload.prompt(), rng);
    }
    let index = policy.index();
    println!(
        "filled with {} prompts in {:.1?}: {} B used of {} B, {} B stored, {} nodes, {:.3} B per stored prompt byte",
        n + n / 10,
        started.elapsed(),
        index.bytes_used(),
        max,
        index.stored_bytes(),
        index.node_count(),
        index.bytes_used() as f64 / index.stored_bytes() as f64
    );
    policy
}

fn bench_cache_aware(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_aware_full_index");
    // (label, shared prefixes, prefix length, unique tail length)
    let shapes = [
        ("8KiB", 64, 2 << 10, 6 << 10),
        ("220KiB", 32, 160 << 10, 60 << 10),
    ];
    for (label, shared, prefix_len, tail_len) in shapes {
        let mut workload = Workload::new(shared, prefix_len, tail_len);
        for n in [4, 16] {
            let all = workers(n);
            let ws: Vec<&Worker> = all.iter().collect();
            let mut rng = SmallRng::seed_from_u64(2);
            let mut policy = filled(&mut workload, &ws, &mut rng);
            group.bench_function(format!("{label}/{n}_workers"), |b| {
                b.iter_batched(
                    || workload.prompt(),
                    |prompt| decide(&mut policy, &ws, &prompt, &mut rng),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_cache_aware);
criterion_main!(benches);
