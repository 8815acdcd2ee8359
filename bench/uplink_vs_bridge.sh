#!/usr/bin/env bash
# Durable path, side by side in one run:
#   A) devices --QoS 1--> outpost agent (fsync: always, group commit) --uplink--> Mosquitto "cloud"
#   B) devices --QoS 1--> Mosquitto edge with persistence --bridge--> Mosquitto "cloud"
# Same load generator (outpost bench), same payloads, subscribers on the cloud
# broker, so every figure is device-to-cloud. Scenarios: max rate, and a
# fixed 5k msg/s for latency.
#
#   bench/uplink_vs_bridge.sh            # DURATION=15s PUBS=10
#   CLOUD_SUB=0 bench/uplink_vs_bridge.sh   # no subscriber on the cloud broker
#
# With CLOUD_SUB=0 nobody subscribes on the cloud: its Mosquitto then costs
# about half the CPU per message (no fan-out to a QoS 1 subscriber) and the
# load generator only publishes, so on a 2-core box the edge gets the CPU the
# cloud side took (see docs/BENCHMARKS.md, "Why the drain after the max-rate
# run is slower"). Delivery is then counted by the cloud itself
# ($SYS/broker/publish/messages/received, sys_interval 1, polled every
# 0.2 s until it reaches the acked count or 60 s): the same for both sides,
# at 1 s granularity; no latency or loss figures in that mode.
#
# Cloud Mosquitto: max_inflight_messages 1000, max_queued_messages 0
# (unlimited), no persistence. Edge Mosquitto (B): persistence true,
# autosave_interval 1800 (Debian default: Mosquitto writes its persistence
# file periodically and at shutdown, it does not fsync per message), bridge
# with cleansession false and QoS 1. Outpost (A): fsync always, one lane.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
PUBS=${PUBS:-10}
CLOUD_SUB=${CLOUD_SUB:-1}
. bench/lib.sh
bench_lock
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
go build -trimpath -o "$work/outpost" ./cmd/outpost

start_cloud() {
  CLOUD=$(port)
  mkdir -p "$work/cloud"
  cloud_conf "$CLOUD" > "$work/cloud/m.conf"
  [ "$CLOUD_SUB" = 0 ] && echo "sys_interval 1" >> "$work/cloud/m.conf"
  mosquitto -c "$work/cloud/m.conf" >"$work/cloud/log" 2>&1 & pids+=($!); CLOUD_PID=$!
  sleep 0.3
}

run_bench() { # label url extra-args...
  local label=$1 url=$2; shift 2
  local cloud0; cloud0=$(cpu_ticks "$CLOUD_PID")
  if [ "$CLOUD_SUB" = 0 ]; then run_bench_nosub "$label" "$url" "$@"; return; fi
  "$work/outpost" bench --url "$url" --sub-url "tcp://127.0.0.1:$CLOUD" --sub-topic 'outpost/gw/#' \
    --topic 'bench/{client}/t' --publishers "$PUBS" --subscribers 1 --qos 1 --mqtt 5 --inflight 64 \
    --payload json --payload-size 200 --duration "$DURATION" --drain 30s --quiet --json "$@" > "$work/${label//[ \/]/_}.json"
  local cloud_s; cloud_s=$(( $(cpu_ticks "$CLOUD_PID") - cloud0 ))
  python3 - "$work/${label//[ \/]/_}.json" "$label" "$cloud_s" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency"]
print(f"{sys.argv[2]:<28} sent {r['sent_rate']:>8.0f}/s  acked {r['acked']:>8}  cloud recv {r['recv_rate']:>8.0f}/s  "
      f"lost {r['lost']}  dup {r['duplicates']}  device-to-cloud p50 {lat['p50_us']/1000:.2f} ms  p99 {lat['p99_us']/1000:.2f} ms"
      + (f"  edge CPU {r['broker']['cpu_percent']:.0f}%  RSS {r['broker']['max_rss_bytes']/1048576:.0f} MB" if r.get('broker') else ""))
# Where the cores went, per message delivered (publish + drain phases).
n = max(r["received"], 1)
cloud = int(sys.argv[3]) / int(sys.argv[4])
lg = r["loadgen_cpu"]["user_seconds"] + r["loadgen_cpu"]["system_seconds"]
edge = r["broker"]["cpu_seconds"] if r.get("broker") else 0
print(f"{'':<28} CPU per message: edge {edge/n*1e6:.1f} us  cloud Mosquitto {cloud/n*1e6:.1f} us  "
      f"loadgen {lg/n*1e6:.1f} us  (host busy {r.get('host_busy_percent', 0):.0f}%)")
PY
}

