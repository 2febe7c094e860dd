//! The ext_proc gRPC service: one handler per stream (= one HTTP request) translating Envoy's
//! messages into calls on the core's [`Gateway`](kvroute_core::Gateway) and back.
//!
//! Request body modes:
//! - `BUFFERED` (and `BUFFERED_PARTIAL`): the request headers are answered at once (removing the
//!   destination header); the decision is returned in the body response (header mutation +
//!   `clear_route_cache` + dynamic metadata), as older endpoint pickers do. `STREAMED` is
//!   answered the same way at the body's end, but Envoy has already routed by then: use one of
//!   the other two modes.
//! - `FULL_DUPLEX_STREAMED`: the headers response is held until the body's end, then sent with
//!   the destination, `clear_route_cache` and the body's `content-length`, followed by the body
//!   re-streamed in chunks of at most 62,000 bytes, as the reference endpoint picker does.
//!
//! The mode is read from `protocol_config`, which Envoy sends on the first message of every
//! stream. In `BUFFERED` mode Envoy only sends the body once the headers were answered, so when
//! `protocol_config` is missing the service answers headers at once; a first body message with
//! `end_of_stream=true` means buffered, one with `end_of_stream=false` duplex streaming (then
//! passed through unrouted, the headers being gone).
//!
//! Messages are handled inside the response stream (no task or channel per request).
//!
//! Releasing the in-flight ticket: the ticket lives in a [`TicketGuard`] owned by the stream's
//! handler. It is released when the response ends (response body or trailers with
//! `end_of_stream`, or response headers ending the stream), and otherwise when the gRPC stream
//! ends, which Envoy does when the HTTP stream is destroyed (completed, reset, or the client
//! left). Verified with Envoy 1.40 and a response streamed over 3 s:
//! - response headers `SEND`, body `NONE`, trailers `SKIP`: Envoy resets the ext_proc stream
//!   right after the response headers, so the release would come far too early;
//! - the same with response trailers `SEND`: the stream stays open until the HTTP stream ends
//!   (released at the response's last byte, or when the client disconnects), with no message
//!   per response chunk. This is the shipped setting (`envoy/envoy.yaml`);
//! - response body `FULL_DUPLEX_STREAMED` (+ trailers `SEND`) also works: every chunk is echoed
//!   back and the last one (`end_of_stream`) releases, at the cost of one message per chunk.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeaderMutation, HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use futures_util::Stream;
use kvroute_core::circuit::UPSTREAM_TIMING_HEADER;
use kvroute_core::{
    ApiRoute, DeadlinePolicy, LocalReply, Outcome, RequestKind, ResponseOrigin, ResponseReport,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, field};

use crate::budget::Reservation;
use crate::proto;
use crate::state::{Shared, TicketGuard};

/// Metadata namespace of the proxy's subset hint.
pub const SUBSET_HINT_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key (in the metadata namespace) of the endpoint that served.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";
/// Envoy attribute telling how a response came about (`via_upstream` when a worker sent it),
/// sent when the ext_proc filter lists it in `response_attributes`.
pub const CODE_DETAILS: &str = "response.code_details";

/// The ext_proc service.
#[derive(Clone, Debug)]
pub struct ExtProcService {
    shared: Arc<Shared>,
    subset_key: Arc<str>,
}

