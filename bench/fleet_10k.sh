#!/usr/bin/env bash
# 10,000 simulated gateways against one outpost-server on SQLite (issue 12):
# the server and `outpost-server sim` run as separate processes (file
# descriptor limits); while every gateway is connected the script takes the
# server's heap profile and goroutine count (run --pprof, loopback), then
# the simulator times desired-state changes to all of them.
# Usage: bench/fleet_10k.sh [N] [CHANGES]      (default 10000 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-10000}
CHANGES=${2:-2}
bench_lock
tmp=$(mktemp -d)
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n 20000
go build -o "$tmp/outpost-server" ./cmd/outpost-server
uptime
p=$(port)
pp=$(port)
"$tmp/outpost-server" run --data "$tmp/data" --listen 127.0.0.1:$p --log-level warn --pprof 127.0.0.1:$pp >"$tmp/server.out" 2>"$tmp/server.log" &
spid=$!
wait_port "$p" "$spid" || { cat "$tmp/server.log"; exit 1; }
tok=$(sed -n 's/.*export OUTPOST_SERVER_TOKEN=//p' "$tmp/server.out")
export OUTPOST_SERVER_TOKEN="$tok" OUTPOST_SERVER=https://127.0.0.1:$p OUTPOST_SERVER_CA="$tmp/data/ca.pem"
"$tmp/outpost-server" sim --gateways "$N" --changes "$CHANGES" --dir "$tmp/sim" --server-pid "$spid" >"$tmp/sim.out" 2>&1 &
simpid=$!
tail -f "$tmp/sim.out" --pid=$simpid &
for _ in $(seq 1 1800); do
	grep -q '^connected ' "$tmp/sim.out" && break
	kill -0 $simpid 2>/dev/null || break
	sleep 0.2
done
if grep -q '^connected ' "$tmp/sim.out"; then
	curl -s "http://127.0.0.1:$pp/debug/pprof/heap" -o "$tmp/heap.pb"
	echo "--- server while $N gateways are connected:"
	grep -E 'VmRSS|Threads' /proc/$spid/status
	curl -s "http://127.0.0.1:$pp/debug/pprof/goroutine?debug=1" | head -1
	go tool pprof -sample_index=inuse_space -top -nodecount 25 "$tmp/heap.pb" 2>/dev/null | sed -n '4,32p'
	echo "--- server CPU so far (user+system seconds): $(awk '{print ($14+$15)/100}' /proc/$spid/stat)"
fi
wait $simpid
uptime