cloud_received() { # PUBLISH packets the cloud Mosquitto received so far ($SYS, retained, every 1 s)
  mosquitto_sub -h 127.0.0.1 -p "$CLOUD" -t '$SYS/broker/publish/messages/received' -C 1 -W 3 2>/dev/null || echo 0
}
run_bench_nosub() { # label url extra-args...: no cloud subscriber, delivery counted by the cloud
  local label=$1 url=$2; shift 2
  local f="$work/${label//[ \/]/_}.json" base t0 t1 got
  local edge0; edge0=$(cpu_ticks "$EDGE_PID")
  base=$(cloud_received); t0=$(date +%s.%N)
  "$work/outpost" bench --url "$url" --topic 'bench/{client}/t' --publishers "$PUBS" --subscribers 0 --qos 1 --mqtt 5 \
    --inflight 64 --payload json --payload-size 200 --duration "$DURATION" --quiet --json "$@" > "$f"
  local acked; acked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$f")
  local until=$((SECONDS + 60))
  while :; do
    got=$(( $(cloud_received) - base ))
    [ "$got" -ge "$acked" ] || [ "$SECONDS" -ge "$until" ] && break
    sleep 0.2
  done
  t1=$(date +%s.%N)
  local cloud_s edge_s; cloud_s=$(( $(cpu_ticks "$CLOUD_PID") - cloud0 )); edge_s=$(( $(cpu_ticks "$EDGE_PID") - edge0 ))
  python3 - "$f" "$label" "$cloud_s" "$(getconf CLK_TCK)" "$got" "$t0" "$t1" "$edge_s" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
got, t0, t1 = int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
print(f"{sys.argv[2]:<28} sent {r['sent_rate']:>8.0f}/s  acked {r['acked']:>8}  cloud received {got:>8} "
      f"({got/(t1-t0):>7.0f}/s from the first publish to the last delivery)"
      + (f"  edge CPU {r['broker']['cpu_percent']:.0f}%  RSS {r['broker']['max_rss_bytes']/1048576:.0f} MB" if r.get('broker') else ""))
n = max(got, 1)
cloud = int(sys.argv[3]) / int(sys.argv[4])
lg = r["loadgen_cpu"]["user_seconds"] + r["loadgen_cpu"]["system_seconds"]
edge = int(sys.argv[8]) / int(sys.argv[4])
print(f"{'':<28} CPU per message: edge {edge/n*1e6:.1f} us  cloud Mosquitto {cloud/n*1e6:.1f} us  "
      f"loadgen {lg/n*1e6:.1f} us  (host busy {r.get('host_busy_percent', 0):.0f}%)")
PY
}

echo "== A: outpost agent (fsync always) -> cloud Mosquitto"
start_cloud
A_MQTT=$(port); A_HTTP=$(port)
uplink_agent_conf "$work/outpost-data" "$A_HTTP" "$A_MQTT" "$CLOUD" > "$work/outpost.yaml"
"$work/outpost" run --config "$work/outpost.yaml" 2>"$work/outpost.log" & pids+=($!); EDGE_PID=$!
sleep 1
run_bench "outpost max rate" "tcp://127.0.0.1:$A_MQTT" --broker-pid "$EDGE_PID" || { tail -20 "$work/outpost.log"; exit 1; }
run_bench "outpost 5k msg/s" "tcp://127.0.0.1:$A_MQTT" --rate 5000 --broker-pid "$EDGE_PID"
echo "outpost RSS after the runs: $(awk '/VmRSS/{print $2/1024 " MB"}' /proc/$EDGE_PID/status)"
kill "$EDGE_PID" "$CLOUD_PID"; sleep 0.5

echo "== B: Mosquitto edge (persistence) --bridge--> cloud Mosquitto"
start_cloud
B_MQTT=$(port)
mkdir -p "$work/edge"
cat > "$work/edge/m.conf" <<CONF
listener $B_MQTT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/edge/
max_inflight_messages 1000
max_queued_messages 0
set_tcp_nodelay true
connection cloud
address 127.0.0.1:$CLOUD
topic bench/# out 1 "" outpost/gw/
cleansession false
bridge_protocol_version mqttv311
bridge_max_packet_size 0
CONF
mosquitto -c "$work/edge/m.conf" >"$work/edge/log" 2>&1 & pids+=($!); EDGE_PID=$!
sleep 1
run_bench "mosquitto bridge max rate" "tcp://127.0.0.1:$B_MQTT" --broker-pid "$EDGE_PID"
run_bench "mosquitto bridge 5k msg/s" "tcp://127.0.0.1:$B_MQTT" --rate 5000 --broker-pid "$EDGE_PID"
