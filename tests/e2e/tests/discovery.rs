//! Kubernetes discovery end to end: a fake API server speaking the list/watch protocol holds
//! pods whose `podIP:port` are real simulated engines; kvroute watches it and Envoy routes
//! through it. Requests follow pods as they appear, become ready, change labels and go.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvroute_e2e::fake_kube::{FakeKube, inference_pool, pods, pods_path, pools_path};
use kvroute_e2e::openai::{chat_body, sim_id};
use kvroute_e2e::{MODEL, Sim, Stack, paths};
use serde_json::Value;

const NS: &str = "llm";
const WAIT: Duration = Duration::from_secs(30);

fn pod_discovery_config() -> String {
    format!(
        "discovery:\n  kubernetes:\n    namespaces: [{NS}]\n    label_selector: \"kvroute.io/pool=llm\"\n    \
         port: 8000\n    model_label: kvroute.io/model\n    lora_annotation: kvroute.io/lora-adapters\n"
    )
}

/// A fake API server and a kubeconfig for it (in a directory beside the test's logs).
async fn fake_api(test: &str) -> anyhow::Result<(FakeKube, String)> {
    let fake = FakeKube::start().await?;
    let dir = paths::log_dir(&format!("{test}-kube"))?;
    let kubeconfig = fake.write_kubeconfig(&dir)?;
    Ok((fake, kubeconfig.display().to_string()))
}

/// A ready pod for engine `sim` serving `model`, its port in the port annotation.
fn engine_pod(name: &str, sim: &Sim, model: &str) -> Value {
    let port = sim.addr.port().to_string();
    pods::ready(
        NS,
        name,
        &sim.addr.ip().to_string(),
        &[
            ("kvroute.io/pool", "llm"),
            ("kvroute.io/model", model),
            ("inference.networking.k8s.io/engine-type", "vllm"),
        ],
        &[("kvroute.io/port", &port)],
    )
}

/// Sends `n` chats for `model` through the gateway; returns the engines that answered.
async fn serve(stack: &Stack, model: &str, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let mut engines = BTreeSet::new();
    for i in 0..n {
        let resp = stack
            .post(
                "/v1/chat/completions",
                &chat_body(model, &format!("discovery {model} {i}"), false, 2),
            )
            .await?;
        anyhow::ensure!(resp.status() == 200, "request {i}: {}", resp.status());
        engines.insert(sim_id(&resp));
        let _ = resp.bytes().await?;
    }
    Ok(engines)
}

/// Waits until `GET /workers` satisfies `pred` and Envoy sees kvroute ready again (its
/// gRPC health check reads kvroute's readiness, which needs a routable worker).
async fn wait_routable(
    stack: &Stack,
    pred: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let ws = stack.wait_workers(WAIT, pred).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !stack.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Envoy never saw kvroute ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ws)
}

/// The healthy workers' addresses.
fn healthy(ws: &[Value]) -> BTreeSet<String> {
    ws.iter()
        .filter(|w| w["healthy"] == true)
        .filter_map(|w| w["address"].as_str().map(str::to_owned))
        .collect()
}

