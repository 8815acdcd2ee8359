#!/usr/bin/env bash
# Device twin updates per second on the fleet store (issue 12 item 6), SQLite
# and a throwaway PostgreSQL cluster (initdb + pg_ctl on a private port and
# socket directory, fsync on, default settings), side by side in one run.
# Modes per store: group (reported updates through the group commit), single
# (one transaction per call: the peer), desired (operator PATCHes).
#
# Usage: bench/twins.sh [DURATION] [extra bench/twins flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DUR=${1:-10s}
shift || true
go build -o /tmp/outpost-twinbench ./bench/twins
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
D=$(mktemp -d /tmp/twinbench-pg.XXXXXX)
chown postgres "$D"
PORT=$(port)
su postgres -c "$PGBIN/initdb -D $D/data -U postgres --auth=trust --no-sync" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $D/data -o '-p $PORT -k $D -c listen_addresses=127.0.0.1' -l $D/log -w start" >/dev/null
trap 'su postgres -c "$PGBIN/pg_ctl -D $D/data -m fast stop" >/dev/null; rm -rf "$D"' EXIT
bench_lock
uptime
for b in 1 16; do
	/tmp/outpost-twinbench -db sqlite -duration "$DUR" -batch $b -modes group,single "$@"
	su postgres -c "psql -h $D -p $PORT -U postgres -qc 'DROP DATABASE IF EXISTS bench' -c 'CREATE DATABASE bench'" >/dev/null
	/tmp/outpost-twinbench -db "postgres://postgres@127.0.0.1:$PORT/bench" -duration "$DUR" -batch $b -modes group,single "$@"
done
/tmp/outpost-twinbench -db sqlite -duration "$DUR" -modes desired "$@"
su postgres -c "psql -h $D -p $PORT -U postgres -qc 'DROP DATABASE IF EXISTS bench' -c 'CREATE DATABASE bench'" >/dev/null
/tmp/outpost-twinbench -db "postgres://postgres@127.0.0.1:$PORT/bench" -duration "$DUR" -modes desired "$@"
uptime
