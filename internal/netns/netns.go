// Package netns runs tests inside private Linux network namespaces, so that
// multicast (mDNS) traffic made by tests can never reach a real network.
//
// # The rule it enforces
//
// A test that sends multicast must run in a network namespace that the test
// binary created itself. Such a namespace has only a loopback interface (and
// whatever the test builds inside it), so no packet can leave the machine.
//
// # How
//
// A package's TestMain calls RunIsolated:
//
//	func TestMain(m *testing.M) { os.Exit(netns.RunIsolated(m)) }
//
// RunIsolated re-executes the test binary under
// `unshare --net --mount --propagation private` (plus `--user --map-root-user`
// when not root). The re-executed child brings `lo` up, routes the multicast
// range over it (`ip route add 224.0.0.0/4 dev lo`, since multicast groups are
// joined on the interface of the route to the group) and mounts a private
// tmpfs on /run/netns, so that `ip netns add` inside the child (see NewLab)
// makes namespaces nobody outside can see and that vanish with the child. The
// parent only waits and returns the child's exit code.
//
// Tests that send multicast call Require first: it skips (with the reason)
// when no private namespace could be made, fails when the environment
// variable BEACON_REQUIRE_NETNS=1 is set (CI), and always fails when the test
// would run in the initial namespace without a reason (a TestMain that forgot
// RunIsolated).
//
// NewLab builds a small LAN out of namespaces inside the private one: N
// "host" namespaces, each with an eth0 joined by a veth pair to a bridge that
// lives in a namespace of its own. Lab.Command runs a process in a host;
// Lab.Do runs a function with a thread switched into a host, so sockets it
// opens belong to that host.
//
// Only the standard library and the iproute2 `ip` and util-linux `unshare`
// commands are used. Everything is Linux-only; on other systems RunIsolated
// runs the tests directly and Require skips them.
package netns

import (
	"fmt"
	"os"
	"testing"
)

// Environment variables read or set by this package.
const (
	// EnvRequire, set to "1", turns every skip of Require and RequireLab
	// into a test failure. CI sets it so that multicast tests cannot pass by
	// being skipped.
	EnvRequire = "BEACON_REQUIRE_NETNS"
	// EnvUnavailable holds the reason why no private namespace could be
	// made; RunIsolated sets it before running the tests in the current
	// namespace, and Require reports it when skipping.
	EnvUnavailable = "BEACON_NETNS_UNAVAILABLE"
	// EnvLabUnavailable holds the reason why NewLab cannot work in this
	// process (e.g. /run/netns could not be made private).
	EnvLabUnavailable = "BEACON_NETNS_LAB_UNAVAILABLE"
	// EnvInitial holds "dev:inode" of the network namespace the test binary
	// was started in, as recorded by RunIsolated before re-executing. It is
	// the reference InPrivate uses when /proc/1/ns/net cannot be read (as
	// an unprivileged user, or inside a user namespace).
	EnvInitial = "BEACON_NETNS_INITIAL"

	// envChild marks the process re-executed by RunIsolated; the child
	// removes it from its environment once read, so that processes it
	// starts (lab hosts) do not repeat the setup.
	envChild = "BEACON_NETNS_CHILD"
)

// Require skips or fails t unless the test runs inside a private network
// namespace:
//   - inside a private namespace: returns, the test may use multicast;
//   - RunIsolated could not make one (EnvUnavailable is set): t.Skip with
//     the reason, or t.Fatal when BEACON_REQUIRE_NETNS=1;
//   - otherwise the test would send multicast in the initial namespace:
//     t.Fatal, always.
func Require(t testing.TB) {
	t.Helper()
	priv, err := InPrivate()
	switch v, msg := verdict(priv, err, os.Getenv(EnvUnavailable), os.Getenv(EnvRequire) == "1"); v {
	case run:
	case skipTest:
		t.Skip(msg)
	default:
		t.Fatal(msg)
	}
}

type action int

const (
	run action = iota
	skipTest
	failTest
)

// verdict decides what Require does. It is separate for testing: the
// interesting cases (no namespace, initial namespace) cannot happen inside
// the isolated test process.
func verdict(priv bool, err error, unavailable string, require bool) (action, string) {
	switch {
	case priv:
		return run, ""
	case unavailable != "" && require:
		return failTest, "netns: no private network namespace: " + unavailable + " (" + EnvRequire + "=1 forbids skipping)"
	case unavailable != "":
		return skipTest, "netns: no private network namespace: " + unavailable
	case err != nil:
		return failTest, fmt.Sprintf("netns: cannot tell whether this is a private network namespace (%v); refusing to send multicast", err)
	}
	return failTest, "netns: running in the initial network namespace; refusing to send multicast (TestMain must call netns.RunIsolated)"
}

// RequireLab calls Require, then builds a lab of n hosts with NewLab and
// closes it at the end of the test. When the lab cannot be built it skips
// with the reason (or fails when BEACON_REQUIRE_NETNS=1).
func RequireLab(t testing.TB, n int, opts ...LabOption) *Lab {
	t.Helper()
	Require(t)
	if reason := os.Getenv(EnvLabUnavailable); reason != "" {
		skip(t, "no namespace lab: "+reason)
		return nil
	}
	lab, err := NewLab(n, opts...)
	if err != nil {
		skip(t, fmt.Sprintf("no namespace lab: %v", err))
		return nil
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return lab
}

func skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("netns: %s (%s=1 forbids skipping)", reason, EnvRequire)
	}
	t.Skipf("netns: %s", reason)
}

// LabOption configures NewLab.
type LabOption func(*labOptions)

type labOptions struct {
	ipv6 bool
}

// LabIPv6 keeps IPv6 enabled in the lab (link-local addresses only, no
// duplicate address detection so they are usable at once). By default IPv6
// is disabled in every lab namespace.
func LabIPv6() LabOption { return func(o *labOptions) { o.ipv6 = true } }
