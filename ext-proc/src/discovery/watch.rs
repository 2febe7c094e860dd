//! The watches: pods by label selector, and an InferencePool whose spec drives a pod watch.
//!
//! Each watch is a `kube::runtime::watcher` with reflector semantics: a (re)list is buffered
//! between `Init` and `InitDone` and only then replaces the known set, so a lost watch (410
//! Gone, API server restart) never drops the workers in between, and while the API server is
//! unreachable the last known set stays in force.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kvroute_core::WorkerSpec;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::config::InferencePoolDiscovery;
use super::pod::{PodRules, endpoints, pod_key};
use super::pool::{self, PoolTarget};

/// The complete current endpoint list of one source (a namespace, or the pool).
#[derive(Debug)]
pub struct SourceUpdate {
    /// Which source.
    pub source: String,
    /// Every endpoint it provides now.
    pub endpoints: Vec<WorkerSpec>,
}

/// Watches the pods matching `selector` through `api` and sends `source`'s endpoint list on
/// every change. Runs until `tx` is closed.
pub async fn pods(
    api: Api<Pod>,
    selector: String,
    rules: PodRules,
    source: String,
    tx: UnboundedSender<SourceUpdate>,
) {
    let pod_endpoints = |pod: &Pod| {
        endpoints(pod, &rules).unwrap_or_else(|message| {
            warn!(%message, "pod ignored");
            Vec::new()
        })
    };
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    futures_util::pin_mut!(stream);
    let mut known: BTreeMap<String, Vec<WorkerSpec>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Vec<WorkerSpec>>> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(BTreeMap::new());
                false
            }
            Ok(Event::InitApply(pod)) => {
                let eps = pod_endpoints(&pod);
                if let Some(list) = listing.as_mut()
                    && !eps.is_empty()
                {
                    list.insert(pod_key(&pod), eps);
                }
                false
            }
            Ok(Event::InitDone) => match listing.take() {
                Some(list) => {
                    info!(%source, pods = list.len(), "pod list synced");
                    known = list;
                    true
                }
                None => false,
            },
            Ok(Event::Apply(pod)) => {
                let eps = pod_endpoints(&pod);
                let key = pod_key(&pod);
                if eps.is_empty() {
                    known.remove(&key).is_some()
                } else {
                    known.insert(key, eps.clone()).as_ref() != Some(&eps)
                }
            }
            Ok(Event::Delete(pod)) => known.remove(&pod_key(&pod)).is_some(),
            Err(err) => {
                warn!(%source, error = %err, "pod watch failed; keeping the last known workers");
                false
            }
        };
        if changed {
            let update = SourceUpdate {
                source: source.clone(),
                endpoints: known.values().flatten().cloned().collect(),
            };
            if tx.send(update).is_err() {
                return;
            }
        }
    }
}

/// Aborts a task when dropped.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the InferencePool named in `config` and keeps one pod watch running on its
/// selector and ports; a changed spec replaces the pod watch (the old endpoints stay until
/// the new list is in), a deleted pool removes its endpoints. Runs until `tx` is closed.
pub async fn inference_pool(
    client: Client,
    config: InferencePoolDiscovery,
    tx: UnboundedSender<SourceUpdate>,
) {
    const SOURCE: &str = "inference-pool";
    let resource = pool::api_resource(&config.api_group);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &config.namespace, &resource);
    let pods_api: Api<Pod> = Api::namespaced(client, &config.namespace);
    let fields = format!("metadata.name={}", config.name);
    let stream =
        watcher::watcher(api, watcher::Config::default().fields(&fields)).default_backoff();
    futures_util::pin_mut!(stream);
    let mut current: Option<(PoolTarget, TaskGuard)> = None;
    let mut seen_in_list = false;
    let clear = |current: &mut Option<(PoolTarget, TaskGuard)>| -> bool {
        *current = None;
        tx.send(SourceUpdate {
            source: SOURCE.to_owned(),
            endpoints: Vec::new(),
        })
        .is_ok()
    };
    while let Some(event) = stream.next().await {
        let object = match event {
            Ok(Event::Init) => {
                seen_in_list = false;
                continue;
            }
            Ok(Event::InitApply(object)) => {
                seen_in_list = true;
                object
            }
            Ok(Event::Apply(object)) => object,
            Ok(Event::InitDone) => {
                if !seen_in_list {
                    warn!(pool = %config.name, namespace = %config.namespace, "InferencePool not found");
                    if !clear(&mut current) {
                        return;
                    }
                }
                continue;
            }
            Ok(Event::Delete(_)) => {
                warn!(pool = %config.name, "InferencePool deleted");
                if !clear(&mut current) {
                    return;
                }
                continue;
            }
            Err(err) => {
                warn!(error = %err, "InferencePool watch failed; keeping the last known workers");
                continue;
            }
        };
        match pool::target(&object) {
            Ok(target) => {
                if current.as_ref().is_some_and(|(t, _)| *t == target) {
                    continue;
                }
                info!(pool = %config.name, selector = %target.label_selector, ports = ?target.ports, "watching the InferencePool's pods");
                let rules = PodRules {
                    ports: target.ports.clone(),
                    port_annotation: None,
                    model_label: config.model_label.clone(),
                    lora_annotation: config.lora_annotation.clone(),
                };
                let task = tokio::spawn(pods(
                    pods_api.clone(),
                    target.label_selector.clone(),
                    rules,
                    SOURCE.to_owned(),
                    tx.clone(),
                ));
                current = Some((target, TaskGuard(task)));
            }
            Err(message) => {
                warn!(pool = %config.name, %message, "InferencePool unusable");
                if !clear(&mut current) {
                    return;
                }
            }
        }
    }
}
