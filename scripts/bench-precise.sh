#!/usr/bin/env bash
# Compares routing policies on a shared-prefix chat workload with engines publishing KV events:
# four simulated vLLM engines (real Qwen3 tokenizer, ZMQ events + replay), kvroute, the real
# Envoy (envoy/envoy.yaml on other ports) and kvroute-bench, once per policy given.
# Usage: scripts/bench-precise.sh [POLICY...] (default: cache_aware precise_prefix).
# Knobs: KV_BLOCKS (per engine, default 2048), GROUPS_N, PROMPTS, SYSTEM, OUTPUT, CONC.
# Ports used: 10711, 19911, 19012-19013, 18711-18714, 18721-18724, 18731-18734.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="${CARGO_TARGET_DIR:-$root/target}/release"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"
tok=$("$root/scripts/fetch-tokenizers.sh")
run_dir="$root/.run/bench-precise"
mkdir -p "$run_dir"
(cd "$root" && cargo build --release --quiet -p kvroute -p kvroute-sim -p kvroute-bench)
"$target/kvroute-bench" envoy-config --template "$root/envoy/envoy.yaml" \
  --admin 127.0.0.1:19911 --listen 127.0.0.1:10711 --kvroute 127.0.0.1:19012 \
  --engine 127.0.0.1:18711 --engine 127.0.0.1:18712 --engine 127.0.0.1:18713 \
  --engine 127.0.0.1:18714 --output "$run_dir/envoy.yaml"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap stop_all EXIT

run_policy() {
  local policy=$1 out="$run_dir/$1" workers="" engines=""
  mkdir -p "$out"
  for i in 1 2 3 4; do
    "$target/kvroute-sim" --port "1871$i" --engine vllm --model bench-model --id "e$i" \
      --block-size 16 --kv-blocks "${KV_BLOCKS:-2048}" --prefill-overhead-ms 3 \
      --prefill-us-per-token 20 --decode-us-per-token 1000 --max-running 64 --tokenizer "$tok" \
      --kv-events-endpoint "tcp://127.0.0.1:1872$i" \
      --kv-events-replay-endpoint "tcp://127.0.0.1:1873$i" >"$out/sim$i.log" 2>&1 &
    pids+=($!)
    workers+="  - {address: 127.0.0.1:1871$i, labels: {kv_events_endpoint: 'tcp://127.0.0.1:1872$i', kv_events_replay_endpoint: 'tcp://127.0.0.1:1873$i'}}"$'\n'
    engines+="${engines:+,}http://127.0.0.1:1871$i"
  done
  cat >"$out/kvroute.yaml" <<YAML
grpc_addr: 127.0.0.1:19012
admin_addr: 127.0.0.1:19013
health_addr: 127.0.0.1:0
metrics_addr: 127.0.0.1:0
router: {max_endpoints: 3}
kv_events: {enabled: true, endpoint: ''}
tokenizer: {path: $tok}
workers:
$workers
YAML
  "$target/kvroute" serve --config "$out/kvroute.yaml" --policy "$policy" >"$out/kvroute.log" 2>&1 &
  pids+=($!)
  "$envoy_bin" -c "$run_dir/envoy.yaml" --log-level warn --use-dynamic-base-id >"$out/envoy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 150); do
    curl -fs -o /dev/null http://127.0.0.1:10711/v1/models && break
    sleep 0.2
  done
  sleep 2
  "$target/kvroute-bench" run --target "$policy=http://127.0.0.1:10711" \
    --engines "$policy=$engines" --model bench-model --api chat --workload shared-prefix \
    --groups "${GROUPS_N:-16}" --prompts-per-group "${PROMPTS:-8}" \
    --system-tokens "${SYSTEM:-2048}" --output-tokens "${OUTPUT:-64}" \
    --concurrency "${CONC:-16}" --flush --timeout 120 --report "$out/report.json" |
    tee "$out/summary.txt"
  stop_all
}

for policy in "${@:-cache_aware precise_prefix}"; do
  for p in $policy; do run_policy "$p"; done
done
