#!/usr/bin/env bash
# Build static, stripped, -trimpath outpost binaries with CGO disabled.
#
#   scripts/build.sh                 # all release platforms into dist/
#   scripts/build.sh linux/arm64     # one platform
#   VERSION=1.4.0 scripts/build.sh   # stamp a version (default: git describe)
#   TAGS=netpol,functions scripts/build.sh  # optional features (docs/netpol.md, docs/functions.md)
#
# Platforms: linux/amd64 linux/arm64 linux/arm (GOARM=7) linux/riscv64.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
PKG=github.com/outpost-edge/outpost/internal/buildinfo
LDFLAGS="-s -w -X $PKG.Version=$VERSION -X $PKG.Commit=$COMMIT -X $PKG.Date=$DATE"

platforms=("$@")
[ ${#platforms[@]} -eq 0 ] && platforms=(linux/amd64 linux/arm64 linux/arm linux/riscv64)

mkdir -p dist
for p in "${platforms[@]}"; do
  os=${p%/*}; arch=${p#*/}
  out=dist/outpost-$os-$arch
  goarm=""
  if [ "$arch" = arm ]; then goarm=7; out=dist/outpost-$os-armv7; fi
  echo "building $out ($VERSION)"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOARM=$goarm \
    go build -trimpath -tags "${TAGS:-}" -ldflags "$LDFLAGS" -o "$out" ./cmd/outpost
  ls -l "$out" | awk '{printf "  %s: %.1f MiB\n", $9, $5/1048576}'
done
