//! A fake Kubernetes API server speaking the real list/watch protocol, for discovery tests.
//!
//! It serves namespaced collections (`/api/v1/namespaces/{ns}/pods`,
//! `/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools`):
//! - a list (`GET`, no `watch`) returns `{kind: PodList, metadata: {resourceVersion}, items}`;
//! - a watch (`watch=true&resourceVersion=N`) streams newline-delimited
//!   `{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}` events after `N`,
//!   translating label changes into ADDED/DELETED for the watcher's selector like the real
//!   server; a `resourceVersion` older than the retained history gets one ERROR event with a
//!   410 "too old resource version" Status, which forces the client to relist;
//! - `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`) and `fieldSelector`
//!   (`metadata.name=`, `metadata.namespace=`) are honoured;
//! - every request needs `Authorization: Bearer <token>` (the kubeconfig's).
//!
//! The server can be stopped (every connection cut) and started again on the same address.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Bearer token the generated kubeconfig carries and the server requires.
pub const TOKEN: &str = "fake-kube-token";

/// One change of one object, as recorded in the history.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    collection: String,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches resuming before this resource version get 410 Gone.
    oldest_rv: u64,
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    history: Vec<Change>,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    epoch: watch::Sender<u64>,
    requests: Mutex<Vec<String>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fake API server; stopped when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// The collection path of a namespace's pods.
pub fn pods_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods")
}

/// The collection path of a namespace's InferencePools.
pub fn pools_path(namespace: &str) -> String {
    format!("/apis/inference.networking.k8s.io/v1/namespaces/{namespace}/inferencepools")
}

/// `(kind, apiVersion)` of the objects in a collection path.
fn kind_of(collection: &str) -> (&'static str, &'static str) {
    if collection.ends_with("/inferencepools") {
        ("InferencePool", "inference.networking.k8s.io/v1")
    } else {
        ("Pod", "v1")
    }
}

