#!/usr/bin/env bash
# `make bench-overhead`: the latency and throughput Envoy + kvroute adds over Envoy alone.
#
# One Envoy (--concurrency 2) with two listeners over the SAME four simulated engines (zero
# simulated costs): the shipped envoy/envoy.yaml listener (ext_proc -> kvroute, cache_aware)
# and a plain round-robin listener derived from it (`kvroute-bench envoy-config`). Then
# `kvroute-bench overhead` alternates small batches between the two, per prompt size and
# concurrency, and reports p50/p99, the differences, requests/s, the CPU time per request of
# Envoy and kvroute, and their RSS.
#
# Everything it starts is stopped on exit, error or Ctrl-C. Run files go to ./.run/overhead/.
# Knobs (environment): OVERHEAD_SIZES (bytes, default 1024,225280), OVERHEAD_CONCURRENCY
# (1,64,150), OVERHEAD_REQUESTS (per target and cell, 3000), KVROUTE_ENVOY, KVROUTE_BIN_DIR
# (use these prebuilt release binaries instead of building), OVERHEAD_ENVOY_TEMPLATE (the Envoy
# config whose listener is measured, default envoy/envoy.yaml).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir="$root/.run/overhead"
log_prefix=bench-overhead
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_bin="${KVROUTE_ENVOY:-$root/.venv/bin/envoy}"
ENGINE_PORTS=(18101 18102 18103 18104)
MODEL=overhead-model
GRPC_PORT=19102
KVROUTE_ADMIN_PORT=19103
ENVOY_ADMIN_PORT=19911
PLAIN_PORT=10110
KVROUTE_PORT=10111
sizes=${OVERHEAD_SIZES:-1024,225280}
concurrency=${OVERHEAD_CONCURRENCY:-1,64,150}
requests=${OVERHEAD_REQUESTS:-3000}
template=${OVERHEAD_ENVOY_TEMPLATE:-envoy/envoy.yaml}

[ -x "$envoy_bin" ] || die "Envoy not found at $envoy_bin (run scripts/setup-envoy.sh)"
command -v curl >/dev/null || die "curl is required"
mkdir -p "$run_dir"
check_ports_free "${ENGINE_PORTS[@]}" "$GRPC_PORT" "$KVROUTE_ADMIN_PORT" "$ENVOY_ADMIN_PORT" \
  "$PLAIN_PORT" "$KVROUTE_PORT"

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

# Engines answer at once (--time-scale 0) and hold 220 KiB prompts (context, KV blocks).
engine_addrs=()
for i in "${!ENGINE_PORTS[@]}"; do
  port=${ENGINE_PORTS[$i]}
  start_engine "$run_dir/engine-$((i + 1)).log" "$port" "engine-$((i + 1))" \
    --time-scale 0 --context-length 1000000 --kv-blocks 1000000 --max-running 1024
  engine_addrs+=("127.0.0.1:$port")
done
for i in "${!ENGINE_PORTS[@]}"; do
  wait_http "http://${engine_addrs[$i]}/health" "${pids[$i]}" "engine $((i + 1))"
done

worker_flags=()
engine_flags=()
for a in "${engine_addrs[@]}"; do
  worker_flags+=(--worker "$a")
  engine_flags+=(--engine "$a")
done
start "$run_dir/kvroute.log" "$kvroute" serve --policy cache_aware "${worker_flags[@]}" \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --admin-addr "127.0.0.1:$KVROUTE_ADMIN_PORT" \
  --health-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --max-endpoints 3
kvroute_pid=${pids[-1]}
wait_http "http://127.0.0.1:$KVROUTE_ADMIN_PORT/readyz" "$kvroute_pid" "kvroute"

"$bench" envoy-config --template "$template" --admin "127.0.0.1:$ENVOY_ADMIN_PORT" \
  --listen "127.0.0.1:$KVROUTE_PORT" --kvroute "127.0.0.1:$GRPC_PORT" "${engine_flags[@]}" \
  --plain-listen "127.0.0.1:$PLAIN_PORT" --output "$run_dir/envoy.yaml"
start "$run_dir/envoy.log" "$envoy_bin" -c "$run_dir/envoy.yaml" --concurrency 2 \
  --log-level warn --use-dynamic-base-id
envoy_pid=${pids[-1]}
wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" "$envoy_pid" "Envoy"
wait_envoy_sees_kvroute "$ENVOY_ADMIN_PORT" "$envoy_pid" "127.0.0.1:$GRPC_PORT"
log "4 engines, kvroute (cache_aware), Envoy: plain :$PLAIN_PORT, with kvroute :$KVROUTE_PORT"

"$bench" overhead --model "$MODEL" \
  --target "envoy=http://127.0.0.1:$PLAIN_PORT" \
  --target "envoy+kvroute=http://127.0.0.1:$KVROUTE_PORT" \
  --prompt-bytes "$sizes" --concurrency "$concurrency" --requests "$requests" \
  --metrics "kvroute=http://127.0.0.1:$KVROUTE_ADMIN_PORT/metrics" \
  --watch-pid "kvroute=$kvroute_pid" --watch-pid "envoy=$envoy_pid" \
  --report "$run_dir/report.json" | tee "$run_dir/summary.txt"

# Fail-open would hide kvroute: show how many requests Envoy let through without it.
curl -fsS "http://127.0.0.1:$ENVOY_ADMIN_PORT/stats" |
  grep -E '^http\.gateway\.ext_proc\.(failure_mode_allowed|message_timeouts|streams_failed):' |
  tee -a "$run_dir/summary.txt" || true
log "report: .run/overhead/report.json, logs: .run/overhead/"
