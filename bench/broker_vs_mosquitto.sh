#!/usr/bin/env bash
# Side-by-side broker benchmark: the same `outpost bench` scenarios against
#   mosquitto  Mosquitto 2.0 from Debian's packages, config below
#   mochi      bare mochi-mqtt v2.7.9 with default capabilities (bench/mochibroker)
#   broker     Outpost's broker module alone (internal/broker: ACLs, limits,
#              flow control; no pipeline), persistence off (bench/outpostbroker)
#   outpost    `outpost run --config bench/outpost-bench.yaml` (skipped, with a
#              note, while this build has no `run` command or rejects the config)
# in one run, each broker started fresh for each scenario, on loopback.
#
# Scenarios (QoS 0, 10 publishers -> 1 subscriber, 200-byte payloads):
#   rate     fixed aggregate rate (default 10000 msg/s): latency p50/p99/p99.9
#   max      as fast as the broker accepts: msgs/s sent and received
# Reported per broker: msgs/s, loss, latency, broker CPU% of one core and RSS
# (sampled from /proc by outpost bench --broker-pid), the load generator's
# CPU%, and each broker's ratio to Mosquitto.
#
# Usage: bench/broker_vs_mosquitto.sh
# Environment: DURATION=15s RATE=10000 PUBS=10 SUBS=1 SIZE=200 QOS=0
#              ROUNDS=1 TARGETS="mosquitto mochi broker outpost" SCENARIOS="rate max"
#              OUT=dir (keep the JSON results there)
# Holds /tmp/outpost-bench.lock for the whole run. Needs mosquitto and jq
# (installed with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
if [ -z "${OUTPOST_BENCH_LOCKED:-}" ]; then
	export OUTPOST_BENCH_LOCKED=1
	exec flock /tmp/outpost-bench.lock "$0" "$@"
fi

DURATION=${DURATION:-15s}
RATE=${RATE:-10000}
PUBS=${PUBS:-10}
SUBS=${SUBS:-1}
SIZE=${SIZE:-200}
QOS=${QOS:-0}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-mosquitto mochi broker outpost}
SCENARIOS=${SCENARIOS:-rate max}

need mosquitto mosquitto
need jq jq
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

tmp=$(mktemp -d)
OUT=${OUT:-$tmp/results}
mkdir -p "$OUT"
broker_pid=
cleanup() {
	stop_broker
	rm -rf "$tmp"
}
trap cleanup EXIT

echo "building outpost, bench/mochibroker and bench/outpostbroker..." >&2
CGO_ENABLED=0 go build -trimpath -o "$tmp/outpost" ./cmd/outpost
CGO_ENABLED=0 go build -trimpath -o "$tmp/mochibroker" ./bench/mochibroker
CGO_ENABLED=0 go build -trimpath -o "$tmp/outpostbroker" ./bench/outpostbroker

stop_broker() {
	if [ -n "$broker_pid" ]; then
		kill -TERM "$broker_pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.05; done
		kill -KILL "$broker_pid" 2>/dev/null || true
		wait "$broker_pid" 2>/dev/null || true
		broker_pid=
	fi
}

# mosquitto_conf PORT: see bench/lib.sh.

outpost_ok=
outpost_note=
if ! "$tmp/outpost" help 2>/dev/null | grep -E '^  run ' >/dev/null; then
	outpost_note="this build has no 'outpost run' yet"
elif ! "$tmp/outpost" config check bench/outpost-bench.yaml >"$tmp/check.log" 2>&1; then
	outpost_note="bench/outpost-bench.yaml rejected: $(head -3 "$tmp/check.log" | tr '\n' ' ')"
else
	outpost_ok=1
fi

start_broker() { # start_broker TARGET PORT -> sets broker_pid
	case $1 in
	mosquitto)
		mosquitto_conf "$2" >"$tmp/mosquitto.conf"
		"$MOSQUITTO" -c "$tmp/mosquitto.conf" >"$tmp/broker.log" 2>&1 &
		;;
	mochi)
		"$tmp/mochibroker" -addr "127.0.0.1:$2" >"$tmp/broker.log" 2>&1 &
		;;
	broker)
		"$tmp/outpostbroker" -addr "127.0.0.1:$2" >"$tmp/broker.log" 2>&1 &
		;;
	outpost)
		mkdir -p "$tmp/data"
		sed -e "s/18832/$2/g" -e "s/18833/$(port)/g" -e "s|/tmp/outpost-bench-data|$tmp/data|g" \
			bench/outpost-bench.yaml >"$tmp/outpost.yaml"
		"$tmp/outpost" run --config "$tmp/outpost.yaml" >"$tmp/broker.log" 2>&1 &
		;;
	esac
	broker_pid=$!
	if ! wait_port "$2" "$broker_pid"; then
		echo "$1 did not start:" >&2
		cat "$tmp/broker.log" >&2
		exit 1
	fi
}

