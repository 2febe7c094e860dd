#!/usr/bin/env bash
# `make bench-real`: the routing cross-check on real engines. Two llama.cpp servers on CPU
# (SmolLM2-135M, one thread each; installed by scripts/setup-llama.sh on first use), behind a
# plain round-robin Envoy and behind the shipped Envoy config + kvroute for each policy. The
# same shared-prefix workload (a few long system prompts, short questions, sessions shuffled)
# runs through each target in turn, one request at a time, and reports real TTFTs.
#
# A llama.cpp server keeps only its last prompt's KV cache: a request hits when it lands on a
# server whose previous request had the same system prompt. Before each target, every server
# gets an unrelated prompt, so no target inherits the previous one's cache.
#
# Everything it starts is stopped on exit, error or Ctrl-C. Knobs (environment):
#   REAL_GROUPS (2), REAL_PROMPTS (8 per group), REAL_SYSTEM_TOKENS (300),
#   REAL_QUESTION_TOKENS (12), REAL_OUTPUT (4 tokens), REAL_POLICIES (cache_aware;scorer)
# Reports (JSON, SVG, summary text) go to ./.run/bench-real/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir="$root/.run/bench-real"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"
log_prefix=bench-real
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

MODEL=smollm2
ENGINE_PORTS=(29001 29002)
RR_PORT=29100
RR_ADMIN=29190
groups=${REAL_GROUPS:-2}
prompts=${REAL_PROMPTS:-8}
system_tokens=${REAL_SYSTEM_TOKENS:-300}
question_tokens=${REAL_QUESTION_TOKENS:-12}
output_tokens=${REAL_OUTPUT:-4}
IFS=';' read -r -a policies <<<"${REAL_POLICIES:-cache_aware;scorer}"

[ -x "$envoy_bin" ] || die "Envoy not found at $envoy_bin (run scripts/setup-envoy.sh)"
command -v curl >/dev/null || die "curl is required"
model_file=$(scripts/setup-llama.sh)
mkdir -p "$run_dir/bin"
ports=("${ENGINE_PORTS[@]}" "$RR_PORT" "$RR_ADMIN")
for i in "${!policies[@]}"; do
  ports+=($((29101 + i)) $((29191 + i)) $((29201 + i)) $((29301 + i)))
done
check_ports_free "${ports[@]}"

log "building release binaries ..."
cargo build --release --quiet -p kvroute -p kvroute-bench
for b in kvroute kvroute-bench; do cp "$target_dir/release/$b" "$run_dir/bin/"; done
kvroute="$run_dir/bin/kvroute"
bench="$run_dir/bin/kvroute-bench"

engine_urls=()
for i in "${!ENGINE_PORTS[@]}"; do
  port=${ENGINE_PORTS[$i]}
  start "$run_dir/llama-$((i + 1)).log" "$root/.venv-llama/bin/python" -m llama_cpp.server \
    --model "$model_file" --model_alias "$MODEL" --host 127.0.0.1 --port "$port" \
    --n_ctx 4096 --n_threads 1 --n_threads_batch 1 --cache false --interrupt_requests false
  engine_urls+=("http://127.0.0.1:$port")
done
for i in "${!ENGINE_PORTS[@]}"; do
  wait_http "${engine_urls[$i]}/v1/models" "${pids[$i]}" "llama.cpp server $((i + 1))"
done
log "${#ENGINE_PORTS[@]} llama.cpp servers up ($(basename "$model_file"))"

# Renders the shipped envoy/envoy.yaml onto our ports; with a fourth argument only a plain
# round-robin listener derived from it serves there.
render_envoy() {
  local admin=$1 listen=$2 grpc=$3 plain=${4:-}
  local args=(envoy-config --template envoy/envoy.yaml --admin "127.0.0.1:$admin"
    --listen "127.0.0.1:$listen" --kvroute "127.0.0.1:$grpc")
  local port
  for port in "${ENGINE_PORTS[@]}"; do args+=(--engine "127.0.0.1:$port"); done
  [ -z "$plain" ] || args+=(--plain-listen "127.0.0.1:$plain")
  "$bench" "${args[@]}"
}

targets=("round_robin=http://127.0.0.1:$RR_PORT")
render_envoy "$RR_ADMIN" 0 9 "$RR_PORT" >"$run_dir/envoy-round_robin.yaml"
start "$run_dir/envoy-round_robin.log" "$envoy_bin" -c "$run_dir/envoy-round_robin.yaml" \
  --log-level warn --use-dynamic-base-id
wait_http "http://127.0.0.1:$RR_ADMIN/ready" "${pids[-1]}" "Envoy (round robin)"

for i in "${!policies[@]}"; do
  policy=${policies[$i]}
  listen=$((29101 + i)) admin=$((29191 + i)) grpc=$((29201 + i)) kv_admin=$((29301 + i))
  cfg="$run_dir/kvroute-$policy.yaml"
  {
    echo "grpc_addr: 127.0.0.1:$grpc"
    echo "admin_addr: 127.0.0.1:$kv_admin"
    echo "health_addr: 127.0.0.1:0"
    echo "metrics_addr: 127.0.0.1:0"
    echo "router:"
    echo "  max_endpoints: 3"
    echo "  policy: {name: $policy}"
    # The llama.cpp server answers /v1/models only between requests (a cold 300-token
    # prefill takes seconds): a probe timeout shorter than a request would eject busy servers.
    echo "health: {interval_ms: 2000, timeout_ms: 30000}"
    echo "workers:"
    for port in "${ENGINE_PORTS[@]}"; do
      # No /health and no /metrics: engine kind `other`, probed on /v1/models.
      echo "  - {address: 127.0.0.1:$port, engine: other, models: [$MODEL], health_path: /v1/models}"
    done
  } >"$cfg"
  start "$run_dir/kvroute-$policy.log" "$kvroute" serve --config "$cfg"
  wait_http "http://127.0.0.1:$kv_admin/readyz" "${pids[-1]}" "kvroute ($policy)"
  render_envoy "$admin" "$listen" "$grpc" >"$run_dir/envoy-$policy.yaml"
  start "$run_dir/envoy-$policy.log" "$envoy_bin" -c "$run_dir/envoy-$policy.yaml" \
    --log-level warn --use-dynamic-base-id
  wait_http "http://127.0.0.1:$admin/ready" "${pids[-1]}" "Envoy ($policy)"
  wait_envoy_sees_kvroute "$admin" "${pids[-1]}" "127.0.0.1:$grpc"
  targets+=("$policy=http://127.0.0.1:$listen")
done

: >"$run_dir/summary.txt"
for t in "${targets[@]}"; do
  name=${t%%=*}
  log "resetting the servers' caches, then $name"
  for url in "${engine_urls[@]}"; do
    curl -fsS -o /dev/null --max-time 120 "$url/v1/completions" -H 'content-type: application/json' \
      -d "{\"model\": \"$MODEL\", \"prompt\": \"Unrelated warm-up text $RANDOM.\", \"max_tokens\": 1}"
  done
  "$bench" run --target "$t" --model "$MODEL" --api chat --workload shared-prefix \
    --groups "$groups" --prompts-per-group "$prompts" --system-tokens "$system_tokens" \
    --question-tokens "$question_tokens" --output-tokens "$output_tokens" --concurrency 1 \
    --timeout 300 --report "$run_dir/$name.json" --plot "$run_dir/$name.svg" \
    | tee -a "$run_dir/summary.txt"
done
log "reports: $run_dir/ (summary.txt, <target>.json, <target>.svg)"
