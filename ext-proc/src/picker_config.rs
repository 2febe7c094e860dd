//! The reference endpoint picker's `EndpointPickerConfig` (the file the `inferencepool` Helm
//! chart mounts as `/config/default-plugins.yaml`), translated into kvroute's `scorer`
//! policy: scorer plugins become scorer weights, the max-score picker's endpoint count becomes
//! `router.max_endpoints`. A plugin kvroute cannot honour is an error naming it, never a
//! silent difference in routing.

use std::collections::BTreeMap;

use kvroute_core::PolicyConfig;
use kvroute_core::policy::scorer::{PickerConfig, ScorerConfig, ScorerWeights};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// `kind` of the file.
pub const KIND: &str = "EndpointPickerConfig";
/// `apiVersion`s accepted (the Inference Extension's and the llm-d router's).
pub const API_VERSIONS: [&str; 2] = [
    "inference.networking.x-k8s.io/v1alpha1",
    "llm-d.ai/v1alpha1",
];

/// Plugin types kvroute honours, for error messages.
const SUPPORTED: &str = "queue-scorer, kv-cache-utilization-scorer, prefix-cache-scorer, \
                         lora-affinity-scorer, session-affinity-scorer, max-score-picker, random-picker, \
                         single-profile-handler, metrics-data-source, core-metrics-extractor";

