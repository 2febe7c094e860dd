#!/usr/bin/env bash
# `make bench-routing`: routing quality of round robin (plain Envoy), kvroute `cache_aware` and
# kvroute `scorer`, each through a real Envoy, against simulated vLLM engines whose KV caches
# are small enough that eviction matters. Runs every scenario with the targets one after
# another on the same engines, caches flushed before each target (`--flush`), and writes the
# reports (JSON, SVG, summary text) under ./.run/bench-routing/.
#
# Everything it starts is stopped on exit, error or Ctrl-C. Knobs (environment):
#   BENCH_SCALE (0.05)        share of the workloads' groups (gie: 256 groups x 16 prompts)
#   BENCH_MT_SCALE (0.5)      the same for multi-turn (16 groups x 4 conversations x 4 turns)
#   BENCH_CONCURRENCY (16)    sessions in flight
#   BENCH_KV_BLOCKS (1280)    KV blocks of 16 tokens per engine
#   BENCH_OUTPUT (64)         output tokens per request
#   BENCH_PREFILL_US (20)     engine prefill cost per uncached token, microseconds
#   BENCH_PROMPTS             prompts per group (default: the workload's, 16)
#   BENCH_RATE                open loop: Poisson arrivals of this many requests/s (sessions
#                             in flight capped at BENCH_CONCURRENCY); default closed loop
#   BENCH_SCENARIOS           space-separated subset of: high-uniform high-zipf low-uniform multi-turn
#   BENCH_POLICIES            ';'-separated kvroute policies (default: cache_aware;scorer); an
#                             entry LABEL={name: scorer, ...} runs a tuned variant as LABEL
#   KVROUTE_ENVOY             Envoy binary (default ./.venv/bin/envoy)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir="$root/.run/bench-routing"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"

MODEL=bench-model
ENGINE_PORTS=(28001 28002 28003 28004)
RR_PORT=28100
RR_ADMIN=28190
# kvroute targets: listener 281NN, Envoy admin 281NN+90, kvroute gRPC 282NN, admin 283NN.
scale=${BENCH_SCALE:-0.05}
mt_scale=${BENCH_MT_SCALE:-0.5}
concurrency=${BENCH_CONCURRENCY:-16}
kv_blocks=${BENCH_KV_BLOCKS:-1280}
output_tokens=${BENCH_OUTPUT:-64}
prefill_us=${BENCH_PREFILL_US:-20}
extra=()
[ -z "${BENCH_PROMPTS:-}" ] || extra+=(--prompts-per-group "$BENCH_PROMPTS")
[ -z "${BENCH_RATE:-}" ] || extra+=(--rate "$BENCH_RATE")
read -r -a scenarios <<<"${BENCH_SCENARIOS:-high-uniform high-zipf low-uniform multi-turn}"
IFS=';' read -r -a policies <<<"${BENCH_POLICIES:-cache_aware;scorer}"
# A policy entry: LABEL=FLOW-YAML or a bare policy name.
policy_label() { if [[ $1 == *=* ]]; then echo "${1%%=*}"; else echo "$1"; fi; }
policy_yaml() { if [[ $1 == *=* ]]; then echo "${1#*=}"; else echo "{name: $1}"; fi; }

log_prefix=bench-routing
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# Renders the shipped envoy/envoy.yaml onto our ports (`kvroute-bench envoy-config`). With a
# fourth argument, only a plain round-robin listener derived from the same file serves there
# (the kvroute listener is bound to an ephemeral port and unused).
render_envoy() {
  local admin=$1 listen=$2 grpc=$3 plain=${4:-}
  local args=(envoy-config --template envoy/envoy.yaml --admin "127.0.0.1:$admin"
    --listen "127.0.0.1:$listen" --kvroute "127.0.0.1:$grpc")
  local port
  for port in "${ENGINE_PORTS[@]}"; do args+=(--engine "127.0.0.1:$port"); done
  [ -z "$plain" ] || args+=(--plain-listen "127.0.0.1:$plain")
  "$bench" "${args[@]}"
}

[ -x "$envoy_bin" ] || die "Envoy not found at $envoy_bin (run scripts/setup-envoy.sh)"
command -v curl >/dev/null || die "curl is required"
mkdir -p "$run_dir/bin"

log "building release binaries ..."
cargo build --release --quiet -p kvroute -p kvroute-sim -p kvroute-bench
for b in kvroute kvroute-sim kvroute-bench; do cp "$target_dir/release/$b" "$run_dir/bin/"; done
kvroute="$run_dir/bin/kvroute"
sim="$run_dir/bin/kvroute-sim"
bench="$run_dir/bin/kvroute-bench"

all_ports=("${ENGINE_PORTS[@]}" "$RR_PORT" "$RR_ADMIN")
for i in "${!policies[@]}"; do
  all_ports+=($((28101 + i)) $((28191 + i)) $((28201 + i)) $((28301 + i)))
