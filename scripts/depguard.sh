#!/usr/bin/env bash
# Dependency guard, in the spirit of tailscale's depaware: the modules linked
# into each release binary, their versions and what each adds to the file
# are recorded in docs/deps/<binary>.txt. CI fails on a new, removed or
# re-versioned module, a module that grew by more than 32 KiB and 10%, or a
# stripped binary more than 256 KiB larger than recorded, until the file is
# regenerated (and the commit says why):
#
#   scripts/depguard.sh            check (CI)
#   scripts/depguard.sh -update    rewrite docs/deps/*.txt
set -euo pipefail
cd "$(dirname "$0")/.."
mode=check
[ "${1:-}" = -update ] && mode=update
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
mkdir -p docs/deps
status=0
for cmd in cmd/*/; do
  name=$(basename "$cmd")
  go build -trimpath -ldflags='-s -w' -o "$tmp/$name" "./$cmd"
  go build -trimpath -o "$tmp/$name.syms" "./$cmd"
  size=$(stat -c %s "$tmp/$name")
  if [ "$mode" = update ]; then
    GOOS= GOARCH= go run ./bench/binsize -list -stripped-size "$size" "$tmp/$name.syms" > "docs/deps/$name.txt"
    echo "wrote docs/deps/$name.txt ($size bytes stripped)"
  elif [ ! -f "docs/deps/$name.txt" ]; then
    echo "docs/deps/$name.txt is missing: run scripts/depguard.sh -update"; status=1
  else
    GOOS= GOARCH= go run ./bench/binsize -check "docs/deps/$name.txt" -stripped-size "$size" "$tmp/$name.syms" || status=1
  fi
done
exit $status
