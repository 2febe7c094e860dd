//! The per-request gateway flow both shells share: classify the request, parse the body, route,
//! and turn the result into either a destination for the proxy or a local reply.
//!
//! The shells (ext_proc service, proxy-wasm filter) only translate their protocol into calls
//! here and the [`Outcome`] back into protocol messages.

use serde::{Deserialize, Serialize};

use crate::error::{OpenAiError, RouteError};
use crate::limits::LimitsConfig;
use crate::normalize::{NormalizeConfig, Normalizer, Plan};
use crate::request::{ApiRoute, ParsedRequest, RequestError, RouteRequest, parse_request};
use crate::router::{Routed, Router};

/// Header the Gateway API Inference Extension protocol uses for the chosen endpoints.
pub const DEFAULT_DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Dynamic-metadata namespace of the endpoint-picker protocol.
pub const DEFAULT_METADATA_NAMESPACE: &str = "envoy.lb";

/// Settings of the request flow, shared by both shells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Header carrying the chosen `ip:port` list (also the metadata key). Always removed from
    /// client requests before anything else.
    pub destination_header: String,
    /// Dynamic-metadata namespace the destination is written to.
    pub metadata_namespace: String,
    /// Header whose value is the session key (wins over the body's `user` field).
    pub session_header: String,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Per-engine request normalization (mixed fleets).
    pub normalize: NormalizeConfig,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            destination_header: DEFAULT_DESTINATION_HEADER.to_owned(),
            metadata_namespace: DEFAULT_METADATA_NAMESPACE.to_owned(),
            session_header: "x-session-id".to_owned(),
            max_body_bytes: 8 * 1024 * 1024,
            normalize: NormalizeConfig::default(),
        }
    }
}

/// How a request path is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// An inference API: the body is read and routed on.
    Inference(ApiRoute),
    /// `GET /v1/models`: answered from the router's own view of the fleet when it knows every
    /// worker's models, else forwarded to one worker.
    ListModels,
    /// Anything else (`/health`, `/metrics`, `/tokenize`, ...): forwarded to the least-loaded
    /// healthy worker without reading the body.
    Other,
}

impl RequestKind {
    /// Classifies a request by method and path.
    pub fn classify(method: &str, path: &str) -> RequestKind {
        if method.eq_ignore_ascii_case("GET")
            && crate::request::path::canonical_path(path) == "/v1/models"
        {
            return RequestKind::ListModels;
        }
        if method.eq_ignore_ascii_case("POST")
            && let Some(route) = ApiRoute::from_path(path)
        {
            return RequestKind::Inference(route);
        }
        RequestKind::Other
    }
}

/// A reply the proxy sends itself, never reaching a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
    /// `retry-after` seconds, for 429 and 503.
    pub retry_after_secs: Option<u32>,
}

impl LocalReply {
    fn error(status: u16, err: &OpenAiError, retry_after_secs: Option<u32>) -> LocalReply {
        LocalReply {
            status,
            body: err.to_json(),
            retry_after_secs,
        }
    }

    /// The reply for a request-body error (400 or 413).
    pub fn from_request_error(err: &RequestError) -> LocalReply {
        LocalReply::error(err.status(), &err.to_openai(), None)
    }
}

/// A routing decision ready for the proxy.
#[derive(Debug)]
pub struct Forward {
    /// The decision, with its in-flight ticket.
    pub routed: Routed,
    /// The destination value: the ordered endpoint list joined with `,`.
    pub destination: String,
    /// The body rewritten into the chosen worker's dialect, when it differs from the client's:
    /// the shell replaces the request body with it. Filled by [`Gateway::route_inference`];
    /// after [`Gateway::route_parsed`], by [`Gateway::rewrite_body`] once the router is
    /// released.
    pub body: Option<Vec<u8>>,
    /// The normalization rules the chosen worker needs ([`Gateway::rewrite_body`]).
    pub rewrite: Plan,
}

