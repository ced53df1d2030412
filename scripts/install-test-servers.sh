#!/usr/bin/env bash
# Builds the real servers used by the integration tests into <repo>/.bin:
#
#   .bin/etcd      go.etcd.io/etcd/server/v3   (pinned in tools/etcd/go.mod)
#   .bin/etcdctl   go.etcd.io/etcd/etcdctl/v3  (pinned in tools/etcd/go.mod)
#   .bin/consul    github.com/hashicorp/consul (pinned in tools/consul/go.mod)
#   .bin/kube-apiserver  k8s.io/kubernetes/cmd/kube-apiserver (pinned in tools/kubernetes/go.mod)
#
# Only Go is needed. A cold build takes ~10-15 minutes (consul dominates) and
# fills ~4 GB of Go module/build caches; later runs skip binaries whose version
# already matches. Set FORCE=1 to rebuild anyway. kube-apiserver adds about
# 11 minutes cold, 2.8 GB of RAM and 3.5 GB of caches.
#
# Usage: scripts/install-test-servers.sh   (from any directory)
set -euo pipefail

ETCD_VERSION=3.7.3
CONSUL_VERSION=1.22.7

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd -- "$script_dir/.." && pwd)
cd "$repo_root"

export GOTOOLCHAIN=local

bin_dir="$repo_root/.bin"
mkdir -p "$bin_dir"

log() { printf '==> %s\n' "$*"; }

if ! command -v go >/dev/null 2>&1; then
	echo "error: 'go' not found in PATH; install Go first" >&2
	exit 1
fi
log "using $(go version) (GOTOOLCHAIN=local), installing into $bin_dir"

# version_matches <binary> <expected-substring> <version args...>
# Output is captured into a variable first: `cmd | grep -q` under pipefail
# can fail with SIGPIPE when grep exits early.
version_matches() {
	local bin=$1 want=$2 out
	shift 2
	[[ -x $bin ]] || return 1
	[[ ${FORCE:-0} == 1 ]] && return 1
	out=$("$bin" "$@" 2>&1) || return 1
	[[ $out == *"$want"* ]]
}

# build <tools-module-dir> <package> <output> [extra ldflags]
build() {
	local moddir=$1 pkg=$2 out=$3 ldflags="-s -w${4:+ $4}" start end
	log "building $pkg (module tools/$moddir) -> ${out#"$repo_root"/}"
	start=$(date +%s)
	(
		cd "$repo_root/tools/$moddir"
		go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg"
	)
	mv -f "$out.tmp" "$out"
	end=$(date +%s)
	log "built ${out#"$repo_root"/} in $((end - start))s"
}

# --- etcd -------------------------------------------------------------------
if version_matches "$bin_dir/etcd" "etcd Version: $ETCD_VERSION" --version; then
	log "etcd $ETCD_VERSION already installed, skipping"
else
	build etcd go.etcd.io/etcd/server/v3 "$bin_dir/etcd"
fi

if version_matches "$bin_dir/etcdctl" "etcdctl version: $ETCD_VERSION" version; then
	log "etcdctl $ETCD_VERSION already installed, skipping"
else
	build etcd go.etcd.io/etcd/etcdctl/v3 "$bin_dir/etcdctl"
fi

# --- consul -----------------------------------------------------------------
if version_matches "$bin_dir/consul" "Consul v$CONSUL_VERSION" version; then
	log "consul $CONSUL_VERSION already installed, skipping"
else
	log "consul is a large build (~10 min cold, several GB of Go caches)"
	build consul github.com/hashicorp/consul "$bin_dir/consul"
fi

# --- kube-apiserver (registry/kubernetes) -----------------------------------
KUBE_VERSION=1.37.2
if version_matches "$bin_dir/kube-apiserver" "Kubernetes v$KUBE_VERSION" --version; then
	log "kube-apiserver $KUBE_VERSION already installed, skipping"
else
	log "kube-apiserver is a large build (~11 min cold, 2.8 GB of RAM)"
	build kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$bin_dir/kube-apiserver" \
		"-X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=${KUBE_VERSION%%.*} -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")"
fi

log "versions:"
etcd_v=$("$bin_dir/etcd" --version 2>&1)
etcdctl_v=$("$bin_dir/etcdctl" version 2>&1)
consul_v=$("$bin_dir/consul" version 2>&1)
kube_v=$("$bin_dir/kube-apiserver" --version 2>&1)
printf '    %s\n' "${etcd_v%%$'\n'*}" "${etcdctl_v%%$'\n'*}" "${consul_v%%$'\n'*}" "${kube_v%%$'\n'*}"
log "done; e.g. $bin_dir/etcdctl --endpoints=127.0.0.1:2379 get --prefix /micro/registry/"
