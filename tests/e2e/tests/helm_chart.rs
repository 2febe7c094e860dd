//! kvroute started the way the Gateway API Inference Extension's `inferencepool` Helm chart
//! starts its picker image: the chart's argument list appended to the entrypoint (no
//! subcommand), its environment, its EndpointPickerConfig, its ports and gRPC probes; behind
//! the Inference Extension's test Envoy (TLS to the picker without verification, a gRPC
//! health check on the ext_proc port). The pool is data-parallel: one pod whose target ports
//! are three engines. The API server is down when kvroute starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvroute_e2e::fake_kube::{FakeKube, inference_pool, pods, pods_path, pools_path};
use kvroute_e2e::openai::{chat_with_system, sim_id};
use kvroute_e2e::{MODEL, Stack, paths};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const NS: &str = "llm";
const POOL: &str = "vllm-qwen";

/// The picker's default ports, as the chart's Service and probes expect them.
const CHART_PORTS: [u16; 4] = [9002, 9003, 9090, 9004];

/// gRPC health status of `service` on `addr` (plaintext).
async fn health(addr: SocketAddr, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown))
}

async fn wait_health(addr: SocketAddr, service: &str, want: ServingStatus) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = health(addr, service).await?;
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{service}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inferencepool_charts_arguments_start_a_working_picker() -> anyhow::Result<()> {
    let test = "the_inferencepool_charts_arguments_start_a_working_picker";
    let fake = FakeKube::start().await?;
    let kube_dir = paths::log_dir(&format!("{test}-kube"))?;
    let kubeconfig = fake.write_kubeconfig(&kube_dir)?.display().to_string();
    fake.stop();

    let plugins = paths::workspace_root().join("ext-proc/tests/fixtures/default-plugins.yaml");
    let plugins = plugins.display().to_string();
    // The chart's list (values defaults, one replica), in its order.
    let mut args = vec![
        "--pool-name",
        POOL,
        "--pool-namespace",
        NS,
        "--pool-group",
        "inference.networking.k8s.io",
        "--zap-encoder",
        "json",
        "--config-file",
        &plugins,
        "--v",
        "1",
        "--tracing=false",
    ];
    // The chart's ports, unless this machine already uses one of them: then the same list
    // plus the port flags the chart's `flags` value would add.
    let taken = CHART_PORTS
        .iter()
        .any(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_err());
    let free: Vec<String> = if taken {
        (0..4)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
                l.local_addr().expect("addr").port().to_string()
            })
            .collect()
    } else {
        Vec::new()
    };
    if taken {
        println!("the chart's default ports are in use here; using {free:?}");
        args.extend([
            "--grpc-port",
            &free[0],
            "--grpc-health-port",
            &free[1],
            "--metrics-port",
            &free[2],
            "--admin-addr",
        ]);
    }
    let admin = format!("127.0.0.1:{}", free.get(3).map_or("9004", String::as_str));
    if taken {
        args.push(&admin);
    }
    let stack = Stack::builder(test)
        .engines(3)
        .gateway("gie-test-envoy")
        .kvroute_exact_args(&args)
        .kvroute_env("KUBECONFIG", &kubeconfig)
        .kvroute_env("NAMESPACE", NS)
        .kvroute_env("POD_NAME", "vllm-qwen-epp-6d4f9-abcde")
        .start()
        .await?;
    let health_addr = stack
        .kvroute_health_addr()
        .ok_or_else(|| anyhow::anyhow!("no health address"))?;
    if !taken {
        assert_eq!(
            health_addr.port(),
            9003,
            "the chart probes gRPC health on 9003"
        );
        assert_eq!(stack.kvroute_grpc_addr().map(|a| a.port()), Some(9002));
    }

    // API server down: alive, not ready.
    assert_eq!(
        health(health_addr, "liveness").await?,
        ServingStatus::Serving
    );
    assert_eq!(
        health(health_addr, "inference-extension").await?,
        ServingStatus::Serving
    );
    assert_eq!(
        health(health_addr, "readiness").await?,
        ServingStatus::NotServing
    );

    // The API server comes back with a data-parallel pool: one pod, three target ports.
    fake.restart().await?;
    let sims = stack.sims();
    let pod = pods::ready(
        NS,
        "vllm-qwen-0",
        &sims[0].addr.ip().to_string(),
        &[("app", "vllm-qwen"), ("kvroute.io/model", MODEL)],
        &[],
    );
    fake.apply(&pods_path(NS), pod);
    let ports: Vec<u16> = sims.iter().map(|s| s.addr.port()).collect();
    fake.apply(
        &pools_path(NS),
        inference_pool(NS, POOL, &[("app", "vllm-qwen")], &ports),
    );
    stack
        .wait_workers(Duration::from_secs(30), |ws| {
            ws.len() == 3 && ws.iter().all(|w| w["healthy"] == true)
        })
        .await?;
    wait_health(health_addr, "readiness", ServingStatus::Serving).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stack.envoy_cluster_healthy("kvroute").await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "Envoy's gRPC health check over TLS never passed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Routed by the chart's scorer: shared prefixes stay together, the pool's ports serve.
    let mut by_group: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for round in 0..4 {
        for group in 0..3 {
            let system: String = (0..40)
                .map(|i| format!("Pool group {group} rule {i}: be brief. "))
                .collect();
            let resp = stack
                .post(
                    "/v1/chat/completions",
                    &chat_with_system(MODEL, &system, &format!("q{round}"), false, 2),
                )
                .await?;
            assert_eq!(resp.status(), 200, "round {round} group {group}");
            by_group.entry(group).or_default().insert(sim_id(&resp));
            let _ = resp.bytes().await?;
        }
    }
    for (group, engines) in &by_group {
        assert_eq!(engines.len(), 1, "group {group} on {engines:?}");
    }
    let decisions = stack
        .kvroute_metric(
            "kvroute_decisions_total",
            &[("policy", "scorer"), ("outcome", "forwarded")],
        )
        .await?;
    assert_eq!(
        decisions, 12.0,
        "the chart's EndpointPickerConfig selects the scorer"
    );
    Ok(())
}
