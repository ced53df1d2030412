package consul

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// measuring reports whether heavy measurements were asked for
// (BEACON_MEASURE=1).
func measuring() bool { return os.Getenv("BEACON_MEASURE") == "1" }

// establishedTo counts the established TCP connections to 127.0.0.1:port
// seen from their client side (/proc/net/tcp; the tests that call it run
// an agent of their own, so every client of it is this process).
func establishedTo(t testing.TB, port int) int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skipf("cannot count connections: %v", err)
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X", port)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...
		if len(fields) > 3 && fields[2] == want && fields[3] == "01" {
			n++
		}
	}
	return n
}

// cpuTime returns the CPU time (user and system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// registerMany registers services base-0 ... base-(n-1), one node each, 8
// at a time.
func registerMany(t testing.TB, r *Registry, base string, n int) []*registry.Service {
	t.Helper()
	svcs := make([]*registry.Service, n)
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		svcs[i] = service(fmt.Sprintf("%s-%04d", base, i), "1.0.0", i, 1)
		g.Go(func() error { return r.Register(ctxT(t), svcs[i], registry.RegisterTTL(10*time.Minute)) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return svcs
}

// TestManyServices: one Registry watches 300 services (more than consul's
// default http_max_conns_per_client of 200 connections per client
// address) through an all-services watcher and one watcher per service, as
// a gateway's cache does. Every node arrives; changes to services watched
// by a query of their own and to fed ones arrive; the Registry stays far
// below the connection limit. With BEACON_MEASURE=1 it does so for 1,000
// services and logs the figures of the README.
func TestManyServices(t *testing.T) {
	n, changes := 300, 10
	if measuring() {
		n, changes = 1000, 60
	}
	a := startAgent(t)
	registrant := newRegistryAt(t, a.Addr())
	watcher := newRegistryAt(t, a.Addr())
	base := uniqueName(t)
	regStart := time.Now()
	svcs := registerMany(t, registrant, base, n)
	t.Logf("%d services registered in %v", n, time.Since(regStart))

	before := establishedTo(t, a.HTTPPort()) // the registrant's idle connections
	start := time.Now()
	all := registrytest.Watch(t, watcher)
	each := make([]*registrytest.Events, n)
	for i, s := range svcs {
		each[i] = registrytest.Watch(t, watcher, registry.WatchService(s.Name))
	}
	for i, s := range svcs {
		all.Expect(t, 60*time.Second, registry.Create, s.Nodes[0].ID)
		each[i].Expect(t, 60*time.Second, registry.Create, s.Nodes[0].ID)
	}
	snapshot := time.Since(start)
	watcher.watch.mu.Lock()
	direct, fed := watcher.watch.direct, 0
	if watcher.watch.feed != nil {
		fed = len(watcher.watch.feed.services)
	}
	watcher.watch.mu.Unlock()
	conns := establishedTo(t, a.HTTPPort())
	t.Logf("%d services: first snapshot (every Create at the all-services watcher and at %d service watchers) after %v; "+
		"%d services with a query of their own, %d fed; %d connections to the agent: %d of the watching Registry (idle ones included), %d of the registrant",
		n, n, snapshot, direct, fed, conns, conns-before, before)
	if direct > DefaultServiceQueries || fed < n-DefaultServiceQueries {
		t.Errorf("%d direct and %d fed watches, want at most %d direct", direct, fed, DefaultServiceQueries)
	}
	if conns >= 150 {
		t.Errorf("%d connections to the agent, want well below consul's 200 per client", conns)
	}

	// Changes: node metadata of direct and fed services, one at a time;
	// the time to the Update at the service's watcher and at the
	// all-services watcher.
	isDirect := func(name string) bool {
		watcher.watch.mu.Lock()
		defer watcher.watch.mu.Unlock()
		return !watcher.watch.services[name].fed
	}
	var latDirect, latFed []time.Duration
	cpu0 := cpuTime()
	changesStart := time.Now()
	for k := range changes {
		i := (k * 7919) % n
		s := svcs[i]
		s.Nodes[0].Metadata["change"] = strconv.Itoa(k)
		t0 := time.Now()
		if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
		e := each[i].Expect(t, 10*time.Second, registry.Update, s.Nodes[0].ID)
		d := time.Since(t0)
		all.Expect(t, 10*time.Second, registry.Update, s.Nodes[0].ID)
		if e.Service.Nodes[0].Metadata["change"] != strconv.Itoa(k) {
			t.Errorf("update of %s carries %v", s.Name, e.Service.Nodes[0].Metadata)
		}
		if isDirect(s.Name) {
			latDirect = append(latDirect, d)
		} else {
			latFed = append(latFed, d)
		}
	}
	cpu := cpuTime() - cpu0
	elapsed := time.Since(changesStart)
	slices.Sort(latDirect)
	slices.Sort(latFed)
	t.Logf("%d changes in %v: this process (both Registries, 1+%d watchers) used %v of CPU, %v per change",
		changes, elapsed, n, cpu, cpu/time.Duration(changes))
	t.Logf("register -> Update at the service's watcher: own query: %d changes, p50 %v, max %v; fed: %d changes, p50 %v, p90 %v, max %v",
		len(latDirect), percentile(latDirect, 50), slices.Max(append(latDirect, 0)),
		len(latFed), percentile(latFed, 50), percentile(latFed, 90), slices.Max(append(latFed, 0)))
	if len(latFed) == 0 {
		t.Error("no change of a fed service measured")
	}
	if measuring() {
		for _, path := range []string{"/v1/catalog/services", "/v1/health/state/any"} {
			resp, err := http.Get(a.URL() + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("the feed reads %s: %d KB per answer", path, len(body)/1000)
		}
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	}

	// A fed service's node fails its check, another is deregistered, a
	// new service appears.
	var fedIdx []int
	for i, s := range svcs {
		if !isDirect(s.Name) {
			fedIdx = append(fedIdx, i)
		}
	}
	crash, gone := svcs[fedIdx[0]], svcs[fedIdx[1]]
	raw := rawClient(t, a.Addr())
	if err := raw.Agent().UpdateTTL(checkID(crash.Nodes[0].ID), "test: crashed", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	if err := registrant.Deregister(ctxT(t), gone); err != nil {
		t.Fatal(err)
	}
	fresh := service(base+"-new", "1.0.0", n, 1)
	if err := registrant.Register(ctxT(t), fresh, registry.RegisterTTL(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	all.Expect(t, 10*time.Second, registry.Delete, crash.Nodes[0].ID)
	each[fedIdx[0]].Expect(t, 10*time.Second, registry.Delete, crash.Nodes[0].ID)
	all.Expect(t, 10*time.Second, registry.Delete, gone.Nodes[0].ID)
	each[fedIdx[1]].Expect(t, 10*time.Second, registry.Delete, gone.Nodes[0].ID)
	all.Expect(t, 10*time.Second, registry.Create, fresh.Nodes[0].ID)
	if got, err := watcher.GetService(ctxT(t), crash.Name); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("crashed node still visible: %v, %v", got, err)
	}
}

// TestFeedForeignChanges: with every watch fed, changes that move neither
// a check nor a tag (another tool's record changing its Meta and port, a
// check-less instance added) still arrive, through the index probes; a
// node going into maintenance hides its services.
func TestFeedForeignChanges(t *testing.T) {
	t.Parallel()
	a := startAgent(t)
	r := newRegistryAt(t, a.Addr(), WithServiceQueries(0))
	raw := rawClient(t, a.Addr())
	name := uniqueName(t)
	ev := registrytest.Watch(t, r, registry.WatchService(name))
	all := registrytest.Watch(t, r)
	reg := &api.AgentServiceRegistration{ID: name + "-x", Name: name, Address: "127.0.0.9", Port: 81, Meta: map[string]string{"k": "1"}}
	if err := raw.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	id := reg.ID + "@" + testserver.ConsulNodeName
	ev.Expect(t, 5*time.Second, registry.Create, id)
	all.Expect(t, 5*time.Second, registry.Create, id)
	reg.Meta, reg.Port = map[string]string{"k": "2"}, 82
	if err := raw.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	e := ev.Expect(t, 5*time.Second, registry.Update, id)
	if e.Service.Nodes[0].Address != "127.0.0.9:82" || e.Service.Nodes[0].Metadata["k"] != "2" {
		t.Errorf("update = %+v", e.Service.Nodes[0])
	}
	second := &api.AgentServiceRegistration{ID: name + "-y", Name: name, Address: "127.0.0.10", Port: 81}
	if err := raw.Agent().ServiceRegister(second); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Create, second.ID+"@"+testserver.ConsulNodeName)

	// A Beacon node on the same agent: maintenance mode (a critical node
	// check) hides every service of the node.
	s := service(name+"-b", "1", 0, 1)
	bev := registrytest.Watch(t, r, registry.WatchService(s.Name))
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	bev.Expect(t, 5*time.Second, registry.Create, s.Nodes[0].ID)
	if err := raw.Agent().EnableNodeMaintenance("test"); err != nil {
		t.Fatal(err)
	}
	bev.Expect(t, 5*time.Second, registry.Delete, s.Nodes[0].ID)
	ev.Expect(t, 5*time.Second, registry.Delete, id)
	if err := raw.Agent().DisableNodeMaintenance(); err != nil {
		t.Fatal(err)
	}
	bev.Expect(t, 5*time.Second, registry.Create, s.Nodes[0].ID)
	ev.Expect(t, 5*time.Second, registry.Create, id)
}

// TestFeedAgentRestart: with every watch fed, the agent crashes and a fresh
// one starts on the same port: the feed resynchronises (the node is
// reported deleted, then back after its next heartbeat).
func TestFeedAgentRestart(t *testing.T) {
	t.Parallel()
	a := startAgent(t)
	registrant := newRegistryAt(t, a.Addr())
	watcher := newRegistryAt(t, a.Addr(), WithServiceQueries(0))
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	id := s.Nodes[0].ID
	ev := registrytest.Watch(t, watcher, registry.WatchService(name))
	if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Create, id)
	a.Kill()
	time.Sleep(200 * time.Millisecond) // let the feed meet the dead agent
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 15*time.Second, registry.Delete, id)
	if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatalf("first heartbeat after the restart: %v", err)
	}
	ev.Expect(t, 10*time.Second, registry.Create, id)
}

// TestFeedStops: the feed's loops stop with the last fed watch, and a
// Registry that starts over feeds again.
func TestFeedStops(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, WithServiceQueries(1))
	name := uniqueName(t)
	names := []string{name + "-a", name + "-b", name + "-c"}
	var ws []registry.Watcher
	for _, n := range names {
		w, err := r.Watch(ctxT(t), registry.WatchService(n))
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	r.watch.mu.Lock()
	direct, fed := r.watch.direct, len(r.watch.feed.services)
	r.watch.mu.Unlock()
	if direct != 1 || fed != 2 {
		t.Fatalf("%d direct and %d fed watches, want 1 and 2", direct, fed)
	}
	s := service(names[2], "1", 0, 1)
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	if ev, err := ws[2].Next(); err != nil || ev.Type != registry.Create {
		t.Fatalf("fed watcher: %v, %v", ev, err)
	}
	for _, w := range ws {
		w.Stop()
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		r.watch.mu.Lock()
		defer r.watch.mu.Unlock()
		if r.watch.feed != nil || r.watch.catalog != nil || r.watch.direct != 0 || len(r.watch.services) != 0 {
			return fmt.Errorf("feed %v, catalog %v, %d direct, services %v still running", r.watch.feed != nil, r.watch.catalog != nil,
				r.watch.direct, slices.Collect(maps.Keys(r.watch.services)))
		}
		return nil
	})
}