fn addrs(sims: &[&Sim]) -> BTreeSet<String> {
    sims.iter().map(|s| s.addr.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_pods_as_they_appear_change_and_go() -> anyhow::Result<()> {
    let test = "requests_follow_pods_as_they_appear_change_and_go";
    let (fake, kubeconfig) = fake_api(test).await?;
    let mut stack = Stack::builder(test)
        .engines(3)
        .discovered_workers()
        .kvroute_env("KUBECONFIG", &kubeconfig)
        .kvroute_config(&pod_discovery_config())
        .start()
        .await?;
    let [s0, s1, s2] = stack.sims() else {
        anyhow::bail!("need three engines");
    };
    let pods_path = pods_path(NS);

    // A pod that is scheduled but not started: nothing to route to.
    let mut p0 = engine_pod("engine-0", s0, MODEL);
    pods::set_pending(&mut p0);
    fake.apply(&pods_path, p0.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !fake.requests().iter().any(|r| r.contains("watch=true")) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "kvroute never watched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stack.workers().await?.is_empty(),
        "a pending pod became a worker"
    );
    let resp = stack
        .client()
        .get(stack.kvroute_admin_url("/readyz"))
        .send()
        .await?;
    assert_eq!(resp.status(), 503, "ready with no ready pod");

    // Ready: it becomes a worker, health-checked, with the model from its label.
    fake.apply(&pods_path, engine_pod("engine-0", s0, MODEL));
    let ws = wait_routable(&stack, |ws| healthy(ws) == addrs(&[s0])).await?;
    assert_eq!(ws[0]["models"][0], MODEL);
    assert_eq!(
        serve(&stack, MODEL, 4).await?,
        BTreeSet::from([s0.id.clone()])
    );

    fake.apply(&pods_path, engine_pod("engine-1", s1, MODEL));
    fake.apply(&pods_path, engine_pod("engine-2", s2, MODEL));
    stack
        .wait_workers(WAIT, |ws| healthy(ws) == addrs(&[s0, s1, s2]))
        .await?;
    assert_eq!(serve(&stack, MODEL, 9).await?.len(), 3);

    // Terminating (deletionTimestamp set): out at once, before the pod object is gone.
    let mut p1 = engine_pod("engine-1", s1, MODEL);
    pods::set_terminating(&mut p1);
    fake.apply(&pods_path, p1);
    stack
        .wait_workers(WAIT, |ws| ws.len() == 2 && healthy(ws) == addrs(&[s0, s2]))
        .await?;
    let engines = serve(&stack, MODEL, 8).await?;
    assert!(!engines.contains(&s1.id), "{engines:?}");
    assert!(fake.delete(&pods_path, "engine-1"));

    // Not ready any more, then relabelled out of the pool: removed each time.
    let mut p2 = engine_pod("engine-2", s2, MODEL);
    pods::set_ready(&mut p2, false);
    fake.apply(&pods_path, p2.clone());
    stack.wait_workers(WAIT, |ws| ws.len() == 1).await?;
    pods::set_ready(&mut p2, true);
    fake.apply(&pods_path, p2.clone());
    stack
        .wait_workers(WAIT, |ws| healthy(ws).len() == 2)
        .await?;
    pods::set_label(&mut p2, "kvroute.io/pool", "other");
    fake.apply(&pods_path, p2);
    stack
        .wait_workers(WAIT, |ws| ws.len() == 1 && healthy(ws) == addrs(&[s0]))
        .await?;
    assert_eq!(
        serve(&stack, MODEL, 4).await?,
        BTreeSet::from([s0.id.clone()])
    );

    // Health checks still apply: a ready pod whose engine stops answering stays listed,
    // unhealthy, and gets nothing.
    let (s0_id, s1_addr) = (s0.id.clone(), s1.addr.to_string());
    fake.apply(&pods_path, engine_pod("engine-1b", s1, MODEL));
    stack
        .wait_workers(WAIT, |ws| healthy(ws).len() == 2)
        .await?;
    stack.kill_sim(1);
    stack
        .wait_workers(WAIT, |ws| {
            ws.len() == 2
                && ws
                    .iter()
                    .any(|w| w["address"] == s1_addr.as_str() && w["healthy"] == false)
        })
        .await?;
    assert_eq!(serve(&stack, MODEL, 4).await?, BTreeSet::from([s0_id]));
    assert!(fake.delete(&pods_path, "engine-1b"));

    // Deleted: gone.
    assert!(fake.delete(&pods_path, "engine-0"));
    stack.wait_workers(WAIT, |ws| ws.is_empty()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_watches_and_api_outages_keep_the_known_workers() -> anyhow::Result<()> {
    let test = "lost_watches_and_api_outages_keep_the_known_workers";
    let (fake, kubeconfig) = fake_api(test).await?;
    let stack = Stack::builder(test)
        .engines(3)
        .discovered_workers()
        .kvroute_env("KUBECONFIG", &kubeconfig)
        .kvroute_config(&pod_discovery_config())
        .start()
        .await?;
    let [s0, s1, s2] = stack.sims() else {
        anyhow::bail!("need three engines");
    };
    let pods_path = pods_path(NS);
    fake.apply(&pods_path, engine_pod("engine-0", s0, MODEL));
    fake.apply(&pods_path, engine_pod("engine-1", s1, MODEL));
    wait_routable(&stack, |ws| healthy(ws) == addrs(&[s0, s1])).await?;
    fake.bookmark();

    // Engine 1 must stay listed through everything below: watch a tight loop on /workers.
    let dropped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (dropped, stop) = (dropped.clone(), stop.clone());
        let client = stack.client().clone();
        let url = stack.kvroute_admin_url("/workers");
        let s1_addr = s1.addr.to_string();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(resp) = client.get(&url).send().await
                    && let Ok(ws) = resp.json::<Vec<Value>>().await
                    && !ws.iter().any(|w| w["address"] == s1_addr.as_str())
                {
                    dropped.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The API server goes away: routing goes on with the last known set.
    fake.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(serve(&stack, MODEL, 6).await?.len(), 2);
    assert_eq!(healthy(&stack.workers().await?), addrs(&[s0, s1]));

    // Meanwhile the cluster changed and the watch history is lost: the resumed watch gets
    // 410 Gone, kvroute relists and reconciles the difference.
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with(&pods_path) && !r.contains("watch=true"))
        .count();
    fake.apply(&pods_path, engine_pod("engine-2", s2, MODEL));
    assert!(fake.delete(&pods_path, "engine-0"));
    fake.expire_history();
    fake.restart().await?;
    stack
        .wait_workers(WAIT, |ws| ws.len() == 2 && healthy(ws) == addrs(&[s1, s2]))
        .await?;
    let requests = fake.requests();
    let lists_after = requests
        .iter()
        .filter(|r| r.starts_with(&pods_path) && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "no relist: {requests:#?}");
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{requests:#?}"
    );
    let engines = serve(&stack, MODEL, 6).await?;
    assert_eq!(engines, BTreeSet::from([s1.id.clone(), s2.id.clone()]));
    stop.store(true, Ordering::Relaxed);
    monitor.await?;
    assert!(
        !dropped.load(Ordering::Relaxed),
        "engine 1 left the router during the outage or the relist"
    );

    // A watch cut without losing history resumes where it was.
    fake.restart().await?;
    let mut p1 = engine_pod("engine-1", s1, MODEL);
    pods::set_ready(&mut p1, false);
    fake.apply(&pods_path, p1);
    stack
        .wait_workers(WAIT, |ws| healthy(ws) == addrs(&[s2]) && ws.len() == 1)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_only_pods_serving_their_model() -> anyhow::Result<()> {
    let test = "requests_reach_only_pods_serving_their_model";
    let (fake, kubeconfig) = fake_api(test).await?;
    let config = format!(
        "{}router:\n  model_policies:\n    model-b:\n      name: prefix_hash\n",
        pod_discovery_config()
    );
    let stack = Stack::builder(test)
        .engines(3)
        .sim_models(&["model-a", "model-a", "model-b"])
        .discovered_workers()
        .kvroute_env("KUBECONFIG", &kubeconfig)
        .kvroute_config(&config)
        .start()
        .await?;
    let [s0, s1, s2] = stack.sims() else {
        anyhow::bail!("need three engines");
    };
    let pods_path = pods_path(NS);
    fake.apply(&pods_path, engine_pod("a-0", s0, "model-a"));
    fake.apply(&pods_path, engine_pod("a-1", s1, "model-a"));
    fake.apply(&pods_path, engine_pod("b-0", s2, "model-b"));
    let ws = wait_routable(&stack, |ws| healthy(ws) == addrs(&[s0, s1, s2])).await?;
    let models: BTreeSet<String> = ws
        .iter()
        .filter_map(|w| w["models"][0].as_str().map(str::to_owned))
        .collect();
    assert_eq!(models, BTreeSet::from(["model-a".into(), "model-b".into()]));

    assert_eq!(
        serve(&stack, "model-a", 8).await?,
        BTreeSet::from([s0.id.clone(), s1.id.clone()])
    );
    assert_eq!(
        serve(&stack, "model-b", 4).await?,
        BTreeSet::from([s2.id.clone()])
    );
    // Per-model policy: model-b's decisions were taken by prefix_hash, model-a's by the
    // default (round_robin).
    let by_prefix_hash = stack
        .kvroute_metric("kvroute_decisions_total", &[("policy", "prefix_hash")])
        .await?;
    let by_round_robin = stack
        .kvroute_metric("kvroute_decisions_total", &[("policy", "round_robin")])
        .await?;
    assert_eq!((by_prefix_hash, by_round_robin), (4.0, 8.0));

    // A model no pod serves: a clear 404 naming it.
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body("model-c", "hi", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 404);
    let body = resp.text().await?;
    assert!(body.contains("model-c"), "{body}");

    // The model-b pod is relabelled to model-a: model-b disappears with it.
    fake.apply(&pods_path, engine_pod("b-0", s2, "model-a"));
    stack
        .wait_workers(WAIT, |ws| {
            ws.iter().all(|w| w["models"][0] == "model-a") && healthy(ws).len() == 3
        })
        .await?;
    let resp = stack
        .post(
            "/v1/chat/completions",
            &chat_body("model-b", "hi", false, 2),
        )
        .await?;
    assert_eq!(resp.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_pool_selects_pods_and_its_target_ports_make_workers() -> anyhow::Result<()> {
    let test = "an_inference_pool_selects_pods_and_its_target_ports_make_workers";
    let (fake, kubeconfig) = fake_api(test).await?;
    let stack = Stack::builder(test)
        .engines(3)
        .discovered_workers()
        .kvroute_env("KUBECONFIG", &kubeconfig)
        .kvroute_config("discovery:\n  inference_pool:\n    name: llm-pool\n    namespace: llm\n")
        .start()
        .await?;
    let [s0, s1, s2] = stack.sims() else {
        anyhow::bail!("need three engines");
    };
    // One pod (all engines share 127.0.0.1) whose two target ports are two engines: data
    // parallelism, one worker per port.
    let pod = pods::ready(
        NS,
        "engine-dp",
        &s0.addr.ip().to_string(),
        &[("app", "qwen"), ("kvroute.io/model", MODEL)],
        &[],
    );
    fake.apply(&pods_path(NS), pod);
    let pools = pools_path(NS);
    fake.apply(
        &pools,
        inference_pool(
            NS,
            "llm-pool",
            &[("app", "qwen")],
            &[s0.addr.port(), s1.addr.port()],
        ),
    );
    wait_routable(&stack, |ws| healthy(ws) == addrs(&[s0, s1])).await?;
    assert_eq!(
        serve(&stack, MODEL, 6).await?,
        BTreeSet::from([s0.id.clone(), s1.id.clone()])
    );

    // The pool's ports change: the workers follow.
    fake.apply(
        &pools,
        inference_pool(NS, "llm-pool", &[("app", "qwen")], &[s2.addr.port()]),
    );
    stack
        .wait_workers(WAIT, |ws| ws.len() == 1 && healthy(ws) == addrs(&[s2]))
        .await?;
    assert_eq!(
        serve(&stack, MODEL, 3).await?,
        BTreeSet::from([s2.id.clone()])
    );

    // The pool's selector no longer matches the pod, then the pool is deleted.
    fake.apply(
        &pools,
        inference_pool(NS, "llm-pool", &[("app", "other")], &[s2.addr.port()]),
    );
    stack.wait_workers(WAIT, |ws| ws.is_empty()).await?;
    fake.apply(
        &pools,
        inference_pool(NS, "llm-pool", &[("app", "qwen")], &[s2.addr.port()]),
    );
    stack
        .wait_workers(WAIT, |ws| healthy(ws).len() == 1)
        .await?;
    assert!(fake.delete(&pools, "llm-pool"));
    stack.wait_workers(WAIT, |ws| ws.is_empty()).await?;
    Ok(())
}
