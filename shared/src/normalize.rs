//! Per-engine request normalization for mixed fleets.
//!
//! vLLM, SGLang and other OpenAI-compatible servers reject or ignore different request
//! fields. Once the router has chosen a worker, the body is rewritten into that worker's
//! dialect by an ordered list of [`Rule`]s matched on the worker's engine kind and labels, the
//! API and whether the request streams. A rule drops top-level fields, renames them, or
//! rewrites the model name (the served name can differ per pool). Every other field is kept.
//!
//! The built-in rule set ([`builtin_rules`]) only removes fields the engine would reject:
//! - vLLM: `stream_options` when not streaming, `prompt_logprobs` when streaming;
//! - SGLang: a request-supplied `chat_template` on chat completions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::request::{ApiRoute, TopLevel};
use crate::worker::{EngineKind, WorkerSpec};

/// Normalization settings (part of the gateway settings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Applies [`builtin_rules`] before `rules`.
    pub builtin_rules: bool,
    /// Extra rules, applied in order after the built-in ones.
    pub rules: Vec<Rule>,
    /// Keeps in the fallback list only the workers that would receive the same body as the
    /// first choice (same dialect), so a retry never sends a body rewritten for another engine
    /// (or a body another engine rejects).
    pub same_dialect_fallbacks: bool,
}

impl Default for NormalizeConfig {
    fn default() -> NormalizeConfig {
        NormalizeConfig {
            builtin_rules: true,
            rules: Vec::new(),
            same_dialect_fallbacks: true,
        }
    }
}

/// One rewrite rule. Every condition that is set must hold for the rule to apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Engine kinds the rule applies to; empty means every engine.
    pub engines: Vec<EngineKind>,
    /// Labels the worker must carry, with these exact values.
    pub labels: BTreeMap<String, String>,
    /// APIs the rule applies to, by name (`chat_completions`, `completions`, `embeddings`,
    /// `responses`, `generate`); empty means every API.
    pub apis: Vec<String>,
    /// Only when the request streams (`true`) or does not (`false`); unset means always.
    pub when_stream: Option<bool>,
    /// Top-level fields removed.
    pub drop: Vec<String>,
    /// Top-level fields renamed, old name to new name. Skipped when the new name is already
    /// set, so an explicit client value always wins.
    pub rename: BTreeMap<String, String>,
    /// Model names rewritten, requested name to the name the worker serves.
    pub models: BTreeMap<String, String>,
}

/// API names accepted in [`Rule::apis`].
pub const API_NAMES: [&str; 5] = [
    "chat_completions",
    "completions",
    "embeddings",
    "responses",
    "generate",
];

impl Rule {
    /// Checks the rule's values; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(api) = self.apis.iter().find(|a| !API_NAMES.contains(&a.as_str())) {
            return Err(format!(
                "apis: unknown API `{api}` (expected one of {})",
                API_NAMES.join(", ")
            ));
        }
        if self.drop.is_empty() && self.rename.is_empty() && self.models.is_empty() {
            return Err("the rule changes nothing: set drop, rename or models".to_owned());
        }
        if let Some((from, to)) = self
            .rename
            .iter()
            .find(|(from, to)| from.is_empty() || to.is_empty() || from == to)
        {
            return Err(format!("rename: `{from}` -> `{to}` is not a rename"));
        }
        Ok(())
    }

    fn matches(&self, worker: &WorkerSpec, route: ApiRoute, stream: bool) -> bool {
        self.matches_route(route)
            && (self.engines.is_empty() || self.engines.contains(&worker.engine))
            && self
                .labels
                .iter()
                .all(|(k, v)| worker.labels.get(k) == Some(v))
            && self.when_stream.is_none_or(|s| s == stream)
    }

    fn matches_route(&self, route: ApiRoute) -> bool {
        self.apis.is_empty() || self.apis.iter().any(|a| a == route.as_str())
    }

    /// Applies the rule to `body`; returns whether anything changed.
    fn apply(&self, body: &mut TopLevel<'_>) -> bool {
        let mut changed = false;
        for field in &self.drop {
            changed |= body.remove(field);
        }
        for (from, to) in &self.rename {
            if !body.contains(to) {
                changed |= body.rename(from, to);
            }
        }
        if !self.models.is_empty()
            && let Some(model) = body.string("model")
            && let Some(served) = self.models.get(&model)
            && *served != model
        {
            body.set_string("model", served);
            changed = true;
        }
        changed
    }
}

/// The documented default rule set: drops only the fields each engine rejects.
pub fn builtin_rules() -> Vec<Rule> {
    let openai = vec!["chat_completions".to_owned(), "completions".to_owned()];
    vec![
        Rule {
            engines: vec![EngineKind::Vllm],
            apis: openai.clone(),
            when_stream: Some(false),
            drop: vec!["stream_options".to_owned()],
            ..Rule::default()
        },
        Rule {
            engines: vec![EngineKind::Vllm],
            apis: openai,
            when_stream: Some(true),
            drop: vec!["prompt_logprobs".to_owned()],
            ..Rule::default()
        },
        Rule {
            engines: vec![EngineKind::Sglang],
            apis: vec!["chat_completions".to_owned()],
            drop: vec!["chat_template".to_owned()],
            ..Rule::default()
        },
    ]
}