impl ExtProcService {
    /// A service over the shared router.
    pub fn new(shared: Arc<Shared>) -> ExtProcService {
        let subset_key = format!("{}-subset", shared.gateway.config().destination_header).into();
        ExtProcService { shared, subset_key }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let inbound = request.into_inner();
        let span = tracing::debug_span!("ext_proc", request_id = field::Empty);
        let handler = StreamHandler::new(self.shared.clone(), self.subset_key.clone(), span);
        // Messages are handled inside the response stream, polled by the HTTP/2 stream's own
        // task: no task and no channel per request, one wake-up less per message.
        let out = futures_util::stream::unfold((handler, inbound), |(handler, inbound)| {
            let span = handler.span.clone();
            async move { handler.next_response(inbound).await }.instrument(span)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Body mode of one side of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyMode {
    /// Not announced by Envoy.
    Unknown,
    /// One body message (BUFFERED, BUFFERED_PARTIAL), or no body sent (NONE).
    Buffered,
    /// STREAMED: chunks, each answered.
    Streamed,
    /// FULL_DUPLEX_STREAMED: chunks, answered by re-streaming them.
    Duplex,
}

impl BodyMode {
    fn from_proto(mode: i32) -> BodyMode {
        if mode == BodySendMode::FullDuplexStreamed as i32 {
            BodyMode::Duplex
        } else if mode == BodySendMode::Streamed as i32 {
            BodyMode::Streamed
        } else {
            BodyMode::Buffered
        }
    }
}

/// What the stream is doing with the request body.
#[derive(Debug)]
enum RequestState {
    /// Waiting for the request headers.
    Start,
    /// An inference request waiting for its body; `headers_answered` in the answered modes.
    AwaitingBody {
        route: ApiRoute,
        session: Option<String>,
        subset: Option<Vec<String>>,
        headers_answered: bool,
    },
    /// Decided (or not routed on the body): body chunks are passed through.
    PassThrough,
    /// A local reply was sent: Envoy ignores anything else on this stream.
    Replied,
}

/// The state of one ext_proc stream.
struct StreamHandler {
    shared: Arc<Shared>,
    subset_key: Arc<str>,
    outbox: VecDeque<ProcessingResponse>,
    span: tracing::Span,
    request_mode: BodyMode,
    response_mode: BodyMode,
    state: RequestState,
    body: Vec<u8>,
    /// This stream's share of `limits.max_buffered_bytes`: twice the buffered body (the body
    /// and its parsed or re-streamed copy) until the body is gone.
    reservation: Reservation,
    guard: Option<TicketGuard>,
}

impl StreamHandler {
    fn new(shared: Arc<Shared>, subset_key: Arc<str>, span: tracing::Span) -> StreamHandler {
        StreamHandler {
            subset_key,
            outbox: VecDeque::new(),
            span,
            request_mode: BodyMode::Unknown,
            response_mode: BodyMode::Unknown,
            state: RequestState::Start,
            body: Vec::new(),
            reservation: Reservation::new(shared.body_budget.clone()),
            shared,
            guard: None,
        }
    }

    /// The next message for Envoy: queued answers first, then the answers to the next message
    /// from Envoy. `None` ends the response stream, once Envoy closed its side or it failed;
    /// dropping the handler then releases any ticket still held (also when Envoy resets the
    /// stream and the response stream is dropped unpolled).
    async fn next_response(
        mut self,
        mut inbound: Streaming<ProcessingRequest>,
    ) -> Option<(
        Result<ProcessingResponse, Status>,
        (Self, Streaming<ProcessingRequest>),
    )> {
        loop {
            if let Some(msg) = self.outbox.pop_front() {
                return Some((Ok(msg), (self, inbound)));
            }
            // Everything queued went to Envoy: a body no longer held gives its bytes back.
            if self.body.is_empty() && self.reservation.bytes() > 0 {
                self.reservation.resize(0);
            }
            let msg = match inbound.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => {
                    debug!(%status, "ext_proc stream ended with an error");
                    break;
                }
            };
            self.handle(msg).await;
        }
        debug!(
            releasing_ticket = self.guard.is_some(),
            "ext_proc stream closed"
        );
        // A stream that ends before any response headers records no result: the client left,
        // or Envoy was told not to send response headers (`response_header_mode: SKIP`). An
        // upstream failure reaches kvroute as Envoy's 5xx response headers.
        None
    }

    /// Queues a message for Envoy.
    fn send(&mut self, msg: ProcessingResponse) {
        self.outbox.push_back(msg);
    }

    async fn handle(&mut self, msg: ProcessingRequest) {
        if let Some(pc) = &msg.protocol_config {
            self.request_mode = BodyMode::from_proto(pc.request_body_mode);
            self.response_mode = BodyMode::from_proto(pc.response_body_mode);
        }
        let Some(request) = msg.request else {
            return;
        };
        match request {
            Msg::RequestHeaders(h) => self.on_request_headers(h, msg.metadata_context).await,
            Msg::RequestBody(b) => self.on_request_body(b).await,
            Msg::RequestTrailers(_) => self.on_request_trailers().await,
            Msg::ResponseHeaders(h) => {
                debug!(end_of_stream = h.end_of_stream, "response headers");
                // Only the proxy's own metadata says which endpoint served: a response
                // header could come from the engine, which must not be able to move counts.
                let served = proto::metadata_strings(
                    msg.metadata_context.as_ref(),
                    &self.shared.gateway.config().metadata_namespace,
                    SERVED_KEY,
                )
                .and_then(|v| v.into_iter().next());
                if let Some(guard) = self.guard.as_mut() {
                    let headers = h.headers.as_ref();
                    let status =
                        proto::find_header(headers, ":status").and_then(|s| s.parse::<u16>().ok());
                    let code_details = proto::attribute_string(&msg.attributes, CODE_DETAILS);
                    let origin = ResponseOrigin::classify(
                        code_details.as_deref(),
                        proto::find_header(headers, UPSTREAM_TIMING_HEADER).is_some(),
                    );
                    self.shared
                        .metrics
                        .record_response(origin, served.is_some());
                    guard.response_started(ResponseReport {
                        served: served.as_deref(),
                        status,
                        origin,
                    });
                }
                if h.end_of_stream {
                    self.release();
                }
                self.send(proto::response_headers())
            }
            Msg::ResponseBody(b) => {
                debug!(
                    len = b.body.len(),
                    end_of_stream = b.end_of_stream,
                    "response body"
                );
                let reply = if self.response_mode == BodyMode::Duplex {
                    proto::streamed_body(b.body, b.end_of_stream, true)
                } else {
                    proto::response_body()
                };
                if b.end_of_stream {
                    self.release();
                }
                self.send(reply)
            }
            Msg::ResponseTrailers(_) => {
                debug!("response trailers");
                self.release();
                self.send(proto::trailers(true))
            }
        }
    }

    fn release(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release();
        }
    }

    fn strip_mutation(&self) -> HeaderMutation {
        HeaderMutation {
            set_headers: Vec::new(),
            remove_headers: vec![self.shared.gateway.config().destination_header.clone()],
        }
    }

    /// Classifies the request and names it in the stream's span.
    fn classify(&self, method: &str, path: &str, request_id: Option<&str>) -> RequestKind {
        if let Some(id) = request_id {
            self.span.record("request_id", id);
        }
        let kind = RequestKind::classify(method, path);
        debug!(method, path, ?kind, "request");
        kind
    }

    async fn on_request_headers(&mut self, h: HttpHeaders, metadata: Option<Metadata>) {
        let headers = h.headers.as_ref();
        let method = proto::find_header(headers, ":method").unwrap_or("");
        let path = proto::find_header(headers, ":path").unwrap_or("");
        let request_id = proto::find_header(headers, "x-request-id");
        let config = self.shared.gateway.config();
        let session = proto::find_header(headers, &config.session_header).map(str::to_owned);
        let kind = self.classify(method, path, request_id);
        let subset =
            proto::metadata_strings(metadata.as_ref(), SUBSET_HINT_NAMESPACE, &self.subset_key);

        match kind {
            RequestKind::Inference(route) if !h.end_of_stream => {
                let answer_now = self.request_mode != BodyMode::Duplex;
                self.state = RequestState::AwaitingBody {
                    route,
                    session,
                    subset,
                    headers_answered: answer_now,
                };
                if answer_now {
                    let strip = proto::common(self.strip_mutation(), false);
                    self.send(proto::request_headers(strip));
                }
            }
            RequestKind::Inference(route) => {
                // No body at all: the core answers with its "empty body" error.
                let outcome = self
                    .decide(|gw, router, now| {
                        gw.route_inference(
                            router,
                            route,
                            b"",
                            session.as_deref(),
                            as_refs(&subset).as_deref(),
                            now,
                        )
                    })
                    .await;
                self.answer_at_headers(outcome, None).await
            }
            RequestKind::ListModels => {
                let now_secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let listed = {
                    let router = self.shared.router();
                    self.shared.gateway.list_models(&router, now_secs)
                };
                let outcome = match listed {
                    Some(reply) => Some(Outcome::Reply(reply)),
                    None => {
                        self.decide(|gw, router, now| {
                            gw.route_other(router, as_refs(&subset).as_deref(), now)
                        })
                        .await
                    }
                };
                self.answer_at_headers(outcome, None).await
            }
            RequestKind::Other => {
                let outcome = self
                    .decide(|gw, router, now| {
                        gw.route_other(router, as_refs(&subset).as_deref(), now)
                    })
                    .await;
                self.answer_at_headers(outcome, None).await
            }
        }
    }

    /// Takes one decision under the router lock and records its metrics. `None`: the
    /// decision missed `limits.decision_timeout_ms` and the request is let through unrouted
    /// (`on_decision_timeout: fail_open`); `reject` gives a 503 reply instead.
    async fn decide(
        &self,
        f: impl FnOnce(&kvroute_core::Gateway, &mut kvroute_core::Router, u64) -> Outcome,
    ) -> Option<Outcome> {
        self.decide_since(Instant::now(), f).await
    }

    /// [`StreamHandler::decide`] for a decision that started at `started` (body parsing done
    /// outside the lock counts in its duration and in its deadline).
    async fn decide_since(
        &self,
        started: Instant,
        f: impl FnOnce(&kvroute_core::Gateway, &mut kvroute_core::Router, u64) -> Outcome,
    ) -> Option<Outcome> {
        let limits = self.shared.gateway.limits();
        let outcome = match limits.decision_timeout_ms {
            None => {
                let mut router = self.shared.router();
                let now = self.shared.now_ms();
                Some(f(&self.shared.gateway, &mut router, now))
            }
            Some(ms) => {
                // The deadline counts from the decision's start: parsing and tokenizing a long
                // prompt spend it too, and only what is left may be spent waiting for the lock.
                let deadline = std::time::Duration::from_millis(ms);
                let left = deadline.saturating_sub(started.elapsed());
                let router = if left.is_zero() {
                    None
                } else {
                    self.shared.router_within(left).await
                };
                match router {
                    Some(mut router) => {
                        let now = self.shared.now_ms();
                        Some(f(&self.shared.gateway, &mut router, now))
                    }
                    None => {
                        tracing::warn!(timeout_ms = ms, "routing decision missed its deadline");
                        match limits.on_decision_timeout {
                            DeadlinePolicy::FailOpen => None,
                            DeadlinePolicy::Reject => {
                                Some(Outcome::Reply(self.shared.gateway.deadline_reply()))
                            }
                        }
                    }
                }
            }
        };
        self.record(started, outcome.as_ref());
        outcome
    }

    /// Records a decision's metrics.
    fn record(&self, started: Instant, outcome: Option<&Outcome>) {
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Some(Outcome::Forward(f)) => {
                self.shared.metrics.record_decision(
                    f.routed.policy,
                    None,
                    secs,
                    f.routed.prefix_match,
                );
                debug!(destination = %f.destination, policy = f.routed.policy, "routed");
            }
            Some(Outcome::Reply(r)) => {
                self.shared
                    .metrics
                    .record_decision("", Some(r.status), secs, None);
                debug!(status = r.status, "local reply");
            }
            None => self.shared.metrics.record_deadline_missed(secs),
        }
    }

    /// Turns a forward into the destination header mutation and metadata, keeping its ticket.
    fn forward_parts(
        &mut self,
        fwd: kvroute_core::Forward,
        content_length: Option<usize>,
    ) -> (HeaderMutation, envoy_types::pb::google::protobuf::Struct) {
        let config = self.shared.gateway.config();
        let mut mutation = self.strip_mutation();
        mutation.set_headers.push(proto::set_header(
            &config.destination_header,
            fwd.destination.as_bytes(),
        ));
        if let Some(len) = content_length {
            mutation
                .set_headers
                .push(proto::set_header("content-length", len.to_string()));
        }
        let metadata = proto::destination_metadata(
            &config.metadata_namespace,
            &config.destination_header,
            &fwd.destination,
        );
        self.guard = Some(TicketGuard::new(self.shared.clone(), fwd.routed.ticket));
        (mutation, metadata)
    }

    /// Lets go of the buffered body and its share of the budget.
    fn drop_body(&mut self) {
        self.body = Vec::new();
        self.reservation.resize(0);
    }

    fn reply(&mut self, reply: &LocalReply) {
        self.state = RequestState::Replied;
        self.send(proto::immediate(reply))
    }

    /// Answers in the request-headers response (no body read, or the held duplex headers).
    async fn answer_at_headers(&mut self, outcome: Option<Outcome>, content_length: Option<usize>) {
        match outcome {
            None => {
                self.state = RequestState::PassThrough;
                let strip = proto::common(self.strip_mutation(), false);
                self.send(proto::request_headers(strip))
            }
            Some(Outcome::Reply(reply)) => self.reply(&reply),
            Some(Outcome::Forward(fwd)) => {
                self.state = RequestState::PassThrough;
                let (mutation, metadata) = self.forward_parts(fwd, content_length);
                let mut msg = proto::request_headers(proto::common(mutation, true));
                msg.dynamic_metadata = Some(metadata);
                self.send(msg)
            }
        }
    }

    async fn on_request_body(&mut self, b: HttpBody) {
        if self.request_mode == BodyMode::Unknown {
            self.request_mode = if b.end_of_stream {
                BodyMode::Buffered
            } else {
                BodyMode::Duplex
            };
        }
        let mode = self.request_mode;
        if let RequestState::AwaitingBody {
            headers_answered: true,
            ..
        } = self.state
            && mode == BodyMode::Duplex
        {
            // Duplex streaming without protocol_config: the headers already went upstream, so
            // the body can only be passed through.
            tracing::warn!("duplex body after answered headers: passing the request through");
            self.state = RequestState::PassThrough;
        }
        match &self.state {
            RequestState::Replied => {}
            RequestState::Start | RequestState::PassThrough => {
                let msg = if mode == BodyMode::Duplex {
                    proto::streamed_body(b.body, b.end_of_stream, false)
                } else {
                    proto::request_body(Default::default())
                };
                self.send(msg)
            }
            RequestState::AwaitingBody {
                headers_answered, ..
            } => {
                let headers_answered = *headers_answered;
                let total = self.body.len().saturating_add(b.body.len());
                if let Err(reply) = self.shared.gateway.check_body_size(total) {
                    self.drop_body();
                    return self.reply(&reply);
                }
                if !self.reservation.resize(2 * total as u64) {
                    self.drop_body();
                    self.shared.metrics.record_budget_refusal();
                    let reply = self.shared.gateway.buffers_full_reply();
                    return self.reply(&reply);
                }
                if self.body.is_empty() {
                    self.body = b.body;
                } else {
                    self.body.extend_from_slice(&b.body);
                }
                match mode {
                    BodyMode::Duplex if !b.end_of_stream => {}
                    BodyMode::Streamed if !b.end_of_stream => {
                        self.send(proto::request_body(Default::default()))
                    }
                    _ => self.route_body(headers_answered, b.end_of_stream).await,
                }
            }
        }
    }

    async fn on_request_trailers(&mut self) {
        if let RequestState::AwaitingBody {
            headers_answered, ..
        } = self.state
        {
            // Trailers end the body in duplex mode.
            self.route_body(headers_answered, false).await;
        }
        if matches!(self.state, RequestState::Replied) {
            return;
        }
        self.send(proto::trailers(false))
    }

    /// Routes on the accumulated body and answers. `end_of_stream`: no trailers follow.
    async fn route_body(&mut self, headers_answered: bool, end_of_stream: bool) {
        let RequestState::AwaitingBody {
            route,
            session,
            subset,
            ..
        } = std::mem::replace(&mut self.state, RequestState::PassThrough)
        else {
            return;
        };
        let body = std::mem::take(&mut self.body);
        // Parsing and tokenizing are linear in the body: done before taking the router lock.
        let started = Instant::now();
        let outcome = match self.shared.gateway.parse_inference(route, &body) {
            Ok(parsed) => {
                let tokens = self
                    .shared
                    .tokenizer()
                    .and_then(|t| t.tokenize_parsed(&parsed, &body));
                let mut outcome = self
                    .decide_since(started, |gw, router, now| {
                        gw.route_parsed_tokens(
                            router,
                            &parsed,
                            tokens.as_deref(),
                            session.as_deref(),
                            as_refs(&subset).as_deref(),
                            now,
                        )
                    })
                    .await;
                // The rewrite is linear in the body: after the router lock is released.
                if let Some(Outcome::Forward(fwd)) = &mut outcome {
                    self.shared.gateway.rewrite_body(&parsed, fwd);
                }
                outcome
            }
            Err(reply) => {
                let outcome = Outcome::Reply(reply);
                self.record(started, Some(&outcome));
                Some(outcome)
            }
        };
        let Some(outcome) = outcome else {
            // Missed the deadline, fail-open: on unrouted, the proxy's fallback policy picks.
            if headers_answered {
                return self.send(proto::request_body(Default::default()));
            }
            let mut mutation = self.strip_mutation();
            mutation
                .set_headers
                .push(proto::set_header("content-length", body.len().to_string()));
            self.send(proto::request_headers(proto::common(mutation, false)));
            for chunk in proto::restream_request_body(body, end_of_stream) {
                self.send(chunk);
            }
            return;
        };
        match outcome {
            Outcome::Reply(reply) => self.reply(&reply),
            Outcome::Forward(mut fwd) if headers_answered => {
                // Chunks of a STREAMED body are already upstream: it cannot be replaced.
                let rewritten = fwd
                    .body
                    .take()
                    .filter(|_| self.request_mode != BodyMode::Streamed);
                let (mutation, metadata) =
                    self.forward_parts(fwd, rewritten.as_ref().map(Vec::len));
                let mut common = proto::common(mutation, true);
                if let Some(new_body) = rewritten {
                    debug!(
                        len = new_body.len(),
                        "body normalized for the chosen engine"
                    );
                    common = proto::with_body(common, new_body);
                }
                let mut msg = proto::request_body(common);
                msg.dynamic_metadata = Some(metadata);
                self.send(msg)
            }
            Outcome::Forward(mut fwd) => {
                let body = match fwd.body.take() {
                    Some(new_body) => {
                        debug!(
                            len = new_body.len(),
                            "body normalized for the chosen engine"
                        );
                        new_body
                    }
                    None => body,
                };
                let (mutation, metadata) = self.forward_parts(fwd, Some(body.len()));
                let mut msg = proto::request_headers(proto::common(mutation, true));
                msg.dynamic_metadata = Some(metadata);
                self.send(msg);
                for chunk in proto::restream_request_body(body, end_of_stream) {
                    self.send(chunk);
                }
            }
        }
    }
}

/// Borrows an owned subset hint as the core expects it.
fn as_refs(subset: &Option<Vec<String>>) -> Option<Vec<&str>> {
    subset
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect())
}
