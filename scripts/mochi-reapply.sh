#!/usr/bin/env bash
# Re-applies Outpost's patch series for the mochi fork
# (third_party/mochi-mqtt-server/patches/NNNN-*.patch, see its PATCHES.md)
# onto an upstream tag of github.com/mochi-mqtt/server/v2, fetched from the
# Go module proxy and trimmed to the packages Outpost links.
#
#   scripts/mochi-reapply.sh --check
#       CI: apply the series onto v2.7.9 (the fork's base) with no fuzz and
#       require the result to equal the fork's tree (PATCHES.md and patches/
#       aside). Fails if a source change in the fork is not in a patch.
#   scripts/mochi-reapply.sh vX.Y.Z [DIR]
#       Upgrade: apply the series onto vX.Y.Z and write the tree to DIR
#       (default /tmp/mochi-vX.Y.Z). A hunk that does not apply is left as a
#       .rej file next to its source and listed; the exit status is 1 then.
#       Review, drop the patches upstream has, regenerate the patch files
#       (diff -uN against the trimmed tag), then copy DIR over the fork.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fork=third_party/mochi-mqtt-server
module=github.com/mochi-mqtt/server/v2
base=v2.7.9

# What the fork does not carry from upstream (PATCHES.md: trimmed copy).
trim=(.github .gitignore .golangci.yml Dockerfile README.md README-CN.md README-JP.md
	cmd config config.yaml examples go.sum hooks/auth hooks/debug
	hooks/storage/badger hooks/storage/bolt hooks/storage/pebble hooks/storage/redis)

check=0
case "${1:-}" in
--check) check=1; tag=$base ;;
v*) tag=$1 ;;
*) echo "usage: $0 --check | vX.Y.Z [DIR]" >&2; exit 2 ;;
esac
out=${2:-/tmp/mochi-$tag}
[ "$check" = 1 ] && out=$(mktemp -d /tmp/mochi-reapply.XXXXXX)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ "$check" = 1 ] && rm -rf "$out"' EXIT
# Outside any module, so the fork's replace directive does not apply.
src=$(cd "$tmp" && GOFLAGS=-mod=mod GO111MODULE=on go mod download -json "$module@$tag" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "mochi-reapply: $module@$tag: no module directory" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
cp -r "$src"/. "$out"/
chmod -R u+w "$out"
(cd "$out" && rm -rf "${trim[@]}")

fail=0
for p in "$root/$fork"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
	name=$(basename "$p")
	if [ "$check" = 1 ]; then
		if ! patch -d "$out" -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch -s <"$p"; then
			echo "mochi-reapply: $name does not apply onto $tag" >&2
			fail=1
		fi
	else
		if ! patch -d "$out" -p1 --batch --forward --no-backup-if-mismatch -s <"$p"; then
			echo "mochi-reapply: $name: hunks rejected (see .rej files in $out)" >&2
			fail=1
		fi
	fi
done

if [ "$check" = 1 ]; then
	if ! diff -r -x patches -x PATCHES.md "$out" "$fork"; then
		echo "mochi-reapply: the patch series onto $tag differs from $fork (diff above):" >&2
		echo "  regenerate the patch that covers the changed file (PATCHES.md, 'Patch files')" >&2
		exit 1
	fi
	[ "$fail" = 0 ] && echo "mochi-reapply: $(ls "$fork"/patches/*.patch | wc -l) patch files onto $tag == $fork"
	exit "$fail"
fi
echo "mochi-reapply: $tag + patches in $out"
find "$out" -name '*.rej' | sed 's/^/  rejected: /'
exit "$fail"
