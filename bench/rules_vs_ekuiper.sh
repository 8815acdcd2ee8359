#!/usr/bin/env bash
# End-to-end rule benchmark, Outpost vs eKuiper, one rule, same load generator,
# same run, loopback only:
#
#   outpost  devices -> `outpost run` (embedded broker, rule engine on)
#            -> rule -> REPUBLISH on the embedded broker -> subscriber
#   ekuiper  devices -> Mosquitto -> kuiperd (MQTT source) -> rule
#            -> MQTT sink -> Mosquitto -> subscriber
#
# The rule (filter + a computed column + a per-device output topic):
#   outpost: SELECT *, round(temp * 1.8 + 32, 2) AS temp_f
#            FROM 'bench/+/sensors/+' WHERE temp > -1000
#            DO REPUBLISH 'out/${device_id}'
#   ekuiper: SELECT device_id, run, seq, ts, temp, humidity, quality,
#                   round(temp * 1.8 + 32, 2) AS temp_f
#            FROM bench WHERE temp > -1000   (stream on 'bench/+/sensors/+',
#            JSON with a schema), MQTT sink on 'out/{{.device_id}}' with a
#            dataTemplate that writes the load generator's fixed-width JSON
#            layout (eKuiper re-encodes every output; `outpost bench` reads seq
#            and ts at fixed offsets of its own layout, see
#            internal/loadgen/payload.go). `temp > -1000` passes every
#            message, so received = sent when nothing is lost.
#
# Scenarios (QoS 0, PUBS publishers -> 1 subscriber on 'out/#', --payload json,
# SIZE bytes):
#   rate    a fixed rate for each of RATES: latency p50/p99, loss, CPU, RSS
#   max     as fast as each side accepts (QoS 0: the excess is dropped)
#   ladder  sustained throughput: each side climbs the fixed rates of LADDER
#           (LADDER_DURATION each) and stops at the first step that loses
#           more than LADDER_LOSS %; its sustained rate is the step below
# Every process is started fresh for each run. Reported per side: msg/s sent and received, loss, latency,
# CPU% of one core and max RSS of outpost; of kuiperd and of Mosquitto for
# eKuiper (kuiperd through --broker-pid, Mosquitto sampled from /proc by this
# script), the load generator's CPU, and outpost ÷ eKuiper ratios.
#
# eKuiper is not built by this script. Point it at a kuiperd you built (see
# docs/BENCHMARKS.md, "Rules end to end vs eKuiper"):
#   KUIPERD=/path/to/kuiperd  KUIPER_ETC=/path/to/ekuiper-source/etc \
#     bench/rules_vs_ekuiper.sh
# KUIPER_ETC is the etc/ directory of the same eKuiper source tree (copied to
# a temporary directory, listeners rewritten to 127.0.0.1 and free ports).
# Without KUIPERD the eKuiper half is skipped with a message.
#
# Environment: DURATION=15s RATES="2000 10000" PUBS=10 SIZE=200
#              KUIPER_BUFFER=10240 (the rule's bufferLength; default: eKuiper's 1,024)
#              SCENARIOS="rate max ladder" TARGETS="outpost ekuiper" ROUNDS=1
#              LADDER="5000 10000 15000 20000 25000 30000 40000 60000 80000 100000 120000 160000"
#              LADDER_DURATION=10s LADDER_LOSS=1
#              OUT=dir (keep the JSON results and logs there)
# Holds /tmp/outpost-bench.lock for the whole run. Needs mosquitto, jq and
# curl (installed with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
if [ -z "${OUTPOST_BENCH_LOCKED:-}" ]; then
	export OUTPOST_BENCH_LOCKED=1
	exec flock /tmp/outpost-bench.lock "$0" "$@"
fi

DURATION=${DURATION:-15s}
RATES=${RATES:-2000 10000}
PUBS=${PUBS:-10}
SIZE=${SIZE:-200}
SCENARIOS=${SCENARIOS:-rate max ladder}
LADDER=${LADDER:-5000 10000 15000 20000 25000 30000 40000 60000 80000 100000 120000 160000}
LADDER_DURATION=${LADDER_DURATION:-10s}
LADDER_LOSS=${LADDER_LOSS:-1}
TARGETS=${TARGETS:-outpost ekuiper}
ROUNDS=${ROUNDS:-1}

