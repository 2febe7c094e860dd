//! Fuzz-style property runs of the ext_proc stream handler: arbitrary sequences of
//! `ProcessingRequest` messages (request/response headers, body chunks and trailers in any
//! order, missing fields, empty and oversized bodies, `end_of_stream` anywhere, odd body
//! modes, client-supplied destination headers and metadata) over a real gRPC stream to an
//! in-process kvroute.
//!
//! For every sequence: no panic anywhere in the process, the stream ends without a gRPC error,
//! a stream opened by request headers gets an answer, every local reply is an OpenAI error
//! JSON with a 4xx/5xx status, every destination names only known workers, and once the stream
//! is closed no in-flight ticket is left. 256 sequences by default; `PROPTEST_CASES=N` runs a
//! longer campaign.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use kvroute::proto::header_value;
use kvroute::server::Running;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

const DEST: &str = "x-gateway-destination-endpoint";
const MAX_BODY: usize = 32 * 1024;

/// One message of a generated sequence, before it is built.
#[derive(Clone, Debug)]
enum Step {
    Headers {
        method: &'static str,
        path: &'static str,
        client_destination: bool,
        metadata: bool,
        end_of_stream: bool,
        missing_map: bool,
    },
    Body {
        body: Vec<u8>,
        end_of_stream: bool,
    },
    Trailers,
    ResponseHeaders {
        served: Option<&'static str>,
        end_of_stream: bool,
    },
    ResponseBody {
        end_of_stream: bool,
    },
    ResponseTrailers,
    Empty,
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(COMPLETION.to_vec()),
        Just(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"stream_options":{"include_usage":true}}"#.to_vec()),
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..64),
        (1usize..3).prop_map(|n| {
            let mut b = br#"{"model":"m","prompt":""#.to_vec();
            b.extend(std::iter::repeat_n(b'a', n * MAX_BODY));
            b.extend_from_slice(b"\"}");
            b
        }),
        any::<prop::sample::Index>().prop_map(|i| COMPLETION[..i.index(COMPLETION.len())].to_vec()),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (
            prop::sample::select(vec!["POST", "GET", "", "DELETE"]),
            prop::sample::select(vec![
                "/v1/completions",
                "/v1/chat/completions",
                "/v1/embeddings",
                "/v1/responses",
                "/generate",
                "/v1/models",
                "/health",
                "",
                "/v1/completions?x=1",
            ]),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(method, path, client_destination, metadata, end_of_stream, missing_map)| Step::Headers {
                method,
                path,
                client_destination,
                metadata,
                end_of_stream,
                missing_map,
            }),
        4 => (body(), any::<bool>()).prop_map(|(body, end_of_stream)| Step::Body { body, end_of_stream }),
        1 => Just(Step::Trailers),
        2 => (
            prop::option::of(prop::sample::select(vec!["10.9.9.9:1", "garbage", ""])),
            any::<bool>()
        )
            .prop_map(|(served, end_of_stream)| Step::ResponseHeaders { served, end_of_stream }),
        2 => any::<bool>().prop_map(|end_of_stream| Step::ResponseBody { end_of_stream }),
        1 => Just(Step::ResponseTrailers),
        1 => Just(Step::Empty),
    ]
}

fn protocol_config() -> impl Strategy<Value = Option<ProtocolConfiguration>> {
    // 0 NONE, 1 STREAMED, 2 BUFFERED, 3 BUFFERED_PARTIAL, 4 FULL_DUPLEX_STREAMED, 99 unknown.
    let mode = prop::sample::select(vec![0, 1, 2, 3, 4, 99]);
    prop::option::of(
        (mode.clone(), mode).prop_map(|(req, resp)| ProtocolConfiguration {
            request_body_mode: req,
            response_body_mode: resp,
            ..ProtocolConfiguration::default()
        }),
    )
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// Metadata a hostile client or a misconfigured proxy could attach: a destination in the
/// picker's own namespace and a subset hint naming nobody known.
fn hostile_metadata() -> Metadata {
    let mut md = Metadata::default();
    md.filter_metadata.insert(
        "envoy.lb".to_owned(),
        Struct {
            fields: [(DEST.to_owned(), string_value("10.6.6.6:80"))]
                .into_iter()
                .collect(),
        },
    );
    md
}

fn build(step: &Step) -> ProcessingRequest {
    let request = match step {
        Step::Headers {
            method,
            path,
            client_destination,
            end_of_stream,
            missing_map,
            ..
        } => {
            let mut headers = vec![header(":method", method), header(":path", path)];
            if *client_destination {
                headers.push(header(DEST, "10.6.6.6:80"));
            }
            Msg::RequestHeaders(HttpHeaders {
                headers: (!missing_map).then_some(HeaderMap { headers }),
                end_of_stream: *end_of_stream,
                ..HttpHeaders::default()
            })
        }
        Step::Body {
            body,
            end_of_stream,
        } => Msg::RequestBody(HttpBody {
            body: body.clone(),
            end_of_stream: *end_of_stream,
            ..HttpBody::default()
        }),
        Step::Trailers => Msg::RequestTrailers(HttpTrailers::default()),
        Step::ResponseHeaders {
            served,
            end_of_stream,
        } => Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: served
                    .iter()
                    .map(|s| header("x-gateway-destination-endpoint-served", s))
                    .chain([header(":status", "200")])
                    .collect(),
            }),
            end_of_stream: *end_of_stream,
            ..HttpHeaders::default()
        }),
        Step::ResponseBody { end_of_stream } => Msg::ResponseBody(HttpBody {
            body: b"data: {}\n\n".to_vec(),
            end_of_stream: *end_of_stream,
            ..HttpBody::default()
        }),
        Step::ResponseTrailers => Msg::ResponseTrailers(HttpTrailers::default()),
        Step::Empty => return ProcessingRequest::default(),
    };
    let metadata = matches!(step, Step::Headers { metadata: true, .. }).then(hostile_metadata);
    ProcessingRequest {
        request: Some(request),
        metadata_context: metadata,
        ..ProcessingRequest::default()
    }
}

