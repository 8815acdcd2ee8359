#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
#   1. install missing test dependencies (scripts/deps.sh)
#   2. gofmt, go vet, staticcheck
#   3. go test -race on every package (real broker, real Mosquitto, real files)
#   4. cross-build the release binaries and smoke-test the arm64 one under qemu
#   5. the dependency guard and the README's gateway install, run as written
#   (and the mochi fork's own tests, vet, staticcheck and patch series)
# Options: SKIP_RACE=1 runs tests without -race (faster locally).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}
step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/deps.sh

step "tracked files (no binaries, nothing large unlisted)"
scripts/check-files.sh

step "generated BPF objects match their C sources"
scripts/bpf-generate.sh --check

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "not gofmt-ed:"; echo "$unformatted"; exit 1; fi

step "go vet"
go vet ./...

step "staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.7.0 ./...

step "go test"
race="-race"
[ "${SKIP_RACE:-}" = 1 ] && race=""
# The kill -9 test drives a separately built (never race-instrumented) agent
# process; it runs in its own pass without -race so that the race detector's
# slowdown of the test's own MQTT clients does not starve it.
go test $race -count=1 -timeout 30m -skip 'TestKill9' ./...

step "go test: optional features (-tags functions,netpol)"
# The wazero runtime (docs/functions.md) and the eBPF/nftables network policy
# (docs/netpol.md) are linked only with their build tags; their own packages
# are tested above, their agent wiring and commands here.
go vet -tags functions,netpol ./internal/agent/ ./cmd/outpost/
go run honnef.co/go/tools/cmd/staticcheck@v0.7.0 -tags functions,netpol ./internal/agent/ ./cmd/outpost/
go test $race -count=1 -timeout 15m -tags functions,netpol -run 'Function|Netpol' ./internal/agent/ ./cmd/outpost/

step "go test: containerd backend (-tags containerd)"
# containerd's Go client adds about 9 MB, so the backend is linked only with
# -tags containerd (docs/components.md). The shared container tests run once
# more, against a private containerd only (podman's ran above).
go vet -tags containerd ./internal/supervisor/... ./cmd/outpost/
go run honnef.co/go/tools/cmd/staticcheck@v0.7.0 -tags containerd ./internal/supervisor/...
go test $race -count=1 -timeout 15m -tags containerd \
	-run '^(TestContainerdUnavailable|TestLifecycle|TestStopIgnoringTerm|TestOOM|TestBadInput|TestContainer(Component|ExecHealthOOMAndStop|BadImages|Policy|ReadoptAfterKill9|Dependencies|NewVersionCollectsOldImage))$/^containerd$' \
	./internal/supervisor/container/ ./internal/supervisor/

step "third_party/mochi-mqtt-server: upstream's tests, vet, staticcheck; the patch series re-applies"
# The fork is its own module (not in ./...). -tags mochitest links upstream's
# test-packet table (PATCHES.md, patch 2).
(cd third_party/mochi-mqtt-server &&
	go vet -tags mochitest ./... &&
	go run honnef.co/go/tools/cmd/staticcheck@v0.7.0 -tags mochitest ./... &&
	go test $race -count=1 -timeout 10m -tags mochitest ./...)
scripts/mochi-reapply.sh --check

step "go test: kill -9 store-and-forward test (no -race)"
set -o pipefail
go test -count=1 -timeout 15m -run 'TestKill9' -v ./cmd/outpost/ | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|kill9_test.go'


step "release builds + arm64 smoke test under qemu"
scripts/build.sh
scripts/smoke-arm64.sh dist/outpost-linux-arm64

step "dependency guard (docs/deps/*.txt)"
scripts/depguard.sh

step "README gateway install, as written"
scripts/gateway-install-test.sh

step "all tests passed"
