#!/usr/bin/env bash
# Beacon's demo on the default registry, mdns: zero configuration.
#
# It builds the greeter example and the beacon CLI, then, inside a private
# network namespace that it creates (nothing it sends can reach your real
# network), builds a small LAN of three hosts joined by a bridge:
#
#   h1 10.99.0.11  greeter node "h1"
#   h2 10.99.0.12  greeter node "h2"
#   h3 10.99.0.13  the client, `beacon services`, `beacon watch`
#
# The client calls "greeter" by name (round-robin across h1 and h2); then h1
# stops cleanly and disappears, and every call goes to h2.
#
# Needs Linux with root, or unprivileged user namespaces; and iproute2.
set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

if [ "${BEACON_DEMO_INSIDE:-}" != 1 ]; then
	export GOTOOLCHAIN=local
	for tool in ip unshare; do
		command -v "$tool" >/dev/null || { echo "demo: '$tool' is needed (apt-get install iproute2 util-linux)" >&2; exit 1; }
	done
	bin=$(mktemp -d "${TMPDIR:-/tmp}/beacon-demo.XXXXXX")
	trap 'rm -rf "$bin"' EXIT
	echo "==> building the greeter example and the beacon CLI"
	(cd "$root" && go build -o "$bin/greeter-server" ./examples/greeter/server &&
		go build -o "$bin/greeter-client" ./examples/greeter/client && go build -o "$bin/beacon" ./cmd/beacon)
	us=(unshare --net --mount --propagation private)
	[ "$(id -u)" = 0 ] || us=(unshare --user --map-root-user --net --mount --propagation private)
	echo "==> entering a private network namespace (no packet reaches your network)"
	BEACON_DEMO_INSIDE=1 BEACON_DEMO_BIN="$bin" "${us[@]}" -- "$0" "$@"
	exit $?
fi

# --- inside the private namespace ---------------------------------------------
bin=$BEACON_DEMO_BIN
P=bdemo$$
# A private /run/netns for `ip netns` (rootless: /run is not ours, so put a
# tmpfs over /run itself; this mount namespace is private to the demo).
if mkdir -p /run/netns 2>/dev/null; then
	mount -t tmpfs beacon-demo /run/netns
else
	mount -t tmpfs beacon-demo /run
	mkdir -p /run/netns
fi
ip link set lo up
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for ns in $(ip netns list | awk '{print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT

ip netns add "$P-br"
ip -n "$P-br" link set lo up
ip -n "$P-br" link add br0 type bridge mcast_snooping 0 stp_state 0 forward_delay 0
ip -n "$P-br" link set br0 up
for i in 1 2 3; do
	ns=$P-h$i
	ip netns add "$ns"
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
	ip -n "$P-br" link add "p$i" type veth peer name eth0 netns "$ns"
	ip -n "$P-br" link set "p$i" master br0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "10.99.0.1$i/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add 224.0.0.0/4 dev eth0
done
on() { local h=$1; shift; ip netns exec "$P-h$h" "$@"; }
echo "==> LAN up: h1 10.99.0.11, h2 10.99.0.12, h3 10.99.0.13 (bridged, private)"

log=$(mktemp -d)
ip netns exec "$P-h3" "$bin/beacon" watch greeter >"$log/watch" 2>&1 &
pids+=($!)
ip netns exec "$P-h1" "$bin/greeter-server" --node h1 >"$log/h1" 2>&1 &
h1=$!
pids+=($h1)
ip netns exec "$P-h2" "$bin/greeter-server" --node h2 >"$log/h2" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
	out=$(on 3 "$bin/beacon" services 2>/dev/null || true)
	case "$out" in *"greeter"*"2"*) break ;; esac
	sleep 0.1
done
echo
echo "\$ beacon services                      # on h3, registry: mdns (the default)"
on 3 "$bin/beacon" services
echo
echo "\$ beacon describe greeter"
on 3 "$bin/beacon" describe greeter
echo
echo "\$ greeter-client --count 6 --selector roundrobin   # calls \"greeter\" by name (the default, leastloaded, favours the faster node)"
on 3 "$bin/greeter-client" --count 6 --every 100ms --selector roundrobin
echo
echo "==> stopping h1's greeter cleanly (SIGTERM: deregister, goodbye, drain, stop)"
kill -TERM "$h1"
wait "$h1" 2>/dev/null || true
echo
echo "\$ greeter-client --count 4             # h1 has left: every call goes to h2"
on 3 "$bin/greeter-client" --count 4 --every 100ms
echo
echo "\$ beacon call greeter Greeter.Hello '{\"name\":\"Bo\"}'"
on 3 "$bin/beacon" call greeter Greeter.Hello '{"name":"Bo"}'
echo
echo "==> what \`beacon watch greeter\` on h3 saw:"
sed 's/^/    /' "$log/watch"
rm -rf "$log"