need jq jq
need curl curl

tmp=$(mktemp -d)
OUT=${OUT:-$tmp/results}
mkdir -p "$OUT"
pids=() # processes of the current scenario, stopped in reverse order
cleanup() {
	stop_all
	rm -rf "$tmp"
}
trap cleanup EXIT

ekuiper_note=
if [[ " $TARGETS " == *" ekuiper "* ]]; then
	if [ -z "${KUIPERD:-}" ]; then
		ekuiper_note="KUIPERD is not set (path of a kuiperd binary; see docs/BENCHMARKS.md for how to build one)"
	elif [ ! -x "$KUIPERD" ]; then
		ekuiper_note="KUIPERD=$KUIPERD is not an executable"
	elif [ -z "${KUIPER_ETC:-}" ] || [ ! -f "$KUIPER_ETC/kuiper.yaml" ]; then
		ekuiper_note="KUIPER_ETC must be the etc/ directory of the eKuiper source tree kuiperd was built from (with kuiper.yaml)"
	else
		need mosquitto mosquitto
	fi
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

echo "building outpost..." >&2
CGO_ENABLED=0 go build -trimpath -o "$tmp/outpost" ./cmd/outpost

stop_all() {
	local i pid
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		pid=${pids[$i]}
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	pids=()
}
die() {
	echo "$*" >&2
	exit 1
}

# --- outpost -----------------------------------------------------------------

outpost_rule() {
	cat <<-'SQL'
	CREATE RULE bench_e2e AS
	SELECT *, round(temp * 1.8 + 32, 2) AS temp_f
	FROM 'bench/+/sensors/+'
	WHERE temp > -1000
	DO REPUBLISH 'out/${device_id}';
	SQL
}
mkdir -p "$tmp/rules-src"
outpost_rule >"$tmp/rules-src/bench_e2e.sql"
"$tmp/outpost" rules check "$tmp/rules-src/bench_e2e.sql" >&2 || die "the outpost rule does not validate"

start_outpost() { # start_outpost PORT -> pid in pids, url in $url
	local d="$tmp/outpost-$1"
	mkdir -p "$d/data" "$d/rules" "$d/state"
	cp "$tmp/rules-src/bench_e2e.sql" "$d/rules/"
	{
		sed -e "s/18832/$1/g" -e "s/18833/$(port)/g" -e "s|/tmp/outpost-bench-data|$d/data|g" bench/outpost-bench.yaml
		printf 'rules:\n  dir: %s\n  state_dir: %s\n' "$d/rules" "$d/state"
	} >"$d/outpost.yaml"
	"$tmp/outpost" config check "$d/outpost.yaml" >"$d/check.log" 2>&1 || die "outpost config rejected: $(cat "$d/check.log")"
	"$tmp/outpost" run --config "$d/outpost.yaml" >"$OUT/outpost-$1.log" 2>&1 &
	pids+=($!)
	engine_pid=$!
	wait_port "$1" "$engine_pid" || die "outpost did not start: $(cat "$OUT/outpost-$1.log")"
	url="tcp://127.0.0.1:$1"
	sleep 0.5 # rules directory loaded
}

# --- eKuiper -----------------------------------------------------------------

# mosquitto_conf PORT: see bench/lib.sh.

# The sink's dataTemplate: the load generator's JSON layout (fixed-width seq
# and ts) followed by the computed column.
ekuiper_template='{"device_id":"{{.device_id}}","run":"{{.run}}","seq":{{printf "%12d" .seq}},"ts":{{printf "%15d" .ts}},"temp":{{printf "%.2f" .temp}},"humidity":{{printf "%.1f" .humidity}},"quality":"{{.quality}}","temp_f":{{.temp_f}}}'

rest() { # rest METHOD PATH [BODY]
	local code
	code=$(curl -s -o "$tmp/rest.out" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
		${3:+--data-binary "$3"} "http://127.0.0.1:$rest_port$2") || true
	case $code in
	2??) return 0 ;;
	*) echo "eKuiper REST $1 $2 -> $code: $(cat "$tmp/rest.out")" >&2; return 1 ;;
	esac
}

