package beacongrpc_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
)

// lbFakeCC records what a resolver reports.
type lbFakeCC struct {
	mu     sync.Mutex
	states []resolver.State
	errs   []error
}

func (f *lbFakeCC) UpdateState(s resolver.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, s)
	return nil
}

func (f *lbFakeCC) ReportError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
}

func (f *lbFakeCC) NewAddress([]resolver.Address) {}

func (f *lbFakeCC) ParseServiceConfig(string) *serviceconfig.ParseResult { return nil }

func (f *lbFakeCC) snapshot() ([]resolver.State, []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.states), slices.Clone(f.errs)
}

// lastIDs returns the node IDs of the last state (sorted), or "none".
func (f *lbFakeCC) lastIDs() string {
	states, _ := f.snapshot()
	if len(states) == 0 {
		return "none"
	}
	var ids []string
	for _, ep := range states[len(states)-1].Endpoints {
		n, ok := beacongrpc.EndpointNode(ep)
		if !ok {
			return "endpoint without a node"
		}
		ids = append(ids, n.ID)
	}
	slices.Sort(ids)
	return fmt.Sprint(ids)
}

func (f *lbFakeCC) wantIDs(t *testing.T, want string) {
	t.Helper()
	lbEventually(t, 5*time.Second, func() error {
		if got := f.lastIDs(); got != want {
			return fmt.Errorf("last state %s, want %s", got, want)
		}
		return nil
	})
}

func lbTarget(t testing.TB, s string) resolver.Target {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return resolver.Target{URL: *u}
}

func lbBuild(t *testing.T, b *beacongrpc.Builder, tg string) *lbFakeCC {
	t.Helper()
	cc := &lbFakeCC{}
	r, err := b.Build(lbTarget(t, tg), cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return cc
}

// fake registry records (no server behind them) for resolver-only tests.
func lbRec(name, version string, ids ...string) *registry.Service {
	s := &registry.Service{Name: name, Version: version}
	for i, id := range ids {
		md := map[string]string{registry.MetaProtocol: registry.ProtocolGRPC, "zone": "a"}
		if i%2 == 1 {
			md["zone"] = "b"
		}
		if strings.HasPrefix(id, "bcn") {
			md[registry.MetaProtocol] = registry.ProtocolBeacon
		}
		if strings.HasPrefix(id, "none") {
			delete(md, registry.MetaProtocol)
		}
		s.Nodes = append(s.Nodes, &registry.Node{ID: id, Address: fmt.Sprintf("127.0.0.1:%d", 1+i), Metadata: md})
	}
	return s
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "beacon:///greeter", want: `"greeter" (protocol grpc)`},
		{in: "beacon:greeter", want: `"greeter" (protocol grpc)`},
		{in: "beacon:///greeter?version=1.2.0", want: `"greeter" (protocol grpc, version 1.2.0)`},
		{in: "beacon:///greeter?version=1.2.0,1.3.0&md.zone=a&md.zone=b&md.dc=x", want: `"greeter" (protocol grpc, version 1.2.0 or 1.3.0, metadata dc=x, metadata zone=a or b)`},
		{in: "beacon:///greeter?protocol=any", want: `"greeter" (any protocol)`},
		{in: "beacon:///greeter?protocol=grpc,mucp", want: `"greeter" (protocol grpc or mucp)`},
		{in: "beacon:///greeter?md.a%26b=x%3Dy", want: `"greeter" (protocol grpc, metadata a&b=x=y)`},
		{in: "beacon:///greeter?versoin=1", err: `unknown query key "versoin"`},
		{in: "beacon:///greeter?protocol=", err: "empty protocol"},
		{in: "beacon:///greeter?md.=x", err: `unknown query key "md."`},
		{in: "beacon://authority/greeter", err: "authority"},
		{in: "beacon:///", err: "invalid"},
		{in: "beacon:///greeter?version=%zz", err: "invalid URL escape"},
	} {
		tg, err := beacongrpc.ParseTarget(lbTarget(t, tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one with %q", tc.in, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.err == "" && tg.String() != tc.want:
			t.Errorf("%s: %s, want %s", tc.in, tg.String(), tc.want)
		}
	}
	// Build refuses a bad target.
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	if _, err := b.Build(lbTarget(t, "beacon:///greeter?x=1"), &lbFakeCC{}, resolver.BuildOptions{}); err == nil {
		t.Fatal("Build accepted an unknown query key")
	}
}

