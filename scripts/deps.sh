#!/usr/bin/env bash
# Install what the test suite needs, only when it is missing:
#   mosquitto + mosquitto-clients  the real "cloud" broker and CLI tools
#   qemu-user-static               runs the arm64 build in the smoke test
#   python3-paho-mqtt              the Python example component
#   curl                           HTTP checks in the smoke test
#   iproute2, clang, llvm, libbpf-dev  netpol tests (namespaces) and the BPF regeneration check
#   postgresql                     the fleet store tests start a throwaway cluster (initdb + pg_ctl)
#   prometheus                     promtool: lints a real agent's /metrics
#   podman                         container components (its Docker Engine API service)
#   containerd + runc              the containerd backend's tests (-tags containerd, a private containerd)
#   docker-registry                a private registry for the container pull tests
#   chromium                       the dashboard's browser tests (chromedp, headless)
#   patch                          scripts/mochi-reapply.sh applies the mochi fork's patch series
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
/usr/bin/python3 -c "import paho.mqtt.client" >/dev/null 2>&1 || need+=(python3-paho-mqtt)
command -v curl >/dev/null 2>&1 || need+=(curl)
# netpol: network namespaces (ip), BPF regeneration check (clang, llvm-strip,
# libbpf headers)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v llvm-strip >/dev/null 2>&1 || need+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v patch >/dev/null 2>&1 || need+=(patch)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts mosquitto as a system service on port 1883 when it installs
# it. The tests start their own brokers on free ports, so it is left alone;
# only `outpost demo` wants 1883 (use --port 0 if it is taken).
echo "dependencies ok: $(mosquitto -h 2>/dev/null | head -1 || true)"
