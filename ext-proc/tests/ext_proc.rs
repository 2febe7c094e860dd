//! The ext_proc protocol against an in-process kvroute with fake workers.

mod common;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, ImmediateResponse, ProcessingRequest, ProcessingResponse, body_mutation,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use kvroute::proto::{MAX_STREAMED_CHUNK, header_value};
use kvroute::server::Running;

const DEST: &str = "x-gateway-destination-endpoint";

fn common_of(r: &ProcessingResponse) -> &CommonResponse {
    match r.response.as_ref() {
        Some(Response::RequestHeaders(h)) => h.response.as_ref().expect("common response"),
        Some(Response::RequestBody(b)) => b.response.as_ref().expect("common response"),
        other => panic!("expected a request headers/body response, got {other:?}"),
    }
}

fn is_headers(r: &ProcessingResponse) -> bool {
    matches!(r.response, Some(Response::RequestHeaders(_)))
}

fn immediate(r: &ProcessingResponse) -> &ImmediateResponse {
    match r.response.as_ref() {
        Some(Response::ImmediateResponse(i)) => i,
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

fn immediate_header<'a>(i: &'a ImmediateResponse, key: &str) -> Option<&'a str> {
    i.headers
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == key)
        .and_then(header_value)
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

fn removes_destination(c: &CommonResponse) -> bool {
    c.header_mutation
        .as_ref()
        .is_some_and(|m| m.remove_headers.iter().any(|h| h == DEST))
}

fn metadata_destination(r: &ProcessingResponse) -> String {
    let md = r.dynamic_metadata.as_ref().expect("dynamic metadata");
    let Some(Kind::StructValue(ns)) = md.fields["envoy.lb"].kind.as_ref() else {
        panic!("namespace is not a struct");
    };
    match ns.fields[DEST].kind.as_ref() {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("destination is not a string: {other:?}"),
    }
}

fn streamed_chunk(r: &ProcessingResponse) -> (Vec<u8>, bool) {
    let common = common_of(r);
    match common
        .body_mutation
        .as_ref()
        .and_then(|m| m.mutation.as_ref())
    {
        Some(body_mutation::Mutation::StreamedResponse(s)) => (s.body.clone(), s.end_of_stream),
        other => panic!("expected a streamed body, got {other:?}"),
    }
}

fn subset_metadata(endpoints: &[&str]) -> Metadata {
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: endpoints
                .iter()
                .map(|e| Value {
                    kind: Some(Kind::StringValue((*e).to_owned())),
                })
                .collect(),
        })),
    };
    let mut md = Metadata::default();
    md.filter_metadata.insert(
        "envoy.lb.subset_hint".to_owned(),
        Struct {
            fields: [(format!("{DEST}-subset"), list)].into_iter().collect(),
        },
    );
    md
}

#[tokio::test]
async fn buffered_answer_sets_header_metadata_and_clears_route_cache() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1, &w2]), 2).await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[(DEST, "10.6.6.6:1")],
        false,
        BodySendMode::Buffered,
        None,
    ))
    .await;
    let headers = s.recv().await;
    assert!(is_headers(&headers));
    assert!(removes_destination(common_of(&headers)));
    assert!(set_header(common_of(&headers), DEST).is_none());

    s.send(request_body(COMPLETION, true)).await;
    let body = s.recv().await;
    let c = common_of(&body);
    assert!(matches!(body.response, Some(Response::RequestBody(_))));
    assert!(c.clear_route_cache);
    assert!(removes_destination(c));
    let dest = set_header(c, DEST).expect("destination header").to_owned();
    let first = dest.split(',').next().unwrap();
    assert!([w1.addr.to_string(), w2.addr.to_string()].contains(&first.to_owned()));
    assert_eq!(metadata_destination(&body), dest);
    assert_eq!(in_flight(&running).await, 1);
    drop(s);
    wait_until(|| async { in_flight(&running).await == 0 }).await;
    running.shutdown().await;
}

