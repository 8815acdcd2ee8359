#!/usr/bin/env bash
# Regenerate the BPF object and its Go bindings (bpf2go, clang) and fail if
# they differ from what is committed: the committed files are what a normal
# `go build` (no clang) links, so they must be exactly what the C source
# compiles to. Run without --check to regenerate after editing the C source.
#
#   scripts/bpf-generate.sh           regenerate
#   scripts/bpf-generate.sh --check   regenerate, fail on any difference (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(internal/netpol/kernel)
for p in "${pkgs[@]}"; do
  (cd "$p" && go generate .)
done
if [ "${1:-}" = --check ]; then
  if ! git diff --exit-code --stat -- "${pkgs[@]}" || [ -n "$(git status --porcelain -- "${pkgs[@]}")" ]; then
    echo "bpf-generate: the generated BPF files differ from the committed ones; run scripts/bpf-generate.sh and commit"
    exit 1
  fi
  echo "bpf-generate: committed BPF objects and bindings match their C sources"
fi
