//! The `discovery:` section of the config file.

use serde::{Deserialize, Serialize};

/// Label carrying the engine kind, as in the Gateway API Inference Extension (default vllm).
pub const ENGINE_LABEL: &str = "inference.networking.k8s.io/engine-type";
/// Default label naming the model a pod serves.
pub const DEFAULT_MODEL_LABEL: &str = "kvroute.io/model";
/// Default annotation listing a pod's LoRA adapters, comma-separated.
pub const DEFAULT_LORA_ANNOTATION: &str = "kvroute.io/lora-adapters";
/// Default annotation overriding the engine port of one pod.
pub const DEFAULT_PORT_ANNOTATION: &str = "kvroute.io/port";
/// API group of the InferencePool, version v1 (the default).
pub const POOL_GROUP_V1: &str = "inference.networking.k8s.io";
/// The earlier API group of the InferencePool, version v1alpha2.
pub const POOL_GROUP_ALPHA: &str = "inference.networking.x-k8s.io";

/// Where workers come from besides the static `workers` list: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Engine pods selected by label in one or more namespaces.
    pub kubernetes: Option<KubernetesDiscovery>,
    /// The pods of a Gateway API Inference Extension `InferencePool`.
    pub inference_pool: Option<InferencePoolDiscovery>,
}

/// The one source a valid [`DiscoveryConfig`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// Pods by label selector.
    Kubernetes(&'a KubernetesDiscovery),
    /// An InferencePool.
    InferencePool(&'a InferencePoolDiscovery),
}

/// Pod discovery by label selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Namespaces watched (one watch each).
    pub namespaces: Vec<String>,
    /// Kubernetes label selector (`key=value,other=x`) choosing the engine pods.
    pub label_selector: String,
    /// Engine port on every pod without a port annotation.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Label whose value is the model the pod serves; a pod without it serves what its
    /// `/v1/models` lists.
    #[serde(default = "default_model_label")]
    pub model_label: String,
    /// Annotation listing the pod's LoRA adapters, comma-separated.
    #[serde(default = "default_lora_annotation")]
    pub lora_annotation: String,
    /// Annotation overriding `port` for one pod.
    #[serde(default = "default_port_annotation")]
    pub port_annotation: String,
}

/// InferencePool discovery: the pool's `spec.selector.matchLabels` chooses the pods and its
/// `spec.targetPorts` the ports (one worker per pod and port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferencePoolDiscovery {
    /// The pool's name.
    pub name: String,
    /// The pool's namespace, where its pods are too.
    pub namespace: String,
    /// API group: `inference.networking.k8s.io` (v1, the default) or
    /// `inference.networking.x-k8s.io` (v1alpha2).
    #[serde(default = "default_pool_group")]
    pub api_group: String,
    /// As in [`KubernetesDiscovery::model_label`].
    #[serde(default = "default_model_label")]
    pub model_label: String,
    /// As in [`KubernetesDiscovery::lora_annotation`].
    #[serde(default = "default_lora_annotation")]
    pub lora_annotation: String,
}

impl InferencePoolDiscovery {
    /// The pool `name` in `namespace`, v1, default labels.
    pub fn new(name: &str, namespace: &str) -> InferencePoolDiscovery {
        InferencePoolDiscovery {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            api_group: default_pool_group(),
            model_label: default_model_label(),
            lora_annotation: default_lora_annotation(),
        }
    }
}

impl KubernetesDiscovery {
    /// Pods matching `label_selector` in `namespace`, port 8000, default labels.
    pub fn new(namespace: &str, label_selector: &str) -> KubernetesDiscovery {
        KubernetesDiscovery {
            namespaces: vec![namespace.to_owned()],
            label_selector: label_selector.to_owned(),
            port: default_port(),
            model_label: default_model_label(),
            lora_annotation: default_lora_annotation(),
            port_annotation: default_port_annotation(),
        }
    }
}

fn default_pool_group() -> String {
    POOL_GROUP_V1.to_owned()
}

fn default_port() -> u16 {
    8000
}

fn default_model_label() -> String {
    DEFAULT_MODEL_LABEL.to_owned()
}

fn default_lora_annotation() -> String {
    DEFAULT_LORA_ANNOTATION.to_owned()
}

fn default_port_annotation() -> String {
    DEFAULT_PORT_ANNOTATION.to_owned()
}

