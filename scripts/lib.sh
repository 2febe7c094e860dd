# Shared helpers of scripts/demo.sh and scripts/bench-overhead.sh (sourced, not run).
#
# The caller sets `run_dir` and `log_prefix`. Every process started with `start` leads its own
# process group and is stopped, with its children, on exit, error or Ctrl-C.

log() { printf '%s: %s\n' "$log_prefix" "$*" >&2; }
die() { log "error: $*"; exit 1; }

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do
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

# Dies if any of the given ports is taken.
check_ports_free() {
  local port
  for port in "$@"; do
    port_in_use "$port" && die "port $port is already in use (another run still going?)"
  done
  return 0
}

# Waits until curl gets a success from URL $1, while the process with pid $2 is alive.
wait_http() {
  local url=$1 pid=$2 what=$3
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || die "$what exited; see its log in $run_dir"
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$what not ready after 30 s ($url)"
}

# Waits until Envoy (admin port $1, pid $2) health-checks kvroute (gRPC address $3) healthy:
# before that, ext_proc fails open and requests bypass kvroute.
wait_envoy_sees_kvroute() {
  local admin=$1 pid=$2 grpc=$3
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || die "Envoy exited; see its log in $run_dir"
    if curl -fsS --max-time 1 "http://127.0.0.1:$admin/clusters" 2>/dev/null |
      grep -q "^kvroute::$grpc::health_flags::healthy$"; then
      return 0
    fi
    sleep 0.1
  done
  die "Envoy does not see kvroute healthy after 30 s"
}

# Starts a simulated vLLM engine: start_engine LOGFILE PORT ID [extra kvroute-sim flags].
start_engine() {
  local logfile=$1 port=$2 id=$3
  shift 3
  start "$logfile" "$sim" --port "$port" --engine vllm --model "$MODEL" --id "$id" "$@"
}