#[tokio::test]
async fn full_duplex_holds_headers_and_restreams_body() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    let mut s = Session::open(&running).await;
    let prompt: String = (0..150_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = serde_json::json!({"model": "m", "prompt": prompt}).to_string();
    let body = body.as_bytes();
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[(DEST, "10.6.6.6:1")],
        false,
        BodySendMode::FullDuplexStreamed,
        None,
    ))
    .await;
    let cut = body.len() / 2;
    s.send(request_body(&body[..cut], false)).await;
    assert!(
        s.try_recv(300).await.is_none(),
        "headers must be held until the body ends"
    );
    s.send(request_body(&body[cut..], true)).await;

    let headers = s.recv().await;
    assert!(is_headers(&headers));
    let c = common_of(&headers);
    assert!(c.clear_route_cache);
    assert!(removes_destination(c));
    assert_eq!(set_header(c, DEST), Some(w1.addr.to_string().as_str()));
    assert_eq!(
        set_header(c, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(metadata_destination(&headers), w1.addr.to_string());

    let mut echoed = Vec::new();
    loop {
        let (chunk, eos) = streamed_chunk(&s.recv().await);
        assert!(chunk.len() <= MAX_STREAMED_CHUNK);
        echoed.extend_from_slice(&chunk);
        if eos {
            break;
        }
    }
    assert_eq!(echoed, body, "the body must be re-streamed byte for byte");
    assert!(body.len() > 2 * MAX_STREAMED_CHUNK);
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn oversized_duplex_body_is_413_early() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.gateway.max_body_bytes = 1000;
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
    s.send(request_body(&[b' '; 800], false)).await;
    s.send(request_body(&[b' '; 800], false)).await;
    let r = s.recv().await;
    let i = immediate(&r);
    assert_eq!(i.status.as_ref().unwrap().code, 413);
    assert_eq!(
        immediate_header(i, "content-type"),
        Some("application/json")
    );
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn header_only_list_models_is_a_local_reply() {
    let w1 = FakeWorker::start(&["m", "other"]).await;
    let running = start(config(&[&w1]), 1).await;
    // The model list is learned from the worker once it is healthy.
    wait_until(|| async {
        workers(&running).await[0]["models"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "GET",
        "/v1/models",
        &[],
        true,
        BodySendMode::FullDuplexStreamed,
        None,
    ))
    .await;
    let r = s.recv().await;
    let i = immediate(&r);
    assert_eq!(i.status.as_ref().unwrap().code, 200);
    let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m", "other"]);
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn other_paths_are_routed_at_headers() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "GET",
        "/metrics",
        &[(DEST, "10.6.6.6:1")],
        true,
        BodySendMode::FullDuplexStreamed,
        None,
    ))
    .await;
    let r = s.recv().await;
    let c = common_of(&r);
    assert!(removes_destination(c));
    assert_eq!(set_header(c, DEST), Some(w1.addr.to_string().as_str()));
    drop(s);
    running.shutdown().await;
}

async fn local_reply_for(
    running: &kvroute::server::Running,
    body: &[u8],
    mode: BodySendMode,
) -> (i32, serde_json::Value, Option<String>) {
    let mut s = Session::open(running).await;
    s.send(request_headers(
        "POST",
        "/v1/chat/completions",
        &[],
        false,
        mode,
        None,
    ))
    .await;
    if mode == BodySendMode::Buffered {
        let h = s.recv().await;
        assert!(removes_destination(common_of(&h)));
    }
    s.send(request_body(body, true)).await;
    let r = s.recv().await;
    let i = immediate(&r);
    assert_eq!(
        immediate_header(i, "content-type"),
        Some("application/json")
    );
    let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    assert!(v["error"]["message"].is_string(), "OpenAI error shape: {v}");
    (
        i.status.as_ref().unwrap().code,
        v,
        immediate_header(i, "retry-after").map(str::to_owned),
    )
}

#[tokio::test]
async fn errors_are_immediate_openai_json_replies() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    wait_until(|| async { workers(&running).await[0]["models"][0] == "m" }).await;
    for mode in [BodySendMode::Buffered, BodySendMode::FullDuplexStreamed] {
        let (status, _, _) = local_reply_for(&running, b"{not json", mode).await;
        assert_eq!(status, 400);
        let body = br#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#;
        let (status, v, _) = local_reply_for(&running, body, mode).await;
        assert_eq!(status, 404);
        assert_eq!(v["error"]["code"], "model_not_found");
    }
    // No healthy worker: 503 with retry-after.
    w1.set_health(500);
    wait_until(|| async { workers(&running).await[0]["healthy"] == false }).await;
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, retry) =
        local_reply_for(&running, body, BodySendMode::FullDuplexStreamed).await;
    assert_eq!(status, 503);
    assert!(retry.is_some());
    assert_eq!(in_flight(&running).await, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn subset_hint_is_honoured() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let w3 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1, &w2, &w3]), 3).await;
    let only = w2.addr.to_string();
    for _ in 0..10 {
        let mut s = Session::open(&running).await;
        s.send(request_headers(
            "POST",
            "/v1/completions",
            &[],
            false,
            BodySendMode::FullDuplexStreamed,
            Some(subset_metadata(&[&only])),
        ))
        .await;
        s.send(request_body(COMPLETION, true)).await;
        let r = s.recv().await;
        assert_eq!(set_header(common_of(&r), DEST), Some(only.as_str()));
    }
    // A subset naming no known worker: 503.
    let mut s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::FullDuplexStreamed,
        Some(subset_metadata(&["10.9.9.9:1"])),
    ))
    .await;
    s.send(request_body(COMPLETION, true)).await;
    let r = s.recv().await;
    assert_eq!(immediate(&r).status.as_ref().unwrap().code, 503);
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn ticket_is_released_at_response_end_and_when_the_stream_drops() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1, &w2]), 2).await;

    // 1. Released at the response body's end of stream, after moving to the served worker.
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
    s.send(request_body(COMPLETION, true)).await;
    let headers = s.recv().await;
    let dest = set_header(common_of(&headers), DEST).unwrap().to_owned();
    let _ = s.recv().await; // the re-streamed body
    let other = if dest.starts_with(&w1.addr.to_string()) {
        w2.addr.to_string()
    } else {
        w1.addr.to_string()
    };
    let mut md = Metadata::default();
    md.filter_metadata.insert(
        "envoy.lb".to_owned(),
        Struct {
            fields: [(
                "x-gateway-destination-endpoint-served".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(other.clone())),
                },
            )]
            .into_iter()
            .collect(),
        },
    );
    s.send(response_headers(false, Some(md))).await;
    let _ = s.recv().await;
    let served = workers(&running)
        .await
        .into_iter()
        .find(|w| w["address"] == other.as_str())
        .unwrap();
    assert_eq!(
        served["in_flight"], 1,
        "in-flight moves to the served worker"
    );
    s.send(response_body(b"partial", false)).await;
    let _ = s.recv().await;
    assert_eq!(in_flight(&running).await, 1);
    s.send(response_body(b"", true)).await;
    let _ = s.recv().await;
    assert_eq!(in_flight(&running).await, 0);
    drop(s);

    // 2. Released when the client drops the stream mid-request (after the decision).
    let mut s = Session::open(&running).await;
    let _ = s.route_buffered("/v1/completions", COMPLETION).await;
    assert_eq!(in_flight(&running).await, 1);
    drop(s);
    wait_until(|| async { in_flight(&running).await == 0 }).await;

    // 3. A stream dropped before any decision leaves nothing behind.
    let s = Session::open(&running).await;
    s.send(request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::FullDuplexStreamed,
        None,
    ))
    .await;
    s.send(request_body(b"{\"model\":", false)).await;
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(in_flight(&running).await, 0);
    running.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_streams() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.shutdown_grace_ms = 30_000;
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
    s.send(request_body(COMPLETION, true)).await;
    let _headers = s.recv().await;
    let _body = s.recv().await;
    let shared = running.shared.clone();
    let stopping = tokio::spawn(running.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "an in-flight stream must be let finish"
    );
    // The stream still works while draining.
    s.send(response_headers(true, None)).await;
    let _ = s.recv().await;
    wait_until(|| async { shared.router().outstanding() == 0 }).await;
    drop(s);
    let finished = tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("shutdown after the last stream")
        .unwrap();
    assert!(finished, "finished within the grace period");
}