run_one() { # run_one SCENARIO TARGET ROUND
	local port flags
	port=$(port)
	start_broker "$2" "$port"
	flags=(--url "tcp://127.0.0.1:$port" --publishers "$PUBS" --subscribers "$SUBS" --qos "$QOS"
		--payload-size "$SIZE" --duration "$DURATION" --broker-pid "$broker_pid" --json --quiet)
	[ "$1" = rate ] && flags+=(--rate "$RATE")
	echo "round $3: $1 -> $2 (pid $broker_pid, port $port)" >&2
	"$tmp/outpost" bench "${flags[@]}" >"$OUT/$1-$2-$3.json" || echo "  (bench exited $?, see $OUT/$1-$2-$3.json)" >&2
	stop_broker
}

targets=()
for t in $TARGETS; do
	if [ "$t" = outpost ] && [ -z "$outpost_ok" ]; then
		echo "skipping outpost: $outpost_note" >&2
		continue
	fi
	targets+=("$t")
done

for round in $(seq 1 "$ROUNDS"); do
	for s in $SCENARIOS; do
		for t in "${targets[@]}"; do
			run_one "$s" "$t" "$round"
		done
	done
done

# Report.
echo
echo "## $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -1 | awk '{print $3}'), $(go version | awk '{print $3}'), QoS $QOS, $PUBS pub -> $SUBS sub, $SIZE B, $DURATION per run"
echo
printf '| scenario | broker | sent msg/s | recv msg/s | lost %% | p50 ms | p99 ms | p99.9 ms | max ms | broker CPU %% | broker RSS max MiB | loadgen CPU %% | host busy %% | recv vs mosquitto | p99 vs mosquitto |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for round in $(seq 1 "$ROUNDS"); do
	for s in $SCENARIOS; do
		ref="$OUT/$s-mosquitto-$round.json"
		for t in "${targets[@]}"; do
			f="$OUT/$s-$t-$round.json"
			[ -s "$f" ] || { echo "| $s | $t | (no result) |"; continue; }
			label=$s
			[ "$s" = rate ] && label="rate $RATE"
			[ "$ROUNDS" -gt 1 ] && label="$label #$round"
			jq -r --arg s "$label" --arg t "$t" --slurpfile ref <(if [ -s "$ref" ]; then cat "$ref"; else echo null; fi) '
				def ms: . / 1000 | . * 100 | round / 100;
				def ratio(a; b): if (b // 0) > 0 then (a / b * 100 | round / 100 | tostring) + "×" else "-" end;
				"| \($s) | \($t) | \(.sent_rate | round) | \(.recv_rate | round) | \(.loss_percent) | \(.latency.p50_us | ms) | \(.latency.p99_us | ms) | \(.latency.p99_9_us | ms) | \(.latency.max_us | ms) | \(.broker.cpu_percent // "-") | \((.broker.max_rss_bytes // 0) / 1048576 * 10 | round / 10) | \(.loadgen_cpu.percent) | \(.host_busy_percent) | \(ratio(.recv_rate; $ref[0].recv_rate)) | \(ratio(.latency.p99_us; $ref[0].latency.p99_us)) |"' "$f"
		done
	done
done
echo
echo "recv vs mosquitto: received msg/s ÷ Mosquitto's (higher is better); p99 vs mosquitto: p99 ÷ Mosquitto's (lower is better)."
echo "CPU % is of one core; host busy % is of all $(nproc) cores (loadgen + broker + kernel): near 100 the box, not the broker, is the limit."
[ -n "$outpost_note" ] && echo "outpost run not measured: $outpost_note"
if [ "$OUT" != "$tmp/results" ]; then echo "JSON results in $OUT"; fi
