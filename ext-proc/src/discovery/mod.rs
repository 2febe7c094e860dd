//! Kubernetes discovery: engine pods found by label selector, or through an InferencePool,
//! kept in the router as they come and go.
//!
//! The watches ([`watch`]) turn pods into endpoint lists per source; one applier task merges
//! the sources, asks the core's [`kvroute_core::discovery::reconcile`] what changed and adds,
//! updates or removes workers through the [`Workers`] registry, so discovered workers are
//! health-checked like static ones and a removed pod is purged from every policy at once.

pub mod config;
pub mod pod;
pub mod pool;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use kube::{Api, Client};
use kvroute_core::WorkerSpec;
use kvroute_core::discovery::{merge, reconcile};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{
    DiscoveryConfig, InferencePoolDiscovery, KubernetesDiscovery, POOL_GROUP_ALPHA, POOL_GROUP_V1,
    Source,
};

use crate::config::WorkerConfig;
use crate::health::Workers;
use pod::PodRules;
use watch::SourceUpdate;

/// Running discovery; its tasks stop when it is stopped or dropped.
#[derive(Debug)]
pub struct Discovery {
    tasks: Vec<JoinHandle<()>>,
}

impl Discovery {
    /// Connects to the API server (in-cluster service account, else `KUBECONFIG` or
    /// `~/.kube/config`) and starts watching. Addresses in `statics` belong to the static
    /// worker list and are never touched. An unreachable API server is not an error: the
    /// watches retry with backoff.
    pub async fn start(
        config: &DiscoveryConfig,
        workers: Arc<Workers>,
        statics: HashSet<String>,
    ) -> anyhow::Result<Discovery> {
        let client = Client::try_default()
            .await
            .context("Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(apply(rx, workers, statics))];
        let source = config
            .source()
            .context("discovery: set exactly one of `kubernetes` and `inference_pool`")?;
        match source {
            Source::Kubernetes(k) => {
                let rules = PodRules {
                    ports: vec![k.port],
                    port_annotation: Some(k.port_annotation.clone()),
                    model_label: k.model_label.clone(),
                    lora_annotation: k.lora_annotation.clone(),
                };
                for ns in &k.namespaces {
                    info!(namespace = %ns, selector = %k.label_selector, "watching engine pods");
                    tasks.push(tokio::spawn(watch::pods(
                        Api::namespaced(client.clone(), ns),
                        k.label_selector.clone(),
                        rules.clone(),
                        ns.clone(),
                        tx.clone(),
                    )));
                }
            }
            Source::InferencePool(p) => {
                info!(pool = %p.name, namespace = %p.namespace, "watching the InferencePool");
                tasks.push(tokio::spawn(watch::inference_pool(client, p.clone(), tx)));
            }
        }
        Ok(Discovery { tasks })
    }

    /// Stops every watch; the workers found so far stay in the router.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The applier: merges every source's latest list and reconciles the router with it.
async fn apply(
    mut rx: UnboundedReceiver<SourceUpdate>,
    workers: Arc<Workers>,
    statics: HashSet<String>,
) {
    let mut sources: BTreeMap<String, Vec<WorkerSpec>> = BTreeMap::new();
    let mut applied: BTreeMap<String, WorkerSpec> = BTreeMap::new();
    while let Some(update) = rx.recv().await {
        sources.insert(update.source, update.endpoints);
        // Apply a burst of updates (a relist, a rollout) once.
        while let Ok(update) = rx.try_recv() {
            sources.insert(update.source, update.endpoints);
        }
        let mut desired = merge(sources.values().map(Vec::as_slice));
        desired.retain(|address, _| !statics.contains(address));
        let diff = reconcile(&applied, &desired);
        if diff.is_empty() {
            continue;
        }
        for address in &diff.remove {
            if workers.remove(address).await {
                info!(worker = %address, "discovered worker gone");
            }
        }
        for spec in diff.upsert {
            let address = spec.address.clone();
            let config = WorkerConfig {
                address: spec.address,
                engine: spec.engine,
                models: spec.models,
                lora_adapters: spec.lora_adapters,
                labels: spec.labels,
                health_path: None,
            };
            match workers.upsert(&config) {
                Ok((_, true)) => {
                    info!(worker = %address, models = ?config.models, "worker discovered")
                }
                Ok((_, false)) => {
                    info!(worker = %address, models = ?config.models, "discovered worker updated")
                }
                Err(message) => {
                    warn!(worker = %address, %message, "discovered worker rejected");
                    desired.remove(&address);
                }
            }
        }
        workers.update_readiness().await;
        applied = desired;
    }
}

#[cfg(test)]
mod tests {
    /// In a cluster the API server is HTTPS: the TLS stack (rustls with ring) must come up
    /// without a process-wide crypto provider installed by hand.
    #[tokio::test]
    async fn an_https_api_server_client_can_be_built() {
        let url = "https://10.96.0.1:443".parse().expect("valid URL");
        let client = kube::Client::try_from(kube::Config::new(url));
        assert!(client.is_ok(), "{:?}", client.err());
    }
}