#[tokio::test]
async fn without_protocol_config_headers_are_answered_and_the_body_routed() {
    let w1 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1]), 1).await;
    let mut s = Session::open(&running).await;
    let mut headers = request_headers(
        "POST",
        "/v1/completions",
        &[],
        false,
        BodySendMode::Buffered,
        None,
    );
    headers.protocol_config = None;
    s.send(headers).await;
    let h = s.recv().await;
    assert!(is_headers(&h) && removes_destination(common_of(&h)));
    s.send(request_body(COMPLETION, true)).await;
    let b = s.recv().await;
    assert_eq!(
        set_header(common_of(&b), DEST),
        Some(w1.addr.to_string().as_str())
    );
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn streams_ending_without_a_response_do_not_trip_the_circuit() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.router.circuit.consecutive_failures = 2;
    let running = start(cfg, 1).await;
    // Clients that leave before the response, or Envoy skipping response headers: no result
    // either way (a failed upstream reaches kvroute as Envoy's 5xx response headers).
    for _ in 0..5 {
        let mut s = Session::open(&running).await;
        let r = s.route_buffered("/v1/completions", COMPLETION).await;
        assert_eq!(metadata_destination(&r), w1.addr.to_string());
        drop(s);
        wait_until(|| async { in_flight(&running).await == 0 }).await;
    }
    let w = workers(&running).await.remove(0);
    assert_eq!(w["circuit"], "closed", "{w}");
    running.shutdown().await;
}

