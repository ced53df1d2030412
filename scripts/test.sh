#!/usr/bin/env bash
# The whole test suite, as the README's quick start runs it:
#   1. installs the real test servers (etcd, consul) into .bin/ when missing,
#   2. go vet ./...
#   3. go test -race ./... (mdns tests re-run themselves inside private
#      network namespaces they create; nothing multicasts on your network),
#   4. go vet and go test -race in interop/gozero, a module of its own (go-zero
#      zrpc servers reached through beacon:///; keeps go-zero out of go.mod).
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
echo "==> go vet ./..."
go vet ./...
echo "==> go test -race ./..."
go test -race -timeout 30m "$@" ./...
echo "==> interop/gozero: go vet ./... && go test -race ./..."
(cd interop/gozero && go vet ./... && go test -race -timeout 10m "$@" ./...)
