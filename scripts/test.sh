#!/usr/bin/env bash
# The whole test suite, as the README's quick start runs it:
#   1. installs the real test servers (etcd, consul, kube-apiserver) into .bin/ when missing,
#      and Chromium for the browser tests (apt-get, as root) when missing,
#   2. go vet ./...
#   3. go test -race ./... (mdns tests re-run themselves inside private
#      network namespaces they create; nothing multicasts on your network),
#   4. go vet and go test -race in every interop module (interop/*/go.mod).
# Extra arguments go to `go test` (e.g. scripts/test.sh -run Conformance -v).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
export GOTOOLCHAIN=local

for tool in ip unshare; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
			echo "==> installing iproute2 and util-linux (for network-namespace tests)"
			apt-get update -qq && apt-get install -y -qq iproute2 util-linux >/dev/null
		else
			echo "warning: '$tool' not found: mdns tests will skip (install iproute2/util-linux)" >&2
		fi
	fi
done

scripts/install-test-servers.sh
scripts/install-chromium.sh # the dashboard's browser tests (ui, cmd/beacon)
echo "==> go vet ./..."
go vet ./...
echo "==> go test -race ./..."
go test -race -timeout 30m "$@" ./...

# Interop modules (interop/*/go.mod) are modules of their own, so that
# Beacon's module does not depend on what they test against (go-micro):
# ./... above does not reach them.
for mod in interop/*/go.mod; do
	[ -e "$mod" ] || continue
	dir=${mod%/go.mod}
	echo "==> $dir: go vet ./... && go test -race ./..."
	# -mod=mod: the module follows Beacon's go.mod through its replace line,
	# so a change of Beacon's requirements needs no edit there.
	(cd "$dir" && go vet -mod=mod ./... && go test -mod=mod -race -timeout 15m "$@" ./...)
done
