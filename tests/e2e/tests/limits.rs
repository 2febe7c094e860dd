//! Limits and bad inputs through the real Envoy, in both request body modes: every case
//! gets the right status and an OpenAI-style JSON error, and kvroute keeps serving.

use std::time::Duration;

use kvroute_e2e::openai::chat_body;
use kvroute_e2e::{BodyMode, MODEL, Stack};
use serde_json::Value;

/// kvroute's body limit in these tests (64 KiB, well under Envoy's 8 MiB buffer).
const CONFIG: &str =
    "gateway: {max_body_bytes: 65536}\nlimits: {max_in_flight: 3, retry_after_secs: 2}\n";

/// One bad input: name, path, raw body, expected status.
struct Case {
    name: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
}

fn case(name: &'static str, path: &'static str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        path,
        body: body.into(),
        status,
    }
}

fn cases() -> Vec<Case> {
    const CHAT: &str = "/v1/chat/completions";
    const COMPLETIONS: &str = "/v1/completions";
    let mut invalid_utf8 =
        br#"{"model":"sim-model","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let depth = 5_000;
    let nested = format!(
        r#"{{"model":"sim-model","messages":[{{"role":"user","content":"x"}}],"extra":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let huge = serde_json::to_vec(&chat_body(MODEL, &"long ".repeat(20_000), false, 2))
        .unwrap_or_default();
    vec![
        case(
            "malformed JSON",
            CHAT,
            r#"{"model": "sim-model", "messages": ["#,
            400,
        ),
        case("not an object", CHAT, "[1, 2, 3]", 400),
        case("invalid UTF-8", CHAT, invalid_utf8, 400),
        case(
            "wrong types",
            CHAT,
            r#"{"model": 5, "messages": "hello"}"#,
            400,
        ),
        case(
            "message content of the wrong type",
            CHAT,
            r#"{"model":"sim-model","messages":[{"role":"user","content":{"a":1}}]}"#,
            400,
        ),
        case(
            "prompt of the wrong type",
            COMPLETIONS,
            r#"{"model":"sim-model","prompt":{"text":"hi"}}"#,
            400,
        ),
        case("deeply nested", CHAT, nested, 400),
        case("over the body limit", CHAT, huge, 413),
        case("empty body", CHAT, "", 400),
        case("whitespace body", CHAT, "   \n ", 400),
        case(
            "no messages",
            CHAT,
            r#"{"model":"sim-model","messages":[]}"#,
            400,
        ),
        case(
            "unknown model",
            CHAT,
            r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#,
            404,
        ),
        case(
            "unknown model, completions",
            COMPLETIONS,
            r#"{"model":"no-such-model","prompt":"hi"}"#,
            404,
        ),
    ]
}

async fn run_table(stack: &Stack, mode: &str) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for c in cases() {
        let resp = stack
            .client()
            .post(stack.gateway_url(c.path))
            .header("content-type", "application/json")
            .body(c.body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let message = json
            .as_ref()
            .and_then(|j| j["error"]["message"].as_str())
            .map(str::to_owned);
        println!(
            "{mode} {}: {status} {}",
            c.name,
            message.as_deref().unwrap_or(&text)
        );
        if status != c.status || message.is_none() {
            wrong.push(format!("{}: {status} {text:?} (want {})", c.name, c.status));
        }
    }
    assert!(wrong.is_empty(), "{mode}: {wrong:#?}");
    // kvroute is still up and routing.
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body(MODEL, "still fine", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 200, "{mode}: after the bad inputs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_openai_errors_in_both_body_modes() -> anyhow::Result<()> {
    for (mode, name) in [
        (BodyMode::Buffered, "buffered"),
        (BodyMode::FullDuplexStreamed, "full_duplex"),
    ] {
        let stack = Stack::builder(&format!("bad_inputs_get_openai_errors_{name}"))
            .body_mode(mode)
            .engines(2)
            .kvroute_config(CONFIG)
            .start()
            .await?;
        run_table(&stack, name).await?;
        let rejected = stack
            .kvroute_metric("kvroute_decisions_total", &[("outcome", "4xx")])
            .await?;
        // Every case but the body limit (answered while the body arrives) is a decision.
        let decided = cases().len() - 1;
        assert!(
            rejected >= decided as f64,
            "{name}: {rejected} 4xx decisions"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_in_flight_limit_sheds_with_429_and_retry_after() -> anyhow::Result<()> {
    let stack = Stack::builder("global_in_flight_limit_sheds_with_429_and_retry_after")
        .engines(2)
        .kvroute_config(CONFIG)
        .start()
        .await?;
    // Three long streams fill the global limit of 3.
    let mut streams = Vec::new();
    for i in 0..3 {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(MODEL, &format!("hold {i}"), true, 6000),
            )
            .await?;
        assert_eq!(resp.status(), 200);
        streams.push(resp);
    }
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body(MODEL, "one more", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 429);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(retry_after.as_deref(), Some("2"));
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");

    // Hanging up frees the slots.
    drop(streams);
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body(MODEL, "room again", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 200);
    Ok(())
}

/// Decisions that missed their deadline and let the request through.
async fn missed(stack: &Stack) -> anyhow::Result<f64> {
    stack
        .kvroute_metric("kvroute_decisions_total", &[("outcome", "deadline_missed")])
        .await
}

/// A chat whose prompt is `bytes` long.
fn chat_of_size(bytes: usize) -> Value {
    chat_body(MODEL, &"long prompt text. ".repeat(bytes / 18), false, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_deadline_rejects_or_fails_open() -> anyhow::Result<()> {
    // The deadline counts from the decision's start, parsing included: parsing a 4 MiB body
    // (in these unoptimized test builds) takes about 50 ms, far over 10 ms; a short one well
    // under 1 ms.
    // The engines take prompts that long, so a request let through is answered.
    let mut stack = Stack::builder("decision_deadline_rejects_or_fails_open")
        .engines(2)
        .time_scale(0.01)
        .all_sim_args(&["--context-length", "4000000", "--kv-blocks", "300000"])
        .kvroute_config("limits: {decision_timeout_ms: 10, on_decision_timeout: reject}\n")
        .start()
        .await?;
    let small = chat_body(MODEL, "short prompt", false, 2);
    let huge = chat_of_size(4 << 20);
    let resp = stack.post("/v1/chat/completions", &small).await?;
    assert_eq!(resp.status(), 200);

    let resp = stack.post("/v1/chat/completions", &huge).await?;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "decision_timeout", "{body}");
    assert_eq!(
        missed(&stack).await?,
        0.0,
        "a rejected request is a 5xx decision"
    );
    let resp = stack.post("/v1/chat/completions", &small).await?;
    assert_eq!(
        resp.status(),
        200,
        "kvroute stopped routing after a missed deadline"
    );

    // fail_open: the late request goes through unrouted (Envoy's fallback policy picks).
    stack
        .set_config("limits: {decision_timeout_ms: 10, on_decision_timeout: fail_open}\n")
        .await?;
    let resp = stack.post("/v1/chat/completions", &huge).await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    assert!(
        body["usage"]["prompt_tokens"].as_u64() > Some(400_000),
        "{body}"
    );
    assert_eq!(missed(&stack).await?, 1.0);
    let resp = stack.post("/v1/chat/completions", &small).await?;
    assert_eq!(resp.status(), 200);
    stack
        .wait_workers(Duration::from_secs(10), |ws| {
            ws.iter().all(|w| w["in_flight"] == 0)
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_up_to_the_body_limit_are_routed_in_both_body_modes() -> anyhow::Result<()> {
    // 6 MiB: under kvroute's 8 MiB default body limit and Envoy's 8 MiB buffer, above gRPC's
    // customary 4 MiB message limit (a buffered body travels to kvroute as one message).
    for mode in [BodyMode::Buffered, BodyMode::FullDuplexStreamed] {
        let stack = Stack::builder(&format!("prompts_up_to_the_body_limit_{mode:?}"))
            .engines(2)
            .body_mode(mode)
            .time_scale(0.01)
            .all_sim_args(&["--context-length", "4000000", "--kv-blocks", "300000"])
            .start()
            .await?;
        let resp = stack
            .post("/v1/chat/completions", &chat_of_size(6 << 20))
            .await?;
        assert_eq!(resp.status(), 200, "{mode:?}");
        let routed = stack
            .kvroute_metric("kvroute_decisions_total", &[("outcome", "forwarded")])
            .await?;
        assert_eq!(routed, 1.0, "{mode:?}: the long prompt bypassed kvroute");
    }
    Ok(())
}