start_ekuiper() { # start_ekuiper MQTT_PORT -> pids, $url, $engine_pid, $mosq_pid
	local d="$tmp/ekuiper-$1" mport=$1
	mosquitto_conf "$mport" >"$tmp/mosquitto-$mport.conf"
	"$MOSQUITTO" -c "$tmp/mosquitto-$mport.conf" >"$OUT/mosquitto-$mport.log" 2>&1 &
	pids+=($!)
	mosq_pid=$!
	wait_port "$mport" "$mosq_pid" || die "mosquitto did not start: $(cat "$OUT/mosquitto-$mport.log")"

	mkdir -p "$d/data" "$d/log" "$d/plugins"/{sources,sinks,functions,portable,wasm}
	cp -r "$KUIPER_ETC" "$d/etc"
	rest_port=$(port)
	sed -i -e "s/^  ip: .*/  ip: 127.0.0.1/" -e "s/^  port: .*/  port: $(port)/" \
		-e "s/restIp: .*/restIp: 127.0.0.1/" -e "s/restPort: .*/restPort: $rest_port/" \
		-e "s/httpServerIp: .*/httpServerIp: 127.0.0.1/" -e "s/httpServerPort: .*/httpServerPort: $(port)/" \
		-e "s/prometheus: .*/prometheus: false/" -e "s/pprof: .*/pprof: false/" \
		-e "s/logLevel: .*/logLevel: warn/" "$d/etc/kuiper.yaml"
	cat >>"$d/etc/mqtt_source.yaml" <<-YAML

	bench:
	  server: "tcp://127.0.0.1:$mport"
	  qos: 0
	YAML
	"$KUIPERD" -etc "$d/etc" -data "$d/data" -log "$d/log" -plugins "$d/plugins" -loadFileType absolute \
		>"$OUT/kuiperd-$mport.log" 2>&1 &
	pids+=($!)
	engine_pid=$!
	wait_port "$rest_port" "$engine_pid" || die "kuiperd did not start: $(cat "$OUT/kuiperd-$mport.log")"
	local open
	open=$(ss -ltnpH 2>/dev/null | grep "pid=$engine_pid," | awk '{print $4}' | grep -v '^127\.0\.0\.1:' || true)
	[ -z "$open" ] || die "kuiperd listens beyond loopback: $open"

	rest POST /streams "$(jq -nc '{sql: "CREATE STREAM bench (device_id STRING, run STRING, seq BIGINT, ts BIGINT, temp FLOAT, humidity FLOAT, quality STRING) WITH (DATASOURCE=\"bench/+/sensors/+\", FORMAT=\"json\", CONF_KEY=\"bench\", TYPE=\"mqtt\")"}')" ||
		die "eKuiper: stream not created"
	rest POST /rules "$(jq -nc --arg srv "tcp://127.0.0.1:$mport" --arg tpl "$ekuiper_template" --arg buf "${KUIPER_BUFFER:-}" '{
		id: "bench_e2e",
		sql: "SELECT device_id, run, seq, ts, temp, humidity, quality, round(temp * 1.8 + 32, 2) AS temp_f FROM bench WHERE temp > -1000",
		actions: [{mqtt: {server: $srv, topic: "out/{{.device_id}}", qos: 0, sendSingle: true, dataTemplate: $tpl}}]
	} + (if $buf == "" then {} else {options: {bufferLength: ($buf | tonumber)}} end)')" || die "eKuiper: rule not created"
	for _ in $(seq 1 50); do
		rest GET /rules/bench_e2e/status 2>/dev/null && jq -e '.status == "running"' "$tmp/rest.out" >/dev/null && break
		sleep 0.1
	done
	jq -e '.status == "running"' "$tmp/rest.out" >/dev/null || die "eKuiper rule not running: $(cat "$tmp/rest.out")"
	url="tcp://127.0.0.1:$mport"
	sleep 1 # source and sink connected
}

# --- per-process /proc sampling (Mosquitto on the eKuiper side) --------------

clk=$(getconf CLK_TCK)
sample_rss() { # sample_rss PID FILE: max VmRSS (kB) every 0.2 s until PID exits or FILE.stop exists
	local max=0 v
	while kill -0 "$1" 2>/dev/null && [ ! -e "$2.stop" ]; do
		v=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
		[ "${v:-0}" -gt "$max" ] && max=$v && echo "$max" >"$2"
		sleep 0.2
	done
}