/// Which rules rewrite a body for one worker, in order. Equal plans give equal bodies, so
/// fallbacks are compared by plan, without rewriting the body for each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan(Vec<usize>);

impl Plan {
    /// No rule changes the body: it goes as the client sent it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The compiled rule list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalizer {
    rules: Vec<Rule>,
    /// Quoted top-level names some rule acts on: a body containing none of them (and no
    /// `\u` escape, which could spell one) needs no parsing.
    triggers: Vec<Vec<u8>>,
}

impl Normalizer {
    /// The rules of `config`, built-in ones first.
    pub fn new(config: &NormalizeConfig) -> Normalizer {
        let mut rules = if config.builtin_rules {
            builtin_rules()
        } else {
            Vec::new()
        };
        rules.extend(config.rules.iter().cloned());
        let mut names: Vec<&str> = Vec::new();
        for r in &rules {
            names.extend(r.drop.iter().map(String::as_str));
            names.extend(r.rename.keys().map(String::as_str));
            if !r.models.is_empty() {
                names.push("model");
            }
        }
        names.sort_unstable();
        names.dedup();
        let triggers = names
            .iter()
            .map(|n| format!("\"{n}\"").into_bytes())
            .collect();
        Normalizer { rules, triggers }
    }

    /// Whether some worker may need `body` (of `route`) rewritten: a cheap scan for the field
    /// names the rules act on, deciding whether [`TopLevel::parse`] is worth running.
    pub fn may_apply(&self, route: ApiRoute, body: &[u8]) -> bool {
        let contains = |needle: &[u8]| memchr::memmem::find(body, needle).is_some();
        self.rules.iter().any(|r| r.matches_route(route))
            && (contains(b"\\u") || self.triggers.iter().any(|t| contains(t)))
    }

    /// The rules that change `fields` (a request of `route`, streaming or not) for `worker`.
    /// Cost: a copy of the top-level field list, not of the body.
    pub fn plan(
        &self,
        worker: &WorkerSpec,
        route: ApiRoute,
        stream: bool,
        fields: &TopLevel<'_>,
    ) -> Plan {
        let mut probe = fields.clone();
        Plan(
            self.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches(worker, route, stream))
                .filter_map(|(i, r)| r.apply(&mut probe).then_some(i))
                .collect(),
        )
    }

    /// The body `plan` makes of `fields`; `None` for an empty plan (the body is fine).
    pub fn rewrite(&self, fields: &TopLevel<'_>, plan: &Plan) -> Option<Vec<u8>> {
        if plan.is_empty() {
            return None;
        }
        let mut out = fields.clone();
        for rule in plan.0.iter().filter_map(|&i| self.rules.get(i)) {
            rule.apply(&mut out);
        }
        Some(out.to_json())
    }

    /// The body `worker` should receive for a request of `route`, or `None` when the body is
    /// fine as it is (or is not a JSON object): the gateway's three steps in one, for tests.
    #[cfg(test)]
    fn normalize(&self, worker: &WorkerSpec, route: ApiRoute, body: &[u8]) -> Option<Vec<u8>> {
        if !self.may_apply(route, body) {
            return None;
        }
        let fields = TopLevel::parse(body)?;
        let stream = fields.flag("stream");
        self.rewrite(&fields, &self.plan(worker, route, stream, &fields))
    }
}