// TestResolverFollowsTheRegistry: the nodes that pass the target's filters,
// pushed at once and on every change, with the node in the endpoint's and
// the address's attributes; an empty list only when the nodes left.
func TestResolverFollowsTheRegistry(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem, beacongrpc.WithCacheOptions(cache.WithEmptyHold(0)))
	defer b.Close()
	lbRegister(t, mem, lbRec("greeter", "1.0.0", "a", "b", "bcn1", "none1"))
	lbRegister(t, mem, lbRec("greeter", "1.2.0", "c", "d"))

	all := lbBuild(t, b, "beacon:///greeter")
	v12 := lbBuild(t, b, "beacon:///greeter?version=1.2.0")
	zoneA := lbBuild(t, b, "beacon:///greeter?md.zone=a")
	anyP := lbBuild(t, b, "beacon:///greeter?protocol=any")
	bcn := lbBuild(t, b, "beacon:///greeter?protocol=beacon")
	all.wantIDs(t, "[a b c d]")
	v12.wantIDs(t, "[c d]")
	zoneA.wantIDs(t, "[a c]") // a, c are first of their versions: zone a
	anyP.wantIDs(t, "[a b bcn1 c d none1]")
	bcn.wantIDs(t, "[bcn1]")

	// The endpoint and the address carry the node and its version.
	states, errs := all.snapshot()
	if len(errs) != 0 {
		t.Fatalf("errors with good state: %v", errs)
	}
	st := states[len(states)-1]
	if len(st.Addresses) != len(st.Endpoints) {
		t.Fatal("addresses and endpoints differ")
	}
	for i, ep := range st.Endpoints {
		n, _ := beacongrpc.EndpointNode(ep)
		an, ok := beacongrpc.AddressNode(st.Addresses[i])
		if !ok || an != n || len(ep.Addresses) != 1 || ep.Addresses[0].Addr != n.Address || st.Addresses[i].Addr != n.Address {
			t.Fatalf("endpoint %d: %+v, address %+v", i, ep, st.Addresses[i])
		}
		if n.Metadata["zone"] == "" || n.Service.Name != "greeter" || (n.ID == "c" && n.Service.Version != "1.2.0") {
			t.Fatalf("node %s: metadata %v, service %s %s", n.ID, n.Metadata, n.Service.Name, n.Service.Version)
		}
		if ep.Addresses[0].Attributes != nil {
			t.Fatal("node data in the address's own attributes (a metadata change would reconnect)")
		}
	}

	// Changes.
	lbRegister(t, mem, lbRec("greeter", "1.2.0", "c", "d", "e"))
	all.wantIDs(t, "[a b c d e]")
	v12.wantIDs(t, "[c d e]")
	lbDeregister(t, mem, lbRec("greeter", "1.2.0", "c"))
	v12.wantIDs(t, "[d e]")
	// A change that a target does not see pushes nothing to it.
	n := len(func() []resolver.State { s, _ := bcn.snapshot(); return s }())
	lbRegister(t, mem, lbRec("greeter", "1.2.0", "c"))
	all.wantIDs(t, "[a b c d e]")
	if s, _ := bcn.snapshot(); len(s) != n {
		t.Fatal("a change of other nodes pushed a state")
	}
	// The nodes of a target leave one by one: an empty state and an error.
	lbDeregister(t, mem, lbRec("greeter", "1.2.0", "c"))
	lbDeregister(t, mem, lbRec("greeter", "1.2.0", "d"))
	lbDeregister(t, mem, lbRec("greeter", "1.2.0", "e"))
	v12.wantIDs(t, "[]")
	lbEventually(t, 5*time.Second, func() error {
		_, errs := v12.snapshot()
		if len(errs) == 0 || !strings.Contains(errs[0].Error(), "no node that passes the filters") {
			return fmt.Errorf("errors %v", errs)
		}
		return nil
	})
}