run_one() { # run_one SCENARIO RATE TARGET ROUND
	local port flags name t0 t1 f
	port=$(port)
	name="$1-$2-$3-$4"
	case $3 in
	outpost) start_outpost "$port" ;;
	ekuiper) start_ekuiper "$port" ;;
	esac
	flags=(--url "$url" --sub-topic 'out/#' --publishers "$PUBS" --subscribers 1 --qos 0
		--payload json --payload-size "$SIZE" --duration "$DURATION" --broker-pid "$engine_pid" --json --quiet)
	[ "$1" != max ] && flags+=(--rate "$2")
	local what=$1
	[ "$2" != 0 ] && what="$1 $2"
	echo "round $4: $what -> $3 (engine pid $engine_pid, port $port)" >&2
	f="$OUT/$name.json"
	if [ "$3" = ekuiper ]; then
		t0=$(cpu_ticks "$mosq_pid")
		rm -f "$tmp/mrss" "$tmp/mrss.stop"
		sample_rss "$mosq_pid" "$tmp/mrss" &
		local sampler=$!
	fi
	"$tmp/outpost" bench "${flags[@]}" >"$f" || echo "  (bench exited $?, see $f)" >&2
	if [ "$3" = ekuiper ]; then
		t1=$(cpu_ticks "$mosq_pid")
		touch "$tmp/mrss.stop"
		wait "$sampler" 2>/dev/null || true
		# Mosquitto's CPU over the publish + drain phases, like --broker-pid.
		jq --argjson ticks "$((t1 - t0))" --argjson clk "$clk" --argjson rss "$(cat "$tmp/mrss" 2>/dev/null || echo 0)" \
			'.mosquitto = {cpu_seconds: ($ticks / $clk), cpu_percent: (($ticks / $clk) / (.publish_seconds + .drain_seconds) * 100 | . * 10 | round / 10), max_rss_bytes: ($rss * 1024)}' \
			"$f" >"$f.tmp" && mv "$f.tmp" "$f"
		rest GET /rules/bench_e2e/status >/dev/null 2>&1 && cp "$tmp/rest.out" "$OUT/$name.rule-status.json" || true
	fi
	stop_all
}

targets=()
for t in $TARGETS; do
	if [ "$t" = ekuiper ] && [ -n "$ekuiper_note" ]; then
		echo "skipping eKuiper: $ekuiper_note" >&2
		continue
	fi
	targets+=("$t")
done

runs=() # "scenario rate"
ladder=
for s in $SCENARIOS; do
	case $s in
	rate) for r in $RATES; do runs+=("rate $r"); done ;;
	max) runs+=("max 0") ;;
	ladder) ladder=1 ;;
	*) die "unknown scenario $s (rate, max, ladder)" ;;
	esac
done

for round in $(seq 1 "$ROUNDS"); do
	for sr in "${runs[@]}"; do
		read -r s r <<<"$sr"
		for t in "${targets[@]}"; do
			run_one "$s" "$r" "$t" "$round"
		done
	done
	# Ladder: each side climbs LADDER until a step loses more than
	# LADDER_LOSS % (the steps above it are not run).
	if [ -n "$ladder" ]; then
		for t in "${targets[@]}"; do
			for r in $LADDER; do
				DURATION=$LADDER_DURATION run_one ladder "$r" "$t" "$round"
				jq -e --argjson max "$LADDER_LOSS" '.loss_percent <= $max' "$OUT/ladder-$r-$t-$round.json" >/dev/null || break
			done
		done
	fi
done

# --- report ------------------------------------------------------------------