/// Whether `name` is a valid namespace or object name (RFC 1123 label, or subdomain when
/// `dots` is allowed).
fn is_dns_name(name: &str, dots: bool) -> bool {
    let max = if dots { 253 } else { 63 };
    !name.is_empty()
        && name.len() <= max
        && (dots || !name.contains('.'))
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

impl DiscoveryConfig {
    /// The configured source; `None` unless exactly one is set.
    pub fn source(&self) -> Option<Source<'_>> {
        match (&self.kubernetes, &self.inference_pool) {
            (Some(k), None) => Some(Source::Kubernetes(k)),
            (None, Some(p)) => Some(Source::InferencePool(p)),
            _ => None,
        }
    }

    /// Checks names and values; the error is `(field, message)` under `discovery.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |field: &str, message: &str| {
            let path = format!("discovery.{field}");
            Err((path.trim_end_matches('.').to_owned(), message.to_owned()))
        };
        let Some(source) = self.source() else {
            return err("", "set exactly one of `kubernetes` and `inference_pool`");
        };
        match source {
            Source::Kubernetes(k) => {
                if k.namespaces.is_empty() {
                    return err("kubernetes.namespaces", "list at least one namespace");
                }
                for (i, ns) in k.namespaces.iter().enumerate() {
                    if !is_dns_name(ns, false) {
                        return err(
                            &format!("kubernetes.namespaces[{i}]"),
                            "must be a namespace name (lower-case RFC 1123 label)",
                        );
                    }
                    if k.namespaces[..i].contains(ns) {
                        return err(&format!("kubernetes.namespaces[{i}]"), "listed twice");
                    }
                }
                if k.label_selector.trim().is_empty() {
                    return err(
                        "kubernetes.label_selector",
                        "must select the engine pods (an empty selector matches every pod)",
                    );
                }
                if k.port == 0 {
                    return err("kubernetes.port", "must be a port number (1-65535)");
                }
                for (field, value) in [
                    ("kubernetes.model_label", &k.model_label),
                    ("kubernetes.lora_annotation", &k.lora_annotation),
                    ("kubernetes.port_annotation", &k.port_annotation),
                ] {
                    if value.is_empty() {
                        return err(field, "must not be empty");
                    }
                }
                Ok(())
            }
            Source::InferencePool(p) => {
                if !is_dns_name(&p.name, true) {
                    return err("inference_pool.name", "must be an object name");
                }
                if !is_dns_name(&p.namespace, false) {
                    return err("inference_pool.namespace", "must be a namespace name");
                }
                if p.api_group != POOL_GROUP_V1 && p.api_group != POOL_GROUP_ALPHA {
                    return err(
                        "inference_pool.api_group",
                        "must be inference.networking.k8s.io or inference.networking.x-k8s.io",
                    );
                }
                if p.model_label.is_empty() || p.lora_annotation.is_empty() {
                    return err(
                        "inference_pool",
                        "model_label and lora_annotation must not be empty",
                    );
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_shapes_with_defaults() {
        let k: DiscoveryConfig = serde_yaml_ng::from_str(
            "kubernetes: {namespaces: [llm], label_selector: 'kvroute.io/pool=llm'}",
        )
        .unwrap();
        let Some(Source::Kubernetes(k)) = k.source() else {
            panic!("{k:?}")
        };
        assert_eq!(k.port, 8000);
        assert_eq!(k.model_label, DEFAULT_MODEL_LABEL);
        let p: DiscoveryConfig =
            serde_yaml_ng::from_str("inference_pool: {name: llm-pool, namespace: llm}").unwrap();
        assert!(p.validate().is_ok());
        assert!(serde_yaml_ng::from_str::<DiscoveryConfig>("consul: {}").is_err());
        let neither: DiscoveryConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert!(neither.validate().is_err());
        let both: DiscoveryConfig = serde_yaml_ng::from_str(
            "{kubernetes: {namespaces: [a], label_selector: a=b}, inference_pool: {name: p, namespace: a}}",
        )
        .unwrap();
        assert!(both.validate().is_err());
    }

    #[test]
    fn rejects_bad_names_and_empty_selectors() {
        let parse = |y: &str| serde_yaml_ng::from_str::<DiscoveryConfig>(y).unwrap();
        let bad = [
            "kubernetes: {namespaces: [], label_selector: a=b}",
            "kubernetes: {namespaces: [Llm], label_selector: a=b}",
            "kubernetes: {namespaces: [a, a], label_selector: a=b}",
            "kubernetes: {namespaces: [a], label_selector: ''}",
            "kubernetes: {namespaces: [a], label_selector: a=b, port: 0}",
            "inference_pool: {name: Pool, namespace: llm}",
            "inference_pool: {name: pool, namespace: l.m}",
        ];
        for y in bad {
            assert!(parse(y).validate().is_err(), "{y}");
        }
        assert!(is_dns_name("llm-pool.v1", true));
        assert!(!is_dns_name("llm-pool.v1", false));
    }
}
