#!/usr/bin/env bash
# Refuse tracked files that do not belong in the repository: compiled
# executables (ELF, Mach-O, PE) and anything over 1 MiB, unless listed in
# scripts/large-files.allow (one path per line, with a comment saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
allow=scripts/large-files.allow
bad=0
declare -A allowed=()
if [ -f "$allow" ]; then
  while read -r path _; do
    case "$path" in ''|'#'*) continue ;; esac
    allowed[$path]=1
  done < "$allow"
fi
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  [ -n "${allowed[$f]:-}" ] && continue
  size=$(stat -c %s "$f")
  if [ "$size" -gt 1048576 ]; then
    echo "tracked file over 1 MiB: $f ($size bytes); add it to $allow with a reason, or remove it"
    bad=1
  fi
  magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
  case "$magic" in
    7f454c46|cffaedfe|cefaedfe|feedface|feedfacf|4d5a*)
      # BPF objects (ELF) are generated build inputs and may be listed.
      echo "tracked executable binary: $f; build it instead of committing it (or list it in $allow)"
      bad=1 ;;
  esac
done < <(git ls-files -z)
[ "$bad" -eq 0 ] && echo "tracked files ok: no executables, nothing over 1 MiB unlisted"
exit "$bad"