echo
echo "## $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
kv=
[ -n "${KUIPERD:-}" ] && [ -z "$ekuiper_note" ] && kv=", kuiperd $KUIPERD"
echo "$(go version | awk '{print $3}')$kv, QoS 0, $PUBS pub -> 1 sub on out/#, json $SIZE B, $DURATION per run"
echo
printf '| scenario | side | sent msg/s | recv msg/s | lost %% | p50 ms | p99 ms | max ms | engine CPU %% | engine RSS max MiB | mosquitto CPU %% | mosquitto RSS max MiB | loadgen CPU %% | host busy %% | recv vs eKuiper | p99 vs eKuiper |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for round in $(seq 1 "$ROUNDS"); do
	for sr in "${runs[@]}"; do
		read -r s r <<<"$sr"
		ref="$OUT/$s-$r-ekuiper-$round.json"
		for t in "${targets[@]}"; do
			f="$OUT/$s-$r-$t-$round.json"
			label=$s
			[ "$s" = rate ] && label="rate $r"
			[ "$ROUNDS" -gt 1 ] && label="$label #$round"
			[ -s "$f" ] || { echo "| $label | $t | (no result) |"; continue; }
			jq -r --arg s "$label" --arg t "$t" --slurpfile ref <(if [ -s "$ref" ]; then cat "$ref"; else echo null; fi) '
				def ms: . / 1000 | . * 100 | round / 100;
				def mib: (. // 0) / 1048576 * 10 | round / 10;
				def ratio(a; b): if (b // 0) > 0 then (a / b * 100 | round / 100 | tostring) + "×" else "-" end;
				"| \($s) | \($t) | \(.sent_rate | round) | \(.recv_rate | round) | \(.loss_percent) | \(.latency.p50_us | ms) | \(.latency.p99_us | ms) | \(.latency.max_us | ms) | \(.broker.cpu_percent // "-") | \(.broker.max_rss_bytes | mib) | \(.mosquitto.cpu_percent // "-") | \(if .mosquitto then (.mosquitto.max_rss_bytes | mib) else "-" end) | \(.loadgen_cpu.percent) | \(.host_busy_percent) | \(if $t == "ekuiper" then "1×" else ratio(.recv_rate; $ref[0].recv_rate) end) | \(if $t == "ekuiper" then "1×" else ratio(.latency.p99_us; $ref[0].latency.p99_us) end) |"' "$f"
		done
	done
done
if [ -n "$ladder" ]; then
	echo
	echo "Ladder: fixed rates of $LADDER msg/s, $LADDER_DURATION each; a side stops climbing at the first step losing more than $LADDER_LOSS %."
	echo
	printf '| round | side | step msg/s | recv msg/s | lost %% | p50 ms | p99 ms | engine CPU %% | engine RSS max MiB | mosquitto CPU %% | loadgen CPU %% | host busy %% |\n'
	printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
	for round in $(seq 1 "$ROUNDS"); do
		for t in "${targets[@]}"; do
			for r in $LADDER; do
				f="$OUT/ladder-$r-$t-$round.json"
				[ -s "$f" ] || continue
				jq -r --arg t "$t" --arg r "$r" --arg round "$round" '
					def ms: . / 1000 | . * 100 | round / 100;
					"| \($round) | \($t) | \($r) | \(.recv_rate | round) | \(.loss_percent) | \(.latency.p50_us | ms) | \(.latency.p99_us | ms) | \(.broker.cpu_percent // "-") | \((.broker.max_rss_bytes // 0) / 1048576 * 10 | round / 10) | \(.mosquitto.cpu_percent // "-") | \(.loadgen_cpu.percent) | \(.host_busy_percent) |"' "$f"
			done
		done
	done
	echo
	for round in $(seq 1 "$ROUNDS"); do
		for t in "${targets[@]}"; do
			b=0
			for r in $LADDER; do
				f="$OUT/ladder-$r-$t-$round.json"
				[ -s "$f" ] && jq -e --argjson max "$LADDER_LOSS" '.loss_percent <= $max' "$f" >/dev/null || break
				b=$r
			done
			echo "round $round: $t sustained $b msg/s (highest step with loss <= $LADDER_LOSS %)"
		done
	done
fi
echo
echo "engine = outpost run (broker + rules) or kuiperd; the eKuiper side also runs Mosquitto (its own columns)."
echo "recv vs eKuiper: received msg/s ÷ eKuiper's (higher is better); p99 vs eKuiper: p99 ÷ eKuiper's (lower is better)."
echo "CPU % is of one core; host busy % is of all $(nproc) cores: near 100 the box, not the engine, is the limit."
[ -n "$ekuiper_note" ] && echo "eKuiper not measured: $ekuiper_note"
if [ "$OUT" != "$tmp/results" ]; then echo "JSON results in $OUT"; fi
