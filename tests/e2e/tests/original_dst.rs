//! The ORIGINAL_DST variant: routes by the header kvroute sets, never by a client's.

use kvroute_e2e::openai::{DESTINATION_HEADER, chat_body, sim_id};
use kvroute_e2e::{MODEL, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_dst_variant_routes_and_ignores_client_header() -> anyhow::Result<()> {
    let stack = Stack::builder("original_dst_variant_routes_and_ignores_client_header")
        .envoy_config("envoy-original-dst.yaml")
        // ORIGINAL_DST reads one address, not a fallback list.
        .kvroute_config("router:\n  max_endpoints: 1\n")
        .policy("cache_aware")
        .with_outsider()
        .start()
        .await?;
    let outsider = stack
        .outsider()
        .ok_or_else(|| anyhow::anyhow!("no outsider"))?;
    let ids: Vec<&str> = stack.sims().iter().map(|s| s.id.as_str()).collect();
    let mut first = None;
    for i in 0..6 {
        let resp = stack
            .client()
            .post(stack.gateway_url("/v1/chat/completions"))
            .header(DESTINATION_HEADER, outsider.addr.to_string())
            .json(&chat_body(
                MODEL,
                "The same prompt every time, for affinity.",
                false,
                2,
            ))
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "request {i}");
        let id = sim_id(&resp);
        assert!(ids.contains(&id.as_str()), "answered by {id:?}");
        assert_eq!(
            first.get_or_insert_with(|| id.clone()),
            &id,
            "kvroute's pick is followed"
        );
        let _ = resp.bytes().await?;
    }
    assert_eq!(
        stack
            .sim_metric(outsider, "vllm:prompt_tokens_total")
            .await?,
        0.0
    );
    Ok(())
}
