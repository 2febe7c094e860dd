#!/usr/bin/env bash
# `make demo`: four simulated vLLM engines behind a real Envoy, driven by a shared-prefix
# workload; prints TTFT, hit rates and the oracle hit rate (what perfect routing would reach).
#
# Everything it starts is stopped on exit, error or Ctrl-C. Run files (logs, JSON report,
# SVG plot) go to ./.run/demo/. Knobs (environment): DEMO_GROUPS, DEMO_PROMPTS, DEMO_SYSTEM,
# DEMO_OUTPUT, DEMO_CONCURRENCY, KVROUTE_ENVOY.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir="$root/.run/demo"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"

# Engines: fixed ports, all behind every target (so targets run one after another, with the
# engines' caches flushed before each: `--flush`).
ENGINE_PORTS=(18001 18002 18003 18004)
MODEL=demo-model
ENVOY_CONFIG="$root/envoy/demo-roundrobin.yaml"
ENVOY_ADMIN_PORT=19901
# Targets as NAME=URL. A second one (Envoy + kvroute) is one more line here plus its
# listener in the Envoy config (and whatever process it needs, started like the engines).
TARGETS=(
  "envoy-roundrobin=http://127.0.0.1:10100"
)

groups=${DEMO_GROUPS:-16}
prompts=${DEMO_PROMPTS:-8}
system_tokens=${DEMO_SYSTEM:-2048}
output_tokens=${DEMO_OUTPUT:-128}
concurrency=${DEMO_CONCURRENCY:-8}

log() { printf 'demo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
    # Each child leads its own process group (setsid): stop the group, launchers included.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  [ ${#pids[@]} -eq 0 ] || log "stopped ${#pids[@]} processes"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in its own process group with output to the log file $1; records its pid.
start() {
  local logfile=$1
  shift
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  pids+=("$!")
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until curl gets a success from URL, while the process with pid $2 is alive.
wait_http() {
  local url=$1 pid=$2 what=$3
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || die "$what exited; see its log in $run_dir"
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$what not ready after 30 s ($url)"
}

[ -x "$envoy_bin" ] || die "Envoy not found at $envoy_bin (run scripts/setup-envoy.sh)"
command -v curl >/dev/null || die "curl is required"
mkdir -p "$run_dir"

log "building release binaries ..."
cargo build --release --quiet -p kvroute-sim -p kvroute-bench
sim="$target_dir/release/kvroute-sim"
bench="$target_dir/release/kvroute-bench"

listen_ports=()
for t in "${TARGETS[@]}"; do
  url=${t#*=}
  hostport=${url#*://}
  listen_ports+=("${hostport##*:}")
done
for port in "${ENGINE_PORTS[@]}" "$ENVOY_ADMIN_PORT" "${listen_ports[@]}"; do
  port_in_use "$port" && die "port $port is already in use (another demo still running?)"
done

# Simulated engine costs: a cache miss on a 2048-token system prompt costs ~45 ms to the first
# token, a hit ~6 ms; decoding 1 ms per token. The cache holds the whole workload.
engine_urls=()
for i in "${!ENGINE_PORTS[@]}"; do
  port=${ENGINE_PORTS[$i]}
  start "$run_dir/engine-$((i + 1)).log" "$sim" --port "$port" --engine vllm --model "$MODEL" \
    --id "engine-$((i + 1))" --block-size 16 --kv-blocks 32768 --chars-per-token 4 \
    --prefill-overhead-ms 3 --prefill-us-per-token 20 --decode-us-per-token 1000 \
    --max-running 64 --time-scale 1
  engine_urls+=("http://127.0.0.1:$port")
done
for i in "${!ENGINE_PORTS[@]}"; do
  wait_http "${engine_urls[$i]}/health" "${pids[$i]}" "engine $((i + 1))"
done
log "${#ENGINE_PORTS[@]} simulated vLLM engines up on ports ${ENGINE_PORTS[*]}"

start "$run_dir/envoy.log" "$envoy_bin" -c "$ENVOY_CONFIG" --log-level warn --use-dynamic-base-id
envoy_pid=${pids[-1]}
wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" "$envoy_pid" "Envoy"
for t in "${TARGETS[@]}"; do
  wait_http "${t#*=}/v1/models" "$envoy_pid" "target ${t%%=*}"
done
log "Envoy up ($(basename "$ENVOY_CONFIG")); targets: ${TARGETS[*]}"

bench_args=()
engines_csv=$(IFS=,; echo "${engine_urls[*]}")
for t in "${TARGETS[@]}"; do
  bench_args+=(--target "$t" --engines "${t%%=*}=$engines_csv")
done
log "running $((groups * prompts)) requests per target ($groups groups x $prompts prompts, \
system $system_tokens tokens, concurrency $concurrency) ..."
"$bench" run "${bench_args[@]}" --model "$MODEL" --api chat \
  --workload shared-prefix --groups "$groups" --prompts-per-group "$prompts" \
  --system-tokens "$system_tokens" --output-tokens "$output_tokens" \
  --concurrency "$concurrency" --flush --timeout 120 \
  --report "$run_dir/report.json" --plot "$run_dir/plot.svg" | tee "$run_dir/summary.txt"
log "report: $run_dir/report.json, plot: $run_dir/plot.svg, logs: $run_dir/"
