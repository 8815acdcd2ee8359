#!/usr/bin/env bash
# Install what the test suite needs, only when it is missing:
#   mosquitto + mosquitto-clients  the real "cloud" broker and CLI tools
#   qemu-user-static               runs the arm64 build in the smoke test
#   python3-paho-mqtt              the Python example component
#   curl                           HTTP checks in the smoke test
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
/usr/bin/python3 -c "import paho.mqtt.client" >/dev/null 2>&1 || need+=(python3-paho-mqtt)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts mosquitto as a system service on install; tests start their own
# on free ports, so the system one is not needed (and would hold port 1883).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  ${SUDO:-} systemctl stop mosquitto || true
fi
pkill -x mosquitto 2>/dev/null || true
echo "dependencies ok: $(mosquitto -h 2>/dev/null | head -1 || true)"