fn common_of(r: &ProcessingResponse) -> Option<&CommonResponse> {
    match r.response.as_ref()? {
        Response::RequestHeaders(h) | Response::ResponseHeaders(h) => h.response.as_ref(),
        Response::RequestBody(b) | Response::ResponseBody(b) => b.response.as_ref(),
        _ => None,
    }
}

/// How many local replies and routed answers the campaign saw: both must occur, or the
/// generator does not reach the routing code.
static REPLIES: AtomicUsize = AtomicUsize::new(0);
static ROUTED: AtomicUsize = AtomicUsize::new(0);

/// Checks one response against the properties; `known` are the workers' addresses.
fn check_response(r: &ProcessingResponse, known: &HashSet<String>) -> Result<(), String> {
    if let Some(Response::ImmediateResponse(i)) = &r.response {
        REPLIES.fetch_add(1, Ordering::Relaxed);
        let status = i.status.as_ref().map_or(0, |s| s.code);
        if !(400..600).contains(&status) {
            return Err(format!("immediate status {status}"));
        }
        let v: serde_json::Value = serde_json::from_slice(&i.body)
            .map_err(|e| format!("immediate body is not JSON: {e}"))?;
        if !v["error"]["message"].is_string() {
            return Err(format!("not an OpenAI error: {v}"));
        }
    }
    let check_list = |list: &str| -> Result<(), String> {
        match list.split(',').find(|e| !known.contains(*e)) {
            Some(bad) => Err(format!("destination {bad} is not a known worker")),
            None => Ok(()),
        }
    };
    if let Some(m) = common_of(r).and_then(|c| c.header_mutation.as_ref()) {
        for h in m.set_headers.iter().filter_map(|o| o.header.as_ref()) {
            if h.key.eq_ignore_ascii_case(DEST) {
                ROUTED.fetch_add(1, Ordering::Relaxed);
                check_list(header_value(h).unwrap_or(""))?;
            }
        }
    }
    if let Some(md) = &r.dynamic_metadata
        && let Some(Kind::StructValue(ns)) = md.fields.get("envoy.lb").and_then(|v| v.kind.as_ref())
        && let Some(Kind::StringValue(list)) = ns.fields.get(DEST).and_then(|v| v.kind.as_ref())
    {
        check_list(list)?;
    }
    Ok(())
}

/// Whether the sequence obliges the service to answer: it opens with request headers and the
/// request is complete (headers ending the stream, a body end or trailers), or the body mode
/// is not FULL_DUPLEX_STREAMED (where the headers answer waits for the body's end).
fn must_answer(request_body_mode: Option<i32>, steps: &[Step]) -> bool {
    let Some(Step::Headers { end_of_stream, .. }) = steps.first() else {
        return false;
    };
    let duplex = request_body_mode == Some(4);
    let completed = steps[1..].iter().any(|s| {
        matches!(
            s,
            Step::Body {
                end_of_stream: true,
                ..
            } | Step::Trailers
        )
    });
    *end_of_stream || !duplex || completed
}

async fn run_case(
    running: &Running,
    known: &HashSet<String>,
    config: Option<ProtocolConfiguration>,
    steps: &[Step],
) -> Result<(), String> {
    let Session { tx, mut rx } = Session::open(running).await;
    let config_mode = config.as_ref().map(|c| c.request_body_mode);
    let mut msgs: Vec<ProcessingRequest> = steps.iter().map(build).collect();
    if let Some(first) = msgs.first_mut() {
        first.protocol_config = config;
    }
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.message()).await {
                Ok(Ok(Some(m))) => out.push(m),
                Ok(Ok(None)) => return Ok(out),
                Ok(Err(status)) => return Err(format!("gRPC error: {status}")),
                Err(_) => return Err("the stream did not end within 10 s".to_owned()),
            }
        }
    });
    for m in msgs {
        if tx.send(m).await.is_err() {
            break;
        }
    }
    drop(tx);
    let responses = reader.await.map_err(|e| format!("reader failed: {e}"))??;
    if must_answer(config_mode, steps) && responses.is_empty() {
        return Err("the request was never answered".to_owned());
    }
    for r in &responses {
        check_response(r, known)?;
    }
    for _ in 0..250 {
        if running.shared.router().outstanding() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "{} ticket(s) leaked",
        running.shared.router().outstanding()
    ))
}

#[test]
fn arbitrary_message_sequences_are_handled() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (running, known, _workers) = rt.block_on(async {
        let w1 = FakeWorker::start(&["m"]).await;
        let w2 = FakeWorker::start(&[]).await;
        let mut cfg = config(&[&w1, &w2]);
        cfg.gateway.max_body_bytes = MAX_BODY;
        let running = start(cfg, 2).await;
        let known: HashSet<String> = [w1.addr.to_string(), w2.addr.to_string()].into();
        (running, known, (w1, w2))
    });

    let strategy = (protocol_config(), prop::collection::vec(step(), 1..12));
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |(config, steps)| {
        rt.block_on(run_case(&running, &known, config, &steps))
            .map_err(TestCaseError::fail)
    });
    let _ = std::panic::take_hook();
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic happened");
    let (replies, routed) = (
        REPLIES.load(Ordering::Relaxed),
        ROUTED.load(Ordering::Relaxed),
    );
    eprintln!("{replies} local replies, {routed} routed answers");
    assert!(
        replies > 0 && routed > 0,
        "{replies} replies, {routed} routed"
    );
    rt.block_on(running.shutdown());
}