/// Response headers with `:status` and, when given, Envoy's `response.code_details`
/// attribute and extra headers.
fn response_with(
    status: &str,
    code_details: Option<&str>,
    extra: &[(&str, &str)],
) -> ProcessingRequest {
    let mut headers = vec![header(":status", status)];
    headers.extend(extra.iter().map(|(k, v)| header(k, v)));
    let mut msg = response_headers(false, None);
    if let Some(Msg::ResponseHeaders(h)) = msg.request.as_mut() {
        h.headers = Some(HeaderMap { headers });
    }
    if let Some(details) = code_details {
        let fields = [(
            "response.code_details".to_owned(),
            Value {
                kind: Some(Kind::StringValue(details.to_owned())),
            },
        )];
        msg.attributes.insert(
            "envoy.filters.http.ext_proc".to_owned(),
            Struct {
                fields: fields.into_iter().collect(),
            },
        );
    }
    msg
}

/// Routes one request and answers it with `response`, then ends the stream.
async fn route_and_answer(running: &Running, response: ProcessingRequest) -> String {
    let mut s = Session::open(running).await;
    let r = s.route_buffered("/v1/completions", COMPLETION).await;
    let dest = metadata_destination(&r);
    s.send(response).await;
    let _ = s.recv().await;
    s.send(response_body(b"", true)).await;
    let _ = s.recv().await;
    drop(s);
    wait_until(|| async { in_flight(running).await == 0 }).await;
    dest
}

#[tokio::test]
async fn proxy_made_5xx_never_open_a_circuit_but_the_engines_do() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.router.circuit.consecutive_failures = 2;
    let running = start(cfg, 1).await;
    // Envoy's own 503s (no original destination, connect failure, no host): nothing counts.
    for details in [
        "no_original_dst",
        "upstream_reset_before_response_started{connection_failure}",
        "no_healthy_upstream",
        "no_healthy_upstream",
    ] {
        let dest = route_and_answer(&running, response_with("503", Some(details), &[])).await;
        assert_eq!(dest, w1.addr.to_string(), "still routed after {details}");
    }
    // Without the attribute or Envoy's upstream timing header the origin is unknown: a 5xx
    // does not count either.
    for _ in 0..3 {
        route_and_answer(&running, response_with("500", None, &[])).await;
    }
    let w = workers(&running).await.remove(0);
    assert_eq!(w["circuit"], "closed", "{w}");
    // The engine's own 5xx (via_upstream, or the timing header) do.
    route_and_answer(&running, response_with("500", Some("via_upstream"), &[])).await;
    route_and_answer(
        &running,
        response_with("502", None, &[("x-envoy-upstream-service-time", "3")]),
    )
    .await;
    let w = workers(&running).await.remove(0);
    assert_eq!(w["circuit"], "open", "{w}");
    running.shutdown().await;
}

