#!/usr/bin/env bash
# Fleet rollout benchmark (issue 13): outpost-server and `outpost-server sim
# --rollout` with N simulated gateways (real TLS, HTTP/2, agent-side syncer)
# in separate processes. Prints the time of a 4-wave rollout (1, 10%, 50%,
# 100%; soak 0) to done and the halt latency of a rollout whose first wave
# fails.
#
# Usage: bench/fleet_rollout.sh [N] [sqlite|postgres]
#   sqlite    one server on SQLite (default)
#   postgres  a throwaway PostgreSQL cluster (initdb + pg_ctl on a private
#             port and socket directory) and two replicas: B starts first and
#             takes the rollout lock (it orchestrates), A serves the API and
#             every gateway's watch stream, so each wave crosses replicas
#             through the database and LISTEN/NOTIFY.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-1000}
MODE=${2:-sqlite}
bench_lock
tmp=$(mktemp -d)
pids=()
PGBIN= PGD=
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ -n "$PGD" ] && su postgres -c "$PGBIN/pg_ctl -D $PGD/data -m fast stop" >/dev/null 2>&1 || true
	rm -rf "$tmp" "$PGD"
}
trap cleanup EXIT
go build -o "$tmp/outpost-server" ./cmd/outpost-server
uptime

# start NAME DATA DB...: an outpost-server on a free port; sets $lastport/$lastpid.
start() {
	local name=$1 data=$2
	shift 2
	lastport=$(port)
	"$tmp/outpost-server" run --data "$data" --listen 127.0.0.1:$lastport --log-level info "$@" \
		>"$tmp/$name.out" 2>"$tmp/$name.log" &
	lastpid=$!
	pids+=("$lastpid")
	wait_port "$lastport" "$lastpid" || { echo "$name did not start:"; tail -20 "$tmp/$name.log"; exit 1; }
}

case "$MODE" in
sqlite)
	start server "$tmp/data"
	spid=$lastpid p=$lastport ca="$tmp/data/ca.pem" tokfile="$tmp/server.out"
	;;
postgres)
	PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
	PGD=$(mktemp -d /tmp/rolloutbench-pg.XXXXXX)
	chown postgres "$PGD"
	PGPORT=$(port)
	su postgres -c "$PGBIN/initdb -D $PGD/data -U postgres --auth=trust --no-sync" >/dev/null
	su postgres -c "$PGBIN/pg_ctl -D $PGD/data -o '-p $PGPORT -k $PGD -c listen_addresses=127.0.0.1 -c max_connections=200' -l $PGD/log -w start" >/dev/null
	db="postgres://postgres@127.0.0.1:$PGPORT/postgres"
	start replicaB "$tmp/dataB" --db "$db"
	for _ in $(seq 1 100); do grep -q "runs the rollouts" "$tmp/replicaB.log" && break; sleep 0.1; done
	grep -q "runs the rollouts" "$tmp/replicaB.log" || { echo "replica B did not take the rollout lock:"; tail -20 "$tmp/replicaB.log"; exit 1; }
	start replicaA "$tmp/dataA" --db "$db"
	spid=$lastpid p=$lastport ca="$tmp/dataA/ca.pem" tokfile="$tmp/replicaB.out"
	echo "PostgreSQL: replica B (pid ${pids[0]}) orchestrates; replica A (pid $spid) serves the API and the $N gateways"
	;;
*)
	echo "usage: bench/fleet_rollout.sh [N] [sqlite|postgres]" >&2
	exit 2
	;;
esac
tok=$(sed -n 's/.*export OUTPOST_SERVER_TOKEN=//p' "$tokfile")
export OUTPOST_SERVER_TOKEN="$tok" OUTPOST_SERVER=https://127.0.0.1:$p OUTPOST_SERVER_CA="$ca"
ulimit -n 20000 2>/dev/null || true
if ! "$tmp/outpost-server" sim --gateways "$N" --rollout --dir "$tmp/sim" --server-pid "$spid"; then
	for f in "$tmp"/*.log; do echo "== $f (tail)"; tail -15 "$f"; done
	exit 1
fi
uptime
