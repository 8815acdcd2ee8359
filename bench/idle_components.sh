#!/usr/bin/env bash
# 100 idle components supervised by the full agent (`outpost run`: broker,
# pipeline, telemetry and supervisor), not the supervisor alone.
#   bench/idle_components.sh            # N=100 SETTLE=10 WINDOW=30 MEMORY_LIMIT=64MiB
# Each component is examples/components/hello-go (static Go, paho.golang):
# its own process, cgroup (32 MiB, 0.25 CPU, 32 pids) and generated MQTT
# credentials on the agent's unix listener, a heartbeat every 10 s that the
# recipe's MQTT health check watches. After all are healthy and SETTLE
# seconds have passed, the agent's RSS and CPU (utime+stime from
# /proc/PID/stat) are read over WINDOW seconds. Targets: agent RSS <= 30 MB,
# <= 1% of one core.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100}
SETTLE=${SETTLE:-10}
MEMORY_LIMIT=${MEMORY_LIMIT:-64MiB} # the agent's runtime.memory_limit (Go soft limit)
WINDOW=${WINDOW:-30}
. bench/lib.sh
bench_lock
work=$(mktemp -d)
AGENT=
cleanup() {
  if [ -n "$AGENT" ]; then kill -TERM "$AGENT" 2>/dev/null || true; wait "$AGENT" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
scripts/build.sh linux/amd64 >/dev/null
BIN=dist/outpost-linux-amd64
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/hello-go" ./examples/components/hello-go
HTTP=$(port); MQTT=$(port)
mkdir -p "$work/recipes"
for i in $(seq -f '%03g' 0 $((N - 1))); do
  cp "$work/hello-go" "$work/recipes/hello-go"
  cat > "$work/recipes/c$i.yaml" <<YAML
name: c$i
version: 1.0.0
artifacts: [{path: hello-go, executable: true}]
lifecycle: {run: ["./hello-go"]}
health: {mqtt: components/c$i/heartbeat, interval: 15s, failure_threshold: 2, start_period: 20s}
restart: {policy: always}
resources: {memory: 32MiB, cpu: 0.25, pids: 32}
configuration: {heartbeat_ms: 10000}
YAML
done
cat > "$work/outpost.yaml" <<YAML
node_id: gw
data_dir: $work/data
log: {level: warn}
telemetry: {address: 127.0.0.1:$HTTP}
runtime: {memory_limit: $MEMORY_LIMIT}
broker:
  listeners:
    - {type: tcp, address: 127.0.0.1:$MQTT}
    - {type: unix, path: $work/mqtt.sock}
supervisor:
  recipes_dir: $work/recipes
  state_dir: $work/state
  log_dir: $work/logs
YAML
start=$(date +%s.%N)
"$BIN" run --config "$work/outpost.yaml" 2>"$work/outpost.log" & AGENT=$!
healthy() {
  curl -fsS "http://127.0.0.1:$HTTP/api/v1/components" 2>/dev/null |
    python3 -c 'import json,sys; print(sum(1 for c in json.load(sys.stdin) if c.get("health") == "passing"))' 2>/dev/null || echo 0
}
deadline=$((SECONDS + 120))
while :; do
  h=$(healthy)
  [ "$h" -ge "$N" ] && break
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$AGENT" 2>/dev/null; then
    echo "only $h of $N components healthy after 120 s" >&2; tail -20 "$work/outpost.log" >&2; exit 1
  fi
  sleep 0.2
done
up=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
echo "all $N components healthy ${up} s after the agent started"
sleep "$SETTLE"
hz=$(getconf CLK_TCK)
t0=$(cpu_ticks "$AGENT"); s0=$(date +%s.%N)
sleep "$WINDOW"
t1=$(cpu_ticks "$AGENT"); s1=$(date +%s.%N)
rss=$(awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$AGENT/status")
hwm=$(awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$AGENT/status")
anon=$(awk '/RssAnon/{printf "%.1f", $2/1024}' "/proc/$AGENT/status")
threads=$(awk '/Threads/{print $2}' "/proc/$AGENT/status")
cpu=$(python3 -c "print(f'{100 * ($t1 - $t0) / $hz / ($s1 - $s0):.2f}')")
comps=$(for p in $(pgrep -P "$AGENT" || true); do awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{s+=$1; n++} END {printf "%d processes, %.1f MiB each on average", n, (n ? s/n/1024 : 0)}')
h=$(healthy)
echo "agent: RSS ${rss} MiB (anon ${anon} MiB, peak ${hwm} MiB), CPU ${cpu}% of one core over ${WINDOW} s, ${threads} threads; ${h}/${N} healthy at the end"
echo "components: $comps"
if [ -n "${PROFILE_DIR:-}" ]; then # heap and goroutine profiles for the breakdown
  curl -fsS "http://127.0.0.1:$HTTP/debug/pprof/heap" > "$PROFILE_DIR/heap.pb.gz"
  curl -fsS "http://127.0.0.1:$HTTP/debug/pprof/goroutine?debug=1" > "$PROFILE_DIR/goroutine.txt"
  curl -fsS "http://127.0.0.1:$HTTP/metrics" > "$PROFILE_DIR/metrics.txt"
fi
