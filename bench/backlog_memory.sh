#!/usr/bin/env bash
# Agent memory while holding a large backlog on disk, then its drain rate.
#   bench/backlog_memory.sh            # SIZE=1GiB of records (1000-byte payloads)
# 1. Start `outpost run` with its uplink pointing at a cloud broker that is down.
# 2. Publish QoS 1 (fsync: always) until the lane holds SIZE bytes.
# 3. Report the agent's RSS (VmRSS) and peak (VmHWM), queue depth and bytes.
# 4. Start the cloud Mosquitto and time the drain of the whole backlog.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
. bench/lib.sh
bench_lock
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
go build -trimpath -o "$work/outpost" ./cmd/outpost
CLOUD=$(port); MQTT=$(port); HTTP=$(port)
COUNT=$(( SIZE_MB * 1024 * 1024 / 1100 ))
cat > "$work/outpost.yaml" <<YAML
node_id: gw
data_dir: $work/data
log: {level: warn}
telemetry: {address: 127.0.0.1:$HTTP}
runtime: {memory_limit: 64MiB}
broker:
  listeners: [{type: tcp, address: 127.0.0.1:$MQTT}]
  allow_anonymous: true
  anonymous_acl: [{topic: "#", access: all}]
  limits: {receive_maximum: 256}
pipeline:
  routes: [{from: ["bench/#"], to: ["uplink:bulk"]}]
uplink:
  enabled: true
  broker: mqtt://127.0.0.1:$CLOUD
  reconnect: {min: 100ms, max: 500ms}
  in_flight: 1000
  lanes: [{name: bulk, queue: {max_bytes: 4GiB, fsync: always}}]
YAML
"$work/outpost" run --config "$work/outpost.yaml" 2>"$work/outpost.log" & pids+=($!); AGENT=$!
sleep 1
echo "publishing $COUNT QoS 1 messages of 1000 bytes (about $SIZE_MB MiB) while the cloud is down"
"$work/outpost" bench --url "tcp://127.0.0.1:$MQTT" --publishers 10 --subscribers 0 --qos 1 --mqtt 5 \
  --payload-size 1000 --count "$COUNT" --quiet --broker-pid "$AGENT" | grep -E "sent|broker" || true
sleep 2
rss=$(awk '/VmRSS/{print $2/1024}' /proc/$AGENT/status); hwm=$(awk '/VmHWM/{print $2/1024}' /proc/$AGENT/status)
disk=$(du -sm "$work/data/queue/bulk" | cut -f1)
echo "backlog on disk: ${disk} MiB; agent RSS ${rss} MiB (peak ${hwm} MiB)"
curl -fsS "http://127.0.0.1:$HTTP/api/v1/queue" | python3 -c 'import json,sys; s=json.load(sys.stdin)["lanes"]["bulk"]; print("queue depth", s.get("depth"), "records,", s.get("bytes"), "bytes")' || true

cat > "$work/cloud.conf" <<CONF
listener $CLOUD 127.0.0.1
allow_anonymous true
max_inflight_messages 1000
max_queued_messages 0
CONF
start=$(date +%s.%N)
mosquitto -c "$work/cloud.conf" >/dev/null 2>&1 & pids+=($!)
while :; do
  depth=$(curl -fsS "http://127.0.0.1:$HTTP/api/v1/queue" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lanes"]["bulk"]["depth"])')
  [ "$depth" = 0 ] && break
  sleep 0.5
done
end=$(date +%s.%N)
python3 -c "import sys; d=$end-$start; print(f'drained $COUNT records ({$SIZE_MB} MiB) in {d:.1f} s: {$COUNT/d:,.0f} msg/s, {$SIZE_MB/d:.0f} MiB/s')"
echo "agent RSS after the drain: $(awk '/VmRSS/{print $2/1024}' /proc/$AGENT/status) MiB (peak $(awk '/VmHWM/{print $2/1024}' /proc/$AGENT/status) MiB)"