// TestResolverNeverEmptiesOnRegistryFailure: a registry that fails after
// the first lookup changes nothing the client sees (no empty state, no
// error); when the first lookup itself fails, the error is reported and the
// lookup retried until it succeeds.
func TestResolverNeverEmptiesOnRegistryFailure(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	f := &lbFailing{Registry: mem}
	b := beacongrpc.NewBuilder(f, beacongrpc.WithCacheOptions(cache.WithRefreshInterval(20*time.Millisecond)))
	defer b.Close()
	lbRegister(t, mem, lbRec("greeter", "1", "a", "b"))
	cc := lbBuild(t, b, "beacon:///greeter")
	cc.wantIDs(t, "[a b]")

	f.fail()
	lbDeregister(t, mem, lbRec("greeter", "1", "a", "b")) // unheard while lbFailing
	fails := f.fails.Load()
	lbEventually(t, 10*time.Second, func() error {
		if f.fails.Load() < fails+5 {
			return errors.New("waiting for failed refreshes")
		}
		return nil
	})
	// A new target's first lookup fails: reported, then retried.
	other := lbBuild(t, b, "beacon:///other")
	lbEventually(t, 5*time.Second, func() error {
		if _, errs := other.snapshot(); len(errs) == 0 || !strings.Contains(errs[0].Error(), errLBDown.Error()) {
			return fmt.Errorf("errors %v", errs)
		}
		return nil
	})
	states, errs := cc.snapshot()
	if len(errs) != 0 {
		t.Fatalf("errors reported over good state: %v", errs)
	}
	for i, s := range states {
		if len(s.Endpoints) == 0 {
			t.Fatalf("state %d empty", i)
		}
	}
	if got := cc.lastIDs(); got != "[a b]" {
		t.Fatalf("state while lbFailing %s", got)
	}
	// Back: news flows again.
	lbRegister(t, mem, lbRec("greeter", "1", "c"))
	lbRegister(t, mem, lbRec("other", "1", "x"))
	f.down.Store(false)
	cc.wantIDs(t, "[c]")
	other.wantIDs(t, "[x]")
}

// TestResolverNotFoundThenAppears: an unknown service is an error (no
// state), then its nodes when they register; over gRPC, a call fails fast
// with Unavailable, and a WaitForReady call waits for the node.
func TestResolverNotFoundThenAppears(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	cc := lbBuild(t, b, "beacon:///greeter")
	lbEventually(t, 5*time.Second, func() error {
		if _, errs := cc.snapshot(); len(errs) == 0 || !strings.Contains(errs[0].Error(), "not found") {
			return fmt.Errorf("errors %v", errs)
		}
		return nil
	})
	conn := lbDial(t, b, "beacon:///greeter", beacongrpc.LeastLoaded)
	err := lbCheck(lbCtx(t, 5*time.Second), conn)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("call to an unknown service: %v", err)
	}
	n := startLBNode(t, "a")
	done := make(chan error, 1)
	go func() { done <- lbCheck(lbCtx(t, 10*time.Second), conn, grpc.WaitForReady(true)) }()
	time.Sleep(50 * time.Millisecond)
	lbRegister(t, mem, lbService("greeter", "1", nil, n))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cc.wantIDs(t, "[a]")
}

// TestBuilderFromCache: a Builder over a cache that a Beacon selector or
// another part of the program already uses; its Close leaves the cache.
func TestBuilderFromCache(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem)
	defer c.Close()
	b := beacongrpc.NewBuilderFromCache(c, beacongrpc.WithScheme("reg2"))
	if b.Scheme() != "reg2" || b.Cache() != c {
		t.Fatal("options not applied")
	}
	n := startLBNode(t, "a")
	lbRegister(t, mem, lbService("greeter", "1", nil, n))
	conn := lbDial(t, b, "reg2:///greeter", "")
	if err := lbCheck(lbCtx(t, 5*time.Second), conn); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := c.GetService(context.Background(), "greeter"); err != nil {
		t.Fatalf("Builder.Close closed a cache it does not own: %v", err)
	}
}
