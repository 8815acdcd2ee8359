#!/usr/bin/env bash
# Start-to-ready and idle memory of the outpost agent.
#   bench/startup.sh [BINARY] [RUNS]
# Builds the static stripped binary if none is given; starts it RUNS times (default 20)
# with a minimal config, measuring wall time from exec to the first 200 from /readyz
# (polled every 1 ms), then reads VmRSS after 5 s idle with one client connected.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${1:-}
RUNS=${2:-20}
if [ -z "$BIN" ]; then scripts/build.sh linux/amd64 >/dev/null; BIN=dist/outpost-linux-amd64; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
HTTP=$(port); MQTT=$(port)
cat > "$work/o.yaml" <<YAML
data_dir: $work/data
telemetry: {address: 127.0.0.1:$HTTP}
runtime: {memory_limit: 64MiB}
broker:
  listeners: [{type: tcp, address: 127.0.0.1:$MQTT}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
YAML
cat > "$work/probe.py" <<'PY'
import subprocess, sys, time, urllib.request
binary, cfg, port, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
times = []
for i in range(runs):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "run", "--config", cfg], stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                break
        except Exception:
            time.sleep(0.001)
    times.append((time.perf_counter() - t0) * 1000)
    p.terminate(); p.wait()
times.sort()
print(f"start to /readyz over {runs} starts: median {times[len(times)//2]:.1f} ms, min {times[0]:.1f} ms, max {times[-1]:.1f} ms")
PY
python3 "$work/probe.py" "$BIN" "$work/o.yaml" "$HTTP" "$RUNS"
"$BIN" run --config "$work/o.yaml" 2>/dev/null & pid=$!
sleep 1
mosquitto_sub -h 127.0.0.1 -p "$MQTT" -t 'idle/#' -W 6 >/dev/null 2>&1 || true
echo "idle RSS after 6 s with one subscriber: $(awk '/VmRSS/{print $2/1024 " MB"}' /proc/$pid/status)"
kill -TERM $pid; wait $pid || true
echo "binary: $BIN $(stat -c %s "$BIN" | awk '{printf "%.1f MB", $1/1048576}')"