/// The file, as far as kvroute reads it (unknown top-level keys are errors).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointPickerConfig {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    plugins: Vec<PluginSpec>,
    #[serde(default)]
    scheduling_profiles: Vec<SchedulingProfile>,
    #[serde(default)]
    feature_gates: Vec<String>,
    #[serde(default)]
    saturation_detector: Option<IgnoredAny>,
    /// Engine metrics are always scraped: the data-layer sections are accepted as they are.
    #[serde(default)]
    #[allow(dead_code)]
    data: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    data_layer: Option<IgnoredAny>,
    #[serde(default)]
    flow_control: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulingProfile {
    name: String,
    #[serde(default)]
    plugins: Vec<ProfilePlugin>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfilePlugin {
    plugin_ref: String,
    #[serde(default)]
    weight: Option<f64>,
}

/// `prefix-cache-scorer` parameters; the ones tuning the reference picker's own index are
/// accepted and have no counterpart (kvroute's index has a byte bound of its own).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct PrefixParams {
    #[serde(default)]
    auto_tune: Option<IgnoredAny>,
    #[serde(default)]
    block_size_tokens: Option<u32>,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    max_prefix_blocks_to_match: Option<IgnoredAny>,
    #[serde(default)]
    max_prefix_tokens_to_match: Option<IgnoredAny>,
    #[serde(default)]
    lru_capacity_per_server: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricsSourceParams {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// Only http is scraped: nothing to verify.
    #[serde(default)]
    #[allow(dead_code)]
    insecure_skip_verify: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExtractorParams {
    #[serde(default)]
    default_engine: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MaxScoreParams {
    #[serde(default)]
    max_num_of_endpoints: Option<usize>,
}

/// What the file asks of the router.
#[derive(Clone, Debug, PartialEq)]
pub struct Translated {
    /// The `scorer` policy with the file's weights.
    pub policy: PolicyConfig,
    /// `maxNumOfEndpoints` of the max-score picker, when given.
    pub max_endpoints: Option<usize>,
    /// The engines' metrics path from `metrics-data-source`, when given.
    pub metrics_path: Option<String>,
    /// Settings read but without effect on kvroute, for a warning each.
    pub warnings: Vec<String>,
}

/// Whether the YAML document is an EndpointPickerConfig (by its `kind`).
pub fn is_picker_config(doc: &serde_yaml_ng::Value) -> bool {
    doc.get("kind").and_then(|k| k.as_str()) == Some(KIND)
}

/// Bytes of prompt text per token, to turn token block sizes into the byte blocks of the
/// approximate prefix index.
const BYTES_PER_TOKEN: usize = 4;

/// Translates the file's text. Errors are one line naming the plugin or field.
pub fn translate(text: &str) -> Result<Translated, String> {
    let file: EndpointPickerConfig =
        serde_yaml_ng::from_str(text).map_err(|e| format!("EndpointPickerConfig: {e}"))?;
    if !API_VERSIONS.contains(&file.api_version.as_str()) {
        return Err(format!(
            "apiVersion `{}` is not one of {}",
            file.api_version,
            API_VERSIONS.join(", ")
        ));
    }
    let mut warnings = Vec::new();
    for (present, key) in [
        (!file.feature_gates.is_empty(), "featureGates"),
        (file.saturation_detector.is_some(), "saturationDetector"),
        (file.flow_control.is_some(), "flowControl"),
    ] {
        if present {
            warnings.push(format!(
                "EndpointPickerConfig `{key}` has no effect on kvroute"
            ));
        }
    }

    let mut by_name: BTreeMap<String, &PluginSpec> = BTreeMap::new();
    for p in &file.plugins {
        let name = p.name.clone().unwrap_or_else(|| p.kind.clone());
        if by_name.insert(name.clone(), p).is_some() {
            return Err(format!("plugin name `{name}` is used twice"));
        }
    }
    let profile_refs: Vec<(String, f64)> = match file.scheduling_profiles.as_slice() {
        [] => by_name.keys().map(|n| (n.clone(), 1.0)).collect(),
        [profile] => {
            let mut refs = Vec::new();
            for r in &profile.plugins {
                let weight = r.weight.unwrap_or(1.0);
                if !weight.is_finite() || weight < 0.0 {
                    return Err(format!(
                        "schedulingProfiles[{}]: weight of `{}` must be a non-negative number",
                        profile.name, r.plugin_ref
                    ));
                }
                if !by_name.contains_key(&r.plugin_ref) {
                    return Err(format!(
                        "schedulingProfiles[{}]: pluginRef `{}` names no plugin",
                        profile.name, r.plugin_ref
                    ));
                }
                refs.push((r.plugin_ref.clone(), weight));
            }
            refs
        }
        many => {
            return Err(format!(
                "{} scheduling profiles: kvroute runs one (prefill/decode disaggregation is \
                 not supported)",
                many.len()
            ));
        }
    };

    let mut config = ScorerConfig {
        weights: ScorerWeights {
            prefix: 0.0,
            queue: 0.0,
            running: 0.0,
            kv_cache: 0.0,
            lora: 0.0,
            session: 0.0,
        },
        picker: PickerConfig::MaxScore,
        ..ScorerConfig::default()
    };
    let mut max_endpoints = None;
    let mut random = false;
    let mut metrics_path = None;
    let mut scorers = 0;
    for (name, plugin) in &by_name {
        let weight = profile_refs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| *w);
        let referenced = weight.is_some();
        let weight = weight.unwrap_or(0.0);
        let target = match plugin.kind.as_str() {
            "queue-scorer" => Some(&mut config.weights.queue),
            "kv-cache-utilization-scorer" => Some(&mut config.weights.kv_cache),
            "prefix-cache-scorer" => {
                let params: PrefixParams = params(plugin)?;
                if let Some(tokens) = params.block_size_tokens.or(params.block_size) {
                    if tokens == 0 {
                        return Err(format!("plugin `{name}`: blockSizeTokens must be positive"));
                    }
                    config.block_bytes = tokens as usize * BYTES_PER_TOKEN;
                }
                Some(&mut config.weights.prefix)
            }
            "lora-affinity-scorer" => Some(&mut config.weights.lora),
            "session-affinity-scorer" => Some(&mut config.weights.session),
            "max-score-picker" | "random-picker" => {
                random = plugin.kind == "random-picker";
                let params: MaxScoreParams = params(plugin)?;
                if let Some(n) = params.max_num_of_endpoints {
                    if n == 0 {
                        return Err(format!(
                            "plugin `{name}`: maxNumOfEndpoints must be at least 1"
                        ));
                    }
                    max_endpoints = Some(n);
                }
                None
            }
            "metrics-data-source" => {
                let params: MetricsSourceParams = params(plugin)?;
                if let Some(scheme) = params.scheme.as_deref()
                    && scheme != "http"
                {
                    return Err(format!(
                        "plugin `{name}`: scheme `{scheme}` is not supported (kvroute scrapes \
                         engines over http)"
                    ));
                }
                metrics_path = params.path;
                None
            }
            "core-metrics-extractor" => {
                let params: ExtractorParams = params(plugin)?;
                if let Some(engine) = params.default_engine.filter(|e| e != "vllm") {
                    warnings.push(format!(
                        "plugin `{name}`: defaultEngine `{engine}` has no effect; label the \
                         pods inference.networking.k8s.io/engine-type={engine}"
                    ));
                }
                None
            }
            "single-profile-handler" => None,
            other => {
                return Err(format!(
                    "plugin type `{other}` is not supported by kvroute (supported: {SUPPORTED})"
                ));
            }
        };
        if let Some(w) = target {
            *w += weight;
            scorers += usize::from(referenced);
        }
    }
    if random {
        // The random picker draws uniformly and ignores the scores.
        return Ok(Translated {
            policy: PolicyConfig::Random,
            max_endpoints,
            metrics_path,
            warnings,
        });
    }
    if scorers == 0 {
        return Err("the scheduling profile references no scorer".to_owned());
    }
    Ok(Translated {
        policy: PolicyConfig::Scorer(config),
        max_endpoints,
        metrics_path,
        warnings,
    })
}

fn params<T: for<'de> Deserialize<'de> + Default>(plugin: &PluginSpec) -> Result<T, String> {
    match &plugin.parameters {
        None => Ok(T::default()),
        Some(v) => T::deserialize(v.clone()).map_err(|e| {
            format!(
                "plugin `{}` parameters: {e}",
                plugin.name.as_deref().unwrap_or(&plugin.kind)
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's `default-plugins.yaml`.
    const CHART_DEFAULT: &str = include_str!("../tests/fixtures/default-plugins.yaml");

    fn scorer(t: &Translated) -> &ScorerConfig {
        match &t.policy {
            PolicyConfig::Scorer(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_charts_default_becomes_the_scorer_with_its_weights() {
        let t = translate(CHART_DEFAULT).unwrap();
        let s = scorer(&t);
        assert_eq!(s.weights.queue, 2.0);
        assert_eq!(s.weights.kv_cache, 2.0);
        assert_eq!(s.weights.prefix, 3.0);
        assert_eq!(s.weights.lora + s.weights.session + s.weights.running, 0.0);
        assert_eq!(t.max_endpoints, None);
        assert_eq!(t.metrics_path.as_deref(), Some("/metrics"));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn picker_and_prefix_parameters_are_read() {
        let t = translate(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n\
             - type: prefix-cache-scorer\n  parameters: {blockSizeTokens: 32, autoTune: false}\n\
             - type: max-score-picker\n  parameters: {maxNumOfEndpoints: 3}\n\
             schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: prefix-cache-scorer\n\
             \x20 - pluginRef: max-score-picker\n",
        )
        .unwrap();
        assert_eq!(scorer(&t).block_bytes, 128);
        assert_eq!(scorer(&t).weights.prefix, 1.0);
        assert_eq!(t.max_endpoints, Some(3));
    }

    #[test]
    fn the_random_picker_routes_at_random() {
        let t = translate(
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n\
             plugins:\n- type: random-picker\n  parameters: {maxNumOfEndpoints: 2}\n",
        )
        .unwrap();
        assert_eq!(t.policy, PolicyConfig::Random);
        assert_eq!(t.max_endpoints, Some(2));
    }

    #[test]
    fn what_kvroute_cannot_honour_is_an_error_naming_it() {
        let head =
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n";
        for (body, needle) in [
            ("plugins:\n- type: decode-filter\n", "decode-filter"),
            (
                "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: prefill\n- name: decode\n",
                "2 scheduling profiles",
            ),
            (
                "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: nope\n",
                "nope",
            ),
            (
                "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: queue-scorer\n    weight: -1\n",
                "weight",
            ),
            ("plugins:\n- type: queue-scorer\nbogus: 1\n", "bogus"),
            (
                "plugins:\n- type: prefix-cache-scorer\n  parameters: {blockSizeTokenz: 3}\n",
                "blockSizeTokenz",
            ),
        ] {
            let err = translate(&format!("{head}{body}")).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let err = translate("apiVersion: v9\nkind: EndpointPickerConfig\n").unwrap_err();
        assert!(err.contains("apiVersion"), "{err}");
    }
}
