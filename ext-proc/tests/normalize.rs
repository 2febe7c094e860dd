//! Per-engine body normalization applied as ext_proc body mutations.

mod common;

use common::*;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, ProcessingResponse, body_mutation,
};
use kvroute::proto::header_value;
use kvroute_core::EngineKind;

/// vLLM rejects `stream_options` without streaming.
const VLLM_REJECTS: &[u8] =
    br#"{"model":"m","prompt":"hello","stream":false,"stream_options":{"include_usage":true},"temperature":0.25}"#;

fn common_of(r: &ProcessingResponse) -> &CommonResponse {
    match r.response.as_ref() {
        Some(Response::RequestHeaders(h)) => h.response.as_ref().expect("common"),
        Some(Response::RequestBody(b)) => b.response.as_ref().expect("common"),
        other => panic!("unexpected {other:?}"),
    }
}

fn set_header<'a>(c: &'a CommonResponse, key: &str) -> Option<&'a str> {
    c.header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == key)
        .and_then(header_value)
}

fn check_rewritten(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(v.get("stream_options").is_none(), "{v}");
    assert_eq!(v["temperature"], 0.25);
    assert_eq!(v["prompt"], "hello");
    assert_eq!(v["stream"], false);
}

async fn vllm_worker() -> (FakeWorker, kvroute::config::Config) {
    let w = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w]);
    cfg.workers[0].engine = EngineKind::Vllm;
    (w, cfg)
}

#[tokio::test]
async fn buffered_body_is_replaced_with_its_content_length() {
    let (_w, cfg) = vllm_worker().await;
    let running = start(cfg, 1).await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::Buffered,
        None,
    ))
    .await;
    let _headers = s.recv().await;
    s.send(request_body(VLLM_REJECTS, true)).await;
    let r = s.recv().await;
    let c = common_of(&r);
    let Some(body_mutation::Mutation::Body(new_body)) =
        c.body_mutation.as_ref().and_then(|m| m.mutation.as_ref())
    else {
        panic!("expected a body replacement, got {:?}", c.body_mutation);
    };
    check_rewritten(new_body);
    assert_eq!(
        set_header(c, "content-length"),
        Some(new_body.len().to_string().as_str())
    );
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn duplex_body_is_restreamed_rewritten() {
    let (_w, cfg) = vllm_worker().await;
    let running = start(cfg, 1).await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::FullDuplexStreamed,
        None,
    ))
    .await;
    let (a, b) = VLLM_REJECTS.split_at(20);
    s.send(request_body(a, false)).await;
    s.send(request_body(b, true)).await;
    let headers = s.recv().await;
    let length: usize = set_header(common_of(&headers), "content-length")
        .expect("content-length")
        .parse()
        .unwrap();
    let mut body = Vec::new();
    loop {
        let r = s.recv().await;
        let Some(body_mutation::Mutation::StreamedResponse(chunk)) = common_of(&r)
            .body_mutation
            .as_ref()
            .and_then(|m| m.mutation.as_ref())
        else {
            panic!("expected a streamed chunk");
        };
        body.extend_from_slice(&chunk.body);
        if chunk.end_of_stream {
            break;
        }
    }
    assert_eq!(body.len(), length);
    check_rewritten(&body);
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn bodies_that_need_no_rewrite_are_left_alone() {
    let w = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w]);
    cfg.workers[0].engine = EngineKind::Sglang;
    let running = start(cfg, 1).await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::Buffered,
        None,
    ))
    .await;
    let _headers = s.recv().await;
    s.send(request_body(VLLM_REJECTS, true)).await;
    let r = s.recv().await;
    let c = common_of(&r);
    assert!(c.body_mutation.is_none());
    assert!(set_header(c, "content-length").is_none());
    drop(s);
    running.shutdown().await;
}

#[test]
fn rules_are_validated_with_their_location() {
    let yaml = "gateway:\n  normalize:\n    rules:\n      - {engines: [sglang], drop: [logprobs]}\n      - {apis: [chat], drop: [x]}\n";
    let cfg = kvroute::config::Config::from_yaml(yaml, "t.yaml").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("gateway.normalize.rules[1]") && err.contains("chat"),
        "{err}"
    );
    let unknown = "gateway:\n  normalize:\n    rules:\n      - {drop: [x], bogus: 1}\n";
    assert!(kvroute::config::Config::from_yaml(unknown, "t.yaml").is_err());
}
