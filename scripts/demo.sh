#!/usr/bin/env bash
# `make demo`: kvroute (cache_aware) against plain round robin, both behind one real Envoy,
# driven by a shared-prefix workload; prints TTFT, hit rates, the oracle hit rate (what perfect
# routing would reach) and a short explanation.
#
# Layout: 8 simulated vLLM engines, 4 per target with identical settings (separate caches).
# Envoy runs the shipped envoy/envoy.yaml, rendered for the demo ports by `kvroute-bench
# envoy-config`, which also derives a plain round-robin listener from it: the kvroute listener
# is the shipped one, not a copy. The benchmark interleaves chunks of the workload between the
# two targets, so the noise of a shared machine hits both alike.
#
# Everything it starts is stopped on exit, error or Ctrl-C. Run files (logs, Envoy config, JSON
# report, SVG plot) go to ./.run/demo/. Knobs (environment): DEMO_GROUPS, DEMO_PROMPTS,
# DEMO_SYSTEM, DEMO_OUTPUT, DEMO_CONCURRENCY, DEMO_KV_BLOCKS, KVROUTE_ENVOY, KVROUTE_BIN_DIR (use these
# prebuilt release binaries instead of building).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir="$root/.run/demo"
log_prefix=demo
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"
KVROUTE_ENGINE_PORTS=(18001 18002 18003 18004)
RR_ENGINE_PORTS=(18005 18006 18007 18008)
MODEL=demo-model
GRPC_PORT=19002
KVROUTE_HEALTH_PORT=19003
KVROUTE_METRICS_PORT=19090
KVROUTE_ADMIN_PORT=19004
ENVOY_ADMIN_PORT=19901
RR_PORT=10100
KVROUTE_PORT=10101

groups=${DEMO_GROUPS:-16}
prompts=${DEMO_PROMPTS:-8}
system_tokens=${DEMO_SYSTEM:-2048}
output_tokens=${DEMO_OUTPUT:-128}
concurrency=${DEMO_CONCURRENCY:-8}
kv_blocks=${DEMO_KV_BLOCKS:-1024}

[ -x "$envoy_bin" ] || die "Envoy not found at $envoy_bin (run scripts/setup-envoy.sh)"
command -v curl >/dev/null || die "curl is required"
mkdir -p "$run_dir"
check_ports_free "${KVROUTE_ENGINE_PORTS[@]}" "${RR_ENGINE_PORTS[@]}" "$GRPC_PORT" \
  "$KVROUTE_HEALTH_PORT" "$KVROUTE_METRICS_PORT" "$KVROUTE_ADMIN_PORT" "$ENVOY_ADMIN_PORT" "$RR_PORT" "$KVROUTE_PORT"

if [ -n "${KVROUTE_BIN_DIR:-}" ]; then
  bin_dir=$KVROUTE_BIN_DIR
else
  log "building release binaries ..."
  cargo build --release --quiet -p kvroute -p kvroute-sim -p kvroute-bench
  bin_dir="$target_dir/release"
fi
sim="$bin_dir/kvroute-sim"
kvroute="$bin_dir/kvroute"
bench="$bin_dir/kvroute-bench"

# Simulated engine costs: a cache miss on a 2048-token system prompt costs ~45 ms to the first
# token, a hit ~6 ms; decoding 1 ms per token. Each engine's KV cache (DEMO_KV_BLOCKS blocks of
# 16 tokens; default 1024) holds about 7 of the 16 system prompts: all 16 do not fit on one
# engine, a quarter of them do.
engine_flags=(--block-size 16 --kv-blocks "$kv_blocks" --chars-per-token 4 --prefill-overhead-ms 3
  --prefill-us-per-token 20 --decode-us-per-token 1000 --max-running 64 --time-scale 1)
all_ports=("${KVROUTE_ENGINE_PORTS[@]}" "${RR_ENGINE_PORTS[@]}")
for i in "${!all_ports[@]}"; do
  start_engine "$run_dir/engine-$((i + 1)).log" "${all_ports[$i]}" "engine-$((i + 1))" \
    "${engine_flags[@]}"
done
for i in "${!all_ports[@]}"; do
  wait_http "http://127.0.0.1:${all_ports[$i]}/health" "${pids[$i]}" "engine $((i + 1))"
