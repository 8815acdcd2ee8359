#!/usr/bin/env bash
# Smoke-test a non-native outpost build under qemu user emulation:
#   version --verbose, start with a test config, wait for /readyz,
#   publish and subscribe once through its broker, SIGTERM, expect exit 0.
#
#   scripts/smoke-arm64.sh dist/outpost-linux-arm64 [qemu-binary]
set -euo pipefail
BIN=${1:?usage: smoke-arm64.sh BINARY [QEMU]}
QEMU=${2:-qemu-aarch64-static}
command -v "$QEMU" >/dev/null || { echo "missing $QEMU (apt-get install qemu-user-static)"; exit 1; }
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
MQTT=$(free_port); HTTP=$(free_port)

echo "--- $BIN version --verbose (under $QEMU)"
ver=$("$QEMU" "$BIN" version --verbose)
printf '%s\n' "$ver" | head -8

HASH=$(printf 'smoke-secret\n' | "$QEMU" "$BIN" passwd)
cat > "$work/outpost.yaml" <<YAML
node_id: smoke
data_dir: $work/data
telemetry: {address: 127.0.0.1:$HTTP}
broker:
  listeners: [{type: tcp, address: 127.0.0.1:$MQTT}]
  users:
    - {username: smoke, password_hash: "$HASH", acl: [{topic: "smoke/#", access: all}]}
YAML
"$QEMU" "$BIN" config check "$work/outpost.yaml"

echo "--- start"
start=$(date +%s%N)
"$QEMU" "$BIN" run --config "$work/outpost.yaml" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "agent exited early"; exit 1; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$HTTP/readyz" >/dev/null || { cat "$work/log"; echo "never became ready"; exit 1; }
echo "ready after $(( ($(date +%s%N) - start) / 1000000 )) ms (emulated)"

echo "--- publish/subscribe once"
mosquitto_sub -h 127.0.0.1 -p "$MQTT" -u smoke -P smoke-secret -t 'smoke/#' -C 1 -W 20 >"$work/got" &
sub=$!
sleep 1
mosquitto_pub -h 127.0.0.1 -p "$MQTT" -u smoke -P smoke-secret -t smoke/hello -q 1 -m "hello from arm64"
wait "$sub"
grep -q "hello from arm64" "$work/got" || { echo "message not received"; cat "$work/log"; exit 1; }
echo "received: $(cat "$work/got")"

echo "--- SIGTERM"
kill -TERM "$pid"
set +e
wait "$pid"; rc=$?
set -e
pid=""
if [ "$rc" -ne 0 ]; then cat "$work/log"; echo "exit code $rc, want 0"; exit 1; fi
echo "clean exit 0: arm64 smoke test passed"