impl FakeKube {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<FakeKube> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(1024);
        let (epoch, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1000,
                oldest_rv: 1000,
                ..Store::default()
            }),
            changes,
            epoch,
            requests: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(FakeKube {
            addr,
            shared,
            server: Mutex::new(Some(server)),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, bearer token) into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates or replaces an object in `collection` (by `metadata.name`), stamping a new
    /// `resourceVersion` (and `uid`, `creationTimestamp` when missing).
    pub fn apply(&self, collection: &str, mut object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut store = self.shared.store();
        store.rv += 1;
        let rv = store.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-11-20T09:14:03Z");
        }
        let old = store
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name, object.clone());
        let change = Change {
            rv,
            collection: collection.to_owned(),
            old,
            new: Some(object),
        };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
    }

    /// Deletes an object; `false` if it did not exist.
    pub fn delete(&self, collection: &str, name: &str) -> bool {
        let mut store = self.shared.store();
        let Some(mut object) = store
            .objects
            .get_mut(collection)
            .and_then(|c| c.remove(name))
        else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            collection: collection.to_owned(),
            old: Some(object),
            new: None,
        };
        store.history.push(change.clone());
        let _ = self.shared.changes.send(change);
        true
    }

    /// Forgets the watch history (as an API server restart or etcd compaction does) and cuts
    /// every watch: clients resuming from an older resource version get 410 Gone and must
    /// relist.
    pub fn expire_history(&self) {
        {
            let mut store = self.shared.store();
            store.rv += 1;
            store.oldest_rv = store.rv;
            store.history.clear();
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Sends a BOOKMARK with the current resource version on every watch that asked for them.
    pub fn bookmark(&self) {
        let rv = self.shared.store().rv;
        let _ = self.shared.changes.send(Change {
            rv,
            collection: String::new(),
            old: None,
            new: None,
        });
    }

    /// Stops serving: the listener closes and every connection (open watches included) is cut.
    pub fn stop(&self) {
        if let Some(server) = self.server().take() {
            server.abort();
        }
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Serves again on the same address, with the same objects and history.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(e).context("rebinding the fake API server");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        *self.server() = Some(tokio::spawn(serve(listener, self.shared.clone())));
        Ok(())
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn server(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until aborted; aborting drops the set and so cuts every connection.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(shared.clone());
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(uri.to_string());
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let collection = uri.path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = collection.split('/').collect();
    let known = (collection.starts_with("/api/v1/namespaces/") && segments.len() == 6)
        || (collection.starts_with("/apis/") && segments.len() == 7);
    if !known || !(collection.ends_with("/pods") || collection.ends_with("/inferencepools")) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let filter = Filter {
        labels: query.get("labelSelector").cloned().unwrap_or_default(),
        fields: query.get("fieldSelector").cloned().unwrap_or_default(),
    };
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !is_watch {
        return list(&shared, &collection, &filter);
    }
    let rv = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(300);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(feed_watch(
        shared,
        collection,
        filter,
        rv,
        bookmarks,
        Duration::from_secs(timeout),
        tx,
    ));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn list(shared: &Shared, collection: &str, filter: &Filter) -> Response {
    let store = shared.store();
    let items: Vec<Value> = store
        .objects
        .get(collection)
        .into_iter()
        .flat_map(|c| c.values())
        .filter(|o| filter.matches(o))
        .map(|o| {
            // Items of a real list carry no kind or apiVersion.
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            o
        })
        .collect();
    let (kind, api_version) = kind_of(collection);
    axum::Json(json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": { "resourceVersion": store.rv.to_string() },
        "items": items,
    }))
    .into_response()
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({ "type": event_type, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Writes one watch's events into `tx` until the client goes, the epoch changes or the
/// watch times out.
async fn feed_watch(
    shared: Arc<Shared>,
    collection: String,
    filter: Filter,
    rv: u64,
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
) {
    let (kind, api_version) = kind_of(&collection);
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    let (backlog, mut live, mut last) = {
        let store = shared.store();
        if rv != 0 && rv < store.oldest_rv {
            let gone = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {rv} ({})", store.oldest_rv),
                "reason": "Expired", "code": 410,
            });
            let _ = tx.try_send(line("ERROR", &gone));
            return;
        }
        let live = shared.changes.subscribe();
        let backlog: Vec<(String, Value)> = if rv == 0 {
            // No resource version: the current objects as ADDED, then changes.
            store
                .objects
                .get(&collection)
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|o| filter.matches(o))
                .map(|o| ("ADDED".to_owned(), o.clone()))
                .collect()
        } else {
            store
                .history
                .iter()
                .filter(|c| c.rv > rv && c.collection == collection)
                .filter_map(|c| filter.event(c))
                .collect()
        };
        (backlog, live, store.rv.max(rv))
    };
    for (t, o) in backlog {
        if tx.send(line(&t, &o)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let change = tokio::select! {
            _ = epoch.changed() => return,
            () = &mut deadline => return,
            c = live.recv() => match c {
                Ok(c) => c,
                // Too slow a reader loses its watch, as on the real server.
                Err(_) => return,
            },
        };
        if change.collection.is_empty() {
            if bookmarks {
                let mark = json!({
                    "kind": kind, "apiVersion": api_version,
                    "metadata": { "resourceVersion": change.rv.max(last).to_string() },
                });
                if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                    return;
                }
            }
            continue;
        }
        if change.rv <= last || change.collection != collection {
            continue;
        }
        last = change.rv;
        if let Some((t, o)) = filter.event(&change)
            && tx.send(line(&t, &o)).await.is_err()
        {
            return;
        }
    }
}

/// A watch's or list's label and field selectors.
struct Filter {
    labels: String,
    fields: String,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let labels = object["metadata"]["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self
            .labels
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .all(|term| {
                if let Some((k, v)) = term.split_once("!=") {
                    label(k.trim()) != Some(v.trim())
                } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('='))
                {
                    label(k.trim()) == Some(v.trim())
                } else if let Some(k) = term.strip_prefix('!') {
                    label(k.trim()).is_none()
                } else {
                    label(term).is_some()
                }
            });
        let fields_ok = self
            .fields
            .split(',')
            .filter(|t| !t.is_empty())
            .all(|term| match term.split_once('=') {
                Some(("metadata.name", v)) => object["metadata"]["name"] == v,
                Some(("metadata.namespace", v)) => object["metadata"]["namespace"] == v,
                _ => false,
            });
        labels_ok && fields_ok
    }

    /// The event a watcher with this filter sees for `change`, if any: an object entering the
    /// selection is ADDED, one leaving it DELETED.
    fn event(&self, change: &Change) -> Option<(String, Value)> {
        let was = change.old.as_ref().is_some_and(|o| self.matches(o));
        match (&change.old, &change.new) {
            (_, Some(new)) if self.matches(new) => {
                let t = if was { "MODIFIED" } else { "ADDED" };
                Some((t.to_owned(), new.clone()))
            }
            (_, Some(new)) if was => Some(("DELETED".to_owned(), new.clone())),
            (Some(old), None) if was => Some(("DELETED".to_owned(), old.clone())),
            _ => None,
        }
    }
}

/// Pod objects built from the fixture `fixtures/vllm-pod.json`, a running vLLM pod as the API
/// server returns it.
pub mod pods {
    use serde_json::{Value, json};

    const FIXTURE: &str = include_str!("../fixtures/vllm-pod.json");

    /// A ready pod `namespace/name` at `ip`, with the fixture's labels replaced by `labels`
    /// and its annotations by `annotations`.
    pub fn ready(
        namespace: &str,
        name: &str,
        ip: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Value {
        let mut pod: Value = serde_json::from_str(FIXTURE).unwrap_or_else(|_| json!({}));
        let meta = &mut pod["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(namespace);
        meta["generateName"] = json!(format!("{name}-"));
        if let Some(m) = meta.as_object_mut() {
            m.remove("uid");
            m.remove("resourceVersion");
        }
        meta["labels"] = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        meta["annotations"] = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        pod["status"]["podIP"] = json!(ip);
        pod["status"]["podIPs"] = json!([{ "ip": ip }]);
        pod
    }

    /// Sets the Ready and ContainersReady conditions (and the container's `ready`).
    pub fn set_ready(pod: &mut Value, ready: bool) {
        let value = if ready { "True" } else { "False" };
        if let Some(conditions) = pod["status"]["conditions"].as_array_mut() {
            for c in conditions {
                if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                    c["status"] = json!(value);
                }
            }
        }
        if let Some(statuses) = pod["status"]["containerStatuses"].as_array_mut() {
            for s in statuses {
                s["ready"] = json!(ready);
            }
        }
    }

    /// A pod just created: Pending, not ready, no IP yet.
    pub fn set_pending(pod: &mut Value) {
        set_ready(pod, false);
        pod["status"]["phase"] = json!("Pending");
        if let Some(status) = pod["status"].as_object_mut() {
            status.remove("podIP");
            status.remove("podIPs");
        }
    }

    /// Marks the pod as being deleted (graceful termination has begun).
    pub fn set_terminating(pod: &mut Value) {
        pod["metadata"]["deletionTimestamp"] = json!("2026-11-20T10:00:00Z");
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }

    /// Sets one label.
    pub fn set_label(pod: &mut Value, key: &str, value: &str) {
        pod["metadata"]["labels"][key] = json!(value);
    }
}

/// The InferencePool fixture `fixtures/inference-pool.json`, re-aimed.
pub fn inference_pool(
    namespace: &str,
    name: &str,
    match_labels: &[(&str, &str)],
    ports: &[u16],
) -> Value {
    const FIXTURE: &str = include_str!("../fixtures/inference-pool.json");
    let mut pool: Value = serde_json::from_str(FIXTURE).unwrap_or_else(|_| json!({}));
    pool["metadata"]["name"] = json!(name);
    pool["metadata"]["namespace"] = json!(namespace);
    if let Some(m) = pool["metadata"].as_object_mut() {
        m.remove("uid");
        m.remove("resourceVersion");
    }
    pool["spec"]["selector"]["matchLabels"] = match_labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    pool["spec"]["targetPorts"] = ports.iter().map(|p| json!({ "number": p })).collect();
    pool
}