done
for port in "${all_ports[@]}"; do
  port_in_use "$port" && die "port $port is already in use (another run still going?)"
done

# Engines: a miss on a 2048-token prompt costs ~44 ms to the first token, a hit ~4 ms plus the
# question; 2 ms per output token; 1280 blocks of 16 tokens hold about 8 system prompts of 2048
# tokens, so round robin (every group on every engine) evicts while per-group routing fits.
engine_urls=()
for i in "${!ENGINE_PORTS[@]}"; do
  port=${ENGINE_PORTS[$i]}
  start "$run_dir/engine-$((i + 1)).log" "$sim" --port "$port" --engine vllm --model "$MODEL" \
    --id "engine-$((i + 1))" --block-size 16 --kv-blocks "$kv_blocks" --chars-per-token 4 \
    --prefill-overhead-ms 3 --prefill-us-per-token "$prefill_us" --decode-us-per-token 2000 \
    --max-running 64 --serial-prefill --time-scale 1
  engine_urls+=("http://127.0.0.1:$port")
done
for i in "${!ENGINE_PORTS[@]}"; do
  wait_http "${engine_urls[$i]}/health" "${pids[$i]}" "engine $((i + 1))"
done
engines_csv=$(IFS=,; echo "${engine_urls[*]}")
log "${#ENGINE_PORTS[@]} engines up (kv blocks $kv_blocks each)"

targets=("round_robin=http://127.0.0.1:$RR_PORT")
render_envoy "$RR_ADMIN" 0 9 "$RR_PORT" >"$run_dir/envoy-round_robin.yaml"
start "$run_dir/envoy-round_robin.log" "$envoy_bin" -c "$run_dir/envoy-round_robin.yaml" \
  --log-level warn --use-dynamic-base-id
wait_http "http://127.0.0.1:$RR_ADMIN/ready" "${pids[-1]}" "Envoy (round robin)"

for i in "${!policies[@]}"; do
  policy=$(policy_label "${policies[$i]}")
  listen=$((28101 + i)) admin=$((28191 + i)) grpc=$((28201 + i)) kv_admin=$((28301 + i))
  cfg="$run_dir/kvroute-$policy.yaml"
  {
    echo "grpc_addr: 127.0.0.1:$grpc"
    echo "admin_addr: 127.0.0.1:$kv_admin"
    echo "health_addr: 127.0.0.1:0"
    echo "metrics_addr: 127.0.0.1:0"
    echo "router:"
    echo "  max_endpoints: 3"
    echo "  policy: $(policy_yaml "${policies[$i]}")"
    echo "health: {interval_ms: 500}"
    echo "workers:"
    for port in "${ENGINE_PORTS[@]}"; do
      echo "  - {address: 127.0.0.1:$port, engine: vllm, models: [$MODEL]}"
    done
  } >"$cfg"
  start "$run_dir/kvroute-$policy.log" "$kvroute" serve --config "$cfg"
  wait_http "http://127.0.0.1:$kv_admin/workers" "${pids[-1]}" "kvroute ($policy)"
  render_envoy "$admin" "$listen" "$grpc" >"$run_dir/envoy-$policy.yaml"
  start "$run_dir/envoy-$policy.log" "$envoy_bin" -c "$run_dir/envoy-$policy.yaml" \
    --log-level warn --use-dynamic-base-id
  wait_http "http://127.0.0.1:$admin/ready" "${pids[-1]}" "Envoy ($policy)"
  targets+=("$policy=http://127.0.0.1:$listen")
done
for t in "${targets[@]}"; do
  url=${t#*=}
  for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 2 "$url/v1/models" 2>/dev/null && break
    sleep 0.2
  done
done
log "targets: ${targets[*]}"

bench_args=()
for t in "${targets[@]}"; do
  bench_args+=(--target "$t" --engines "${t%%=*}=$engines_csv")
done

for scenario in "${scenarios[@]}"; do
  case $scenario in
    high-uniform) shape=(--workload gie-high-cache) ;;
    high-zipf) shape=(--workload gie-high-cache --zipf 1.1) ;;
    low-uniform) shape=(--workload gie-low-cache) ;;
    # 16 groups x 4 conversations x 4 turns at scale 1: scaled separately.
    multi-turn) shape=(--workload multi-turn) ;;
    *) die "unknown scenario $scenario" ;;
  esac
  s=$scale
  [ "$scenario" != multi-turn ] || s=$mt_scale
  log "scenario $scenario: ${shape[*]} --scale $s --concurrency $concurrency"
  "$bench" run "${bench_args[@]}" --model "$MODEL" --api chat "${shape[@]}" \
    --scale "$s" --output-tokens "$output_tokens" --concurrency "$concurrency" "${extra[@]}" \
    --flush --timeout 120 --quiet \
    --report "$run_dir/$scenario.json" --plot "$run_dir/$scenario.svg" \
    | tee "$run_dir/$scenario.txt"
done
log "reports: $run_dir/"
