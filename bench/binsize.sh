#!/usr/bin/env bash
# Build the static, stripped, -trimpath outpost binary (CGO off) and print
# its size, then a per-module breakdown of what the linker kept, from an
# unstripped build of the same code (bench/binsize/main.go reads its symbol
# table; the same figures as `go tool nm -size -sort size`, minus .bss,
# summed by module path).
#
# Usage: bench/binsize.sh [GOARCH] [--packages] [--top N]
#   GOARCH      amd64 (default), arm64, arm (GOARM=7), riscv64
#   --packages  break down by package instead of by module
set -euo pipefail
cd "$(dirname "$0")/.."
arch=amd64
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--packages) args+=(-packages) ;;
	--top) args+=(-top "$2"); shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) arch=$1 ;;
	esac
	shift
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOOS=linux GOARCH=$arch
[ "$arch" = arm ] && export GOARM=7
go build -trimpath -ldflags='-s -w' -o "$tmp/outpost" ./cmd/outpost
go build -trimpath -o "$tmp/outpost.syms" ./cmd/outpost
size=$(stat -c %s "$tmp/outpost")
awk -v s="$size" -v a="$arch" 'BEGIN { printf "outpost linux/%s, static, stripped, -trimpath: %d bytes (%.2f MiB)\n\n", a, s, s / 1048576 }'
if [ ${#args[@]} -gt 0 ] && [ "${args[0]}" = -packages ]; then by=package; else by=module; fi
echo "Symbol bytes by $by (unstripped build of the same code):"
GOOS= GOARCH= GOARM= go run ./bench/binsize "${args[@]}" -stripped-size "$size" "$tmp/outpost.syms"
