#!/usr/bin/env bash
# Idle cost of fleet sync on the agent (issue 12): two `outpost run`
# agents with the same config (broker, rule engine), one with `fleet: {}`
# and enrolled with an outpost-server (SQLite, its own process, one rule
# set targeted at the gateway), the other without. After SETTLE seconds
# idle, prints both RSS figures (VmRSS, /proc) and the difference.
# Usage: bench/fleet_agent_rss.sh [SETTLE]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SETTLE=${1:-60}
bench_lock
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$tmp/outpost" ./cmd/outpost
go build -o "$tmp/outpost-server" ./cmd/outpost-server
p=$(port)
"$tmp/outpost-server" run --data "$tmp/srv" --listen 127.0.0.1:$p --log-level warn >"$tmp/server.out" 2>"$tmp/server.log" &
pids+=($!)
wait_port "$p" "${pids[0]}" || { cat "$tmp/server.log"; exit 1; }
export OUTPOST_SERVER_TOKEN=$(sed -n 's/.*export OUTPOST_SERVER_TOKEN=//p' "$tmp/server.out")
export OUTPOST_SERVER=https://127.0.0.1:$p OUTPOST_SERVER_CA="$tmp/srv/ca.pem"
tok=$("$tmp/outpost-server" token create --labels bench=1 --expires 1h 2>/dev/null | grep -o 'opb_[A-Za-z0-9_-]*' | head -1)
agent() { # NAME FLEET
	local m h; m=$(port); h=$(port)
	eval "tel_$1=$h"
	cat >"$tmp/$1.yaml" <<YAML
node_id: $1
data_dir: $tmp/$1
log: {level: warn}
telemetry: {address: 127.0.0.1:$h}
broker:
  listeners:
    - {type: tcp, address: 127.0.0.1:$m}
$2
YAML
}
agent with "fleet: {}"
agent without ""
"$tmp/outpost" enroll --server "$OUTPOST_SERVER" --token "$tok" --ca "$OUTPOST_SERVER_CA" --config "$tmp/with.yaml" >/dev/null
printf "CREATE RULE bench AS SELECT * FROM 'bench/#' DO REPUBLISH 'x';\n" >"$tmp/bench.sql"
"$tmp/outpost-server" objects put --kind ruleset --id bench --file "$tmp/bench.sql" -l bench=1 >/dev/null
for n in with without; do
	"$tmp/outpost" run --config "$tmp/$n.yaml" >"$tmp/$n.log" 2>&1 &
	pids+=($!)
	eval "pid_$n=$!"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); idle for ${SETTLE}s"
sleep "$SETTLE"
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || { echo "agent $1 exited:" >&2; cat "$tmp"/*.log >&2; exit 1; }; }
w=$(rss "$pid_with"); wo=$(rss "$pid_without")
# Anonymous memory (heap, stacks) against file-backed pages (the binary's
# code and data that ran): the kernel can drop the second under pressure.
for n in with without; do
	eval "p=\$pid_$n"
	awk -v n=$n '/^Rss(Anon|File|Shmem):/ {printf "%s: %s %.1f MB\n", n, $1, $2/1024}' "/proc/$p/status" "/proc/$p/smaps_rollup" 2>/dev/null | sort -u
done
"$tmp/outpost-server" gateways list 2>/dev/null | head -3 || true
printf 'agent RSS with fleet sync: %.1f MB; without: %.1f MB; sync costs %.1f MB (target: <= 12 MB with sync)\n' \
	"$(echo "$w/1024" | bc -l)" "$(echo "$wo/1024" | bc -l)" "$(echo "($w-$wo)/1024" | bc -l)"
# Where the difference is: the Go runtime's own accounting of both agents
# and the heap profile of the one with sync against the one without.
for n in with without; do
	eval "h=\$tel_$n"
	curl -s "http://127.0.0.1:$h/debug/pprof/heap" -o "$tmp/$n.heap"
	curl -s "http://127.0.0.1:$h/debug/pprof/goroutine?debug=1" | head -1 | sed "s/^/$n: /"
	curl -s "http://127.0.0.1:$h/metrics" | grep -E '^go_memstats_(heap_inuse|stack_inuse|sys|mspan_inuse|other_sys|gc_sys)_bytes ' | sed "s/^/$n: /"
done
echo "heap in use, with sync minus without (top 15):"
go tool pprof -sample_index=inuse_space -top -nodecount 15 -diff_base "$tmp/without.heap" "$tmp/with.heap" 2>/dev/null | sed -n '5,22p'
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
