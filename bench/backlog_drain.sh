#!/usr/bin/env bash
# Why does the uplink drain a backlog at ~25-35k msg/s after the max-rate
# scenario of bench/uplink_vs_bridge.sh, but at ~100k msg/s in
# bench/backlog_memory.sh? This script drains the same backlog (the agent
# config of uplink_vs_bridge.sh: 200-byte JSON payloads, 4 partitions, one
# lane with fsync: always, in_flight 1000; the cloud Mosquitto of
# uplink_vs_bridge.sh: max_inflight_messages 1000, max_queued_messages 0,
# TCP_NODELAY) once per variant of what else the cloud broker serves:
#   none   - nobody subscribes on the cloud (as in backlog_memory.sh)
#   qos1   - mosquitto_sub at QoS 1 on outpost/gw/# (what uplink_vs_bridge.sh
#            has: its load generator subscribes at QoS 1 on the cloud)
#   qos0   - mosquitto_sub at QoS 0
# For each: drain rate, CPU per drained message of the agent, the cloud
# Mosquitto and the subscriber, host busy %, and the uplink's window
# occupancy (in_flight / window from /api/v1/queue, sampled), and how much of
# the drain the cloud Mosquitto spent on a CPU and waiting for one
# (/proc/PID/schedstat).
#
#   bench/backlog_drain.sh                  # COUNT=400000 VARIANTS="none qos1"
#   SS=1 bench/backlog_drain.sh             # also print the sockets' Recv-Q/Send-Q
#                                           # every 0.25 s: who is behind reading
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-400000}
VARIANTS=${VARIANTS:-none qos1}
. bench/lib.sh
need mosquitto mosquitto
need mosquitto_sub mosquitto-clients
bench_lock
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
go build -trimpath -o "$work/outpost" ./cmd/outpost
CLOUD=$(port); MQTT=$(port); HTTP=$(port)
uplink_agent_conf "$work/data" "$HTTP" "$MQTT" "$CLOUD" > "$work/outpost.yaml"
"$work/outpost" run --config "$work/outpost.yaml" 2>"$work/outpost.log" & pids+=($!); AGENT=$!
wait_port "$MQTT" "$AGENT" || { tail -20 "$work/outpost.log"; exit 1; }
cloud_conf "$CLOUD" > "$work/cloud.conf"
tck=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
status() { curl -fsS "http://127.0.0.1:$HTTP/api/v1/queue"; }
depth() { status | python3 -c 'import json,sys; print(json.load(sys.stdin)["lanes"]["telemetry"]["depth"])'; }
for v in $VARIANTS; do
  "$work/outpost" bench --url "tcp://127.0.0.1:$MQTT" --topic 'bench/{client}/t' --publishers 10 --subscribers 0 \
    --qos 1 --mqtt 5 --inflight 64 --payload json --payload-size 200 --count "$COUNT" --quiet >/dev/null
  n=$(depth)
  mosquitto -c "$work/cloud.conf" >/dev/null 2>&1 & pids+=($!); CPID=$!
  wait_port "$CLOUD" "$CPID"
  SPID=
  case $v in
    qos1) mosquitto_sub -h 127.0.0.1 -p "$CLOUD" -q 1 -t 'outpost/gw/#' -i drain-sub >/dev/null & pids+=($!); SPID=$! ;;
    qos0) mosquitto_sub -h 127.0.0.1 -p "$CLOUD" -q 0 -t 'outpost/gw/#' -i drain-sub >/dev/null & pids+=($!); SPID=$! ;;
  esac
  w0=$(awk '{print $2}' "/proc/$CPID/schedstat")
  a0=$(cpu_ticks "$AGENT"); read -r b0 t0 < <(busy); start=$(date +%s.%N)
  occ=(); d=$n
  for _ in $(seq 1 1200); do # at most 5 min
    s=$(status)
    d=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["lanes"]["telemetry"]["depth"])' "$s")
    [ "$d" = 0 ] && break
    [ -n "${SS:-}" ] && ss -tnH "( sport = :$CLOUD or dport = :$CLOUD )" | awk -v c=":$CLOUD" '{side=($4 ~ c"$")?"cloud reads":"peer reads"; print "  ss", side, "Recv-Q", $2, "Send-Q", $3, $4, $5}'
    occ+=("$(python3 -c 'import json,sys; u=json.loads(sys.argv[1]).get("uplink",{}); print(u.get("in_flight",0)/max(u.get("window",1),1))' "$s")")
    sleep 0.25
  done
  end=$(date +%s.%N); read -r b1 t1 < <(busy)
  w1=$(awk '{print $2}' "/proc/$CPID/schedstat")
  a1=$(cpu_ticks "$AGENT"); c1=$(cpu_ticks "$CPID"); s1=0; [ -n "$SPID" ] && s1=$(cpu_ticks "$SPID")
  python3 - "$v" "$n" "$d" "$start" "$end" "$((a1-a0))" "$c1" "$s1" "$tck" "$((100*(b1-b0)/(t1-t0)))" "$((w1-w0))" "${occ[@]}" <<'PY'
import sys
v, n, left, t0, t1, a, c, s, tck, busy, wait = sys.argv[1:12]
occ = [float(x) for x in sys.argv[12:]]
n, left, tck = int(n), int(left), int(tck)
done = n - left
d = float(t1) - float(t0)
us = lambda ticks: int(ticks) / tck / max(done, 1) * 1e6
print(f"subscriber {v:<5} drained {done:>8} in {d:5.1f} s = {done/d:>7,.0f} msg/s   CPU per message: "
      f"agent {us(a):4.1f} us  cloud Mosquitto {us(c):4.1f} us  subscriber {us(s):4.1f} us   "
      f"host busy {busy}%   cloud Mosquitto: busy {int(c)/tck/d*100:.0f}% of a core, runnable but waiting for a CPU {int(wait)/1e9/d*100:.0f}%   uplink window full {100*sum(occ)/max(len(occ),1):.0f}% (mean in_flight/window)")
PY
  [ -n "$SPID" ] && kill "$SPID"
  kill "$CPID"; wait "$CPID" 2>/dev/null || true
done