// TestFeedPeriodicProbe: a change neither feed shows (another tool's
// check-less, tag-less instance added to a service of Beacon nodes) is
// seen by the probe of every fed service once per wait time.
func TestFeedPeriodicProbe(t *testing.T) {
	t.Parallel()
	const wait = time.Second
	r := newRegistry(t, WithServiceQueries(0), WithWaitTime(wait))
	raw := rawClient(t, agent.Addr())
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	ev := registrytest.Watch(t, r, registry.WatchService(name))
	if err := r.Register(ctxT(t), s, registry.RegisterTTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	defer r.Deregister(ctxT(t), s)
	ev.Expect(t, 5*time.Second, registry.Create, s.Nodes[0].ID)
	r.watch.mu.Lock()
	probe := r.watch.services[name].probe
	r.watch.mu.Unlock()
	if probe {
		t.Fatal("a service of Beacon nodes is probed on every catalog change")
	}
	reg := &api.AgentServiceRegistration{ID: name + "-plain", Name: name, Address: "127.0.0.11", Port: 80}
	if err := raw.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	defer raw.Agent().ServiceDeregister(reg.ID)
	start := time.Now()
	ev.Expect(t, 3*wait+2*time.Second, registry.Create, reg.ID+"@"+testserver.ConsulNodeName)
	t.Logf("seen after %v (wait time %v)", time.Since(start), wait)
}