done
log "${#all_ports[@]} simulated vLLM engines up: ${KVROUTE_ENGINE_PORTS[*]} for kvroute, \
${RR_ENGINE_PORTS[*]} for round robin"

kv_urls=() rr_urls=() worker_flags=() envoy_flags=()
for p in "${KVROUTE_ENGINE_PORTS[@]}"; do
  kv_urls+=("http://127.0.0.1:$p")
  worker_flags+=(--worker "127.0.0.1:$p")
  envoy_flags+=(--engine "127.0.0.1:$p")
done
for p in "${RR_ENGINE_PORTS[@]}"; do
  rr_urls+=("http://127.0.0.1:$p")
  envoy_flags+=(--plain-engine "127.0.0.1:$p")
done

start "$run_dir/kvroute.log" "$kvroute" serve --policy cache_aware "${worker_flags[@]}" \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --health-addr "127.0.0.1:$KVROUTE_HEALTH_PORT" \
  --metrics-addr "127.0.0.1:$KVROUTE_METRICS_PORT" --admin-addr "127.0.0.1:$KVROUTE_ADMIN_PORT" \
  --max-endpoints 3
kvroute_pid=${pids[-1]}
wait_http "http://127.0.0.1:$KVROUTE_ADMIN_PORT/readyz" "$kvroute_pid" "kvroute"
log "kvroute up (cache_aware; gRPC :$GRPC_PORT, health :$KVROUTE_HEALTH_PORT, metrics \
:$KVROUTE_METRICS_PORT, admin :$KVROUTE_ADMIN_PORT)"

"$bench" envoy-config --template envoy/envoy.yaml --admin "127.0.0.1:$ENVOY_ADMIN_PORT" \
  --listen "127.0.0.1:$KVROUTE_PORT" --kvroute "127.0.0.1:$GRPC_PORT" \
  --plain-listen "127.0.0.1:$RR_PORT" "${envoy_flags[@]}" --output "$run_dir/envoy.yaml"
start "$run_dir/envoy.log" "$envoy_bin" -c "$run_dir/envoy.yaml" --concurrency 2 \
  --log-level warn --use-dynamic-base-id
envoy_pid=${pids[-1]}
wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" "$envoy_pid" "Envoy"
wait_envoy_sees_kvroute "$ENVOY_ADMIN_PORT" "$envoy_pid" "127.0.0.1:$GRPC_PORT"
wait_http "http://127.0.0.1:$RR_PORT/v1/models" "$envoy_pid" "round-robin listener"
wait_http "http://127.0.0.1:$KVROUTE_PORT/v1/models" "$envoy_pid" "kvroute listener"
log "Envoy up: round robin :$RR_PORT, envoy/envoy.yaml with kvroute :$KVROUTE_PORT"

log "running $((groups * prompts)) requests per target ($groups groups x $prompts prompts, \
system $system_tokens tokens, concurrency $concurrency), interleaved ..."
rr_csv=$(IFS=,; echo "${rr_urls[*]}")
kv_csv=$(IFS=,; echo "${kv_urls[*]}")
"$bench" run --model "$MODEL" --api chat \
  --target "round-robin=http://127.0.0.1:$RR_PORT" --engines "round-robin=$rr_csv" \
  --target "kvroute=http://127.0.0.1:$KVROUTE_PORT" --engines "kvroute=$kv_csv" \
  --workload shared-prefix --groups "$groups" --prompts-per-group "$prompts" \
  --system-tokens "$system_tokens" --output-tokens "$output_tokens" \
  --concurrency "$concurrency" --timeout 120 --explain \
  --report "$run_dir/report.json" --plot "$run_dir/plot.svg" | tee "$run_dir/summary.txt"
cat <<TEXT | tee -a "$run_dir/summary.txt"
- why: round robin sends every group (same system prompt) to all 4 engines: each engine must
  cache all 16 system prompts, which do not fit, so they evict each other. kvroute's
  cache_aware policy sends a group to the engine that already holds its prefix (unless that
  engine is overloaded): each engine caches about a quarter of the prompts, which fit.
TEXT
log "report: .run/demo/report.json, plot: .run/demo/plot.svg, logs: .run/demo/"
