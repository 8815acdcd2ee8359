#!/usr/bin/env bash
# Fleet rollout benchmark (issue 13): one outpost-server process on SQLite
# and `outpost-server sim --rollout` with N simulated gateways (real TLS,
# HTTP/2, agent-side syncer) in another process. Prints the time of a
# 4-wave rollout (1, 10%, 50%, 100%; soak 0) to done and the halt latency
# of a rollout whose first wave fails. Usage: bench/fleet_rollout.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-1000}
bench_lock
tmp=$(mktemp -d)
trap 'kill $spid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/outpost-server" ./cmd/outpost-server
p=$(port)
"$tmp/outpost-server" run --data "$tmp/data" --listen 127.0.0.1:$p --log-level warn >"$tmp/server.out" 2>"$tmp/server.log" &
spid=$!
wait_port "$p" "$spid" || { cat "$tmp/server.log"; exit 1; }
tok=$(sed -n 's/.*export OUTPOST_SERVER_TOKEN=//p' "$tmp/server.out")
export OUTPOST_SERVER_TOKEN="$tok" OUTPOST_SERVER=https://127.0.0.1:$p OUTPOST_SERVER_CA="$tmp/data/ca.pem"
ulimit -n 20000 2>/dev/null || true
"$tmp/outpost-server" sim --gateways "$N" --rollout --dir "$tmp/sim" --server-pid "$spid"