/// What the shell must do with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Send upstream to `destination` (header and metadata); release the ticket at the end.
    Forward(Forward),
    /// Answer locally.
    Reply(LocalReply),
}

/// The request flow over a [`Router`].
#[derive(Clone, Debug)]
pub struct Gateway {
    config: GatewayConfig,
    normalizer: Normalizer,
    limits: LimitsConfig,
}

impl Default for Gateway {
    fn default() -> Gateway {
        Gateway::new(GatewayConfig::default())
    }
}

impl Gateway {
    /// A gateway with these settings.
    pub fn new(config: GatewayConfig) -> Gateway {
        let normalizer = Normalizer::new(&config.normalize);
        Gateway {
            config,
            normalizer,
            limits: LimitsConfig::default(),
        }
    }

    /// The same gateway with these admission limits.
    pub fn with_limits(mut self, limits: LimitsConfig) -> Gateway {
        self.limits = limits;
        self
    }

    /// The admission limits.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// The 503 answer of a decision that missed its deadline
    /// ([`crate::DeadlinePolicy::Reject`]).
    pub fn deadline_reply(&self) -> LocalReply {
        let err = OpenAiError::new(
            "the routing decision could not be made in time",
            "service_unavailable",
            "decision_timeout",
            None,
        );
        LocalReply::error(503, &err, Some(1))
    }

    /// The 429 answer to a request whose body would take the buffered bytes of all requests
    /// over `limits.max_buffered_bytes`.
    pub fn buffers_full_reply(&self) -> LocalReply {
        let err = OpenAiError::new(
            "too many request bytes are being processed; retry later",
            "rate_limit_error",
            "too_many_buffered_bytes",
            None,
        );
        LocalReply::error(429, &err, Some(self.limits.retry_after_secs))
    }

