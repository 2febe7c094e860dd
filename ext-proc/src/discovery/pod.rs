//! From a pod to the workers it provides: readiness, ports, engine, models and adapters.
//! Pure functions over the API object.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use kvroute_core::{EngineKind, WorkerSpec};

use super::config::ENGINE_LABEL;

/// Worker label naming the pod (`namespace/name`) a discovered worker runs in.
pub const POD_LABEL: &str = "kvroute.io/pod";

/// How pods are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRules {
    /// Engine ports on every pod (one worker each), unless the annotation overrides them.
    pub ports: Vec<u16>,
    /// Annotation overriding `ports` for one pod (`8000` or `8000,8001`), if any.
    pub port_annotation: Option<String>,
    /// Label naming the served model.
    pub model_label: String,
    /// Annotation listing LoRA adapters, comma-separated.
    pub lora_annotation: String,
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether the pod may receive requests: phase Running, condition Ready true, not being
/// deleted, and an IP assigned.
pub fn is_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    let running = status.phase.as_deref() == Some("Running");
    let ready = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let has_ip = status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty());
    running && ready && has_ip
}

/// The workers a pod provides: none when it is not ready. `Err` names a misconfiguration
/// (unparseable IP or port annotation); the pod then provides nothing.
pub fn endpoints(pod: &Pod, rules: &PodRules) -> Result<Vec<WorkerSpec>, String> {
    if !is_ready(pod) {
        return Ok(Vec::new());
    }
    let key = pod_key(pod);
    let ip_text = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or_default();
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| format!("pod {key}: podIP `{ip_text}` is not an IP address"))?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();

    let ports = match rules
        .port_annotation
        .as_ref()
        .and_then(|a| annotations.get(a).map(|v| (a, v)))
    {
        Some((name, value)) => parse_ports(value)
            .ok_or_else(|| format!("pod {key}: annotation {name}=`{value}` is not a port list"))?,
        None => rules.ports.clone(),
    };
    let engine = labels.get(ENGINE_LABEL).map_or(EngineKind::Vllm, |v| {
        EngineKind::parse(v).unwrap_or(EngineKind::Other)
    });
    let models = labels
        .get(&rules.model_label)
        .filter(|m| !m.is_empty())
        .map(|m| vec![m.clone()])
        .unwrap_or_default();
    let lora_adapters = annotations
        .get(&rules.lora_annotation)
        .map(|v| split_list(v))
        .unwrap_or_default();
    let mut worker_labels: BTreeMap<String, String> = labels;
    worker_labels.insert(POD_LABEL.to_owned(), key);

    Ok(ports
        .into_iter()
        .map(|port| WorkerSpec {
            address: SocketAddr::new(ip, port).to_string(),
            engine,
            models: models.clone(),
            lora_adapters: lora_adapters.clone(),
            labels: worker_labels.clone(),
        })
        .collect())
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `8000` or `8000,8001`: non-zero ports, at least one.
fn parse_ports(value: &str) -> Option<Vec<u16>> {
    let ports: Vec<u16> = split_list(value)
        .iter()
        .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
        .collect::<Option<_>>()?;
    (!ports.is_empty()).then_some(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the API server returns it, modelled on a running vLLM pod.
    const FIXTURE: &str = include_str!("../../../tests/e2e/fixtures/vllm-pod.json");

    fn pod() -> Pod {
        serde_json::from_str(FIXTURE).expect("fixture is a Pod")
    }

    fn rules() -> PodRules {
        PodRules {
            ports: vec![8000],
            port_annotation: Some("kvroute.io/port".into()),
            model_label: "kvroute.io/model".into(),
            lora_annotation: "kvroute.io/lora-adapters".into(),
        }
    }

    #[test]
    fn ready_pod_gives_one_worker_per_port_with_model_engine_and_adapters() {
        let mut p = pod();
        let eps = endpoints(&p, &rules()).unwrap();
        assert_eq!(eps.len(), 1);
        let w = &eps[0];
        assert_eq!(w.address, "10.244.1.17:8000");
        assert_eq!(w.engine, EngineKind::Vllm);
        assert_eq!(w.models, vec!["qwen2.5-0.5b-instruct".to_string()]);
        assert_eq!(w.lora_adapters, vec!["sql-lora", "chat-lora"]);
        assert_eq!(w.labels[POD_LABEL], "llm/vllm-qwen-7d9c6b5f4d-x2k8p");

        p.metadata
            .labels
            .get_or_insert_default()
            .insert(ENGINE_LABEL.into(), "sglang".into());
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert("kvroute.io/port".into(), "30000, 30001".into());
        let eps = endpoints(&p, &rules()).unwrap();
        let addrs: Vec<&str> = eps.iter().map(|w| w.address.as_str()).collect();
        assert_eq!(addrs, ["10.244.1.17:30000", "10.244.1.17:30001"]);
        assert!(eps.iter().all(|w| w.engine == EngineKind::Sglang));
    }

    #[test]
    fn not_ready_terminating_pending_or_ipless_pods_give_nothing() {
        let mut p = pod();
        let status = p.status.as_mut().unwrap();
        let conditions = status.conditions.as_mut().unwrap();
        let ready = conditions.iter_mut().find(|c| c.type_ == "Ready").unwrap();
        ready.status = "False".into();
        assert!(endpoints(&p, &rules()).unwrap().is_empty());

        let mut p = pod();
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        assert!(endpoints(&p, &rules()).unwrap().is_empty());

        let mut p = pod();
        p.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(endpoints(&p, &rules()).unwrap().is_empty());

        let mut p = pod();
        p.status.as_mut().unwrap().pod_ip = None;
        assert!(!is_ready(&p));
        p.status = None;
        assert!(endpoints(&p, &rules()).unwrap().is_empty());
    }

    #[test]
    fn bad_annotations_and_ips_are_errors_and_unknown_engines_are_other() {
        let mut p = pod();
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert("kvroute.io/port".into(), "http".into());
        assert!(
            endpoints(&p, &rules())
                .unwrap_err()
                .contains("kvroute.io/port")
        );

        let mut p = pod();
        p.status.as_mut().unwrap().pod_ip = Some("not-an-ip".into());
        assert!(endpoints(&p, &rules()).is_err());

        let mut p = pod();
        p.metadata
            .labels
            .get_or_insert_default()
            .insert(ENGINE_LABEL.into(), "tgi".into());
        p.metadata
            .labels
            .get_or_insert_default()
            .remove("kvroute.io/model");
        let eps = endpoints(&p, &rules()).unwrap();
        assert_eq!(eps[0].engine, EngineKind::Other);
        assert!(eps[0].models.is_empty(), "no model label: ask the engine");
    }

    #[test]
    fn ipv6_pods_are_bracketed() {
        let mut p = pod();
        p.status.as_mut().unwrap().pod_ip = Some("fd00::17".into());
        assert_eq!(
            endpoints(&p, &rules()).unwrap()[0].address,
            "[fd00::17]:8000"
        );
    }
}
