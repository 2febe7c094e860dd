//! Fuzz-style property runs of the request flow: arbitrary and structured-arbitrary bodies
//! through `Gateway::route_inference` for every API route and every policy. The gateway must
//! never panic, every local reply must be an OpenAI error JSON with a 4xx/5xx status, every
//! forward must name only known workers, and every ticket must release cleanly. 256 cases per
//! property by default; `PROPTEST_CASES=N` runs a longer campaign.

use std::collections::HashSet;

use kvroute_core::{
    ApiRoute, EngineKind, Gateway, GatewayConfig, Outcome, Router, RouterConfig, WorkerSpec,
    policy::PolicyConfig,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const ROUTES: [ApiRoute; 5] = [
    ApiRoute::ChatCompletions,
    ApiRoute::Completions,
    ApiRoute::Embeddings,
    ApiRoute::Responses,
    ApiRoute::Generate,
];

/// Field names the parser and the normalizer look at, plus a few unknown ones.
const KEYS: [&str; 22] = [
    "model",
    "messages",
    "prompt",
    "input",
    "text",
    "input_ids",
    "stream",
    "stream_options",
    "user",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "prompt_logprobs",
    "chat_template",
    "content",
    "role",
    "sampling_params",
    "lora_path",
    "rid",
    "tools",
    "x-unknown",
];

fn router(policy: &str, workers: usize) -> Router {
    let mut r = Router::new(
        RouterConfig {
            policy: PolicyConfig::from_name(policy).expect("known policy"),
            max_in_flight_per_worker: Some(64),
            ..RouterConfig::default()
        },
        7,
    );
    for i in 0..workers {
        r.upsert_worker(WorkerSpec {
            models: if i % 2 == 0 {
                vec!["m".into()]
            } else {
                Vec::new()
            },
            engine: if i % 2 == 0 {
                EngineKind::Vllm
            } else {
                EngineKind::Sglang
            },
            ..WorkerSpec::new(format!("127.0.0.1:{}", 8000 + i))
        });
    }
    r
}

/// Arbitrary JSON, biased towards the shapes the parser reads.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("m".into())),
        Just(Value::String("user".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// A top-level object made of known keys with arbitrary values.
fn structured_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((prop::sample::select(&KEYS[..]), json_value()), 0..8).prop_map(|kv| {
        let map: Map<String, Value> = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
    })
}

/// A valid request of each route, then mangled: truncated, or with a byte flipped.
fn mangled_body() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(vec![
        r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"stream":true}"#,
        r#"{"model":"m","prompt":"once upon a time","max_tokens":3}"#,
        r#"{"model":"m","input":["a","b"]}"#,
        r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}]}"#,
        r#"{"text":"abc","sampling_params":{"max_new_tokens":2}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"\ud83d\ude00 \u00e9"}]}"#,
    ]);
    (
        valid,
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(v, idx, byte, truncate)| {
            let mut b = v.as_bytes().to_vec();
            let i = idx.index(b.len());
            if truncate {
                b.truncate(i);
            } else {
                b[i] = byte;
            }
            b
        })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        structured_body(),
        mangled_body(),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ]
}

/// Checks one outcome; returns the ticket to release, if any.
fn check(outcome: Outcome, known: &HashSet<String>, router: &mut Router) -> Result<(), String> {
    match outcome {
        Outcome::Reply(reply) => {
            if !(400..600).contains(&reply.status) {
                return Err(format!("reply status {}", reply.status));
            }
            let v: Value = serde_json::from_str(&reply.body)
                .map_err(|e| format!("reply body is not JSON ({e}): {}", reply.body))?;
            let msg = &v["error"]["message"];
            if !msg.is_string() || !v["error"]["type"].is_string() {
                return Err(format!("reply is not an OpenAI error: {}", reply.body));
            }
            Ok(())
        }
        Outcome::Forward(fwd) => {
            let endpoints: Vec<&str> = fwd.destination.split(',').collect();
            if endpoints.is_empty() || endpoints.iter().any(|e| !known.contains(*e)) {
                return Err(format!("forwarded to unknown {}", fwd.destination));
            }
            let unique: HashSet<&&str> = endpoints.iter().collect();
            if unique.len() != endpoints.len() {
                return Err(format!("duplicate endpoint in {}", fwd.destination));
            }
            if let Some(body) = &fwd.body
                && serde_json::from_slice::<Value>(body).is_err()
            {
                return Err("normalized body is not JSON".to_owned());
            }
            router.complete(fwd.routed.ticket);
            Ok(())
        }
    }
}

proptest! {

    #[test]
    fn arbitrary_bodies_never_panic_and_answer_properly(
        policy in prop::sample::select(PolicyConfig::NAMES),
        workers in 0usize..4,
        bodies in prop::collection::vec((prop::sample::select(&ROUTES[..]), any_body(), any::<bool>()), 1..8),
        max_body in prop::sample::select(vec![16usize, 200, 1 << 20]),
    ) {
        let gw = Gateway::new(GatewayConfig { max_body_bytes: max_body, ..GatewayConfig::default() });
        let mut r = router(policy, workers);
        let known: HashSet<String> = r.workers().iter().map(|w| w.spec.address.clone()).collect();
        for (i, (route, body, with_session)) in bodies.iter().enumerate() {
            let session = with_session.then_some("s1");
            let outcome = gw.route_inference(&mut r, *route, body, session, None, i as u64 * 10);
            if let Err(e) = check(outcome, &known, &mut r) {
                prop_assert!(false, "{} {:?} body {:?}: {}", policy, route, String::from_utf8_lossy(body), e);
            }
        }
        prop_assert_eq!(r.outstanding(), 0);
        prop_assert!(r.workers().iter().all(|w| w.in_flight == 0));
    }

    #[test]
    fn subset_hints_never_widen_the_choice(
        body in structured_body(),
        route in prop::sample::select(&ROUTES[..]),
        subset in prop::collection::vec(prop::sample::select(vec!["127.0.0.1:8000", "127.0.0.1:8001", "10.0.0.1:1", "", "garbage"]), 0..3),
    ) {
        let gw = Gateway::default();
        let mut r = router("least_request", 3);
        let known: HashSet<String> = r.workers().iter().map(|w| w.spec.address.clone()).collect();
        let outcome = gw.route_inference(&mut r, route, &body, None, Some(&subset), 0);
        if let Outcome::Forward(f) = &outcome {
            for e in f.destination.split(',') {
                prop_assert!(subset.contains(&e), "{} outside the subset {:?}", e, subset);
            }
        }
        if let Err(e) = check(outcome, &known, &mut r) {
            prop_assert!(false, "{}", e);
        }
        prop_assert_eq!(r.outstanding(), 0);
    }
}