impl Default for Normalizer {
    fn default() -> Normalizer {
        Normalizer::new(&NormalizeConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn worker(engine: EngineKind) -> WorkerSpec {
        WorkerSpec {
            engine,
            ..WorkerSpec::new("127.0.0.1:1")
        }
    }

    fn as_json(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn vllm_drops_stream_options_only_when_not_streaming() {
        let n = Normalizer::default();
        let w = worker(EngineKind::Vllm);
        let body = br#"{"model":"m","prompt":"x","stream_options":{"include_usage":true},"temperature":0.5,"extra":[1,2]}"#;
        let out = as_json(&n.normalize(&w, ApiRoute::Completions, body).unwrap());
        assert!(out.get("stream_options").is_none());
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["extra"], serde_json::json!([1, 2]));
        assert_eq!(out["prompt"], "x");
        let streaming =
            br#"{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(n.normalize(&w, ApiRoute::Completions, streaming).is_none());
        let prompt_lp = br#"{"model":"m","prompt":"x","stream":true,"prompt_logprobs":1}"#;
        let out = as_json(&n.normalize(&w, ApiRoute::Completions, prompt_lp).unwrap());
        assert!(out.get("prompt_logprobs").is_none());
        assert_eq!(out["stream"], true);
    }

    #[test]
    fn sglang_drops_chat_template_on_chat_only() {
        let n = Normalizer::default();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"chat_template":"{{x}}","stream_options":{"include_usage":true}}"#;
        let out = as_json(
            &n.normalize(&worker(EngineKind::Sglang), ApiRoute::ChatCompletions, body)
                .unwrap(),
        );
        assert!(out.get("chat_template").is_none());
        assert!(out.get("stream_options").is_some(), "SGLang accepts it");
        assert!(
            n.normalize(&worker(EngineKind::Sglang), ApiRoute::Completions, body)
                .is_none()
        );
        assert!(
            n.normalize(&worker(EngineKind::Other), ApiRoute::ChatCompletions, body)
                .is_none()
        );
    }

    #[test]
    fn custom_rules_rename_and_rewrite_models_by_label() {
        let mut labels = BTreeMap::new();
        labels.insert("pool".to_owned(), "b".to_owned());
        let config = NormalizeConfig {
            builtin_rules: false,
            rules: vec![Rule {
                labels: labels.clone(),
                rename: [("max_completion_tokens".to_owned(), "max_tokens".to_owned())].into(),
                models: [("llama".to_owned(), "llama-8b-b".to_owned())].into(),
                ..Rule::default()
            }],
            ..NormalizeConfig::default()
        };
        let n = Normalizer::new(&config);
        let in_pool = WorkerSpec {
            labels,
            ..worker(EngineKind::Other)
        };
        let body = br#"{"model":"llama","max_completion_tokens":5,"stream_options":{}}"#;
        let out = as_json(&n.normalize(&in_pool, ApiRoute::Completions, body).unwrap());
        assert_eq!(out["model"], "llama-8b-b");
        assert_eq!(out["max_tokens"], 5);
        assert!(out.get("max_completion_tokens").is_none());
        assert!(out.get("stream_options").is_some(), "built-ins are off");
        assert!(
            n.normalize(&worker(EngineKind::Other), ApiRoute::Completions, body)
                .is_none()
        );
        let both = br#"{"model":"other","max_completion_tokens":5,"max_tokens":7}"#;
        assert!(
            n.normalize(&in_pool, ApiRoute::Completions, both).is_none(),
            "an explicit max_tokens wins"
        );
    }

    #[test]
    fn escaped_field_names_are_still_found() {
        let n = Normalizer::default();
        let w = worker(EngineKind::Vllm);
        let body = br#"{"model":"m","prompt":"x","stream\u005foptions":{}}"#;
        let out = as_json(&n.normalize(&w, ApiRoute::Completions, body).unwrap());
        assert!(out.get("stream_options").is_none());
        let plain = br#"{"model":"m","prompt":"stream_options is only a word here"}"#;
        assert!(n.normalize(&w, ApiRoute::Completions, plain).is_none());
    }

    #[test]
    fn plans_name_the_rules_that_change_the_body() {
        let n = Normalizer::default();
        let body = br#"{"model":"m","prompt":"caf\u00e9","stream_options":{}}"#;
        let fields = TopLevel::parse(body).unwrap();
        let vllm = n.plan(
            &worker(EngineKind::Vllm),
            ApiRoute::Completions,
            false,
            &fields,
        );
        let vllm2 = n.plan(
            &worker(EngineKind::Vllm),
            ApiRoute::Completions,
            false,
            &fields,
        );
        let other = n.plan(
            &worker(EngineKind::Other),
            ApiRoute::Completions,
            false,
            &fields,
        );
        let streaming = n.plan(
            &worker(EngineKind::Vllm),
            ApiRoute::Completions,
            true,
            &fields,
        );
        assert_eq!(vllm, Plan(vec![0]));
        assert_eq!(vllm, vllm2);
        assert!(other.is_empty() && streaming.is_empty());
        let out = as_json(&n.rewrite(&fields, &vllm).unwrap());
        assert_eq!(out, serde_json::json!({"model": "m", "prompt": "café"}));
        assert!(n.rewrite(&fields, &other).is_none());
        // A rule that matches but finds nothing to change is not in the plan.
        let plain = TopLevel::parse(br#"{"model":"m","prompt":"\u0041"}"#).unwrap();
        assert!(
            n.plan(
                &worker(EngineKind::Vllm),
                ApiRoute::Completions,
                false,
                &plain
            )
            .is_empty()
        );
        assert!(
            !n.may_apply(ApiRoute::Embeddings, body),
            "no rule for embeddings"
        );
    }

    #[test]
    fn non_objects_and_bad_rules() {
        let n = Normalizer::default();
        let w = worker(EngineKind::Vllm);
        for body in [&b"[1]"[..], b"not json", b"", b"\"s\""] {
            assert!(n.normalize(&w, ApiRoute::Completions, body).is_none());
        }
        assert!(Rule::default().validate().is_err());
        let bad_api = Rule {
            apis: vec!["chat".into()],
            drop: vec!["x".into()],
            ..Rule::default()
        };
        assert!(bad_api.validate().unwrap_err().contains("chat"));
        for r in builtin_rules() {
            r.validate().unwrap();
        }
    }
}
