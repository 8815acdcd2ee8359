#!/usr/bin/env bash
# Memory of the agent under a storm of wrong-password logins, and under sockets
# that never send CONNECT (issue 10, items 3 and "no timeout before CONNECT").
#   bench/login_storm.sh [BINARY] [N]
# Builds the static binary if none is given. The broker has one argon2id user "gw"
# with m=19 MiB, t=2 (the parameters of the probe that found the hole). Reports peak
# RSS (VmHWM) after:
#   a) N (default 32) parallel wrong passwords for "gw" from 127.0.0.1 (the probe);
#   b) N parallel logins of N different unknown users from N different addresses
#      (127.0.0.2...), which the rate limiter does not stop: every one is verified;
#   c) 300 sockets that never send CONNECT, held 4 s; then how many are still open
#      after connect_timeout (3 s here).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_lock
BIN=${1:-}
N=${2:-32}
if [ -z "$BIN" ]; then scripts/build.sh linux/amd64 >/dev/null; BIN=dist/outpost-linux-amd64; fi
work=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
HTTP=$(port); MQTT=$(port)
cat > "$work/o.yaml" <<YAML
data_dir: $work/data
telemetry: {address: 127.0.0.1:$HTTP}
broker:
  listeners: [{type: tcp, address: 127.0.0.1:$MQTT}]
  users:
    - username: gw
      password_hash: "\$argon2id\$v=19\$m=19456,t=2,p=1\$c2FsdHNhbHRzYWx0c2FsdA\$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
      acl: [{topic: "#", access: all}]
  limits: {connect_timeout: 3s}
YAML
# An agent without connect_timeout (before issue 10) refuses the key: drop it.
"$BIN" config check "$work/o.yaml" >/dev/null 2>&1 || sed -i '/connect_timeout/d' "$work/o.yaml"
"$BIN" run --config "$work/o.yaml" 2>/dev/null & pid=$!
wait_port "$MQTT" $pid
sleep 1
rss() { awk -v k="$1" '$1==k":"{printf "%.0f MB", $2/1024}' /proc/$pid/status; }
echo "idle: RSS $(rss VmRSS), peak $(rss VmHWM)"
cat > "$work/storm.py" <<'PY'
import socket, struct, sys, threading
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def s(b): return struct.pack(">H", len(b)) + b
codes = []
def login(i):
    src = "127.0.0.1" if mode == "known" else "127.0.%d.%d" % (i // 250, 2 + i % 250)
    user = b"gw" if mode == "known" else b"nobody%d" % i
    body = s(b"MQTT") + bytes([4, 0xC2, 0, 60]) + s(b"c%d" % i) + s(user) + s(b"wrong")
    c = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(src, 0))
    c.sendall(bytes([0x10, len(body)]) + body)
    ack = c.recv(4)
    codes.append(ack[3] if len(ack) == 4 else -1)
    c.close()
ts = [threading.Thread(target=login, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join() for t in ts]
print("return codes:", {c: codes.count(c) for c in set(codes)})
PY
python3 "$work/storm.py" "$MQTT" "$N" known
echo "a) after $N parallel wrong logins for gw: RSS $(rss VmRSS), peak $(rss VmHWM)"
python3 "$work/storm.py" "$MQTT" "$N" unknown
echo "b) after $N unknown users from $N addresses: RSS $(rss VmRSS), peak $(rss VmHWM)"
python3 - "$MQTT" "$pid" <<'PY'
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
time.sleep(4)
rss = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0]
open_ = 0
for s in socks:
    s.setblocking(False)
    try:
        open_ += 0 if s.recv(1) == b"" else 1
    except BlockingIOError:
        open_ += 1
    except OSError:
        pass
print(f"c) 300 sockets without CONNECT, after 4 s: RSS {int(rss)//1024} MB, still open: {open_}")
PY
curl -s "http://127.0.0.1:$HTTP/metrics" | grep -E 'connect_timeout|password_verifications|login_refusals' || true
