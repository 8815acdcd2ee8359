#!/usr/bin/env bash
# Durable path, side by side in one run:
#   A) devices --QoS 1--> outpost agent (fsync: always, group commit) --uplink--> Mosquitto "cloud"
#   B) devices --QoS 1--> Mosquitto edge with persistence --bridge--> Mosquitto "cloud"
# Same load generator (outpost bench), same payloads, subscribers on the cloud
# broker, so every figure is device-to-cloud. Scenarios: max rate, and a
# fixed 5k msg/s for latency.
#
#   bench/uplink_vs_bridge.sh            # DURATION=15s PUBS=10
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
  cat > "$work/cloud/m.conf" <<CONF
listener $CLOUD 127.0.0.1
allow_anonymous true
max_inflight_messages 1000
max_queued_messages 0
set_tcp_nodelay true
CONF
  mosquitto -c "$work/cloud/m.conf" >"$work/cloud/log" 2>&1 & pids+=($!); CLOUD_PID=$!
  sleep 0.3
}

cpu_of() { awk '{print $14+$15}' "/proc/$1/stat"; } # utime+stime, clock ticks
run_bench() { # label url extra-args...
  local label=$1 url=$2; shift 2
  local cloud0; cloud0=$(cpu_of "$CLOUD_PID")
  "$work/outpost" bench --url "$url" --sub-url "tcp://127.0.0.1:$CLOUD" --sub-topic 'outpost/gw/#' \
    --topic 'bench/{client}/t' --publishers "$PUBS" --subscribers 1 --qos 1 --mqtt 5 --inflight 64 \
    --payload json --payload-size 200 --duration "$DURATION" --drain 30s --quiet --json "$@" > "$work/${label//[ \/]/_}.json"
  local cloud_s; cloud_s=$(( $(cpu_of "$CLOUD_PID") - cloud0 ))
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

echo "== A: outpost agent (fsync always) -> cloud Mosquitto"
start_cloud
A_MQTT=$(port); A_HTTP=$(port)
cat > "$work/outpost.yaml" <<YAML
node_id: gw
data_dir: $work/outpost-data
log: {level: warn}
telemetry: {address: 127.0.0.1:$A_HTTP}
runtime: {memory_limit: 64MiB}
broker:
  listeners: [{type: tcp, address: 127.0.0.1:$A_MQTT}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
  limits: {receive_maximum: 256}
pipeline:
  partitions: 4
  routes: [{from: ["bench/#"], to: ["uplink:telemetry"]}]
uplink:
  enabled: true
  broker: mqtt://127.0.0.1:$CLOUD
  in_flight: 1000
  lanes: [{name: telemetry, queue: {fsync: always}}]
YAML
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