#[tokio::test]
async fn an_engine_set_served_header_does_not_move_counts() {
    let w1 = FakeWorker::start(&["m"]).await;
    let w2 = FakeWorker::start(&["m"]).await;
    let running = start(config(&[&w1, &w2]), 2).await;
    let mut s = Session::open(&running).await;
    let r = s.route_buffered("/v1/completions", COMPLETION).await;
    let dest = metadata_destination(&r);
    let other = if dest == w1.addr.to_string() {
        &w2
    } else {
        &w1
    };
    // The engine's response claims another worker served: only the proxy's metadata is
    // believed.
    s.send(response_with(
        "200",
        Some("via_upstream"),
        &[(
            "x-gateway-destination-endpoint-served",
            &other.addr.to_string(),
        )],
    ))
    .await;
    let _ = s.recv().await;
    let ws = workers(&running).await;
    let count = |addr: String| {
        ws.iter()
            .find(|w| w["address"] == addr.as_str())
            .map(|w| w["in_flight"].clone())
    };
    assert_eq!(count(dest.clone()), Some(1.into()), "{ws:?}");
    assert_eq!(count(other.addr.to_string()), Some(0.into()), "{ws:?}");
    drop(s);
    running.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_global_buffer_budget_get_429_and_the_budget_comes_back() {
    let w1 = FakeWorker::start(&["m"]).await;
    let mut cfg = config(&[&w1]);
    cfg.gateway.max_body_bytes = 1000;
    cfg.limits.max_buffered_bytes = 2000;
    let running = start(cfg, 1).await;
    let budget = running.shared.body_budget.clone();
    let open_duplex = |len: usize| {
        let running = &running;
        async move {
            let s = Session::open(running).await;
            s.send(request_headers(
                "POST",
                "/v1/completions",
                &[],
                false,
                BodySendMode::FullDuplexStreamed,
                None,
            ))
            .await;
            // An unfinished body: `{"model":"m","prompt":"xxxx...` held by kvroute.
            let mut chunk = br#"{"model":"m","prompt":""#.to_vec();
            chunk.resize(len, b'x');
            s.send(request_body(&chunk, false)).await;
            s
        }
    };
    // The first stream holds 900 bytes (1,800 of budget).
    let mut first = open_duplex(900).await;
    wait_until(|| async { budget.used() == 1800 }).await;
    // A second needing 2 x 200 more is refused with 429 and retry-after.
    let mut second = open_duplex(200).await;
    let r = second.recv().await;
    let i = immediate(&r);
    assert_eq!(i.status.as_ref().unwrap().code, 429);
    assert_eq!(immediate_header(i, "retry-after"), Some("1"));
    let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_buffered_bytes", "{v}");
    drop(second);
    // The first finishes and is routed; then its bytes come back.
    first.send(request_body(br#"tail"}"#, true)).await;
    let headers = first.recv().await;
    assert!(set_header(common_of(&headers), DEST).is_some());
    drop(first);
    wait_until(|| async { budget.used() == 0 }).await;
    // With the budget free again, the same body is routed.
    let mut third = open_duplex(200).await;
    third.send(request_body(br#""}"#, true)).await;
    let headers = third.recv().await;
    assert!(set_header(common_of(&headers), DEST).is_some());
    drop(third);
    wait_until(|| async { budget.used() == 0 }).await;
    running.shutdown().await;
}
