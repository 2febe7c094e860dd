//! One decision of every policy through the router (`Router::route` + `Router::complete`),
//! 1 KiB prompts, 8 workers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kvroute_core::{PolicyConfig, Prompt, RouteRequest, Router, RouterConfig, WorkerSpec};

/// 256 prompts of 1 KiB: 16 shared prefixes of 512 bytes, each with 16 different tails.
fn prompts() -> Vec<Prompt<'static>> {
    (0..256)
        .map(|i| {
            let prefix = format!("system prompt {:02} ", i % 16).repeat(30);
            let tail = format!("question {i:03} about topic {} ", i * 7).repeat(20);
            let mut text = format!("{prefix}{tail}");
            text.truncate(1024);
            Prompt::Text(text.into())
        })
        .collect()
}

fn bench_policies(c: &mut Criterion) {
    let prompts = prompts();
    let sessions: Vec<String> = (0..64).map(|i| format!("session-{i}")).collect();
    let mut group = c.benchmark_group("route_complete_1KiB_8_workers");
    for &name in PolicyConfig::NAMES {
        let Some(policy) = PolicyConfig::from_name(name) else {
            continue;
        };
        let config = RouterConfig {
            policy,
            ..RouterConfig::default()
        };
        let mut router = Router::new(config, 3);
        for i in 0..8 {
            router.upsert_worker(WorkerSpec::new(format!("10.0.0.{i}:8000")));
        }
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let req = RouteRequest {
                    model: "m",
                    prompt: &prompts[i % prompts.len()],
                    lora: None,
                    cache_salt: None,
                    session_key: Some(&sessions[i % sessions.len()]),
                    tokens: None,
                };
                if let Ok(routed) = router.route(&req, None, i as u64) {
                    router.complete(black_box(routed).ticket);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_policies);
criterion_main!(benches);
