#!/usr/bin/env bash
# Follows the README's "Using it on a gateway" section as a user would, on
# this machine, as root: it runs the commands of the fenced block between
# <!-- gateway-install:begin --> and <!-- gateway-install:end --> one by one,
# so README and test cannot drift. Where systemd is not PID 1 (containers,
# CI), the `systemctl` line is replaced by what it would do: the unit is
# checked with `systemd-analyze verify`, its ExecStartPre and ExecStart lines
# are run as systemd would run them. Then a message is published and received
# through the installed agent with the admin password `outpost init` printed,
# and SIGTERM must stop it with status 0.
#
# It installs into /usr/local/bin, /etc/outpost, /var/lib/outpost and
# /etc/systemd/system, and removes them afterwards. It refuses to run where
# /etc/outpost exists and was not made by an earlier run of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "gateway-install-test: needs root (the README's steps do)"; exit 1; }
marker=/etc/outpost/.gateway-install-test
if [ -e /etc/outpost ] && [ ! -e $marker ]; then
  echo "gateway-install-test: /etc/outpost exists and is not from this test; not touching it"; exit 1
fi
cleanup() {
  [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null || true
  rm -rf /etc/outpost /var/lib/outpost /usr/local/bin/outpost /etc/systemd/system/outpost.service "$tmp"
}
tmp=$(mktemp -d)
trap cleanup EXIT
rm -rf /etc/outpost /var/lib/outpost

block=$(awk '/<!-- gateway-install:begin/{on=1; next} /<!-- gateway-install:end/{on=0} on' README.md | sed '/^```/d')
[ -n "$block" ] || { echo "gateway-install-test: no gateway-install block in README.md"; exit 1; }
for p in 1883 9100; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    echo "gateway-install-test: port $p is in use; the README's default config needs it"; exit 1
  fi
done

while IFS= read -r line; do
  [ -z "$line" ] && continue
  echo "+ $line"
  case "$line" in
  systemctl*)
    if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
      bash -c "$line"
    else
      echo "  (systemd is not PID 1 here: verifying the unit and running its Exec lines instead)"
      systemd-analyze verify /etc/systemd/system/outpost.service
      pre=$(sed -n 's/^ExecStartPre=//p' /etc/systemd/system/outpost.service)
      start=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/outpost.service)
      # "-" in front: failure is ignored (systemd.service(5)).
      if [ "${pre#-}" != "$pre" ]; then bash -c "${pre#-}" || true; else bash -c "$pre"; fi
      mkdir -p /var/lib/outpost
      bash -c "exec $start" >"$tmp/agent.log" 2>&1 &
      agent=$!
      for _ in $(seq 1 100); do
        curl -sf http://127.0.0.1:9100/readyz >/dev/null 2>&1 && break
        kill -0 $agent 2>/dev/null || { cat "$tmp/agent.log"; echo "gateway-install-test: agent exited"; exit 1; }
        sleep 0.1
      done
    fi ;;
  outpost\ init*)
    bash -c "$line" 2> >(tee "$tmp/init.err" >&2)
    touch $marker ;;
  *)
    bash -c "$line" ;;
  esac
done <<< "$block"
echo

sleep 0.2
pw=$(sed -n 's/^MQTT user "admin" password: \([^ ]*\).*/\1/p' "$tmp/init.err")
[ -n "$pw" ] || { echo "gateway-install-test: outpost init printed no admin password"; exit 1; }
mosquitto_sub -h 127.0.0.1 -p 1883 -u admin -P "$pw" -t 'sensors/#' -C 1 -W 10 -v >"$tmp/sub.out" &
sub=$!
sleep 0.5
mosquitto_pub -h 127.0.0.1 -p 1883 -u admin -P "$pw" -q 1 -t sensors/t1/temp -m '{"temp":21.5}'
wait $sub || { echo "gateway-install-test: the message did not come back"; cat "$tmp/agent.log"; exit 1; }
grep -q 'sensors/t1/temp {"temp":21.5}' "$tmp/sub.out"
# The example config archives sensors/# under data_dir (not /etc/outpost).
for _ in $(seq 1 50); do grep -qs 21.5 /var/lib/outpost/archive/telemetry.jsonl && break; sleep 0.1; done
grep -q 21.5 /var/lib/outpost/archive/telemetry.jsonl || { echo "gateway-install-test: nothing archived in /var/lib/outpost/archive"; ls -R /var/lib/outpost /etc/outpost; exit 1; }
if mosquitto_pub -h 127.0.0.1 -p 1883 -u admin -P wrong -t x -m y 2>/dev/null; then
  echo "gateway-install-test: a wrong password was accepted"; exit 1
fi
if [ -n "${agent:-}" ]; then
  kill -TERM "$agent"
  rc=0; wait "$agent" || rc=$?
  agent=
  [ "$rc" -eq 0 ] || { cat "$tmp/agent.log"; echo "gateway-install-test: SIGTERM exit status $rc, want 0"; exit 1; }
fi
echo "gateway-install-test: README gateway section works as written (install, init, check, unit, run, publish, archive, stop)"