    /// The 429 answer when the global in-flight limit is reached, if it is.
    fn shed(&self, router: &Router) -> Option<Outcome> {
        if !self.limits.sheds(router.outstanding()) {
            return None;
        }
        let err = RouteError::Overloaded;
        Some(Outcome::Reply(LocalReply::error(
            429,
            &err.to_openai(),
            Some(self.limits.retry_after_secs),
        )))
    }

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Whether `name` is the destination header (case-insensitive): shells strip it from
    /// every client request.
    pub fn is_destination_header(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.config.destination_header)
    }

    /// Checks a body size seen so far against the limit.
    pub fn check_body_size(&self, size: usize) -> Result<(), LocalReply> {
        if size > self.config.max_body_bytes {
            let err = RequestError::TooLarge {
                size,
                limit: self.config.max_body_bytes,
            };
            return Err(LocalReply::from_request_error(&err));
        }
        Ok(())
    }

    /// Routes an inference request on its full body. `session` is the session header's value,
    /// `subset` the proxy's subset hint.
    pub fn route_inference(
        &self,
        router: &mut Router,
        route: ApiRoute,
        body: &[u8],
        session: Option<&str>,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Outcome {
        self.route_inference_observed(router, route, body, session, subset, now_ms, |_, _| {})
    }

    /// [`Gateway::route_inference`], calling `observe` with the request view and the decision
    /// when the request is forwarded (the wasm filter publishes decisions to its sibling VMs).
    #[allow(clippy::too_many_arguments)]
    pub fn route_inference_observed(
        &self,
        router: &mut Router,
        route: ApiRoute,
        body: &[u8],
        session: Option<&str>,
        subset: Option<&[&str]>,
        now_ms: u64,
        observe: impl FnOnce(&RouteRequest<'_>, &Routed),
    ) -> Outcome {
        let parsed = match self.parse_inference(route, body) {
            Ok(p) => p,
            Err(reply) => return Outcome::Reply(reply),
        };
        let mut outcome =
            self.route_parsed_observed(router, &parsed, None, session, subset, now_ms, observe);
        if let Outcome::Forward(fwd) = &mut outcome {
            self.rewrite_body(&parsed, fwd);
        }
        outcome
    }

    /// Fills [`Forward::body`] with the body the chosen worker needs, from the fields read by
    /// [`Gateway::parse_inference`]: linear in the body, so shells call it after releasing
    /// the router.
    pub fn rewrite_body(&self, parsed: &ParsedRequest<'_>, forward: &mut Forward) {
        if let Some(fields) = &parsed.top_level {
            forward.body = self.normalizer.rewrite(fields, &forward.rewrite);
        }
    }

    /// [`Gateway::route_parsed`], calling `observe` as [`Gateway::route_inference_observed`].
    #[allow(clippy::too_many_arguments)]
    fn route_parsed_observed(
        &self,
        router: &mut Router,
        parsed: &ParsedRequest<'_>,
        tokens: Option<&[u32]>,
        session: Option<&str>,
        subset: Option<&[&str]>,
        now_ms: u64,
        observe: impl FnOnce(&RouteRequest<'_>, &Routed),
    ) -> Outcome {
        if let Some(shed) = self.shed(router) {
            return shed;
        }
        let req = parsed.route_request(session).with_tokens(tokens);
        let mut result = router.route(&req, subset, now_ms);
        let mut plan = Plan::default();
        if let Ok(routed) = &mut result {
            plan = self.plan(router, parsed, routed);
            observe(&req, routed);
        }
        let mut outcome = self.finish(result);
        if let Outcome::Forward(fwd) = &mut outcome {
            fwd.rewrite = plan;
        }
        outcome
    }

    /// The rules that rewrite the body for the chosen worker and, when configured, drops the
    /// fallbacks that would need a different body: when the body is rewritten, only workers
    /// of the same engine kind with the same plan stay; when it is not, only workers that
    /// need no rewrite either. Compares plans: the body is not rewritten here.
    fn plan(&self, router: &Router, parsed: &ParsedRequest<'_>, routed: &mut Routed) -> Plan {
        let Some(fields) = &parsed.top_level else {
            return Plan::default();
        };
        let workers = router.workers();
        let Some(first) = workers.get(routed.ticket.worker()) else {
            return Plan::default();
        };
        let (route, stream) = (parsed.route, parsed.stream);
        let plan = self.normalizer.plan(&first.spec, route, stream, fields);
        if self.config.normalize.same_dialect_fallbacks {
            let first_address = first.spec.address.clone();
            routed.endpoints.retain(|addr| {
                *addr == first_address
                    || workers.by_address(addr).is_some_and(|w| {
                        (plan.is_empty() || w.spec.engine == first.spec.engine)
                            && self.normalizer.plan(&w.spec, route, stream, fields) == plan
                    })
            });
        }
        plan
    }

    /// Checks and parses an inference body without the router: the costly part of a decision
    /// (linear in the body), which shells run outside their router lock before
    /// [`Gateway::route_parsed`]. Errors are the local reply to send (400, 413).
    pub fn parse_inference<'a>(
        &self,
        route: ApiRoute,
        body: &'a [u8],
    ) -> Result<ParsedRequest<'a>, LocalReply> {
        self.check_body_size(body.len())?;
        if body.iter().all(u8::is_ascii_whitespace) {
            let err = RequestError::InvalidJson("request body is empty".to_owned());
            return Err(LocalReply::from_request_error(&err));
        }
        if crate::limits::json_too_deep(body, self.limits.max_json_depth) {
            let err = RequestError::InvalidJson(format!(
                "JSON nesting deeper than {} levels",
                self.limits.max_json_depth
            ));
            return Err(LocalReply::from_request_error(&err));
        }
        let mut parsed =
            parse_request(route, body).map_err(|err| LocalReply::from_request_error(&err))?;
        if self.normalizer.may_apply(route, body) {
            parsed.top_level = crate::request::TopLevel::parse(body);
        }
        Ok(parsed)
    }

    /// Routes a request parsed by [`Gateway::parse_inference`]; followed by
    /// [`Gateway::rewrite_body`] (outside the router lock), the same outcome as
    /// [`Gateway::route_inference`].
    pub fn route_parsed(
        &self,
        router: &mut Router,
        parsed: &ParsedRequest<'_>,
        session: Option<&str>,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Outcome {
        self.route_parsed_observed(router, parsed, None, session, subset, now_ms, |_, _| {})
    }

    /// [`Gateway::route_parsed`] with the prompt's token ids, tokenized by the shell (outside
    /// any lock) for policies that hash token blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn route_parsed_tokens(
        &self,
        router: &mut Router,
        parsed: &ParsedRequest<'_>,
        tokens: Option<&[u32]>,
        session: Option<&str>,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Outcome {
        self.route_parsed_observed(router, parsed, tokens, session, subset, now_ms, |_, _| {})
    }

    /// Routes a request that is not routed by content (no body parsing): the least-loaded
    /// healthy worker, within the subset when given.
    pub fn route_other(
        &self,
        router: &mut Router,
        subset: Option<&[&str]>,
        now_ms: u64,
    ) -> Outcome {
        if let Some(shed) = self.shed(router) {
            return shed;
        }
        self.finish(router.route_any(subset, now_ms))
    }

    /// Answers `GET /v1/models` from the fleet view when every routable worker lists its
    /// models; `None` means "forward it" (some worker serves unknown models).
    pub fn list_models(&self, router: &Router, now_secs: u64) -> Option<LocalReply> {
        let mut models: Vec<&str> = Vec::new();
        for w in router.workers().iter().filter(|w| w.is_routable()) {
            if w.spec.models.is_empty() {
                return None;
            }
            models.extend(w.spec.models.iter().map(String::as_str));
            models.extend(w.spec.lora_adapters.iter().map(String::as_str));
        }
        models.sort_unstable();
        models.dedup();
        let data: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                serde_json::json!({"id": m, "object": "model", "created": now_secs, "owned_by": "kvroute"})
            })
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        Some(LocalReply {
            status: 200,
            body,
            retry_after_secs: None,
        })
    }

    fn finish(&self, result: Result<Routed, RouteError>) -> Outcome {
        match result {
            Ok(routed) => {
                let destination = routed.endpoints.join(",");
                Outcome::Forward(Forward {
                    routed,
                    destination,
                    body: None,
                    rewrite: Plan::default(),
                })
            }
            Err(err) => {
                let retry = match err.status() {
                    429 => Some(self.limits.retry_after_secs),
                    503 => Some(5),
                    _ => None,
                };
                Outcome::Reply(LocalReply::error(err.status(), &err.to_openai(), retry))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyConfig;
    use crate::router::RouterConfig;
    use crate::worker::WorkerSpec;

    fn router(policy: &str) -> Router {
        router_listing(policy, RouterConfig::default().max_endpoints)
    }

    /// Like [`router`], naming up to `max_endpoints` per decision.
    fn router_listing(policy: &str, max_endpoints: usize) -> Router {
        let mut r = Router::new(
            RouterConfig {
                policy: PolicyConfig::from_name(policy).unwrap(),
                max_endpoints,
                ..RouterConfig::default()
            },
            1,
        );
        for i in 1..=3 {
            r.upsert_worker(WorkerSpec {
                models: vec!["m".into()],
                ..WorkerSpec::new(format!("127.0.0.1:800{i}"))
            });
        }
        r
    }

    #[test]
    fn classifies_paths() {
        assert_eq!(
            RequestKind::classify("POST", "/v1/chat/completions"),
            RequestKind::Inference(ApiRoute::ChatCompletions)
        );
        assert_eq!(
            RequestKind::classify("GET", "/v1/models"),
            RequestKind::ListModels
        );
        assert_eq!(RequestKind::classify("GET", "/health"), RequestKind::Other);
        // Path spellings an engine resolves to a route are that route.
        for path in [
            "//v1/chat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/./chat/completions/",
        ] {
            assert_eq!(
                RequestKind::classify("POST", path),
                RequestKind::Inference(ApiRoute::ChatCompletions),
                "{path}"
            );
        }
        assert_eq!(
            RequestKind::classify("GET", "//v1/models/"),
            RequestKind::ListModels
        );
        assert_eq!(
            RequestKind::classify("GET", "/v1/chat/completions"),
            RequestKind::Other
        );
    }

    #[test]
    fn forwards_with_ordered_list_and_releases() {
        let gw = Gateway::default();
        let body = br#"{"model":"m","prompt":"hello"}"#;
        let mut one = router("round_robin");
        let Outcome::Forward(f) =
            gw.route_inference(&mut one, ApiRoute::Completions, body, None, None, 0)
        else {
            panic!("expected a forward");
        };
        assert_eq!(
            f.destination.split(',').count(),
            1,
            "one endpoint by default"
        );
        one.complete(f.routed.ticket);
        let mut r = router_listing("round_robin", 3);
        let Outcome::Forward(f) =
            gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0)
        else {
            panic!("expected a forward");
        };
        assert_eq!(f.destination.split(',').count(), 3);
        assert_eq!(r.outstanding(), 1);
        r.complete(f.routed.ticket);
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn errors_become_local_replies() {
        let gw = Gateway::new(GatewayConfig {
            max_body_bytes: 64,
            ..GatewayConfig::default()
        });
        let mut r = router("least_request");
        let cases: [(&[u8], u16); 4] = [
            (b"{not json", 400),
            (b"", 400),
            (br#"{"model":"nope","prompt":"x"}"#, 404),
            (&[b' '; 100], 413),
        ];
        for (body, status) in cases {
            match gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0) {
                Outcome::Reply(reply) => {
                    assert_eq!(
                        reply.status,
                        status,
                        "body {:?}",
                        String::from_utf8_lossy(body)
                    );
                    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                    assert!(v["error"]["message"].is_string());
                }
                Outcome::Forward(_) => panic!("expected a reply"),
            }
        }
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn parse_then_route_matches_route_inference() {
        let gw = Gateway::default();
        let (mut a, mut b) = (router("cache_aware"), router("cache_aware"));
        let bodies: [&[u8]; 3] = [
            br#"{"model":"m","prompt":"shared prefix one"}"#,
            br#"{"model":"m","prompt":"shared prefix two"}"#,
            br#"{"model":"m","prompt":"other"}"#,
        ];
        for (i, body) in bodies.iter().enumerate() {
            let now = i as u64;
            let one = gw.route_inference(&mut a, ApiRoute::Completions, body, Some("s"), None, now);
            let parsed = gw.parse_inference(ApiRoute::Completions, body).unwrap();
            let two = gw.route_parsed(&mut b, &parsed, Some("s"), None, now);
            match (one, two) {
                (Outcome::Forward(x), Outcome::Forward(y)) => {
                    assert_eq!(x.destination, y.destination);
                    a.complete(x.routed.ticket);
                    b.complete(y.routed.ticket);
                }
                other => panic!("expected two forwards, got {other:?}"),
            }
        }
        assert_eq!(
            gw.parse_inference(ApiRoute::Completions, b" ")
                .unwrap_err()
                .status,
            400
        );
        let small = Gateway::new(GatewayConfig {
            max_body_bytes: 4,
            ..GatewayConfig::default()
        });
        assert_eq!(
            small
                .parse_inference(ApiRoute::Completions, b"{\"prompt\":1}")
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn subset_is_honoured_and_empty_subset_is_503() {
        let gw = Gateway::default();
        let mut r = router("random");
        let body = br#"{"model":"m","prompt":"x"}"#;
        for _ in 0..20 {
            match gw.route_inference(
                &mut r,
                ApiRoute::Completions,
                body,
                None,
                Some(&["127.0.0.1:8002"]),
                0,
            ) {
                Outcome::Forward(f) => {
                    assert_eq!(f.destination, "127.0.0.1:8002");
                    r.complete(f.routed.ticket);
                }
                Outcome::Reply(r) => panic!("unexpected reply {r:?}"),
            }
        }
        match gw.route_inference(
            &mut r,
            ApiRoute::Completions,
            body,
            None,
            Some(&["10.9.9.9:1"]),
            0,
        ) {
            Outcome::Reply(reply) => assert_eq!(reply.status, 503),
            Outcome::Forward(_) => panic!("an address outside the pool must never be chosen"),
        }
    }

    #[test]
    fn list_models_from_fleet_view() {
        let gw = Gateway::default();
        let r = router("random");
        let reply = gw.list_models(&r, 5).unwrap();
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["data"][0]["id"], "m");
        let mut r2 = Router::new(RouterConfig::default(), 1);
        r2.upsert_worker(WorkerSpec::new("127.0.0.1:1"));
        assert!(gw.list_models(&r2, 5).is_none());
    }

    fn mixed_router() -> Router {
        let mut r = Router::new(
            RouterConfig {
                policy: PolicyConfig::from_name("round_robin").unwrap(),
                max_endpoints: 4,
                ..RouterConfig::default()
            },
            1,
        );
        for (i, engine) in [
            crate::EngineKind::Vllm,
            crate::EngineKind::Sglang,
            crate::EngineKind::Vllm,
            crate::EngineKind::Sglang,
        ]
        .into_iter()
        .enumerate()
        {
            r.upsert_worker(WorkerSpec {
                engine,
                ..WorkerSpec::new(format!("127.0.0.1:900{i}"))
            });
        }
        r
    }

    fn engine_of(r: &Router, addr: &str) -> crate::EngineKind {
        r.workers().by_address(addr).unwrap().spec.engine
    }

    #[test]
    fn rewritten_bodies_keep_fallbacks_of_the_same_dialect() {
        let gw = Gateway::default();
        let mut r = mixed_router();
        // vLLM rejects stream_options without streaming; SGLang takes the body as is.
        let body = br#"{"model":"m","prompt":"x","stream_options":{"include_usage":true}}"#;
        let (mut saw_vllm, mut saw_sglang) = (false, false);
        for _ in 0..8 {
            let Outcome::Forward(f) =
                gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0)
            else {
                panic!("expected a forward");
            };
            let endpoints: Vec<&str> = f.destination.split(',').collect();
            let first = engine_of(&r, endpoints[0]);
            assert_eq!(endpoints.len(), 2, "{}", f.destination);
            assert!(endpoints.iter().all(|e| engine_of(&r, e) == first));
            match first {
                crate::EngineKind::Vllm => {
                    saw_vllm = true;
                    let v: serde_json::Value =
                        serde_json::from_slice(f.body.as_deref().unwrap()).unwrap();
                    assert!(v.get("stream_options").is_none());
                    assert_eq!(v["prompt"], "x");
                }
                _ => {
                    saw_sglang = true;
                    assert!(f.body.is_none());
                }
            }
            r.complete(f.routed.ticket);
        }
        assert!(saw_vllm && saw_sglang);
    }

    #[test]
    fn untouched_bodies_keep_mixed_fallbacks_and_the_option_can_be_off() {
        let mut r = mixed_router();
        let body = br#"{"model":"m","prompt":"x"}"#;
        let Outcome::Forward(f) =
            Gateway::default().route_inference(&mut r, ApiRoute::Completions, body, None, None, 0)
        else {
            panic!("expected a forward");
        };
        assert_eq!(f.destination.split(',').count(), 4);
        assert!(f.body.is_none());
        r.complete(f.routed.ticket);

        let gw = Gateway::new(GatewayConfig {
            normalize: NormalizeConfig {
                same_dialect_fallbacks: false,
                ..NormalizeConfig::default()
            },
            ..GatewayConfig::default()
        });
        let body = br#"{"model":"m","prompt":"x","stream_options":{}}"#;
        let Outcome::Forward(f) =
            gw.route_inference(&mut r, ApiRoute::Completions, body, None, None, 0)
        else {
            panic!("expected a forward");
        };
        assert_eq!(f.destination.split(',').count(), 4);
        r.complete(f.routed.ticket);
    }
}
